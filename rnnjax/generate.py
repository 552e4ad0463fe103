"""Compiled text generation: the prefix warms up the carry, then ``lax.scan`` samples.

Temperature 0 is greedy (argmax); otherwise logits / temperature, optionally kept to
the ``top_k`` most likely tokens, sampled with ``jax.random.categorical``.
Sampling is reproducible from ``seed``. ``generate`` checks its arguments before any
compute and raises ``ValueError`` naming the bad one (``check_args`` is that check alone).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import data
from rnnjax.config import FIELDS
from rnnjax.data import detokenize, tokenize
from rnnjax.model import DeepRNN, Params
from rnnjax.vocab import Vocab

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("model", "num_chars", "greedy", "top_k"))
def sample(
    model: DeepRNN,
    params: Params,
    prefix: Array,
    key: Array,
    temperature: Array,
    *,
    num_chars: int,
    greedy: bool,
    top_k: int | None = None,
) -> Array:
    """prefix [b, t] int (t >= 1) -> continuation [b, num_chars] int (num_chars tokens: characters
    with the char tokenizer)."""
    logits_btv, carry = model.apply(params, prefix, model.initial_carry(prefix.shape[0]))

    def pick(logits_bv: Array, t: Array) -> Array:
        if greedy:
            return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
        z = logits_bv / temperature
        if top_k is not None:
            kth = jax.lax.top_k(z, top_k)[0][:, -1:]
            z = jnp.where(z < kth, -jnp.inf, z)
        return jax.random.categorical(jax.random.fold_in(key, t), z, axis=-1).astype(jnp.int32)

    def body(loop, t):
        carry, tok_b = loop
        logits_b1v, carry = model.apply(params, tok_b[:, None], carry)
        return (carry, pick(logits_b1v[:, 0], t)), tok_b

    first = pick(logits_btv[:, -1], jnp.int32(0))
    _, toks_tb = jax.lax.scan(body, (carry, first), jnp.arange(1, num_chars + 1))
    return toks_tb.T


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def check_args(
    prefixes: str | Sequence[str], num_chars: int, temperature: float = 0.0, top_k: int | None = None, seed: int = 0
) -> None:
    """Raise ``ValueError`` (one line naming the argument and what is allowed) unless: ``prefixes``
    is a non-empty string or a non-empty list of non-empty strings; ``num_chars`` an integer
    >= 1; ``temperature`` a finite number >= 0; ``top_k`` None or an integer >= 1; ``seed`` an
    integer in [0, 2**32). Emptiness after preprocessing is checked by ``generate``."""
    items = [prefixes] if isinstance(prefixes, str) else prefixes
    if not isinstance(items, Sequence) or len(items) == 0:
        raise ValueError(f"prefixes must be a non-empty string or a non-empty list of strings, got {prefixes!r}")
    for i, p in enumerate(items):
        if not isinstance(p, str) or not p:
            raise ValueError(f"prefix {i} must be a non-empty string, got {p!r}")
    rule = FIELDS["generate.num_chars"]  # one rule for config.generate.num_chars and the sampler
    if not rule.accepts(num_chars if not isinstance(num_chars, np.integer) else int(num_chars)):
        raise ValueError(f"num_chars must be {rule.rule}, got {num_chars!r}")
    if (not isinstance(temperature, numbers.Real) or isinstance(temperature, (bool, np.bool_))
            or not math.isfinite(temperature) or temperature < 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer with 0 <= seed < 2**32, got {seed!r}")


def generate(
    model: DeepRNN,
    params: Params,
    vocab: Vocab,
    prefixes: str | Sequence[str],
    num_chars: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    preprocess: str = "d2l",
    tokenizer: str = "char",
) -> str | list[str]:
    """Continue each prefix by ``num_chars`` tokens (characters with the char tokenizer); returns
    prefix + continuation.

    Prefixes go through the run's preprocessing (``preprocess``, ``tokenizer``: its ``config.data``);
    tokens outside the vocabulary map to ``<unk>``. Prompts of equal token length run as one batch. ``temperature`` 0 (the
    default) is greedy and ignores ``top_k`` and ``seed``; ``top_k`` larger than the
    vocabulary is clamped to the vocabulary size (= no truncation).

    Raises ``ValueError`` before any compute for: no prefix, an empty prefix (also one empty
    after preprocessing), ``num_chars`` not an integer >= 1, ``temperature`` negative, NaN or
    infinite, ``top_k`` not an integer >= 1, ``seed`` not an integer in [0, 2**32).
    """
    check_args(prefixes, num_chars, temperature, top_k, seed)
    greedy = temperature == 0
    top_k = None if greedy or top_k is None else min(int(top_k), model.vocab_size)
    single = isinstance(prefixes, str)
    raw = [prefixes] if single else list(prefixes)
    texts = [data.preprocess(p, preprocess) for p in raw]
    out: list[str] = [""] * len(texts)
    by_len: dict[int, list[int]] = {}
    encoded = [vocab.encode(tokenize(t, tokenizer)) for t in texts]
    for i, ids in enumerate(encoded):
        if len(ids) == 0:
            raise ValueError(
                f"prefix {i} ({raw[i]!r}) is empty after preprocessing ({preprocess!r}); give at least one token"
            )
        by_len.setdefault(len(ids), []).append(i)
    for idxs in by_len.values():
        batch = jnp.asarray(np.stack([encoded[i] for i in idxs]))
        cont = np.asarray(
            sample(
                model, params, batch, jax.random.key(int(seed)), jnp.float32(max(temperature, 1e-6)),
                num_chars=int(num_chars), greedy=greedy, top_k=top_k,
            )
        )
        for row, i in enumerate(idxs):
            toks = tokenize(texts[i], tokenizer) + vocab.decode(cont[row])
            out[i] = detokenize(toks, tokenizer)
    return out[0] if single else out
