"""Compiled text generation: the prefix warms up the state, then ``lax.scan`` samples.

Temperature 0 is greedy (argmax); otherwise logits / temperature, optionally kept to
the ``top_k`` most likely tokens, sampled with ``jax.random.categorical``.
Sampling is reproducible from ``seed``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.data import detokenize, preprocess, tokenize
from rnnjax.model import DeepRNN, Params
from rnnjax.vocab import Vocab

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("model", "num_tokens", "greedy", "top_k"))
def sample(
    model: DeepRNN,
    params: Params,
    prefix: Array,
    key: Array,
    temperature: Array,
    *,
    num_tokens: int,
    greedy: bool,
    top_k: int | None = None,
) -> Array:
    """prefix [b, p] int (p >= 1) -> continuation [b, num_tokens] int."""
    logits, state = model.apply(params, prefix, model.initial_state(prefix.shape[0]))

    def pick(logits_bv: Array, t: Array) -> Array:
        if greedy:
            return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
        z = logits_bv / temperature
        if top_k is not None:
            kth = jax.lax.top_k(z, top_k)[0][:, -1:]
            z = jnp.where(z < kth, -jnp.inf, z)
        return jax.random.categorical(jax.random.fold_in(key, t), z, axis=-1).astype(jnp.int32)

    def body(carry, t):
        state, tok_b = carry
        logits_b1v, state = model.apply(params, tok_b[:, None], state)
        return (state, pick(logits_b1v[:, 0], t)), tok_b

    first = pick(logits[:, -1], jnp.int32(0))
    _, toks_tb = jax.lax.scan(body, (state, first), jnp.arange(1, num_tokens + 1))
    return toks_tb.T


def generate(
    model: DeepRNN,
    params: Params,
    vocab: Vocab,
    prefixes: str | Sequence[str],
    num_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    preprocess_mode: str = "d2l",
    tokenizer: str = "char",
) -> str | list[str]:
    """Continue each prefix by ``num_tokens`` tokens; returns prefix + continuation.

    Prefixes go through the run's preprocessing; tokens outside the vocabulary map to
    ``<unk>``. Prompts of equal token length run as one batch.
    """
    single = isinstance(prefixes, str)
    texts = [preprocess(p, preprocess_mode) for p in ([prefixes] if single else prefixes)]
    out: list[str] = [""] * len(texts)
    by_len: dict[int, list[int]] = {}
    encoded = [vocab.encode(tokenize(t, tokenizer)) for t in texts]
    for i, ids in enumerate(encoded):
        if len(ids) == 0:
            raise ValueError(f"prefix {i} is empty after preprocessing; give at least one token")
        by_len.setdefault(len(ids), []).append(i)
    for idxs in by_len.values():
        batch = jnp.asarray(np.stack([encoded[i] for i in idxs]))
        cont = np.asarray(
            sample(
                model, params, batch, jax.random.key(seed), jnp.float32(max(temperature, 1e-6)),
                num_tokens=num_tokens, greedy=temperature == 0, top_k=top_k,
            )
        )
        for row, i in enumerate(idxs):
            toks = tokenize(texts[i], tokenizer) + vocab.decode(cont[row])
            out[i] = detokenize(toks, tokenizer)
    return out[0] if single else out
