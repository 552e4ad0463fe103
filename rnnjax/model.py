"""The deep (stacked) recurrent language model, as pure functions.

Shape notation, used in array names across rnnjax (``h_tbh`` is [time, batch, hidden]):

    k = trials (vectorized)   n = minibatches per epoch   b = batch   t = time   d = input size
    h = hidden size   G = gates x hidden (the fused gate axis)   V = vocabulary   L = layers

With H^(0)_t = X_t (one-hot tokens) and layers l = 1..L:

    H^(l)_t = cell_l(H^(l-1)_t, H^(l)_{t-1})        O_t = H^(L)_t W_hq + b_q

Each layer is evaluated over the whole sequence before the next one: its input
projection H^(l-1) W_x^(l) + b_x^(l) is one large matmul outside the time loop and
only the recurrent part (H_{t-1} W_h) is inside ``jax.lax.scan``. For layer 1 the
projection one_hot(X) @ W_x is a row gather W_x[X]: the same math as d2l's one-hot
input, without materialising the one-hot matrix.

The carry (every layer's recurrent state) is data: ``apply(params, tokens, carry)``
returns the new one. :func:`implementation` is where ``DeepRNN.impl`` picks the code.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax import cudnn, flax_model, pipeline
from rnnjax.cells import CELLS, project_input
from rnnjax.fused import scan_layer

Array = jax.Array
Params = dict[str, Any]
Carry = tuple[Any, ...]  # one per layer: h [b, h] (rnn, gru) or (c, h) (lstm)


class Impl(str, enum.Enum):
    """How the stack is computed (``config.model.impl``); every one gives the same numbers."""

    FUSED = "rnnjax"  # rnnjax.fused.scan_layer per layer: hand-written backward (the default)
    AUTODIFF = "autodiff"  # jax.lax.scan over cells.*.recur, differentiated by JAX
    FLAX = "flax"  # Flax's own cells under nn.RNN (rnnjax.flax_model): the reference
    CUDNN = "cudnn"  # cuDNN's fused LSTM per layer (rnnjax.cudnn; LSTM on a CUDA GPU only)

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class DeepRNN:
    """A stack of ``num_layers`` recurrent cells and a linear output layer.

    Frozen and hashable: safe to close over in jitted functions. ``activation``
    (vanilla RNN only) holds one name for every layer or one per layer; ``impl``
    (:class:`Impl` or its value) picks the implementation, not the math.
    """

    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 2
    cell: str = "lstm"
    activation: tuple[str, ...] = ("tanh",)
    dropout: float = 0.0
    impl: Impl = Impl.FUSED
    # Layer pipeline over CPU devices (rnnjax.pipeline): up to this many stages (1 = off), the
    # sequence in (the divisor of t nearest) this many chunks. Same math, same params.
    pipeline_stages: int = 1
    pipeline_chunks: int = 5
    # Dropout on the top layer's output, before the output layer (training only; 0 = off).
    output_dropout: float = 0.0
    # impl CUDNN only: the devices the batch is split over (rnnjax.parallel's data axis); cuDNN's call
    # then runs under shard_map over them, one call per device on its rows.
    data_devices: int = 1

    def __post_init__(self):
        if isinstance(self.activation, str):
            object.__setattr__(self, "activation", (self.activation,))
        object.__setattr__(self, "impl", Impl(self.impl))

    def layer_activation(self, layer: int) -> str:
        """phi_l of layer ``layer`` (0-based)."""
        return self.activation[layer] if len(self.activation) > 1 else self.activation[0]

    def init(self, key: Array) -> Params:
        """Params of ``impl``'s layout; rnnjax's: {"layers": [cell params] * L, "w_out": [h, V], "b_out": [V]}."""
        return implementation(self.impl).init(self, key)

    def initial_carry(self, batch_size: int) -> Carry:
        """All-zero carries of every layer for a batch of ``batch_size`` streams."""
        cell = CELLS[self.cell]
        return tuple(cell.initial_carry(batch_size, self.hidden_size) for _ in range(self.num_layers))

    def apply(
        self, params: Params, tokens: Array, carry: Carry, *, dropout_key: Array | None = None
    ) -> tuple[Array, Carry]:
        """tokens [b, t] int -> (logits [b, t, V], new carry).

        ``dropout_key`` turns on dropout (rate ``self.dropout``) on every layer's
        output but the last, as PyTorch's ``dropout`` argument, and (rate ``self.output_dropout``)
        on the top layer's output; None = evaluation.
        """
        return implementation(self.impl).apply(self, params, tokens, carry, dropout_key)


class Stack(NamedTuple):
    """One implementation of the whole model: ``init(spec, key)``, ``apply(spec, params, tokens, carry, dropout_key)``."""

    init: Callable[[DeepRNN, Array], Params]
    apply: Callable[[DeepRNN, Params, Array, Carry, Array | None], tuple[Array, Carry]]


def implementation(impl: Impl | str) -> Stack:
    """The one place an :class:`Impl` is dispatched.

    FUSED and AUTODIFF share rnnjax's stack (:func:`_init`, :func:`_apply`) and differ only in the
    function that runs one layer over time; FLAX and CUDNN (:mod:`rnnjax.cudnn`, which reads rnnjax's
    params and needs the raw layer inputs) are whole stacks of their own. A new cell is a
    ``cells.Cell`` in ``cells.CELLS`` and runs under FUSED and AUTODIFF; a cell with its own
    whole-sequence form (``Cell.sequence``: minGRU/minLSTM's parallel scan) uses it under FUSED,
    while AUTODIFF scans its step (the sequential witness). A new implementation is a
    new :class:`Impl` member and one case here:
    a layer function ``(cell, activation, layer params, xw_tbg, carry) -> (h_tbh, carry)`` for
    rnnjax's stack, or a :class:`Stack` of its own.
    """
    match Impl(impl):
        case Impl.FUSED:
            return Stack(_init, functools.partial(_apply, _fused_layer))
        case Impl.AUTODIFF:
            return Stack(_init, functools.partial(_apply, _autodiff_layer))
        case Impl.FLAX:  # rnnjax's initial weights, converted: both start identical for a seed
            return Stack(lambda spec, key: flax_model.to_flax(_init(spec, key), spec), flax_model.apply)
        case Impl.CUDNN:  # rnnjax's params, packed per call into cuDNN's flat vector
            return Stack(_init, cudnn.apply)


def _fused_layer(cell: str, activation: str, p: Params, xw_tbg: Array, carry: Any) -> tuple[Array, Any]:
    sequence = CELLS[cell].sequence
    if sequence is not None:  # minGRU/minLSTM: their own parallel scan (autodiff is already cheap there)
        return sequence(xw_tbg, carry)
    return scan_layer(cell, activation, p["w_h"], p["b_h"], xw_tbg, carry)


def _autodiff_layer(cell: str, activation: str, p: Params, xw_tbg: Array, carry: Any) -> tuple[Array, Any]:
    c = CELLS[cell]
    carry, h_tbh = jax.lax.scan(lambda k, xw_bg: c.recur(p, k, xw_bg, activation), carry, xw_tbg)
    return h_tbh, carry


def _init(spec: DeepRNN, key: Array) -> Params:
    cell = CELLS[spec.cell]
    keys = jax.random.split(key, spec.num_layers + 2)
    layers = [
        cell.init(keys[l], spec.vocab_size if l == 0 else spec.hidden_size, spec.hidden_size)
        for l in range(spec.num_layers)
    ]
    bound = 1.0 / math.sqrt(spec.hidden_size)  # nn.Linear's init
    u = lambda k, shape: jax.random.uniform(k, shape, jnp.float32, -bound, bound)  # noqa: E731
    return {
        "layers": layers,
        "w_out": u(keys[-2], (spec.hidden_size, spec.vocab_size)),
        "b_out": u(keys[-1], (spec.vocab_size,)),
    }


def dropout_keep(spec: DeepRNN, dropout_key: Array, layer: int, shape: tuple[int, ...]) -> Array:
    """Which of layer ``layer``'s outputs [t, b, h] dropout keeps (the same mask in every implementation)."""
    return jax.random.bernoulli(jax.random.fold_in(dropout_key, layer), 1.0 - spec.dropout, shape)


def output_dropout(spec: DeepRNN, dropout_key: Array | None, h_tbh: Array) -> Array:
    """The top layer's output [t, b, h] with ``spec.output_dropout`` applied (training: ``dropout_key`` set)."""
    if dropout_key is None or spec.output_dropout == 0:
        return h_tbh
    keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, spec.num_layers - 1), 1.0 - spec.output_dropout,
                                h_tbh.shape)
    return jnp.where(keep, h_tbh / (1.0 - spec.output_dropout), 0.0)


