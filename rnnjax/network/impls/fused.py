"""One recurrent layer over a whole sequence, with a hand-written backward pass (``impl="rnnjax"``).

``scan_layer(cell, activation, params, xw_tbg, carry)`` computes what ``jax.lax.scan`` over
``Cell.recur`` computes, for the gates' input halves xw = x W_x + b_x, and returns (h_tbh, final
carry). The forward loop runs the cell's own equations and saves what its ``backward`` step
needs; the backward loop runs that step and the recurrence's transpose (one dGates @ W_h^T per
step), and the recurrent weights' gradients are one large matmul over all steps after the loop.
docs/implementation.md explains why this beats autodiff of ``lax.scan`` on CPU.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells import CELLS, check_supported
from rnnjax.cells.base import Cell, Params, split_gates
from rnnjax.config.model_fields import Impl

Array = jax.Array


def _recurrent_params(params: Params) -> Params:
    """The layer's params without the input projection (hoisted out of the loop by the caller)."""
    return {k: v for k, v in params.items() if k not in ("w_x", "b_x")}


def _shift(first: Array, seq: Array) -> Array:
    """[first, seq[0], ..., seq[t-2]]: the value each step started from."""
    return jnp.concatenate([first[None], seq[:-1]], axis=0)


def _forward(cell: Cell, activation: str, rp: Params, xw_tbg: Array, carry: Any, save: bool):
    """The forward loop: (final carry, h_tbh) or, with ``save``, (final carry, (h_tbh, *saved))."""
    xw_tbh = split_gates(
        xw_tbg, cell.num_gates
    )  # G x [t, b, h]: whole slabs per step (fast on CPU)

    def step(carry, xw_bh):
        hw_bh = split_gates(cell.recurrence.apply(rp, cell.hidden(carry)), cell.num_gates)
        carry, h_bh, saved = cell.pointwise(xw_bh, hw_bh, carry, activation)
        return carry, ((h_bh, *saved) if save else h_bh)

    return jax.lax.scan(step, carry, xw_tbh)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _scan(name: str, activation: str, rp: Params, xw_tbg: Array, carry: Any):
    carry, h_tbh = _forward(CELLS[name], activation, rp, xw_tbg, carry, save=False)
    return h_tbh, carry


def _scan_fwd(name, activation, rp, xw_tbg, carry):
    final, saved = _forward(CELLS[name], activation, rp, xw_tbg, carry, save=True)
    return (saved[0], final), (rp, carry, saved)


def _scan_bwd(name, activation, res, cot):
    cell = CELLS[name]
    rp, carry0, (h_tbh, *saved) = res
    dh_tbh, dfinal = cot
    h_prev_tbh = _shift(cell.hidden(carry0), h_tbh)
    recurrent_t = cell.recurrence.transpose(rp)  # dhw [b, G*h] -> dh [b, h]
    hidden_t = jax.linear_transpose(cell.hidden, carry0)  # dh [b, h] -> a carry-shaped cotangent

    def add_h(dcarry, dh):
        return jax.tree_util.tree_map(jnp.add, dcarry, hidden_t(dh)[0])

    def step(dcarry, inp):
        dh_t, h_prev, h, *saved_t = inp
        direct, dhw, dxw = cell.backward(activation, add_h(dcarry, dh_t), h_prev, h, tuple(saved_t))
        return add_h(direct, recurrent_t(dhw)), ((dhw,) if dxw is None else (dhw, dxw))

    dcarry0, outs = jax.lax.scan(step, dfinal, (dh_tbh, h_prev_tbh, h_tbh, *saved), reverse=True)
    dhw_tbg, dxw_tbg = outs[0], outs[-1]  # one array when the cell's dxw is its dhw
    # the recurrent weights' gradients: one matmul / one sum over all t*b rows
    if cell.recurrence.grads is not None:
        drp = cell.recurrence.grads(rp, h_prev_tbh, dhw_tbg)
    else:
        _, vjp = jax.vjp(lambda p: cell.recurrence.apply(p, h_prev_tbh), rp)
        (drp,) = vjp(dhw_tbg)
    return drp, dxw_tbg, dcarry0


_scan.defvjp(_scan_fwd, _scan_bwd)


def scan_layer(
    cell: str, activation: str, params: Params, xw_tbg: Array, carry: Any
) -> tuple[Array, Any]:
    """One layer over time. xw_tbg [t, b, G*h]: x W_x + b_x (gates fused, the cell's order);
    ``params``: the layer's params (w_x and b_x are not read); carry: the cell's carry.
    Returns (h_tbh [t, b, h], final carry). A cell with a whole-sequence form runs it (autodiff
    through it is already cheap); one with neither that nor a backward step is refused."""
    check_supported(Impl.FUSED, cell)  # never a silent fallback to another cell's backward
    c = CELLS[cell]
    if c.sequence is not None:
        return c.sequence(xw_tbg, carry)
    return _scan(cell, activation, _recurrent_params(params), xw_tbg, carry)
