"""IndRNN (Li et al., 2018, "Independently Recurrent Neural Network"): each unit recurs on itself,

    h' = phi(x W_x + b_x + u * h),     phi in {tanh, relu} per layer,

with an element-wise recurrent weight u [h] instead of a matrix W_h. carry: h [b, h].
Saves nothing: the backward reads phi' off h'. ``u`` starts in U(0, 1), as in the paper."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnjax.cells.base import ACTIVATION_GRADS, ACTIVATIONS, Cell, Recurrence, uniform

# hw = u * h: its transpose is the same product
DIAGONAL = Recurrence(apply=lambda p, h: h * p["u"], transpose=lambda p: lambda dhw: dhw * p["u"])


def init(key, d, h):
    k = jax.random.split(key, 3)
    return {
        "w_x": uniform(k[0], (d, h), h),
        "b_x": uniform(k[1], (h,), h),
        "u": jax.random.uniform(k[2], (h,), jnp.float32, 0.0, 1.0),
    }


def pointwise(xw, hw, carry, activation="tanh"):
    h = ACTIVATIONS[activation](xw[0] + hw[0])
    return h, h, ()


def backward(activation, dh, h_prev, h, saved):
    return jnp.zeros_like(dh), dh * ACTIVATION_GRADS[activation](h), None


def trace(xw, h_tbh, saved, carries, activation):
    return ({"h": h_tbh} if activation == "tanh" else {}), None, None


CELL = Cell(
    name="indrnn",
    gates=("h",),
    init=init,
    pointwise=pointwise,
    recurrence=DIAGONAL,
    backward=backward,
    trace=trace,
    tanh_gates=("h",),
    uses_activation=True,
)
