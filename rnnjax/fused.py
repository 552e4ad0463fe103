"""One recurrent layer over a whole sequence, with a hand-written backward pass.

``scan_layer(cell, activation, w_h, b_h, xw, carry)`` computes what
``jax.lax.scan(cell.recur, carry, xw)`` computes, for the gates' input halves
``xw = x W_x + b_x`` ([t, b, G*h]), and returns (outputs h [t, b, h], final
carry). Its ``jax.custom_vjp`` backward does what cuDNN does rather than what
autodiff of ``lax.scan`` does:

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

from rnnjax.cells import CELLS

Array = jax.Array


def _split(a: Array, n: int) -> tuple[Array, ...]:
    return tuple(jnp.split(a, n, axis=-1))


def _act(activation: str, x: Array) -> Array:
    return jnp.tanh(x) if activation == "tanh" else jax.nn.relu(x)


def _shift(first: Array, seq: Array) -> Array:
    """[first, seq[0], ..., seq[t-2]]: the value each step started from."""
    return jnp.concatenate([first[None], seq[:-1]], axis=0)


# ---- forward steps: return (new carry, per-step outputs) -------------------------------------
# ``save`` = False keeps only h (plain evaluation); True also keeps what the backward needs.


def _lstm_fwd_step(w_h, b_h, save, carry, x):
    c, h = carry
    hw = _split(h @ w_h + b_h, 4)
    i = jax.nn.sigmoid(x[0] + hw[0])
    f = jax.nn.sigmoid(x[1] + hw[1])
    g = jnp.tanh(x[2] + hw[2])
    o = jax.nn.sigmoid(x[3] + hw[3])
    c_new = f * c + i * g
    h = o * jnp.tanh(c_new)
    return (c_new, h), ((h, c, i, f, g, o) if save else h)


def _gru_fwd_step(w_h, b_h, save, h, x):
    hr, hz, hn = _split(h @ w_h + b_h, 3)
    r = jax.nn.sigmoid(x[0] + hr)
    z = jax.nn.sigmoid(x[1] + hz)
    n = jnp.tanh(x[2] + r * hn)
    h_new = (1.0 - z) * n + z * h
    return h_new, ((h_new, r, z, n, hn) if save else h_new)


def _rnn_fwd_step(w_h, b_h, activation, save, h, x):
    h = _act(activation, x[0] + h @ w_h + b_h)
    return h, h


def _forward(cell, activation, w_h, b_h, xw, carry, save):
    xw = tuple(jnp.split(xw, CELLS[cell].num_gates, axis=-1))  # G x [t, b, h]: whole slabs per step
    if cell == "lstm":
        step = functools.partial(_lstm_fwd_step, w_h, b_h, save)
    elif cell == "gru":
        step = functools.partial(_gru_fwd_step, w_h, b_h, save)
    else:
        step = functools.partial(_rnn_fwd_step, w_h, b_h, activation, save)
    return jax.lax.scan(step, carry, xw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def scan_layer(cell: str, activation: str, w_h: Array, b_h: Array, xw: Array, carry: Any):
    """One layer over time. xw: [t, b, G*h] (x W_x + b_x, gates fused in PyTorch order);
    carry: h [b, h] (rnn, gru) or (c, h) (lstm). Returns (h [t, b, h], final carry)."""
    carry, hs = _forward(cell, activation, w_h, b_h, xw, carry, save=False)
    return hs, carry


def _scan_layer_fwd(cell, activation, w_h, b_h, xw, carry):
    final, saved = _forward(cell, activation, w_h, b_h, xw, carry, save=True)
    hs = saved[0] if cell != "rnn" else saved
    return (hs, final), (w_h, carry, saved)


def _scan_layer_bwd(cell, activation, res, cot):
    w_h, carry0, saved = res
    dhs, dfinal = cot
    w_ht = w_h.T
    if cell == "lstm":
        hs, c_prev, i, f, g, o = saved
        h_prev = _shift(carry0[1], hs)

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

        (dc0, dh0), dxw = jax.lax.scan(step, dfinal, (dhs, c_prev, i, f, g, o), reverse=True)
        dcarry0 = (dc0, dh0)
        dhw = dxw
    elif cell == "gru":
        hs, r, z, n, hn = saved
        h_prev = _shift(carry0, hs)

        def step(dh, inp):
            dh_t, hp, r, z, n, hn = inp
            dh = dh + dh_t
            dn = dh * (1.0 - z) * (1.0 - n * n)
            dz = dh * (hp - n) * z * (1.0 - z)
            dr = dn * hn * r * (1.0 - r)
            dhn = dn * r
            dhw = jnp.concatenate([dr, dz, dhn], axis=-1)
            return dh * z + dhw @ w_ht, (dhw, dn)

        dh0, (dhw, dn) = jax.lax.scan(step, dfinal, (dhs, h_prev, r, z, n, hn), reverse=True)
        dcarry0 = dh0
        dxw = jnp.concatenate([dhw[..., : 2 * dn.shape[-1]], dn], axis=-1)
    else:
        hs = saved
        h_prev = _shift(carry0, hs)
        deriv = (lambda h: 1.0 - h * h) if activation == "tanh" else (lambda h: (h > 0).astype(h.dtype))

        def step(dh, inp):
            dh_t, h = inp
            dpre = (dh + dh_t) * deriv(h)
            return dpre @ w_ht, dpre

        dh0, dpre = jax.lax.scan(step, dfinal, (dhs, hs), reverse=True)
        dcarry0 = dh0
        dxw = dhw = dpre
    # [t, b, G*h] -> weight gradients as one matmul / one sum over all t*b rows
    dw_h = jnp.einsum("tbh,tbg->hg", h_prev, dhw)
    db_h = dhw.sum(axis=(0, 1))
    return dw_h, db_h, dxw, dcarry0


scan_layer.defvjp(_scan_layer_fwd, _scan_layer_bwd)