def _apply(layer_fn, spec: DeepRNN, params: Params, tokens: Array, carry: Carry, dropout_key: Array | None
           ) -> tuple[Array, Carry]:
    tokens_tb = tokens.T
    dropout = dropout_key is not None and spec.dropout > 0
    # the pipeline needs time to overlap: a single step (generation) runs the plain stack
    if spec.pipeline_stages > 1 and tokens_tb.shape[0] > 1 and (stages := pipeline.stages_for(spec)) > 1:
        p0 = params["layers"][0]
        t, b = tokens_tb.shape
        keep_ltbh = (
            jnp.stack([dropout_keep(spec, dropout_key, l, (t, b, spec.hidden_size)) for l in range(spec.num_layers - 1)])
            if dropout else None
        )
        h_tbh, new_carry = pipeline.pipelined_layers(
            layer_fn, spec.cell, tuple(map(spec.layer_activation, range(spec.num_layers))), params["layers"],
            p0["w_x"][tokens_tb] + p0["b_x"], carry, keep_ltbh, spec.dropout, stages,
            spec.pipeline_chunks,
        )
        h_tbh = output_dropout(spec, dropout_key, h_tbh)
        logits_tbv = h_tbh @ params["w_out"] + params["b_out"]
        return jnp.swapaxes(logits_tbv, 0, 1), new_carry
    new_carry = []
    h_tbh = None
    for l, (p, layer_carry) in enumerate(zip(params["layers"], carry)):
        if l == 0:
            xw_tbg = p["w_x"][tokens_tb] + p["b_x"]  # == one_hot(tokens) @ w_x + b_x
        else:
            xw_tbg = project_input(p, h_tbh)
        h_tbh, layer_carry = layer_fn(spec.cell, spec.layer_activation(l), p, xw_tbg, layer_carry)
        new_carry.append(layer_carry)
        if dropout and l < spec.num_layers - 1:
            h_tbh = jnp.where(dropout_keep(spec, dropout_key, l, h_tbh.shape), h_tbh / (1.0 - spec.dropout), 0.0)
    h_tbh = output_dropout(spec, dropout_key, h_tbh)
    logits_tbv = h_tbh @ params["w_out"] + params["b_out"]
    return jnp.swapaxes(logits_tbv, 0, 1), tuple(new_carry)


def num_params(params: Params) -> int:
    """Total number of scalars in a params pytree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
