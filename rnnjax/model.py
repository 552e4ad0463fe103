"""The deep (stacked) recurrent language model, as pure functions.

Notation: b = batch, t = time, V = vocabulary, h = hidden, L = layers.

With H^(0)_t = X_t (one-hot tokens) and layers l = 1..L:

    H^(l)_t = cell_l(H^(l-1)_t, H^(l)_{t-1})        O_t = H^(L)_t W_hq + b_q

Each layer is evaluated over the whole sequence before the next one: its input
projection H^(l-1) W_x^(l) + b_x^(l) is one large matmul outside the time loop and
only the recurrent part (H_{t-1} W_h) is inside ``jax.lax.scan``. For layer 1 the
projection one_hot(X) @ W_x is a row gather W_x[X]: the same math as d2l's one-hot
input, without materialising the one-hot matrix.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells import CELLS, project_input
from rnnjax.fused import scan_layer

Array = jax.Array
Params = dict[str, Any]
State = tuple[Any, ...]  # one carry per layer: h [b, h] (rnn, gru) or (c, h) (lstm)


@dataclasses.dataclass(frozen=True)
class DeepRNN:
    """A stack of ``num_layers`` recurrent cells and a linear output layer.

    Frozen and hashable: safe to close over in jitted functions. ``activations``
    (vanilla RNN only) holds one name for every layer or one per layer.
    """

    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 2
    cell: str = "lstm"
    activations: tuple[str, ...] = ("tanh",)
    dropout: float = 0.0
    fused: bool = True  # rnnjax.fused.scan_layer (hand-written backward); False = autodiff of lax.scan

    def activation(self, layer: int) -> str:
        """phi_l of layer ``layer`` (0-based)."""
        return self.activations[layer] if len(self.activations) > 1 else self.activations[0]

    def _cell_kwargs(self, layer: int) -> dict[str, str]:
        return {"activation": self.activation(layer)} if self.cell == "rnn" else {}

    def init(self, key: Array) -> Params:
        """Params: {"layers": [cell params] * L, "w_out": [h, V], "b_out": [V]}."""
        cell = CELLS[self.cell]
        keys = jax.random.split(key, self.num_layers + 2)
        layers = [
            cell.init(keys[l], self.vocab_size if l == 0 else self.hidden_size, self.hidden_size)
            for l in range(self.num_layers)
        ]
        bound = 1.0 / math.sqrt(self.hidden_size)  # nn.Linear's init
        u = lambda k, shape: jax.random.uniform(k, shape, jnp.float32, -bound, bound)  # noqa: E731
        return {
            "layers": layers,
            "w_out": u(keys[-2], (self.hidden_size, self.vocab_size)),
            "b_out": u(keys[-1], (self.vocab_size,)),
        }

    def initial_state(self, batch_size: int) -> State:
        """All-zero carries of every layer for a batch of ``batch_size`` streams."""
        cell = CELLS[self.cell]
        return tuple(cell.initial_state(batch_size, self.hidden_size) for _ in range(self.num_layers))

    def apply(
        self, params: Params, tokens: Array, state: State, *, dropout_key: Array | None = None
    ) -> tuple[Array, State]:
        """tokens [b, t] int -> (logits [b, t, V], new state).

        ``dropout_key`` turns on dropout (rate ``self.dropout``) on every layer's
        output but the last, as PyTorch's ``dropout`` argument; None = evaluation.
        """
        cell = CELLS[self.cell]
        tokens_tb = tokens.T
        new_state = []
        h_tbh = None
        for l, (p, carry) in enumerate(zip(params["layers"], state)):
            if l == 0:
                xw_tbg = p["w_x"][tokens_tb] + p["b_x"]  # == one_hot(tokens) @ w_x + b_x
            else:
                xw_tbg = project_input(p, h_tbh)
            if self.fused:
                h_tbh, carry = scan_layer(self.cell, self.activation(l), p["w_h"], p["b_h"], xw_tbg, carry)
            else:
                kwargs = self._cell_kwargs(l)

                def body(c, xw_bg, p=p, kwargs=kwargs):
                    return cell.recur(p, c, xw_bg, **kwargs)

                carry, h_tbh = jax.lax.scan(body, carry, xw_tbg)
            new_state.append(carry)
            if dropout_key is not None and self.dropout > 0 and l < self.num_layers - 1:
                keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, l), 1.0 - self.dropout, h_tbh.shape)
                h_tbh = jnp.where(keep, h_tbh / (1.0 - self.dropout), 0.0)
        logits_tbv = h_tbh @ params["w_out"] + params["b_out"]
        return jnp.swapaxes(logits_tbv, 0, 1), tuple(new_state)


def num_params(params: Params) -> int:
    """Total number of scalars in a params pytree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
