"""Recurrent cells as pure functions: vanilla RNN, GRU and LSTM.

Notation: b = batch, d = input size, h = hidden size, G = number of gates.
Every cell stores its weights PyTorch-style, with all gates of one input fused:

    params = {"w_x": [d, G*h], "w_h": [h, G*h], "b_x": [G*h], "b_h": [G*h]}

(``w_x`` is PyTorch's ``weight_ih`` transposed; two biases as in PyTorch, so
conversion to and from ``torch.nn.LSTM/GRU/RNN`` is exact.) Gate order is
PyTorch's: LSTM ``i, f, g, o``; GRU ``r, z, n``.

Each cell follows the scan contract ``step(params, state, x) -> (state, h)``.
``step`` is ``recur(params, state, x @ w_x + b_x)``: the model hoists the input
projection out of the time loop and scans only ``recur``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict[str, Array]

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def _uniform_init(key: Array, input_size: int, hidden_size: int, num_gates: int) -> Params:
    """PyTorch's init: every weight and bias ~ U(-1/sqrt(h), 1/sqrt(h))."""
    bound = 1.0 / math.sqrt(hidden_size)
    k = jax.random.split(key, 4)
    g = num_gates * hidden_size
    u = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)  # noqa: E731
    return {
        "w_x": u(k[0], (input_size, g)),
        "w_h": u(k[1], (hidden_size, g)),
        "b_x": u(k[2], (g,)),
        "b_h": u(k[3], (g,)),
    }


def project_input(params: Params, x: Array) -> Array:
    """Input half of every gate: ``x @ w_x + b_x``; x: [..., d] -> [..., G*h]."""
    return x @ params["w_x"] + params["b_x"]


class Cell(NamedTuple):
    """A recurrent cell: pure functions over a params pytree."""

    name: str
    num_gates: int
    init: Callable[[Array, int, int], Params]
    initial_state: Callable[[int, int], Any]
    recur: Callable[..., tuple[Any, Array]]

    def step(self, params: Params, state: Any, x: Array, **kwargs: Any) -> tuple[Any, Array]:
        """One time step. x: [b, d]; returns (new state, h [b, h])."""
        return self.recur(params, state, project_input(params, x), **kwargs)


def _rnn_recur(params: Params, state: Array, xw: Array, activation: str = "tanh") -> tuple[Array, Array]:
    """Vanilla RNN:  h' = phi(x W_x + b_x + h W_h + b_h),  phi in {tanh, relu}.

    state: h [b, h]; xw: [b, h] (= x W_x + b_x).
    """
    h = ACTIVATIONS[activation](xw + state @ params["w_h"] + params["b_h"])
    return h, h


def _gru_recur(params: Params, state: Array, xw: Array) -> tuple[Array, Array]:
    """GRU (PyTorch/Flax form):

        r  = sigmoid(x W_xr + b_xr + h W_hr + b_hr)
        z  = sigmoid(x W_xz + b_xz + h W_hz + b_hz)
        n  = tanh(x W_xn + b_xn + r * (h W_hn + b_hn))
        h' = (1 - z) * n + z * h

    state: h [b, h]; xw: [b, 3h].
    """
    hw = state @ params["w_h"] + params["b_h"]
    xr, xz, xn = jnp.split(xw, 3, axis=-1)
    hr, hz, hn = jnp.split(hw, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h = (1.0 - z) * n + z * state
    return h, h


def _lstm_recur(params: Params, state: tuple[Array, Array], xw: Array) -> tuple[tuple[Array, Array], Array]:
    """LSTM (PyTorch/Flax form), gates fused as [i, f, g, o]:

        i = sigmoid(x W_xi + h W_hi + b_i)     f = sigmoid(x W_xf + h W_hf + b_f)
        g = tanh(x W_xg + h W_hg + b_g)        o = sigmoid(x W_xo + h W_ho + b_o)
        c' = f * c + i * g                     h' = o * tanh(c')

    with b = b_x + b_h. state: (c [b, h], h [b, h]) (Flax's carry order); xw: [b, 4h].
    """
    c, h = state
    gates = xw + h @ params["w_h"] + params["b_h"]
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h


def _zeros(batch_size: int, hidden_size: int) -> Array:
    return jnp.zeros((batch_size, hidden_size), jnp.float32)


rnn = Cell(
    name="rnn",
    num_gates=1,
    init=lambda key, d, h: _uniform_init(key, d, h, 1),
    initial_state=_zeros,
    recur=_rnn_recur,
)
gru = Cell(
    name="gru",
    num_gates=3,
    init=lambda key, d, h: _uniform_init(key, d, h, 3),
    initial_state=_zeros,
    recur=_gru_recur,
)
lstm = Cell(
    name="lstm",
    num_gates=4,
    init=lambda key, d, h: _uniform_init(key, d, h, 4),
    initial_state=lambda b, h: (_zeros(b, h), _zeros(b, h)),
    recur=_lstm_recur,
)

CELLS: dict[str, Cell] = {"rnn": rnn, "gru": gru, "lstm": lstm}
