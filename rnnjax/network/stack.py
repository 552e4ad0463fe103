"""The one stack loop: L layers over time, dropout between them and on the top layer's output
(per step, or locked: one mask per sequence), and DropConnect on the recurrent weights.

Every implementation (:mod:`rnnjax.network.model`'s rnnjax and autodiff stacks,
:mod:`rnnjax.network.impls.cudnn`, :mod:`rnnjax.network.impls.flax_model`) and
:mod:`rnnjax.use.inside` run their layers through :func:`run`; they differ only in the function that
runs one layer. Dropout masks are drawn here and nowhere else (:mod:`rnnjax.network.impls.pipeline`
reads them from :func:`dropout_keep` too), so every implementation drops the same units for a key.
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
    """What the stack loop reads of a model (:class:`rnnjax.network.model.DeepRNN` is one)."""

    hidden_size: int
    num_layers: int
    dropout: float
    output_dropout: float
    locked_dropout: float
    weight_drop: float


# Keys of the masks that are not dropout's own: fold_in(dropout_key, salt + layer).
LOCKED_SALT, WEIGHT_SALT = 1 << 20, 2 << 20


def draws_masks(spec: Spec) -> bool:
    """Does training draw any mask (a dropout key is then made per step)?"""
    rates = ("dropout", "output_dropout", "locked_dropout", "weight_drop")
    return any(getattr(spec, r, 0.0) > 0 for r in rates)


def input_projection(l: int, p: Params, x: Array | tuple[Array, Array]) -> Array:
    """Layer l's gate inputs x W_x + b_x, [t, b, G*h]: for l = 0 a row gather of w_x by token id
    (= one_hot(x) @ w_x, without the one-hot matrix), else a matmul of the layer below's outputs.
    For l = 0, ``x`` may be (tokens [t, b], scale [t, b]): locked dropout on the one-hot input."""
    if l > 0:
        return project_input(p, x)
    tokens, scale = x if isinstance(x, tuple) else (x, None)
    rows = p["w_x"][tokens]
    return (rows if scale is None else rows * scale[..., None]) + p["b_x"]


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
    h_tbh, new_carry, extras = run_layers(spec, layer, layers, tokens_tb, carry, dropout_key)
    return output_dropout(spec, dropout_key, h_tbh), new_carry, extras


def run_layers(
    spec: Spec,
    layer: Layer,
    layers: list[Params],
    tokens_tb: Array,
    carry: tuple,
    dropout_key: Array | None,
) -> tuple[Array, tuple, list]:
    """:func:`run` without the output dropout: the top layer's own outputs [t, b, h]."""
    x, new_carry, extras = locked_input(spec, dropout_key, tokens_tb, layers[0]), [], []
    for l, (p, layer_carry) in enumerate(zip(layers, carry)):
        x, layer_carry, extra = layer(l, p, x, layer_carry)
        new_carry.append(layer_carry)
        extras.append(extra)
        if dropout_key is not None and spec.dropout > 0 and l < spec.num_layers - 1:
            x = apply_dropout(x, dropout_keep(dropout_key, l, spec.dropout, x.shape), spec.dropout)
        if l < spec.num_layers - 1:
            x = locked(spec, dropout_key, l + 1, x)
    return x, tuple(new_carry), extras


def locked(spec: Spec, dropout_key: Array | None, site: int, h_tbh: Array) -> Array:
    """Locked (variational) dropout, ``spec.locked_dropout``: one mask per sequence [1, b, h],
    the same at every time step. ``site``: 1..L-1 between layers, L on the top layer's output."""
    rate = getattr(spec, "locked_dropout", 0.0)
    if dropout_key is None or rate == 0:
        return h_tbh
    key = jax.random.fold_in(dropout_key, LOCKED_SALT)
    return apply_dropout(h_tbh, dropout_keep(key, site, rate, (1, *h_tbh.shape[1:])), rate)


def locked_input(
    spec: Spec, dropout_key: Array | None, tokens_tb: Array, layer0: Params
) -> Array | tuple[Array, Array]:
    """The stack's input: tokens [t, b], or with ``spec.locked_dropout`` (tokens, scale [t, b]):
    each sequence drops whole token types of its one-hot input (one mask [b, V] per sequence)."""
    rate = getattr(spec, "locked_dropout", 0.0)
    if dropout_key is None or rate == 0:
        return tokens_tb
    vocab = layer0["w_x"].shape[0]
    key = jax.random.fold_in(dropout_key, LOCKED_SALT)
    keep_bv = dropout_keep(key, 0, rate, (tokens_tb.shape[1], vocab))
    keep_tb = jnp.take_along_axis(keep_bv, tokens_tb.T, axis=1).T
    return tokens_tb, jnp.where(keep_tb, 1.0 / (1.0 - rate), 0.0)


def drop_weights(spec: Spec, layers: list[Params], dropout_key: Array | None) -> list[Params]:
    """DropConnect (``spec.weight_drop``): each layer's recurrent weights ``w_h`` [h, G*h] with one
    mask per minibatch (the same at every time step and for every sequence). Autodiff of this
    product masks the weights' gradients, whatever layer function (the fused backward) runs."""
    rate = getattr(spec, "weight_drop", 0.0)
    if dropout_key is None or rate == 0:
        return layers
    key = jax.random.fold_in(dropout_key, WEIGHT_SALT)
    return [
        {**p, "w_h": apply_dropout(p["w_h"], dropout_keep(key, l, rate, p["w_h"].shape), rate)}
        if "w_h" in p
        else p
        for l, p in enumerate(layers)
    ]


def output_dropout(spec: Spec, dropout_key: Array | None, h_tbh: Array) -> Array:
    """The top layer's outputs [t, b, h] with ``spec.output_dropout`` applied (training only)."""
    h_tbh = locked(spec, dropout_key, spec.num_layers, h_tbh)
    if dropout_key is None or spec.output_dropout == 0:
        return h_tbh
    rate = spec.output_dropout
    return apply_dropout(
        h_tbh, dropout_keep(dropout_key, spec.num_layers - 1, rate, h_tbh.shape), rate
    )


def logits(params: Params, h_tbh: Array) -> Array:
    """The output layer, O = H W_hq + b_q: [t, b, h] -> [b, t, V]."""
    return jnp.swapaxes(h_tbh @ params["w_out"] + params["b_out"], 0, 1)
