"""Exact weight conversion to and from PyTorch's ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``.

PyTorch layout (``num_layers=L``, ``batch_first`` irrelevant, one-hot input of size V):

    weight_ih_l{k}: [G*h, d]   weight_hh_l{k}: [G*h, h]   bias_ih_l{k}, bias_hh_l{k}: [G*h]
    output nn.Linear(h, V):    weight: [V, h]             bias: [V]

with d = V for layer 0 and h above, gates in PyTorch's order (LSTM i,f,g,o; GRU r,z,n).
rnnjax stores the same arrays transposed (``w_x = weight_ih.T``, ``w_h = weight_hh.T``,
``w_out = weight.T``), so both directions are exact. Arrays are NumPy: no torch import here.
A model fed through ``nn.Embedding`` instead of one-hot converts the same way with
``weight_ih_l0`` replaced by ``(embedding.weight @ weight_ih_l0.T).T``. minGRU and minLSTM
have no PyTorch module, so they do not convert.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from rnnjax.network.model import Params


def from_torch(
    rnn_state: Mapping[str, np.ndarray], linear_state: Mapping[str, np.ndarray]
) -> Params:
    """state_dicts (as NumPy) of ``nn.LSTM/GRU/RNN`` and the output ``nn.Linear`` -> rnnjax
    params."""
    num_layers = sum(1 for k in rnn_state if k.startswith("weight_ih_l"))
    if num_layers == 0 or any(k.endswith("_reverse") for k in rnn_state):
        raise ValueError(
            "from_torch: expected a unidirectional nn.LSTM/GRU/RNN state_dict with weight_ih_l0"
        )
    a = lambda x: jnp.asarray(np.asarray(x, np.float32))  # noqa: E731
    layers = []
    for k in range(num_layers):
        g = rnn_state[f"weight_ih_l{k}"].shape[0]
        b_ih = rnn_state.get(f"bias_ih_l{k}", np.zeros(g))
        b_hh = rnn_state.get(f"bias_hh_l{k}", np.zeros(g))
        layers.append(
            {
                "w_x": a(np.asarray(rnn_state[f"weight_ih_l{k}"]).T),
                "w_h": a(np.asarray(rnn_state[f"weight_hh_l{k}"]).T),
                "b_x": a(b_ih),
                "b_h": a(b_hh),
            }
        )
    return {
        "layers": layers,
        "w_out": a(np.asarray(linear_state["weight"]).T),
        "b_out": a(linear_state["bias"]),
    }


def _writable(x) -> np.ndarray:
    """A C-contiguous, writable NumPy copy (``np.asarray`` of a JAX array is read-only, which torch
    warns about)."""
    return np.array(x, dtype=np.float32, order="C", copy=True)


def to_torch(params: Params) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """rnnjax params -> (rnn state_dict, output nn.Linear state_dict) as NumPy float32 arrays."""
    if params["layers"] and "w_h" not in params["layers"][0]:
        raise ValueError(
            "to_torch: minGRU/minLSTM params have no PyTorch module to convert to (no w_h); "
            "only rnn, gru and lstm convert"
        )
    rnn_state: dict[str, np.ndarray] = {}
    for k, p in enumerate(params["layers"]):
        rnn_state[f"weight_ih_l{k}"] = _writable(np.asarray(p["w_x"]).T)
        rnn_state[f"weight_hh_l{k}"] = _writable(np.asarray(p["w_h"]).T)
        rnn_state[f"bias_ih_l{k}"] = _writable(p["b_x"])
        rnn_state[f"bias_hh_l{k}"] = _writable(p["b_h"])
    linear = {
        "weight": _writable(np.asarray(params["w_out"]).T),
        "bias": _writable(params["b_out"]),
    }
    return rnn_state, linear
