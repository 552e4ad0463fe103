"""Vanilla RNN (Elman):  h' = phi(x W_x + b_x + h W_h + b_h),  phi in {tanh, relu} per layer.

carry: h [b, h]; one gate slab. Saves nothing: the backward reads phi' off h'."""

from __future__ import annotations

import jax.numpy as jnp

from rnnjax.cells.base import ACTIVATION_GRADS, ACTIVATIONS, Cell, FlaxMapping, uniform_init


def pointwise(xw, hw, carry, activation="tanh"):
    h = ACTIVATIONS[activation](xw[0] + hw[0])
    return h, h, ()


def backward(activation, dh, h_prev, h, saved):
    dpre = dh * ACTIVATION_GRADS[activation](h)
    return jnp.zeros_like(dh), dpre, None


def trace(xw, h_tbh, saved, carries, activation):
    return ({"h": h_tbh} if activation == "tanh" else {}), None, None


def _flax_module(hidden_size, activation):
    import flax.linen as nn

    return nn.SimpleCell(hidden_size, activation_fn=ACTIVATIONS[activation])


def _to_flax(p):
    return {"i": {"kernel": p["w_x"], "bias": p["b_x"] + p["b_h"]}, "h": {"kernel": p["w_h"]}}


def _from_flax(f, hidden_size):
    import jax.numpy as jnp

    return {
        "w_x": f["i"]["kernel"],
        "w_h": f["h"]["kernel"],
        "b_x": f["i"]["bias"],
        "b_h": jnp.zeros(hidden_size),
    }


CELL = Cell(
    name="rnn",
    gates=("h",),
    init=lambda key, d, h: uniform_init(key, d, h, 1),
    pointwise=pointwise,
    backward=backward,
    trace=trace,
    tanh_gates=("h",),
    uses_activation=True,
    flax=FlaxMapping(_flax_module, _to_flax, _from_flax),
    torch="RNN",
    native="rnn",
    from_native=lambda s, h: ((), None),  # trace reads h only
)
