"""The one stack loop: L layers over time, dropout between them and on the top layer's output.

Every implementation (:mod:`rnnjax.model`'s rnnjax and autodiff stacks, :mod:`rnnjax.cudnn`,
:mod:`rnnjax.flax_model`) and :mod:`rnnjax.inside` run their layers through :func:`run`; they
differ only in the function that runs one layer. Dropout masks are drawn here and nowhere else
(:mod:`rnnjax.pipeline` reads them from :func:`dropout_keep` too), so every implementation drops
the same units for a key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Params, project_input

Array = jax.Array
# layer(l, params of layer l, x, carry of layer l) -> (h_tbh, new carry, extra); x is the tokens
# [t, b] for l = 0, else the layer below's outputs [t, b, h]; ``extra`` is kept for inspection.
Layer = Callable[[int, Params, Array, Any], tuple[Array, Any, Any]]


class Spec(Protocol):
    """What the stack loop reads of a model (:class:`rnnjax.model.DeepRNN` is one)."""

    hidden_size: int
    num_layers: int
    dropout: float
    output_dropout: float


def input_projection(l: int, p: Params, x: Array) -> Array:
    """Layer l's gate inputs x W_x + b_x, [t, b, G*h]: for l = 0 a row gather of w_x by token id
    (= one_hot(x) @ w_x, without the one-hot matrix), else a matmul of the layer below's outputs."""
    return p["w_x"][x] + p["b_x"] if l == 0 else project_input(p, x)


def dropout_keep(dropout_key: Array, layer: int, rate: float, shape: tuple[int, ...]) -> Array:
    """Which of layer ``layer``'s outputs (0-based; ``num_layers - 1``: the top layer's, for
    output dropout) dropout keeps: a bool array of ``shape`` ([t, b, h])."""
    return jax.random.bernoulli(jax.random.fold_in(dropout_key, layer), 1.0 - rate, shape)


def apply_dropout(h: Array, keep: Array, rate: float) -> Array:
    """Dropped units are 0; kept ones are scaled by 1 / (1 - rate)."""
    return jnp.where(keep, h / (1.0 - rate), 0.0)


def run(
    spec: Spec,
    layer: Layer,
    layers: list[Params],
    tokens_tb: Array,
    carry: tuple,
    dropout_key: Array | None,
) -> tuple[Array, tuple, list]:
    """The stack over a sequence: tokens [t, b] -> (top layer's outputs [t, b, h] after output
    dropout, the new carry (one per layer), each layer's ``extra``). ``dropout_key`` None:
    evaluation (no dropout)."""
    x, new_carry, extras = tokens_tb, [], []
    for l, (p, layer_carry) in enumerate(zip(layers, carry)):
        x, layer_carry, extra = layer(l, p, x, layer_carry)
        new_carry.append(layer_carry)
        extras.append(extra)
        if dropout_key is not None and spec.dropout > 0 and l < spec.num_layers - 1:
            x = apply_dropout(x, dropout_keep(dropout_key, l, spec.dropout, x.shape), spec.dropout)
    return output_dropout(spec, dropout_key, x), tuple(new_carry), extras


def output_dropout(spec: Spec, dropout_key: Array | None, h_tbh: Array) -> Array:
    """The top layer's outputs [t, b, h] with ``spec.output_dropout`` applied (training only)."""
    if dropout_key is None or spec.output_dropout == 0:
        return h_tbh
    rate = spec.output_dropout
    return apply_dropout(
        h_tbh, dropout_keep(dropout_key, spec.num_layers - 1, rate, h_tbh.shape), rate
    )


def logits(params: Params, h_tbh: Array) -> Array:
    """The output layer, O = H W_hq + b_q: [t, b, h] -> [b, t, V]."""
    return jnp.swapaxes(h_tbh @ params["w_out"] + params["b_out"], 0, 1)
