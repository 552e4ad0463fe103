"""What a cell is: :class:`Cell`, and the pieces cells share.

Notation: b = batch, d = input size, h = hidden size, t = time, G = gates x hidden (the fused
gate axis). Weights are stored PyTorch-style, all gates of one input fused:
``{"w_x": [d, G*h], "b_x": [G*h]}`` (the input projection, hoisted out of the time loop) plus the
recurrent params the cell's :class:`Recurrence` reads (``w_h`` [h, G*h] and ``b_h`` [G*h] for a
matmul recurrence; none for minGRU/minLSTM).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict[str, Array]
Slabs = tuple[Array, ...]  # one [..., h] array per gate, in the cell's gate order

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"tanh": jnp.tanh, "relu": jax.nn.relu}
# phi'(z) written in terms of y = phi(z): what a backward step reads off a saved output
ACTIVATION_GRADS: dict[str, Callable[[Array], Array]] = {
    "tanh": lambda y: 1.0 - y * y,
    "relu": lambda y: (y > 0).astype(y.dtype),
}


def split_gates(a: Array, num_gates: int) -> Slabs:
    """[..., G*h] -> G x [..., h], in the cell's gate order."""
    return tuple(jnp.split(a, num_gates, axis=-1))


def project_input(params: Params, x: Array) -> Array:
    """Input half of every gate: ``x @ w_x + b_x``; x: [..., d] -> [..., G*h]."""
    return x @ params["w_x"] + params["b_x"]


def uniform(key: Array, shape: tuple[int, ...], hidden_size: int) -> Array:
    """PyTorch's init: U(-1/sqrt(h), 1/sqrt(h))."""
    bound = 1.0 / math.sqrt(hidden_size)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def uniform_init(key: Array, d: int, h: int, num_gates: int, recurrent: bool = True) -> Params:
    """Every weight and bias ~ U(-1/sqrt(h), 1/sqrt(h)); ``recurrent=False``: no w_h, b_h."""
    k = jax.random.split(key, 4)
    g = num_gates * h
    p = {
        "w_x": uniform(k[0], (d, g), h),
        "w_h": uniform(k[1], (h, g), h),
        "b_x": uniform(k[2], (g,), h),
        "b_h": uniform(k[3], (g,), h),
    }
    return p if recurrent else {"w_x": p["w_x"], "b_x": p["b_x"]}


def zeros_carry(batch_size: int, hidden_size: int) -> Array:
    """An all-zero h [b, h]."""
    return jnp.zeros((batch_size, hidden_size), jnp.float32)


def same(h: Array) -> Array:
    return h


@dataclasses.dataclass(frozen=True, eq=False)
class Recurrence:
    """How h_{t-1} enters the gates: ``apply(params, h [..., h]) -> hw [..., G*h]`` (affine in h),
    and ``transpose(params)`` -> a function dhw [b, G*h] -> dh [b, h] (its linear part, transposed;
    built once, outside the backward loop). The weight gradients over all steps at once are
    ``grads(params, h_prev_tbh, dhw_tbg)``, or (None) autodiff of ``apply`` over all steps."""

    apply: Callable[[Params, Array], Array]
    transpose: Callable[[Params], Callable[[Array], Array]]
    grads: Callable[[Params, Array, Array], Params] | None = None


def _matmul_transpose(p: Params) -> Callable[[Array], Array]:
    w_ht = p["w_h"].T
    return lambda dhw: dhw @ w_ht


def _matmul_grads(p: Params, h_prev_tbh: Array, dhw_tbg: Array) -> Params:
    """dW_h = sum_t H_{t-1}^T dGates_t as one matmul over all t*b rows; db_h a sum."""
    return {"w_h": jnp.einsum("tbh,tbg->hg", h_prev_tbh, dhw_tbg), "b_h": dhw_tbg.sum(axis=(0, 1))}


MATMUL = Recurrence(
    apply=lambda p, h: h @ p["w_h"] + p["b_h"], transpose=_matmul_transpose, grads=_matmul_grads
)
"""hw = h W_h + b_h: RNN, GRU and LSTM."""


@dataclasses.dataclass(frozen=True, eq=False)
class FlaxMapping:
    """The Flax cell that computes the same layer, and exact weight conversion both ways:
    ``module(hidden_size, activation)`` -> a ``flax.linen`` cell for ``nn.RNN``; ``to_flax(layer
    params)`` -> its params; ``from_flax(its params, hidden_size)`` -> layer params."""

    module: Callable[[int, str], Any]
    to_flax: Callable[[Params], dict]
    from_flax: Callable[[dict, int], Params]


