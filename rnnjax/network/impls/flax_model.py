"""The reference implementation: the same deep RNN built from Flax's own cells (``impl="flax"``).

Each layer is the cell's Flax module (``Cell.flax``: ``nn.SimpleCell``, ``nn.GRUCell``,
``nn.OptimizedLSTMCell``) under ``nn.RNN``, fed one-hot tokens, run through the same stack loop and
dropout masks as rnnjax's (:func:`rnnjax.network.stack.run`); the output layer is ``nn.Dense``.
:mod:`rnnjax.network.model` initialises it with rnnjax's weights converted by :func:`to_flax`, so
tests can assert equal logits. Params: ``{"layer_<l>": the cell's Flax params, "out": Dense
params}``.
"""

from __future__ import annotations

from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax.cells import CELLS
from rnnjax.network import stack

Array = jax.Array
Params = dict[str, Any]
Carry = tuple[Any, ...]  # as rnnjax.network.model.Carry: one per layer


class Spec(Protocol):
    """What this module reads of a model (:class:`rnnjax.network.model.DeepRNN` is one)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    cell: str
    dropout: float
    output_dropout: float

    def layer_activation(self, layer: int) -> str: ...


def apply(
    spec: Spec,
    params: Params,
    tokens: Array,
    carry: Carry,
    dropout_key: Array | None = None,
    placement: Any = None,
) -> tuple[Array, Carry]:
    """As ``DeepRNN.apply`` over Flax params: tokens [b, t] -> (logits [b, t, V], new carry); one
    device (``placement`` is not read)."""
    mapping = CELLS[spec.cell].flax

    def layer(l, p, x, layer_carry):
        x = jax.nn.one_hot(x, spec.vocab_size, dtype=jnp.float32) if l == 0 else x
        rnn = nn.RNN(
            mapping.module(spec.hidden_size, spec.layer_activation(l)),
            return_carry=True,
            time_major=True,
        )
        layer_carry, h_tbh = rnn.apply({"params": {"cell": p}}, x, initial_carry=layer_carry)
        return h_tbh, layer_carry, None

    layers = [params[f"layer_{l}"] for l in range(spec.num_layers)]
    h_tbh, new_carry, _ = stack.run(spec, layer, layers, tokens.T, carry, dropout_key)
    logits_tbv = nn.Dense(spec.vocab_size).apply({"params": params["out"]}, h_tbh)
    return jnp.swapaxes(logits_tbv, 0, 1), new_carry


def to_flax(params: Params, spec: Spec) -> Params:
    """rnnjax params -> Flax params of :func:`apply`."""
    to = CELLS[spec.cell].flax.to_flax
    out: dict[str, Any] = {"out": {"kernel": params["w_out"], "bias": params["b_out"]}}
    return out | {f"layer_{l}": to(p) for l, p in enumerate(params["layers"])}


def from_flax(flax_params: Params, spec: Spec) -> Params:
    """Flax params of :func:`apply` -> rnnjax params (inverse of :func:`to_flax` up to the bias
    split)."""
    back = CELLS[spec.cell].flax.from_flax
    layers = [back(flax_params[f"layer_{l}"], spec.hidden_size) for l in range(spec.num_layers)]
    return {
        "layers": layers,
        "w_out": flax_params["out"]["kernel"],
        "b_out": flax_params["out"]["bias"],
    }
