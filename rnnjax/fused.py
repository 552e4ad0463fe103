"""One recurrent layer over a whole sequence, with a hand-written backward pass.

``scan_layer(cell, activation, w_h, b_h, xw_tbg, carry)`` computes what
``jax.lax.scan(cell.recur, carry, xw_tbg)`` computes, for the gates' input halves
``xw = x W_x + b_x``, and returns (outputs h_tbh, final carry); shape suffixes as in
:mod:`rnnjax.model`. The forward loop runs the cell's own equations
(``cells.*.pointwise``). Its ``jax.custom_vjp`` backward does what cuDNN does rather than
what autodiff of ``lax.scan`` does:

* the forward loop saves the gate activations (and each step's incoming c), so the
  backward loop needs no recomputation but tanh(c_t);
* the backward loop does pointwise derivatives and one matmul, dGates @ W_h^T, per step;
* the weight gradients dW_h = sum_t H_{t-1}^T dGates_t and db_h are single large
  matmuls/sums over all steps after the loop (autodiff would do one small
  matmul per step inside it); dW_x, db_x and the gradient of the layer below
  follow by autodiff of the caller's hoisted projection, also as large matmuls.

Layout matters on XLA:CPU: every array a loop reads per step is a whole [b, h]
slab of a [t, b, h] array (xw is split per gate before the loop), because a per-step
dynamic slice followed by a column slice inside one fusion compiles to slow code
(measured 3-5x slower pointwise work). Tests check values and gradients against
``jax.lax.scan`` over ``cells.*.recur`` with autodiff.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells import CELLS, split_gates

Array = jax.Array


def _shift(first: Array, seq: Array) -> Array:
    """[first, seq[0], ..., seq[t-2]]: the value each step started from."""
    return jnp.concatenate([first[None], seq[:-1]], axis=0)


def _forward(cell_name, activation, w_h, b_h, xw_tbg, carry, save):
    """The forward loop: (final carry, h_tbh) or, with ``save``, (final carry, (h_tbh, *saved)),
    ``saved`` being what ``cells.*.pointwise`` keeps for the backward, each [t, b, h]."""
    cell = CELLS[cell_name]
    xw_tbh = split_gates(xw_tbg, cell.num_gates)  # G x [t, b, h]: whole slabs per step

    def step(carry, xw_bh):
        hw_bh = split_gates(cell.hidden(carry) @ w_h + b_h, cell.num_gates)
        carry, h_bh, saved = cell.pointwise(xw_bh, hw_bh, carry, activation)
        return carry, ((h_bh, *saved) if save else h_bh)

    return jax.lax.scan(step, carry, xw_tbh)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def scan_layer(cell: str, activation: str, w_h: Array, b_h: Array, xw_tbg: Array, carry: Any):
    """One layer over time. xw_tbg: x W_x + b_x (gates fused in PyTorch order);
    carry: h [b, h] (rnn, gru) or (c, h) (lstm). Returns (h_tbh, final carry)."""
    carry, h_tbh = _forward(cell, activation, w_h, b_h, xw_tbg, carry, save=False)
    return h_tbh, carry


def _scan_layer_fwd(cell, activation, w_h, b_h, xw_tbg, carry):
    final, saved = _forward(cell, activation, w_h, b_h, xw_tbg, carry, save=True)
    return (saved[0], final), (w_h, carry, saved)


def _scan_layer_bwd(cell, activation, res, cot):
    w_h, carry0, saved = res
    dh_tbh, dfinal = cot
    w_ht = w_h.T
    if cell == "lstm":
        h_tbh, c_prev, i, f, g, o = saved
        h_prev_tbh = _shift(carry0[1], h_tbh)

        def step(dcarry, inp):
            dc, dh = dcarry
            dh_t, cp, i, f, g, o = inp
            dh = dh + dh_t
            tc = jnp.tanh(f * cp + i * g)
            dc = dc + dh * o * (1.0 - tc * tc)
            di = dc * g * i * (1.0 - i)
            df = dc * cp * f * (1.0 - f)
            dg = dc * i * (1.0 - g * g)
            do = dh * tc * o * (1.0 - o)
            dgates = jnp.concatenate([di, df, dg, do], axis=-1)
            return (dc * f, dgates @ w_ht), dgates

        (dc0, dh0), dxw_tbg = jax.lax.scan(step, dfinal, (dh_tbh, c_prev, i, f, g, o), reverse=True)
        dcarry0 = (dc0, dh0)
        dhw_tbg = dxw_tbg
    elif cell == "gru":
        h_tbh, r, z, n, hn = saved
        h_prev_tbh = _shift(carry0, h_tbh)

        def step(dh, inp):
            dh_t, hp, r, z, n, hn = inp
            dh = dh + dh_t
            dn = dh * (1.0 - z) * (1.0 - n * n)
            dz = dh * (hp - n) * z * (1.0 - z)
            dr = dn * hn * r * (1.0 - r)
            dhn = dn * r
            dhw = jnp.concatenate([dr, dz, dhn], axis=-1)
            return dh * z + dhw @ w_ht, (dhw, dn)

        dh0, (dhw_tbg, dn_tbh) = jax.lax.scan(step, dfinal, (dh_tbh, h_prev_tbh, r, z, n, hn), reverse=True)
        dcarry0 = dh0
        dxw_tbg = jnp.concatenate([dhw_tbg[..., : 2 * dn_tbh.shape[-1]], dn_tbh], axis=-1)
    else:
        (h_tbh,) = saved
        h_prev_tbh = _shift(carry0, h_tbh)
        deriv = (lambda h: 1.0 - h * h) if activation == "tanh" else (lambda h: (h > 0).astype(h.dtype))

        def step(dh, inp):
            dh_t, h = inp
            dpre = (dh + dh_t) * deriv(h)
            return dpre @ w_ht, dpre

        dh0, dpre_tbg = jax.lax.scan(step, dfinal, (dh_tbh, h_tbh), reverse=True)
        dcarry0 = dh0
        dxw_tbg = dhw_tbg = dpre_tbg
    # [t, b, G*h] -> weight gradients as one matmul / one sum over all t*b rows
    dw_h = jnp.einsum("tbh,tbg->hg", h_prev_tbh, dhw_tbg)
    db_h = dhw_tbg.sum(axis=(0, 1))
    return dw_h, db_h, dxw_tbg, dcarry0


scan_layer.defvjp(_scan_layer_fwd, _scan_layer_bwd)
