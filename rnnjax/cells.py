"""Recurrent cells as pure functions: vanilla RNN, GRU and LSTM, and the parallel-scan cells
minGRU and minLSTM ("Were RNNs All We Needed?", Feng et al., 2024).

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

minGRU and minLSTM have no recurrent weights (``params = {"w_x": [d, G*h], "b_x": [G*h]}``):
their gates read the input only, so a layer is the linear recurrence h_t = a_t * h_{t-1} + b_t,
which ``sequence`` evaluates for all t at once with ``jax.lax.associative_scan`` (O(log t)
depth); ``step`` is the same equations one step at a time (generation). PyTorch has no such
modules, so :mod:`rnnjax.interop` does not convert them, and Flax has none either.
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
    the h [b, h] a carry holds. ``sequence(xw_tbg, carry) -> (h_tbh, carry)``, where set, is
    the cell's own whole-sequence form (the parallel scan of minGRU/minLSTM, whose ``hw`` is
    empty: they have no ``w_h``).
    """

    name: str
    num_gates: int
    init: Callable[[Array, int, int], Params]
    initial_carry: Callable[[int, int], Any]
    hidden: Callable[[Any], Array]
    pointwise: Callable[[Slabs, Slabs, Any, str], tuple[Any, Array, tuple[Array, ...]]]
    sequence: Callable[[Array, Any], tuple[Array, Any]] | None = None

    def recur(self, params: Params, carry: Any, xw: Array, activation: str = "tanh") -> tuple[Any, Array]:
        """One step from the input half xw [b, G*h]; returns (new carry, h [b, h]).
        ``activation`` is phi of the vanilla RNN (the other cells ignore it)."""
        g = self.num_gates
        hw = split_gates(self.hidden(carry) @ params["w_h"] + params["b_h"], g) if "w_h" in params else ()
        carry, h, _ = self.pointwise(split_gates(xw, g), hw, carry, activation)
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


def g(x: Array) -> Array:
    """minGRU/minLSTM's candidate activation: x + 0.5 for x >= 0, sigmoid(x) below (always > 0)."""
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def mingru_coefficients(xw: Slabs) -> tuple[Array, Array]:
    """minGRU as h' = a * h + b:

        z  = sigmoid(x W_z + b_z)      h~ = g(x W_h + b_h)      h' = (1 - z) * h + z * h~

    so a = 1 - z = sigmoid(-(x W_z + b_z)), b = z * h~. Slabs (z, h~)."""
    return jax.nn.sigmoid(-xw[0]), jax.nn.sigmoid(xw[0]) * g(xw[1])


def minlstm_coefficients(xw: Slabs) -> tuple[Array, Array]:
    """minLSTM as h' = a * h + b:

        f = sigmoid(x W_f + b_f)   i = sigmoid(x W_i + b_i)   h~ = g(x W_h + b_h)
        f' = f / (f + i)           i' = i / (f + i)           h' = f' * h + i' * h~

    so a = f', b = i' * h~. f / (f + i) = sigmoid(log f - log i) with log sigmoid(k) =
    -softplus(-k): no division, no overflow. Slabs (f, i, h~)."""
    d = jax.nn.softplus(-xw[1]) - jax.nn.softplus(-xw[0])  # log f - log i
    return jax.nn.sigmoid(d), jax.nn.sigmoid(-d) * g(xw[2])


def _linear_pointwise(coefficients):
    def pointwise(xw: Slabs, hw: Slabs, carry: Array, activation: str = "tanh") -> tuple[Array, Array, tuple[()]]:
        a, b = coefficients(xw)
        h = a * carry + b
        return h, h, ()

    return pointwise


def linear_scan(a_tbh: Array, b_tbh: Array, h0_bh: Array) -> Array:
    """h_t = a_t * h_{t-1} + b_t for every t at once: ``jax.lax.associative_scan`` over the pairs
    (a, b) composed as (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2); h0 enters the first b.
    In linear space: exact to float32 rounding at any t (the log-space form with
    ``cumlogsumexp`` lost 4e-4 relative at t = 1024 and was ~10x slower on CPU, BENCHMARKS.md)."""
    b_tbh = b_tbh.at[0].add(a_tbh[0] * h0_bh)
    _, h_tbh = jax.lax.associative_scan(lambda l, r: (l[0] * r[0], r[0] * l[1] + r[1]), (a_tbh, b_tbh), axis=0)
    return h_tbh


def _linear_sequence(coefficients, num_gates):
    def sequence(xw_tbg: Array, h0_bh: Array) -> tuple[Array, Array]:
        a_tbh, b_tbh = coefficients(split_gates(xw_tbg, num_gates))
        if xw_tbg.shape[0] == 1:  # one step (generation): the step form, no scan
            h_tbh = a_tbh * h0_bh + b_tbh
        else:
            h_tbh = linear_scan(a_tbh, b_tbh, h0_bh)
        return h_tbh, h_tbh[-1]

    return sequence


def _input_only_init(key: Array, input_size: int, hidden_size: int, num_gates: int) -> Params:
    """Like :func:`_uniform_init` without the recurrent weights: w_x [d, G*h], b_x [G*h]."""
    p = _uniform_init(key, input_size, hidden_size, num_gates)
    return {"w_x": p["w_x"], "b_x": p["b_x"]}


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

mingru = Cell(
    name="mingru",
    num_gates=2,
    init=lambda key, d, h: _input_only_init(key, d, h, 2),
    initial_carry=_zeros,
    hidden=_same,
    pointwise=_linear_pointwise(mingru_coefficients),
    sequence=_linear_sequence(mingru_coefficients, 2),
)
minlstm = Cell(
    name="minlstm",
    num_gates=3,
    init=lambda key, d, h: _input_only_init(key, d, h, 3),
    initial_carry=_zeros,
    hidden=_same,
    pointwise=_linear_pointwise(minlstm_coefficients),
    sequence=_linear_sequence(minlstm_coefficients, 3),
)

CELLS: dict[str, Cell] = {"rnn": rnn, "gru": gru, "lstm": lstm, "mingru": mingru, "minlstm": minlstm}
