"""Inside the stack: every layer's hidden state and gates over time, and what they show.

The d2l chapter argues that depth lets "data be relevant at different levels of the stack":
slowly changing information higher up, short-term dynamics lower down. This module looks.

* :func:`trace` runs the stack with the cells' own equations (``cells.*.pointwise``, or
  ``Cell.sequence`` for minGRU/minLSTM: the forward of :mod:`rnnjax.fused`, keeping the gate
  activations) and returns ``DeepRNN.apply``'s logits and carry plus a :class:`LayerTrace` per
  layer. Jittable; tests check its logits equal ``apply``'s.
* :func:`layer_stats` reduces traces to per-layer sums on the device (:class:`rnnjax.metrics.LayerStats`):
  the validation pass computes them every epoch without a host sync per step.
* :func:`inspect` (``rnnjax.inspect(run, text)``) and :func:`timescales` (``rnnjax.timescales``)
  give a loaded run's states as NumPy arrays ``[layers, time, hidden]`` and how fast they change.

Gates per cell (s = sigmoid; the *retain* coefficient multiplies the previous state, the
"forget gate" of the statistics):
LSTM i, f, o (s), g (tanh), retain f (of c); GRU r, z (s), n (tanh), retain z;
vanilla RNN: its output h counts as a tanh "gate" (relu: none), no retain;
minGRU z (s), retain 1 - z; minLSTM f, i (s), retain f / (f + i).
Under ``impl="flax"`` the params are converted with :func:`rnnjax.flax_model.from_flax` and run
through these same equations (equal to Flax's logits to float rounding, tested).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import data, flax_model
from rnnjax.cells import CELLS, mingru_coefficients, minlstm_coefficients, project_input, split_gates
from rnnjax.metrics import LayerStats
from rnnjax.model import Carry, DeepRNN, Impl, Params

Array = jax.Array
SIGMOID_GATES = {"rnn": (), "gru": ("r", "z"), "lstm": ("i", "f", "o"), "mingru": ("z",), "minlstm": ("f", "i")}
TANH_GATES = {"rnn": ("h",), "gru": ("n",), "lstm": ("g",), "mingru": (), "minlstm": ()}  # rnn: only with tanh
HAS_RETAIN = {"rnn": False, "gru": True, "lstm": True, "mingru": True, "minlstm": True}


class LayerTrace(NamedTuple):
    """One layer over time: h [t, b, h]; gate activations by name, each [t, b, h]; retain [t, b, h]
    (None for the vanilla RNN); c [t, b, h] (the LSTM's cell state, else None)."""

    h: Array
    gates: dict[str, Array]
    retain: Array | None
    c: Array | None


def _scanned_layer(cell_name: str, activation: str, p: Params, xw_tbg: Array, carry: Any) -> tuple[LayerTrace, Any]:
    """rnn/gru/lstm: the loop of :func:`rnnjax.fused._forward`, also returning the gates."""
    cell = CELLS[cell_name]
    xw_tbh = split_gates(xw_tbg, cell.num_gates)

    def step(carry, xw_bh):
        hw_bh = split_gates(cell.hidden(carry) @ p["w_h"] + p["b_h"], cell.num_gates)
        carry, h_bh, saved = cell.pointwise(xw_bh, hw_bh, carry, activation)
        return carry, (h_bh, carry, saved)

    carry, (h_tbh, carries, saved) = jax.lax.scan(step, carry, xw_tbh)
    if cell_name == "lstm":
        _, i, f, g, o = saved
        return LayerTrace(h_tbh, {"i": i, "f": f, "g": g, "o": o}, f, carries[0]), carry
    if cell_name == "gru":
        r, z, n, _ = saved
        return LayerTrace(h_tbh, {"r": r, "z": z, "n": n}, z, None), carry
    return LayerTrace(h_tbh, {"h": h_tbh} if activation == "tanh" else {}, None, None), carry


def _linear_layer(cell_name: str, impl: Impl, xw_tbg: Array, carry: Array) -> tuple[LayerTrace, Array]:
    """minGRU/minLSTM: h as ``impl`` computes it (the parallel scan, or AUTODIFF's scan of steps); the
    gates recomputed from x W_x + b_x."""
    cell = CELLS[cell_name]
    if impl == Impl.AUTODIFF:
        carry, h_tbh = jax.lax.scan(lambda k, xw_bg: cell.recur({}, k, xw_bg), carry, xw_tbg)
    else:
        h_tbh, carry = cell.sequence(xw_tbg, carry)
    xw = split_gates(xw_tbg, cell.num_gates)
    if cell_name == "mingru":
        return LayerTrace(h_tbh, {"z": jax.nn.sigmoid(xw[0])}, mingru_coefficients(xw)[0], None), carry
    gates = {"f": jax.nn.sigmoid(xw[0]), "i": jax.nn.sigmoid(xw[1])}
    return LayerTrace(h_tbh, gates, minlstm_coefficients(xw)[0], None), carry


def trace(spec: DeepRNN, params: Params, tokens: Array, carry: Carry) -> tuple[Array, Carry, list[LayerTrace]]:
    """tokens [b, t] -> (logits [b, t, V], new carry, one :class:`LayerTrace` per layer); no dropout."""
    if spec.impl == Impl.FLAX:
        params = flax_model.from_flax(params, spec)
    tokens_tb = tokens.T
    traces, new_carry, h_tbh = [], [], None
    for l, (p, layer_carry) in enumerate(zip(params["layers"], carry)):
        xw_tbg = p["w_x"][tokens_tb] + p["b_x"] if l == 0 else project_input(p, h_tbh)
        if CELLS[spec.cell].sequence is not None:
            layer, layer_carry = _linear_layer(spec.cell, spec.impl, xw_tbg, layer_carry)
        else:
            layer, layer_carry = _scanned_layer(spec.cell, spec.layer_activation(l), p, xw_tbg, layer_carry)
        traces.append(layer)
        new_carry.append(layer_carry)
        h_tbh = layer.h
    logits_tbv = h_tbh @ params["w_out"] + params["b_out"]
    return jnp.swapaxes(logits_tbv, 0, 1), tuple(new_carry), traces


def layer_stats(spec: DeepRNN, traces: list[LayerTrace]) -> LayerStats:
    """Per-layer sums of one window (each [L]): sum h^2, saturated gate count (sigmoid < 0.01 or
    > 0.99; tanh beyond +-0.99), gates looked at, sum of the retain coefficient, positions x units."""
    rows = []
    for t in traces:
        sig = [t.gates[k] for k in SIGMOID_GATES[spec.cell]]
        tanh = [t.gates[k] for k in TANH_GATES[spec.cell] if k in t.gates]
        saturated = sum((((a < 0.01) | (a > 0.99)).sum() for a in sig), jnp.float32(0.0))
        saturated = saturated + sum(((jnp.abs(a) > 0.99).sum() for a in tanh), jnp.float32(0.0))
        n = t.h.size
        retain = t.retain.sum() if t.retain is not None else jnp.float32(0.0)
        rows.append((jnp.sum(t.h * t.h), saturated, float(n * (len(sig) + len(tanh))), retain, float(n)))
    return LayerStats(*(jnp.stack([jnp.asarray(r[i], jnp.float32) for r in rows]) for i in range(5)))


@dataclasses.dataclass
class Inside:
    """A text seen through a run's stack. Arrays are NumPy, ``[layers, time, hidden]``; position t
    is the state after reading ``tokens[t]``; ``logits`` [time, V] predict ``tokens[t + 1]``."""

    tokens: list[str]
    unknown: list[tuple[int, str]]  # (position, token) of tokens outside the vocabulary, read as <unk>
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
        raise ValueError("inspect needs a text of at least 1 token after preprocessing; give a longer text")
    unknown = [(i, tok) for i, tok in enumerate(tokens) if tok not in run.vocab.token_to_idx]
    if unknown:
        shown = ", ".join(sorted({repr(tok) for _, tok in unknown})[:10])
        logging.warning("inspect: %d of %d tokens are outside the run's vocabulary and read as <unk>: %s",
                        len(unknown), len(tokens), shown)
    ids = jnp.asarray(run.vocab.encode(tokens))[None, :]
    logits, _, traces = _jit_trace(run.model, run.params, ids, run.model.initial_carry(1))
    stack = lambda xs: np.stack([np.asarray(x[:, 0]) for x in xs])  # noqa: E731 - L x [t, 1, h] -> [L, t, h]
    gates = {k: stack([t.gates[k] for t in traces]) for k in traces[0].gates}
    retain = stack([t.retain for t in traces]) if traces[0].retain is not None else None
    c = stack([t.c for t in traces]) if traces[0].c is not None else None
    return Inside(tokens, unknown, stack([t.h for t in traces]), gates, retain, c, np.asarray(logits[0]))


_jit_trace = jax.jit(trace, static_argnums=0)


def autocorrelation_times(x_lth: np.ndarray, threshold: float = 1 / math.e, max_lag: int | None = None) -> np.ndarray:
    """Per unit, the first lag at which the autocorrelation of x [..., t, h] falls below ``threshold``:
    [..., h] float; ``max_lag`` (default t // 4) where it never does within it, NaN for a constant unit.
    The autocorrelation is the usual (biased) estimate, sum_t (x_t - m)(x_{t+k} - m) / sum_t (x_t - m)^2."""
    x = np.asarray(x_lth, np.float64)
    t = x.shape[-2]
    max_lag = max(1, t // 4) if max_lag is None else max_lag
    if not 1 <= max_lag < t:
        raise ValueError(f"max_lag = {max_lag} is not allowed for a text of {t} tokens: give 1 <= max_lag < {t}")
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
    """How fast each layer's state changes: ``per_unit`` [layers, hidden] autocorrelation times (steps;
    NaN for constant units), and per layer their ``median``, ``mean`` and the fraction ``censored``
    (never fell below the threshold within ``max_lag``: their time is at least ``max_lag``)."""

    state: str
    threshold: float
    max_lag: int
    per_unit: np.ndarray
    median: np.ndarray
    mean: np.ndarray
    censored: np.ndarray


def timescales(run: Any, text: str, state: str = "h", threshold: float = 1 / math.e, max_lag: int | None = None
               ) -> Timescales:
    """For each layer, the lag at which each unit's autocorrelation falls below ``threshold`` (1/e),
    while ``run`` reads ``text``, summarised per layer. ``state``: "h" (the layer's output) or "c"
    (the LSTM's cell state)."""
    inside = inspect(run, text)
    if state not in ("h", "c") or (state == "c" and inside.c is None):
        have = "'h' or 'c'" if inside.c is not None else "'h' (only the LSTM has a cell state c)"
        raise ValueError(f"state = {state!r} is not allowed for a {run.config.model.cell} run: give {have}")
    x = inside.h if state == "h" else inside.c
    t = x.shape[1]
    max_lag = max(1, t // 4) if max_lag is None else max_lag
    lags = autocorrelation_times(x, threshold, max_lag)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a layer of only constant units: its summary is NaN
        median, mean = np.nanmedian(lags, axis=-1), np.nanmean(lags, axis=-1)
        censored = np.nanmean(np.where(np.isnan(lags), np.nan, lags >= max_lag), axis=-1)
    return Timescales(state, threshold, max_lag, lags, median, mean, censored)
