"""GRU (PyTorch/Flax form), gates [r, z, n]:

    r  = sigmoid(x W_xr + b_xr + h W_hr + b_hr)
    z  = sigmoid(x W_xz + b_xz + h W_hz + b_hz)
    n  = tanh(x W_xn + b_xn + r * (h W_hn + b_hn))
    h' = (1 - z) * n + z * h

carry: h [b, h]. Saves (r, z, n, h W_hn + b_hn)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Cell, FlaxMapping, uniform_init


def pointwise(xw, hw, carry, activation="tanh"):
    r = jax.nn.sigmoid(xw[0] + hw[0])
    z = jax.nn.sigmoid(xw[1] + hw[1])
    n = jnp.tanh(xw[2] + r * hw[2])
    h = (1.0 - z) * n + z * carry
    return h, h, (r, z, n, hw[2])


def backward(activation, dh, h_prev, h, saved):
    r, z, n, hn = saved
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dz = dh * (h_prev - n) * z * (1.0 - z)
    dr = dn * hn * r * (1.0 - r)
    dhw = jnp.concatenate([dr, dz, dn * r], axis=-1)
    dxw = jnp.concatenate([dr, dz, dn], axis=-1)  # n's input half is outside r * (...)
    return dh * z, dhw, dxw


def trace(xw, h_tbh, saved, carries, activation):
    r, z, n, _ = saved
    return {"r": r, "z": z, "n": n}, z, None


def _flax_module(hidden_size, activation):
    import flax.linen as nn

    return nn.GRUCell(hidden_size)


def _to_flax(p):  # Flax keeps one bias per gate; n's recurrent bias sits inside r * (h W_hn + b_hn)
    wx, wh = jnp.split(p["w_x"], 3, -1), jnp.split(p["w_h"], 3, -1)
    bx, bh = jnp.split(p["b_x"], 3, -1), jnp.split(p["b_h"], 3, -1)
    return {
        "ir": {"kernel": wx[0], "bias": bx[0] + bh[0]},
        "iz": {"kernel": wx[1], "bias": bx[1] + bh[1]},
        "in": {"kernel": wx[2], "bias": bx[2]},
        "hr": {"kernel": wh[0]},
        "hz": {"kernel": wh[1]},
        "hn": {"kernel": wh[2], "bias": bh[2]},
    }


def _from_flax(f, hidden_size):
    cat = lambda key, names: jnp.concatenate([f[n][key] for n in names], -1)  # noqa: E731
    return {
        "w_x": cat("kernel", ("ir", "iz", "in")),
        "w_h": cat("kernel", ("hr", "hz", "hn")),
        "b_x": cat("bias", ("ir", "iz", "in")),
        "b_h": jnp.concatenate([jnp.zeros(2 * hidden_size), f["hn"]["bias"]]),
    }


CELL = Cell(
    name="gru",
    gates=("r", "z", "n"),
    init=lambda key, d, h: uniform_init(key, d, h, 3),
    pointwise=pointwise,
    backward=backward,
    trace=trace,
    sigmoid_gates=("r", "z"),
    tanh_gates=("n",),
    retains=True,
    flax=FlaxMapping(_flax_module, _to_flax, _from_flax),
    torch="GRU",
    native="gru",
    from_native=lambda s, h: (tuple(s), None),  # saves r, z, n, h W_hn + b_hn
)
