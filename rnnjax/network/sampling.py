"""Compiled text generation: the prefix warms up the carry, then ``lax.scan`` samples.

Temperature 0 is greedy (argmax); otherwise logits / temperature, optionally kept to
the ``top_k`` most likely tokens, sampled with ``jax.random.categorical``.
Sampling is reproducible from ``seed``. ``generate`` checks its arguments before any
compute and raises ``ValueError`` naming the bad one (``check_args`` is that check alone).
One call generates at most ``MAX_TOKENS`` tokens (num_chars x prefixes), in compiled chunks of
about ``CHUNK`` tokens: Ctrl-C (or a signal handler) stops it within a chunk's time.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.config import FIELDS
from rnnjax.dataset import data
from rnnjax.dataset.data import detokenize, tokenize
from rnnjax.dataset.vocab import Vocab
from rnnjax.network.model import DeepRNN, Params

Array = jax.Array


# Bound on the tokens one call generates (num_chars x prefixes): the ids, their tokens and the
# text are held in host memory until returned (10M characters: about 0.2 GB at most).
MAX_TOKENS = 10_000_000
# Tokens per compiled call: between calls, Python runs (Ctrl-C, a signal handler), so a stop
# request is honoured within one chunk's time, not at the end of the whole generation.
CHUNK = 1024


def _pick(
    logits_bv: Array, key: Array, t: Array, temperature: Array, greedy: bool, top_k: int | None
) -> Array:
    """logits [b, vocab] -> the next token [b]: argmax (greedy), or a sample at position ``t``."""
    if greedy:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    z = logits_bv / temperature
    if top_k is not None:
        kth = jax.lax.top_k(z, top_k)[0][:, -1:]
        z = jnp.where(z < kth, -jnp.inf, z)
    return jax.random.categorical(jax.random.fold_in(key, t), z, axis=-1).astype(jnp.int32)


def _begin(model, params, prefix, key, temperature, greedy, top_k):
    """prefix [b, t] -> (carry after it, the first new token [b])."""
    logits_btv, carry = model.apply(params, prefix, model.initial_carry(prefix.shape[0]))
    return carry, _pick(logits_btv[:, -1], key, jnp.int32(0), temperature, greedy, top_k)


def _continue(model, params, carry, tok_b, key, temperature, t0, length, greedy, top_k):
    """Emit ``tok_b`` and ``length - 1`` more: (carry, next token [b], tokens [b, length]);
    token i of the whole continuation is drawn with ``fold_in(key, i)`` however it is chunked."""

    def body(loop, t):
        carry, tok_b = loop
        logits_b1v, carry = model.apply(params, tok_b[:, None], carry)
        return (carry, _pick(logits_b1v[:, 0], key, t, temperature, greedy, top_k)), tok_b

    ts = t0 + jnp.arange(1, length + 1, dtype=jnp.int32)
    (carry, tok_b), toks_tb = jax.lax.scan(body, (carry, tok_b), ts)
    return carry, tok_b, toks_tb.T


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
    with the char tokenizer), as one compiled program (:func:`generate` runs it in chunks)."""
    carry, first = _begin(model, params, prefix, key, temperature, greedy, top_k)
    t0 = jnp.int32(0)
    return _continue(model, params, carry, first, key, temperature, t0, num_chars, greedy, top_k)[2]


_begin_jit = jax.jit(_begin, static_argnames=("model", "greedy", "top_k"))
_continue_jit = jax.jit(_continue, static_argnames=("model", "length", "greedy", "top_k"))


