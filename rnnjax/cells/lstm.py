"""LSTM (PyTorch/Flax form), gates [i, f, g, o]:

    i = sigmoid(x W_xi + h W_hi + b_i)     f = sigmoid(x W_xf + h W_hf + b_f)
    g = tanh(x W_xg + h W_hg + b_g)        o = sigmoid(x W_xo + h W_ho + b_o)
    c' = f * c + i * g                     h' = o * tanh(c')

with b = b_x + b_h. carry: (c [b, h], h [b, h]) (Flax's order). Saves (c, i, f, g, o)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Cell, FlaxMapping, uniform_init, zeros_carry

GATES = ("i", "f", "g", "o")


def pointwise(xw, hw, carry, activation="tanh"):
    c, _ = carry
    i = jax.nn.sigmoid(xw[0] + hw[0])
    f = jax.nn.sigmoid(xw[1] + hw[1])
    g = jnp.tanh(xw[2] + hw[2])
    o = jax.nn.sigmoid(xw[3] + hw[3])
    c_new = f * c + i * g
    h = o * jnp.tanh(c_new)
    return (c_new, h), h, (c, i, f, g, o)


def backward(activation, dcarry, h_prev, h, saved):
    dc, dh = dcarry
    cp, i, f, g, o = saved
    tc = jnp.tanh(f * cp + i * g)
    dc = dc + dh * o * (1.0 - tc * tc)
    di = dc * g * i * (1.0 - i)
    df = dc * cp * f * (1.0 - f)
    dg = dc * i * (1.0 - g * g)
    do = dh * tc * o * (1.0 - o)
    return (dc * f, jnp.zeros_like(dh)), jnp.concatenate([di, df, dg, do], axis=-1), None


def trace(xw, h_tbh, saved, carries, activation):
    _, i, f, g, o = saved
    return {"i": i, "f": f, "g": g, "o": o}, f, carries[0]


def _flax_module(hidden_size, activation):
    import flax.linen as nn

    return nn.OptimizedLSTMCell(hidden_size)  # parameters compatible with nn.LSTMCell


def _to_flax(p):  # Flax keeps one bias per gate, on the recurrent side
    wx, wh = jnp.split(p["w_x"], 4, -1), jnp.split(p["w_h"], 4, -1)
    bx, bh = jnp.split(p["b_x"], 4, -1), jnp.split(p["b_h"], 4, -1)
    return {f"i{g}": {"kernel": wx[k]} for k, g in enumerate(GATES)} | {
        f"h{g}": {"kernel": wh[k], "bias": bx[k] + bh[k]} for k, g in enumerate(GATES)
    }


def _from_flax(f, hidden_size):
    cat = lambda names, key: jnp.concatenate([f[n][key] for n in names], -1)  # noqa: E731
    return {
        "w_x": cat([f"i{g}" for g in GATES], "kernel"),
        "w_h": cat([f"h{g}" for g in GATES], "kernel"),
        "b_x": jnp.zeros(4 * hidden_size),
        "b_h": cat([f"h{g}" for g in GATES], "bias"),
    }


CELL = Cell(
    name="lstm",
    gates=GATES,
    init=lambda key, d, h: uniform_init(key, d, h, 4),
    pointwise=pointwise,
    backward=backward,
    trace=trace,
    initial_carry=lambda b, h: (zeros_carry(b, h), zeros_carry(b, h)),
    hidden=lambda carry: carry[1],
    sigmoid_gates=("i", "f", "o"),
    tanh_gates=("g",),
    retains=True,
    flax=FlaxMapping(_flax_module, _to_flax, _from_flax),
    torch="LSTM",
    cudnn=True,
    native="lstm",
    from_native=lambda s, h: ((None, *s[:4]), (s[4], h)),  # saves i, f, g, o, c_t
)
