"""Inside the stack: a loaded run's states and gates over a text, and how fast they change.

The d2l chapter argues that depth lets "data be relevant at different levels of the stack":
slowly changing information higher up, short-term dynamics lower down. :func:`inspect`
(``rnnjax.inspect(run, text)``) and :func:`timescales` (``rnnjax.timescales``) look, as NumPy
arrays ``[layers, time, hidden]``, from :func:`rnnjax.training.trace.trace` (docs/inside.md).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.dataset import data
from rnnjax.training.trace import trace

Array = jax.Array


@dataclasses.dataclass
class Inside:
    """A text seen through a run's stack. Arrays are NumPy, ``[layers, time, hidden]``; position t
    is the state after reading ``tokens[t]``; ``logits`` [time, V] predict ``tokens[t + 1]``."""

    tokens: list[str]
    unknown: list[
        tuple[int, str]
    ]  # (position, token) of tokens outside the vocabulary, read as <unk>
    h: np.ndarray
    gates: dict[str, np.ndarray]
    retain: np.ndarray | None  # the forget (retain) coefficient; None for the vanilla RNN
    c: np.ndarray | None  # the LSTM's cell state; None for other cells
    logits: np.ndarray


def inspect(run: Any, text: str) -> Inside:
    """Every layer's hidden states and gates while ``run`` (:func:`rnnjax.load`) reads ``text``,
    from a zero state, preprocessed as in training. Tokens outside the vocabulary are read as
    ``<unk>`` (as in training) and listed in ``Inside.unknown``, with a warning."""
    d = run.config.data
    tokens = data.tokenize(data.preprocess(text, d.preprocess), d.tokenizer)
    if not tokens:
        raise ValueError(
            "inspect needs a text of at least 1 token after preprocessing; give a longer text"
        )
    unknown = [(i, tok) for i, tok in enumerate(tokens) if tok not in run.vocab.token_to_idx]
    if unknown:
        shown = ", ".join(sorted({repr(tok) for _, tok in unknown})[:10])
        logging.warning(
            "inspect: %d of %d tokens are outside the run's vocabulary and read as <unk>: %s",
            len(unknown),
            len(tokens),
            shown,
        )
    ids = jnp.asarray(run.vocab.encode(tokens))[None, :]
    logits, _, traces = _jit_trace(run.model, run.params, ids, run.model.initial_carry(1))
    stack = lambda xs: np.stack([np.asarray(x[:, 0]) for x in xs])  # noqa: E731 - L x [t, 1, h] -> [L, t, h]
    gates = {k: stack([t.gates[k] for t in traces]) for k in traces[0].gates}
    retain = stack([t.retain for t in traces]) if traces[0].retain is not None else None
    c = stack([t.c for t in traces]) if traces[0].c is not None else None
    return Inside(
        tokens, unknown, stack([t.h for t in traces]), gates, retain, c, np.asarray(logits[0])
    )


_jit_trace = jax.jit(trace, static_argnums=0)


def autocorrelation_times(
    x_lth: np.ndarray, threshold: float = 1 / math.e, max_lag: int | None = None
) -> np.ndarray:
    """Per unit, the first lag at which the autocorrelation of x [..., t, h] falls below
    ``threshold``: [..., h] float; ``max_lag`` (default t // 4) where it never does within it, NaN
    for a constant unit. The autocorrelation is the usual (biased) estimate, sum_t (x_t - m)(x_{t+k}
    - m) / sum_t (x_t - m)^2."""
    x = np.asarray(x_lth, np.float64)
    t = x.shape[-2]
    max_lag = max(1, t // 4) if max_lag is None else max_lag
    if not 1 <= max_lag < t:
        raise ValueError(
            f"max_lag = {max_lag} is not allowed for a text of {t} tokens: give 1 <= max_lag < {t}"
        )
    x = x - x.mean(axis=-2, keepdims=True)
    spectrum = np.fft.rfft(x, n=2 * t, axis=-2)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), n=2 * t, axis=-2)[..., : max_lag + 1, :]
    var = acov[..., :1, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        acf = acov / var
    below = acf < threshold
    lag = np.where(below.any(axis=-2), below.argmax(axis=-2), max_lag).astype(np.float64)
    return np.where(var[..., 0, :] > 1e-12 * t, lag, np.nan)


@dataclasses.dataclass
class Timescales:
    """How fast each layer's state changes: ``per_unit`` [layers, hidden] autocorrelation times
    (steps; NaN for constant units), and per layer their ``median``, ``mean`` and the fraction
    ``censored`` (never fell below the threshold within ``max_lag``: their time is at least
    ``max_lag``)."""

    state: str
    threshold: float
    max_lag: int
    per_unit: np.ndarray
    median: np.ndarray
    mean: np.ndarray
    censored: np.ndarray


def timescales(
    run: Any, text: str, state: str = "h", threshold: float = 1 / math.e, max_lag: int | None = None
) -> Timescales:
    """For each layer, the lag at which each unit's autocorrelation falls below ``threshold`` (1/e),
    while ``run`` reads ``text``, summarised per layer. ``state``: "h" (the layer's output) or "c"
    (the LSTM's cell state)."""
    inside = inspect(run, text)
    if state not in ("h", "c") or (state == "c" and inside.c is None):
        have = "'h' or 'c'" if inside.c is not None else "'h' (only the LSTM has a cell state c)"
        raise ValueError(
            f"state = {state!r} is not allowed for a {run.config.model.cell} run: give {have}"
        )
    x = inside.h if state == "h" else inside.c
    t = x.shape[1]
    max_lag = max(1, t // 4) if max_lag is None else max_lag
    lags = autocorrelation_times(x, threshold, max_lag)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", RuntimeWarning
        )  # a layer of only constant units: its summary is NaN
        median, mean = np.nanmedian(lags, axis=-1), np.nanmean(lags, axis=-1)
        censored = np.nanmean(np.where(np.isnan(lags), np.nan, lags >= max_lag), axis=-1)
    return Timescales(state, threshold, max_lag, lags, median, mean, censored)