@dataclasses.dataclass(frozen=True, eq=False)
class Cell:
    """A recurrent cell, as data and pure functions (hashable by identity: safe to close over in
    jit).

    * ``gates``: the names of the G slabs of the fused gate axis, in order (PyTorch's);
      ``sigmoid_gates`` / ``tanh_gates``: which of the traced gates saturate as a sigmoid / tanh.
    * ``init(key, d, h) -> params``; ``initial_carry(b, h)``; ``hidden(carry) -> h [b, h]``.
    * ``pointwise(xw, hw, carry, activation) -> (new carry, h, saved)``: the step's equations on
      per-gate slabs xw = x W_x + b_x and hw = the recurrence's output; ``saved`` is what
      ``backward`` needs besides h (each [b, h]).
    * ``recurrence``: how h_{t-1} enters (:data:`MATMUL`), or None (no recurrent params).
    * ``backward(activation, dcarry, h_prev, h, saved) -> (dcarry_direct, dhw, dxw)``: one step of
      the fused layer's backward. ``dcarry`` is the cotangent of the step's output carry (h's
      gradient from above already added); it returns the cotangent of the input carry except the
      path through hw, and the cotangents of hw and xw ([b, G*h]; dxw None: equal to dhw). None:
      the fused implementation refuses the cell.
    * ``sequence(xw_tbg, carry) -> (h_tbh, carry)``: a whole-sequence (parallel) form, or None.
    * ``trace(xw, h_tbh, saved, carries, activation) -> (gates, retain, c)``: what
      :mod:`rnnjax.use.inside` shows, from a layer's gate inputs xw (G x [t, b, h]), outputs, the
      forward's saves and carries over time (both None where ``sequence`` ran).
    * ``uses_activation``: reads phi_l (``model.activation``); ``retains``: has a retain (forget)
      coefficient; ``flax``, ``torch`` (the ``torch.nn`` module with this layout), ``cudnn``;
    ``native``: the name of its kernel in the native extension (:mod:`rnnjax.network.impls.native`),
    or None; ``from_native(slabs, h_tbh) -> (saved, carries)``: the kernel's saves (its slabs, each
    [t, b, h]) as ``trace`` reads them, so that the validation pass's statistics come from the
    kernel's own forward.
    """

    name: str
    gates: tuple[str, ...]
    init: Callable[[Array, int, int], Params]
    pointwise: Callable[[Slabs, Slabs, Any, str], tuple[Any, Array, tuple[Array, ...]]]
    trace: Callable[..., tuple[dict[str, Array], Array | None, Array | None]]
    initial_carry: Callable[[int, int], Any] = zeros_carry
    hidden: Callable[[Any], Array] = same
    recurrence: Recurrence | None = MATMUL
    backward: Callable[..., tuple[Any, Array, Array | None]] | None = None
    sequence: Callable[[Array, Any], tuple[Array, Any]] | None = None
    sigmoid_gates: tuple[str, ...] = ()
    tanh_gates: tuple[str, ...] = ()
    uses_activation: bool = False
    retains: bool = False
    flax: FlaxMapping | None = None
    torch: str | None = None
    cudnn: bool = False
    native: str | None = None
    from_native: Callable[[tuple[Array, ...], Array], tuple[Any, Any]] | None = None

    @property
    def num_gates(self) -> int:
        return len(self.gates)

    @property
    def fused(self) -> bool:
        """Whether :mod:`rnnjax.network.impls.fused` runs it: a backward step, or a whole-sequence
        form (read by name through ``IMPL_NEEDS``)."""
        return self.backward is not None or self.sequence is not None

    def recur(
        self, params: Params, carry: Any, xw: Array, activation: str = "tanh"
    ) -> tuple[Any, Array]:
        """One step from the input half xw [b, G*h]; returns (new carry, h [b, h])."""
        g = self.num_gates
        hw = (
            ()
            if self.recurrence is None
            else split_gates(self.recurrence.apply(params, self.hidden(carry)), g)
        )
        carry, h, _ = self.pointwise(split_gates(xw, g), hw, carry, activation)
        return carry, h

    def step(
        self, params: Params, carry: Any, x: Array, activation: str = "tanh"
    ) -> tuple[Any, Array]:
        """One time step (the scan contract). x: [b, d]; returns (new carry, h [b, h])."""
        return self.recur(params, carry, project_input(params, x), activation)
