"""What minGRU and minLSTM share ("Were RNNs All We Needed?", Feng et al., 2024): gates that read
the input only, so a layer is the linear recurrence h_t = a_t * h_{t-1} + b_t, evaluated for all t
at once with ``jax.lax.associative_scan`` (O(log t) depth). No recurrent weights:
``params = {"w_x": [d, G*h], "b_x": [G*h]}``; no Flax or PyTorch module has them."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array, Slabs, split_gates

Coefficients = Callable[[Slabs], tuple[Array, Array]]  # gate slabs -> (a, b)


def g(x: Array) -> Array:
    """The candidate activation: x + 0.5 for x >= 0, sigmoid(x) below (always > 0)."""
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def linear_scan(a_tbh: Array, b_tbh: Array, h0_bh: Array) -> Array:
    """h_t = a_t * h_{t-1} + b_t for every t at once: ``jax.lax.associative_scan`` over the pairs
    (a, b) composed as (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2); h0 enters the first b.
    In linear space: exact to float32 rounding at any t (docs/performance.md)."""
    b_tbh = b_tbh.at[0].add(a_tbh[0] * h0_bh)
    _, h_tbh = jax.lax.associative_scan(
        lambda l, r: (l[0] * r[0], r[0] * l[1] + r[1]), (a_tbh, b_tbh), axis=0
    )
    return h_tbh


def pointwise(coefficients: Coefficients):
    """The step form (generation, and the autodiff implementation's scan)."""

    def step(xw, hw, carry, activation="tanh"):
        a, b = coefficients(xw)
        h = a * carry + b
        return h, h, ()

    return step


def sequence(coefficients: Coefficients, num_gates: int):
    """The whole-sequence form: xw [t, b, G*h], h0 [b, h] -> (h [t, b, h], last h)."""

    def run(xw_tbg: Array, h0_bh: Array) -> tuple[Array, Array]:
        a_tbh, b_tbh = coefficients(split_gates(xw_tbg, num_gates))
        if xw_tbg.shape[0] == 1:  # one step (generation): the step form, no scan
            h_tbh = a_tbh * h0_bh + b_tbh
        else:
            h_tbh = linear_scan(a_tbh, b_tbh, h0_bh)
        return h_tbh, h_tbh[-1]

    return run


def trace(coefficients: Coefficients, sigmoid_gates: tuple[str, ...]):
    """The gates (sigmoids of their slabs, the candidate excepted) and a as the retain
    coefficient."""

    def inspect(xw, h_tbh, saved, carries, activation):
        return {k: jax.nn.sigmoid(x) for k, x in zip(sigmoid_gates, xw)}, coefficients(xw)[0], None

    return inspect
