"""Every layer's hidden state and gates over a sequence, as the model computes them (jittable).

:func:`trace` runs the stack loop (:func:`rnnjax.network.stack.run`) with each cell's own equations
and returns ``DeepRNN.apply``'s logits and carry plus a :class:`LayerTrace` per layer (the gates
each cell shows are its ``Cell.trace``); :func:`layer_stats` reduces traces to per-layer sums on the
device, which the validation pass computes every epoch. :mod:`rnnjax.use.inside` builds on these.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax.cells import CELLS
from rnnjax.cells.base import Cell, split_gates
from rnnjax.network import stack
from rnnjax.network.impls import flax_model, native
from rnnjax.network.model import Carry, DeepRNN, Impl, Params
from rnnjax.training.metrics import LayerStats

Array = jax.Array


class LayerTrace(NamedTuple):
    """One layer over time: h [t, b, h]; gate activations by name, each [t, b, h]; retain [t, b, h]
    (None for the vanilla RNN); c [t, b, h] (the LSTM's cell state, else None)."""

    h: Array
    gates: dict[str, Array]
    retain: Array | None
    c: Array | None


def _layer(
    spec: DeepRNN, cell: Cell, p: Params, l: int, x: Array, carry: Any
) -> tuple[Array, Any, LayerTrace]:
    """One layer as ``spec.impl`` computes it, with its gates: the native kernel's forward and its
    saves under NATIVE, the forward loop of :mod:`rnnjax.network.impls.fused` keeping the saves and
    carries, or the cell's whole-sequence form (the autodiff implementation's scan of steps under
    AUTODIFF)."""
    activation = spec.layer_activation(l)
    xw_tbg = stack.input_projection(l, p, x)
    saved = carries = None
    if spec.impl == Impl.NATIVE and cell.from_native is not None and native.available():
        h_tbh, carry, slabs = native.forward_with_saves(spec.cell, activation, p, xw_tbg, carry)
        saved, carries = cell.from_native(slabs, h_tbh)
    elif cell.sequence is not None and spec.impl != Impl.AUTODIFF:
        h_tbh, carry = cell.sequence(xw_tbg, carry)
    elif cell.recurrence is None:
        carry, h_tbh = jax.lax.scan(
            lambda k, xw_bg: cell.recur(p, k, xw_bg, activation), carry, xw_tbg
        )
    else:
        xw_tbh = split_gates(xw_tbg, cell.num_gates)

        def step(carry, xw_bh):
            hw_bh = split_gates(cell.recurrence.apply(p, cell.hidden(carry)), cell.num_gates)
            carry, h_bh, saved = cell.pointwise(xw_bh, hw_bh, carry, activation)
            return carry, (h_bh, carry, saved)

        carry, (h_tbh, carries, saved) = jax.lax.scan(step, carry, xw_tbh)
    gates, retain, c = cell.trace(
        split_gates(xw_tbg, cell.num_gates), h_tbh, saved, carries, activation
    )
    return h_tbh, carry, LayerTrace(h_tbh, gates, retain, c)


def trace(
    spec: DeepRNN, params: Params, tokens: Array, carry: Carry
) -> tuple[Array, Carry, list[LayerTrace]]:
    """tokens [b, t] -> (logits [b, t, V], new carry, one :class:`LayerTrace` per layer); no
    dropout."""
    if spec.impl == Impl.FLAX:
        params = flax_model.from_flax(params, spec)
    cell = CELLS[spec.cell]
    layer = lambda l, p, x, c: _layer(spec, cell, p, l, x, c)  # noqa: E731
    h_tbh, new_carry, traces = stack.run(spec, layer, params["layers"], tokens.T, carry, None)
    return stack.logits(params, h_tbh), new_carry, traces


def layer_stats(spec: DeepRNN, traces: list[LayerTrace]) -> LayerStats:
    """Per-layer sums of one window (each [L]): sum h^2, saturated gate count (sigmoid < 0.01 or >
    0.99; tanh beyond +-0.99), gates looked at, sum of the retain coefficient, positions x units."""
    cell = CELLS[spec.cell]
    rows = []
    for t in traces:
        sig = [t.gates[k] for k in cell.sigmoid_gates]
        tanh = [t.gates[k] for k in cell.tanh_gates if k in t.gates]
        saturated = sum((((a < 0.01) | (a > 0.99)).sum() for a in sig), jnp.float32(0.0))
        saturated = saturated + sum(((jnp.abs(a) > 0.99).sum() for a in tanh), jnp.float32(0.0))
        n = t.h.size
        retain = t.retain.sum() if t.retain is not None else jnp.float32(0.0)
        rows.append(
            (jnp.sum(t.h * t.h), saturated, float(n * (len(sig) + len(tanh))), retain, float(n))
        )
    return LayerStats(
        *(jnp.stack([jnp.asarray(r[i], jnp.float32) for r in rows]) for i in range(5))
    )
