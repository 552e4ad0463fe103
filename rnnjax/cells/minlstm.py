"""minLSTM as h' = a * h + b (:mod:`rnnjax.cells.linear`), slabs (f, i, h~):

    f = sigmoid(x W_f + b_f)   i = sigmoid(x W_i + b_i)   h~ = g(x W_h + b_h)
    f' = f / (f + i)           i' = i / (f + i)           h' = f' * h + i' * h~

so a = f', b = i' * h~. f / (f + i) = sigmoid(log f - log i) with log sigmoid(k) = -softplus(-k):
no division, no overflow."""

from __future__ import annotations

import jax

from rnnjax.cells import linear
from rnnjax.cells.base import Cell, uniform_init


def coefficients(xw):
    d = jax.nn.softplus(-xw[1]) - jax.nn.softplus(-xw[0])  # log f - log i
    return jax.nn.sigmoid(d), jax.nn.sigmoid(-d) * linear.g(xw[2])


CELL = Cell(
    name="minlstm",
    gates=("f", "i", "h"),
    init=lambda key, d, h: uniform_init(key, d, h, 3, recurrent=False),
    pointwise=linear.pointwise(coefficients),
    sequence=linear.sequence(coefficients, 3),
    trace=linear.trace(coefficients, ("f", "i")),
    recurrence=None,
    sigmoid_gates=("f", "i"),
    retains=True,
)
