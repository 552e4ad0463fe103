"""minGRU as h' = a * h + b (:mod:`rnnjax.cells.linear`), slabs (z, h~):

    z = sigmoid(x W_z + b_z)      h~ = g(x W_h + b_h)      h' = (1 - z) * h + z * h~

so a = 1 - z = sigmoid(-(x W_z + b_z)), b = z * h~."""

from __future__ import annotations

import jax

from rnnjax.cells import linear
from rnnjax.cells.base import Cell, uniform_init


def coefficients(xw):
    return jax.nn.sigmoid(-xw[0]), jax.nn.sigmoid(xw[0]) * linear.g(xw[1])


CELL = Cell(
    name="mingru",
    gates=("z", "h"),
    init=lambda key, d, h: uniform_init(key, d, h, 2, recurrent=False),
    pointwise=linear.pointwise(coefficients),
    sequence=linear.sequence(coefficients, 2),
    trace=linear.trace(coefficients, ("z",)),
    recurrence=None,
    sigmoid_gates=("z",),
    retains=True,
)
