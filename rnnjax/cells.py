"""Recurrent cells as pure functions: vanilla RNN, GRU and LSTM.

Notation as in :mod:`rnnjax.model` (b = batch, d = input size, h = hidden size, G = number
of gates). Every cell stores its weights PyTorch-style, with all gates of one input fused:

    params = {"w_x": [d, G*h], "w_h": [h, G*h], "b_x": [G*h], "b_h": [G*h]}

(``w_x`` is PyTorch's ``weight_ih`` transposed; two biases as in PyTorch, so
conversion to and from ``torch.nn.LSTM/GRU/RNN`` is exact.) Gate order is
PyTorch's: LSTM ``i, f, g, o``; GRU ``r, z, n``.

Each cell follows the scan contract ``step(params, carry, x) -> (carry, h)``.
``step`` is ``recur(params, carry, x @ w_x + b_x)``: the model hoists the input
projection out of the time loop and scans only ``recur``. A cell's equations live once,
in its ``pointwise`` function over per-gate slabs; ``recur`` and the fused layer's forward
loop (:mod:`rnnjax.fused`) both call it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict[str, Array]
Slabs = tuple[Array, ...]  # one [b, h] array per gate, in the cell's gate order

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
    """A recurrent cell: pure functions over a params pytree.

    ``pointwise(xw, hw, carry, activation) -> (new carry, h, saved)`` is the cell's equations
    on per-gate slabs ``xw`` (= x W_x + b_x) and ``hw`` (= h W_h + b_h), each G x [b, h];
    ``saved`` is what :mod:`rnnjax.fused`'s backward needs besides h. ``hidden(carry)`` is
    the h [b, h] a carry holds.
    """

    name: str
    num_gates: int
    init: Callable[[Array, int, int], Params]
    initial_carry: Callable[[int, int], Any]
    hidden: Callable[[Any], Array]
    pointwise: Callable[[Slabs, Slabs, Any, str], tuple[Any, Array, tuple[Array, ...]]]

    def recur(self, params: Params, carry: Any, xw: Array, activation: str = "tanh") -> tuple[Any, Array]:
        """One step from the input half xw [b, G*h]; returns (new carry, h [b, h]).
        ``activation`` is phi of the vanilla RNN (the other cells ignore it)."""
        hw = self.hidden(carry) @ params["w_h"] + params["b_h"]
        g = self.num_gates
        carry, h, _ = self.pointwise(split_gates(xw, g), split_gates(hw, g), carry, activation)
        return carry, h

    def step(self, params: Params, carry: Any, x: Array, activation: str = "tanh") -> tuple[Any, Array]:
        """One time step. x: [b, d]; returns (new carry, h [b, h])."""
        return self.recur(params, carry, project_input(params, x), activation)


def split_gates(a: Array, num_gates: int) -> Slabs:
    """[..., G*h] -> G x [..., h], in the cell's gate order."""
    return tuple(jnp.split(a, num_gates, axis=-1))


def _rnn_pointwise(xw: Slabs, hw: Slabs, carry: Array, activation: str = "tanh") -> tuple[Array, Array, tuple[()]]:
    """Vanilla RNN:  h' = phi(x W_x + b_x + h W_h + b_h),  phi in {tanh, relu}.

    carry: h [b, h]; one slab each. Saves nothing (the backward reads phi' off h').
    """
    h = ACTIVATIONS[activation](xw[0] + hw[0])
    return h, h, ()


def _gru_pointwise(xw: Slabs, hw: Slabs, carry: Array, activation: str = "tanh") -> tuple[Array, Array, Slabs]:
    """GRU (PyTorch/Flax form):

        r  = sigmoid(x W_xr + b_xr + h W_hr + b_hr)
        z  = sigmoid(x W_xz + b_xz + h W_hz + b_hz)
        n  = tanh(x W_xn + b_xn + r * (h W_hn + b_hn))
        h' = (1 - z) * n + z * h

    carry: h [b, h]; slabs (r, z, n). Saves (r, z, n, h W_hn + b_hn).
    """
    r = jax.nn.sigmoid(xw[0] + hw[0])
    z = jax.nn.sigmoid(xw[1] + hw[1])
    n = jnp.tanh(xw[2] + r * hw[2])
    h = (1.0 - z) * n + z * carry
    return h, h, (r, z, n, hw[2])


def _lstm_pointwise(
    xw: Slabs, hw: Slabs, carry: tuple[Array, Array], activation: str = "tanh"
) -> tuple[tuple[Array, Array], Array, Slabs]:
    """LSTM (PyTorch/Flax form), gates [i, f, g, o]:

        i = sigmoid(x W_xi + h W_hi + b_i)     f = sigmoid(x W_xf + h W_hf + b_f)
        g = tanh(x W_xg + h W_hg + b_g)        o = sigmoid(x W_xo + h W_ho + b_o)
        c' = f * c + i * g                     h' = o * tanh(c')

    with b = b_x + b_h. carry: (c [b, h], h [b, h]) (Flax's order). Saves (c, i, f, g, o).
    """
    c, _ = carry
    i = jax.nn.sigmoid(xw[0] + hw[0])
    f = jax.nn.sigmoid(xw[1] + hw[1])
    g = jnp.tanh(xw[2] + hw[2])
    o = jax.nn.sigmoid(xw[3] + hw[3])
    c_new = f * c + i * g
    h = o * jnp.tanh(c_new)
    return (c_new, h), h, (c, i, f, g, o)


def _zeros(batch_size: int, hidden_size: int) -> Array:
    return jnp.zeros((batch_size, hidden_size), jnp.float32)


def _same(h: Array) -> Array:
    return h


rnn = Cell(
    name="rnn",
    num_gates=1,
    init=lambda key, d, h: _uniform_init(key, d, h, 1),
    initial_carry=_zeros,
    hidden=_same,
    pointwise=_rnn_pointwise,
)
gru = Cell(
    name="gru",
    num_gates=3,
    init=lambda key, d, h: _uniform_init(key, d, h, 3),
    initial_carry=_zeros,
    hidden=_same,
    pointwise=_gru_pointwise,
)
lstm = Cell(
    name="lstm",
    num_gates=4,
    init=lambda key, d, h: _uniform_init(key, d, h, 4),
    initial_carry=lambda b, h: (_zeros(b, h), _zeros(b, h)),
    hidden=lambda carry: carry[1],
    pointwise=_lstm_pointwise,
)

CELLS: dict[str, Cell] = {"rnn": rnn, "gru": gru, "lstm": lstm}