def sample_chunked(
    model: DeepRNN,
    params: Params,
    prefix: Array,
    key: Array,
    temperature: Array,
    *,
    num_chars: int,
    greedy: bool,
    top_k: int | None = None,
) -> np.ndarray:
    """:func:`sample`'s tokens [b, num_chars] (the same ones), in compiled chunks of about
    ``CHUNK`` tokens, each finished before the next starts: Ctrl-C or a signal handler acts
    between them."""
    chunks = -(-num_chars // CHUNK)
    length = -(-num_chars // chunks)  # equal chunks, one program; drops at most chunks - 1 tokens
    carry, tok_b = _begin_jit(model, params, prefix, key, temperature, greedy=greedy, top_k=top_k)
    out = np.empty((prefix.shape[0], chunks * length), np.int32)
    for c in range(chunks):
        carry, tok_b, toks = _continue_jit(
            model,
            params,
            carry,
            tok_b,
            key,
            temperature,
            jnp.int32(c * length),
            length=length,
            greedy=greedy,
            top_k=top_k,
        )
        out[:, c * length : (c + 1) * length] = np.asarray(toks)  # waits: one chunk at a time
    return out[:, :num_chars]


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def check_args(
    prefixes: str | Sequence[str],
    num_chars: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
) -> None:
    """Raise ``ValueError`` (one line naming the argument and what is allowed) unless: ``prefixes``
    is a non-empty string or a non-empty list of non-empty strings; ``num_chars`` an integer
    >= 1, with ``num_chars`` x prefixes at most ``MAX_TOKENS``; ``temperature`` a finite number
    >= 0; ``top_k`` None or an integer >= 1; ``seed`` an integer in [0, 2**32). Emptiness after
    preprocessing is checked by ``generate``."""
    items = [prefixes] if isinstance(prefixes, str) else prefixes
    if not isinstance(items, Sequence) or len(items) == 0:
        raise ValueError(
            f"prefixes must be a non-empty string or a non-empty list of strings, got {prefixes!r}"
        )
    for i, p in enumerate(items):
        if not isinstance(p, str) or not p:
            raise ValueError(f"prefix {i} must be a non-empty string, got {p!r}")
    rule = FIELDS["generate.num_chars"]  # one rule for config.generate.num_chars and the sampler
    if not rule.accepts(num_chars if not isinstance(num_chars, np.integer) else int(num_chars)):
        raise ValueError(f"num_chars must be {rule.rule}, got {num_chars!r}")
    if num_chars * len(items) > MAX_TOKENS:
        each = f" for each of {len(items)} prefixes" if len(items) > 1 else ""
        raise ValueError(
            f"num_chars = {num_chars}{each} is above the bound of {MAX_TOKENS:,} tokens per call "
            "(num_chars x prefixes: the text is held in memory); ask for fewer"
        )
    if (
        not isinstance(temperature, numbers.Real)
        or isinstance(temperature, (bool, np.bool_))
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(
            f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}"
        )
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

    Prefixes go through the run's preprocessing (``preprocess``, ``tokenizer``: its
    ``config.data``); tokens outside the vocabulary map to ``<unk>``. Prompts of equal token length
    run as one batch. ``temperature`` 0 (the default) is greedy and ignores ``top_k`` and ``seed``;
    ``top_k`` larger than the vocabulary is clamped to the vocabulary size (= no truncation).

    Raises ``ValueError`` before any compute for: no prefix, an empty prefix (also one empty
    after preprocessing), ``num_chars`` not an integer >= 1 or with ``num_chars`` x prefixes above
    ``MAX_TOKENS``, ``temperature`` negative, NaN or infinite, ``top_k`` not an integer >= 1,
    ``seed`` not an integer in [0, 2**32). Runs in chunks (:func:`sample_chunked`): a
    ``KeyboardInterrupt`` or an exception raised by a signal handler ends it between two chunks.
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
        if raw[i].strip() and not texts[i].strip():  # every character dropped: blanks are left
            raise ValueError(
                f"prefix {i} ({raw[i]!r}) keeps no character after preprocessing "
                f"({preprocess!r} leaves {texts[i]!r}); give text in the run's characters"
            )
        if len(ids) == 0:
            raise ValueError(
                f"prefix {i} ({raw[i]!r}) is empty after preprocessing ({preprocess!r}); give at "
                "least one token"
            )
        by_len.setdefault(len(ids), []).append(i)
    for idxs in by_len.values():
        batch = jnp.asarray(np.stack([encoded[i] for i in idxs]))
        cont = sample_chunked(
            model,
            params,
            batch,
            jax.random.key(int(seed)),
            jnp.float32(max(temperature, 1e-6)),
            num_chars=int(num_chars),
            greedy=greedy,
            top_k=top_k,
        )
        for row, i in enumerate(idxs):
            toks = tokenize(texts[i], tokenizer) + vocab.decode(cont[row])
            out[i] = detokenize(toks, tokenizer)
    return out[0] if single else out
