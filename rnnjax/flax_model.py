"""The reference implementation: the same deep RNN built from Flax's own cells.

``nn.SimpleCell``, ``nn.GRUCell`` and ``nn.OptimizedLSTMCell`` (parameters
compatible with ``nn.LSTMCell``) under ``nn.RNN``, fed one-hot tokens. Selected
with ``config.model.impl = "flax"`` (``DeepRNN(impl=Impl.FLAX)``): :mod:`rnnjax.model`
dispatches to :func:`apply` here and initialises with rnnjax's weights converted by
:func:`to_flax`. Tests assert it gives the logits of the rnnjax implementations.

Flax keeps one bias per gate where PyTorch keeps two; the converters add the two
(``to_flax``) or put Flax's bias on one side and zeros on the other (``from_flax``).
This module does not import :mod:`rnnjax.model`: a model is any :class:`Spec`.
"""

from __future__ import annotations

from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax.cells import ACTIVATIONS

Array = jax.Array
Params = dict[str, Any]
Carry = tuple[Any, ...]  # as rnnjax.model.Carry: one per layer
_GATES = {"lstm": "ifgo", "gru": "rzn", "rnn": ""}


class Spec(Protocol):
    """What this module reads of a model (:class:`rnnjax.model.DeepRNN` is one)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    cell: str
    dropout: float
    output_dropout: float

    def layer_activation(self, layer: int) -> str: ...


class _FlaxStack(nn.Module):
    spec: Spec  # frozen and hashable (a Module field)

    @nn.compact
    def __call__(self, tokens: Array, carry: Carry, train: bool = False) -> tuple[Array, Carry]:
        s = self.spec
        x = jax.nn.one_hot(tokens, s.vocab_size, dtype=jnp.float32)
        new_carry = []
        for l in range(s.num_layers):
            name = f"layer_{l}"
            if s.cell == "lstm":
                cell = nn.OptimizedLSTMCell(s.hidden_size, name=name)
            elif s.cell == "gru":
                cell = nn.GRUCell(s.hidden_size, name=name)
            else:
                cell = nn.SimpleCell(s.hidden_size, activation_fn=ACTIVATIONS[s.layer_activation(l)], name=name)
            layer_carry, x = nn.RNN(cell, return_carry=True)(x, initial_carry=carry[l])
            new_carry.append(layer_carry)
            if l < s.num_layers - 1 and s.dropout > 0:
                x = nn.Dropout(s.dropout, deterministic=not train)(x)
        if s.output_dropout > 0:
            x = nn.Dropout(s.output_dropout, deterministic=not train)(x)
        return nn.Dense(s.vocab_size, name="out")(x), tuple(new_carry)


def apply(spec: Spec, params: Params, tokens: Array, carry: Carry, dropout_key: Array | None = None
          ) -> tuple[Array, Carry]:
    """As ``DeepRNN.apply`` over Flax params: tokens [b, t] -> (logits [b, t, V], new carry)."""
    train = dropout_key is not None
    rngs = {"dropout": dropout_key} if train else {}
    return _FlaxStack(spec).apply({"params": params}, tokens, carry, train, rngs=rngs)


def to_flax(params: Params, spec: Spec) -> Params:
    """rnnjax params -> Flax params of :func:`apply` (the ``"params"`` collection)."""
    out: dict[str, Any] = {"out": {"kernel": params["w_out"], "bias": params["b_out"]}}
    gates = _GATES[spec.cell]
    for l, p in enumerate(params["layers"]):
        n = len(gates) or 1
        wx, wh = jnp.split(p["w_x"], n, -1), jnp.split(p["w_h"], n, -1)
        bx, bh = jnp.split(p["b_x"], n, -1), jnp.split(p["b_h"], n, -1)
        if spec.cell == "rnn":
            layer = {"i": {"kernel": wx[0], "bias": bx[0] + bh[0]}, "h": {"kernel": wh[0]}}
        elif spec.cell == "lstm":
            layer = {f"i{g}": {"kernel": wx[k]} for k, g in enumerate(gates)}
            layer |= {f"h{g}": {"kernel": wh[k], "bias": bx[k] + bh[k]} for k, g in enumerate(gates)}
        else:  # gru: the n gate's recurrent bias sits inside r * (h W_hn + b_hn)
            layer = {
                "ir": {"kernel": wx[0], "bias": bx[0] + bh[0]},
                "iz": {"kernel": wx[1], "bias": bx[1] + bh[1]},
                "in": {"kernel": wx[2], "bias": bx[2]},
                "hr": {"kernel": wh[0]},
                "hz": {"kernel": wh[1]},
                "hn": {"kernel": wh[2], "bias": bh[2]},
            }
        out[f"layer_{l}"] = layer
    return out


def from_flax(flax_params: Params, spec: Spec) -> Params:
    """Flax params of :func:`apply` -> rnnjax params (inverse of :func:`to_flax` up to bias split)."""
    gates = _GATES[spec.cell] or "_"
    layers = []
    for l in range(spec.num_layers):
        f = flax_params[f"layer_{l}"]
        if spec.cell == "rnn":
            wx, wh, bx, bh = f["i"]["kernel"], f["h"]["kernel"], f["i"]["bias"], None
        elif spec.cell == "lstm":
            wx = jnp.concatenate([f[f"i{g}"]["kernel"] for g in gates], -1)
            wh = jnp.concatenate([f[f"h{g}"]["kernel"] for g in gates], -1)
            bx, bh = None, jnp.concatenate([f[f"h{g}"]["bias"] for g in gates], -1)
        else:
            wx = jnp.concatenate([f[f"i{g}"]["kernel"] for g in gates], -1)
            wh = jnp.concatenate([f[f"h{g}"]["kernel"] for g in gates], -1)
            bx = jnp.concatenate([f[f"i{g}"]["bias"] for g in gates], -1)
            h = spec.hidden_size
            bh = jnp.concatenate([jnp.zeros(2 * h), f["hn"]["bias"]])
        bx = jnp.zeros(wx.shape[-1]) if bx is None else bx
        bh = jnp.zeros(wh.shape[-1]) if bh is None else bh
        layers.append({"w_x": wx, "w_h": wh, "b_x": bx, "b_h": bh})
    return {"layers": layers, "w_out": flax_params["out"]["kernel"], "b_out": flax_params["out"]["bias"]}
