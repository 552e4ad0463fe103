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
returns the new one. :func:`implementation` is where ``DeepRNN.impl`` picks the code, and
:func:`resolve_impl` is where ``"auto"`` picks the implementation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from rnnjax.cells import CELLS, check_supported
from rnnjax.cells.base import uniform
from rnnjax.config.model_fields import Impl
from rnnjax.network import stack
from rnnjax.network.impls import cudnn, flax_model, native, pipeline
from rnnjax.network.impls.fused import scan_layer

Array = jax.Array
Params = dict[str, Any]
Carry = tuple[Any, ...]  # one per layer: h [b, h] (rnn, gru) or (c, h) (lstm)


@dataclasses.dataclass(frozen=True)
class DeepRNN:
    """A stack of ``num_layers`` recurrent cells and a linear output layer.

    Frozen and hashable: safe to close over in jitted functions. ``activation``
    (vanilla RNN only) holds one name for every layer or one per layer; ``impl``
    (:class:`Impl` or its value) picks the implementation, not the math: ``"auto"`` is resolved
    here, once (:func:`resolve_impl`), so ``impl`` is never AUTO after construction.
    """

    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 2
    cell: str = "lstm"
    activation: tuple[str, ...] = ("tanh",)
    dropout: float = 0.0
    impl: Impl = Impl.FUSED
    # Dropout on the top layer's output, before the output layer (training only; 0 = off).
    output_dropout: float = 0.0
    # Locked dropout (one mask per sequence: input, between layers, output) and DropConnect on
    # the recurrent weights (one mask per minibatch): rnnjax.network.stack; training only; 0 = off.
    locked_dropout: float = 0.0
    weight_drop: float = 0.0

    def __post_init__(self):
        if isinstance(self.activation, str):
            object.__setattr__(self, "activation", (self.activation,))
        object.__setattr__(self, "impl", resolve_impl(self.impl, self.cell))
        check_supported(self.impl.value, self.cell)

    def layer_activation(self, layer: int) -> str:
        """phi_l of layer ``layer`` (0-based)."""
        return self.activation[layer] if len(self.activation) > 1 else self.activation[0]

    def init(self, key: Array) -> Params:
        """Params of ``impl``'s layout; rnnjax's: {"layers": [cell params] * L, "w_out": [h, V],
        "b_out": [V]}."""
        return implementation(self.impl).init(self, key)

    def initial_carry(self, batch_size: int) -> Carry:
        """All-zero carries of every layer for a batch of ``batch_size`` streams."""
        cell = CELLS[self.cell]
        return tuple(
            cell.initial_carry(batch_size, self.hidden_size) for _ in range(self.num_layers)
        )

    def apply(
        self,
        params: Params,
        tokens: Array,
        carry: Carry,
        *,
        dropout_key: Array | None = None,
        with_hidden: bool = False,
    ) -> tuple[Array, Carry]:
        """tokens [b, t] int -> (logits [b, t, V], new carry).

        ``dropout_key`` turns on dropout (rate ``self.dropout``) on every layer's
        output but the last, as PyTorch's ``dropout`` argument, and (rate ``self.output_dropout``)
        on the top layer's output; None = evaluation. ``with_hidden`` (impl rnnjax and autodiff):
        also the top layer's outputs before and after output dropout, ([t, b, h], [t, b, h]).
        """
        more = {"with_hidden": True} if with_hidden else {}
        return implementation(self.impl).apply(self, params, tokens, carry, dropout_key, **more)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a model runs, not what it computes: every placement gives the same numbers and reads
    the same params. ``pipeline_stages`` > 1: the layers pipelined over that many CPU devices
    (:mod:`rnnjax.network.impls.pipeline`), the sequence in about ``pipeline_chunks`` chunks;
    ``data_devices``: the devices a kernel call is split over, under ``shard_map``
    (``impl="cudnn"``'s and ``impl="native"``'s: XLA cannot partition a custom call)."""

    pipeline_stages: int = 1
    pipeline_chunks: int = 5
    data_devices: int = 1


@dataclasses.dataclass(frozen=True)
class Placed(DeepRNN):
    """A :class:`DeepRNN` and its :class:`Placement`: what a training step applies. It is the spec
    (every field, ``init``, ``initial_carry``: ``placed.cell``, ``placed.num_layers``, ...) and
    ``apply`` runs it where placed. Made with :meth:`of`."""

    placement: Placement = Placement()

    @classmethod
    def of(cls, spec: DeepRNN, placement: Placement) -> Placed:
        """``spec`` placed as ``placement`` says."""
        fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(DeepRNN)}
        return cls(**fields, placement=placement)

    @property
    def spec(self) -> DeepRNN:
        """The model alone, without its placement."""
        return DeepRNN(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DeepRNN)})

    def apply(
        self,
        params: Params,
        tokens: Array,
        carry: Carry,
        *,
        dropout_key: Array | None = None,
        with_hidden: bool = False,
    ) -> tuple[Array, Carry]:
        more = {"with_hidden": True} if with_hidden else {}
        return implementation(self.impl).apply(
            self.spec, params, tokens, carry, dropout_key, self.placement, **more
        )


class Stack(NamedTuple):
    """One implementation of the whole model: ``init(spec, key)`` and
    ``apply(spec, params, tokens, carry, dropout_key, placement=Placement())``."""

    init: Callable[[DeepRNN, Array], Params]
    apply: Callable[..., tuple[Array, Carry]]


def resolve_impl(impl: Impl | str, cell: str, split_over: int = 1) -> Impl:
    """The implementation ``impl`` runs for ``cell``: ``impl`` itself, or for ``"auto"`` (the
    config's default) the one place the choice is made: NATIVE where its kernels run (a CPU backend
    with the extension built: :func:`rnnjax.network.impls.native.available`), the cell has one
    (``Cell.native``) and the batch is on one device; else FUSED (the reference: on GPU/TPU, for
    cells without a kernel, where the extension was not built, and data parallel over ``split_over``
    > 1 devices, where the kernel per device measured slower than FUSED's data-parallel step on 2
    cores: docs/performance.md), or AUTODIFF for a cell without a fused backward either. The same
    machine and config always resolve the same way; every choice reads the same params."""
    impl = Impl(impl)
    if impl is not Impl.AUTO or cell not in CELLS:
        return impl  # (an unknown cell is refused by check_supported, in one line)
    c = CELLS[cell]
    if c.native and split_over == 1 and native.available():
        return Impl.NATIVE
    return Impl.FUSED if c.fused else Impl.AUTODIFF


def auto_fallback_note(impl: Impl | str, cell: str) -> str | None:
    """One line for the start of a run whose ``"auto"`` could not pick the native kernels on this
    CPU (the extension was not built or cannot load), or whose ``"native"`` runs the pure-JAX layer
    instead (:func:`rnnjax.network.impls.native.fallback_note`: said there, not later mid-run); None
    otherwise (another impl, a cell without a kernel, or ``"auto"`` on a GPU/TPU, where it runs
    rnnjax by design)."""
    if cell not in CELLS or not CELLS[cell].native or native.available():
        return None
    if Impl(impl) is Impl.NATIVE:
        return native.fallback_note()
    if Impl(impl) is not Impl.AUTO or jax.default_backend() != "cpu":
        return None
    return (
        f"model.impl = 'auto' runs the pure-JAX layer (rnnjax), not the native kernels: "
        f"{native.why_not()}; reinstall with a C++ compiler (pip install -e .) to build them"
    )


def implementation(impl: Impl | str) -> Stack:
    """The one place an :class:`Impl` is dispatched.

    FUSED and AUTODIFF share rnnjax's params and stack and differ only in the function that runs one
    layer over time (:mod:`rnnjax.network.impls.fused`'s hand-written backward, or ``lax.scan`` of
    ``Cell.recur`` differentiated by JAX); FLAX (:mod:`rnnjax.network.impls.flax_model`) and CUDNN
    (:mod:`rnnjax.network.impls.cudnn`) run their own layers through the same stack loop
    (:func:`rnnjax.network.stack.run`). A new cell is a file in :mod:`rnnjax.cells` and needs
    nothing here.
    """
    match Impl(impl):
        case Impl.AUTO:
            raise ValueError("impl 'auto' has no stack of its own: resolve_impl(impl, cell) first")
        case Impl.FUSED:
            return Stack(_init, functools.partial(_apply, scan_layer))
        case Impl.AUTODIFF:
            return Stack(_init, functools.partial(_apply, _autodiff_layer))
        case Impl.FLAX:  # rnnjax's initial weights, converted: both start identical for a seed
            return Stack(
                lambda spec, key: flax_model.to_flax(_init(spec, key), spec), flax_model.apply
            )
        case Impl.CUDNN:  # rnnjax's params, packed per call into cuDNN's flat vector
            return Stack(_init, cudnn.apply)
        case Impl.NATIVE:  # rnnjax's params and stack; the layer's loop in native code
            return Stack(_init, functools.partial(_apply, native.scan_layer))


def _autodiff_layer(
    cell: str, activation: str, p: Params, xw_tbg: Array, carry: Any
) -> tuple[Array, Any]:
    """``jax.lax.scan`` of the cell's step, differentiated by JAX (the sequential witness)."""
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
    h, v = spec.hidden_size, spec.vocab_size  # nn.Linear's init
    return {
        "layers": layers,
        "w_out": uniform(keys[-2], (h, v), h),
        "b_out": uniform(keys[-1], (v,), h),
    }


def _apply(
    layer_fn,
    spec: DeepRNN,
    params: Params,
    tokens: Array,
    carry: Carry,
    dropout_key: Array | None,
    placement: Placement = Placement(),
    with_hidden: bool = False,
) -> tuple[Array, Carry]:
    tokens_tb = tokens.T
    params = {**params, "layers": stack.drop_weights(spec, params["layers"], dropout_key)}
    # the pipeline needs time to overlap: a single step (generation) runs the plain stack
    stages = pipeline.stages_for(spec.num_layers, placement.pipeline_stages)
    if stages > 1 and tokens_tb.shape[0] > 1:
        h_tbh, new_carry = pipeline.pipelined_layers(
            spec,
            layer_fn,
            params["layers"],
            tokens_tb,
            carry,
            dropout_key,
            stages,
            placement.pipeline_chunks,
        )
    else:
        if placement.data_devices > 1:  # native's kernel call split over the data devices
            layer_fn = functools.partial(layer_fn, devices=placement.data_devices)

        def layer(l, p, x, layer_carry):
            h_tbh, layer_carry = layer_fn(
                spec.cell, spec.layer_activation(l), p, stack.input_projection(l, p, x), layer_carry
            )
            return h_tbh, layer_carry, None

        h_tbh, new_carry, _ = stack.run_layers(
            spec, layer, params["layers"], tokens_tb, carry, dropout_key
        )
    dropped_tbh = stack.output_dropout(spec, dropout_key, h_tbh)
    out = stack.logits(params, dropped_tbh), new_carry
    return (*out, (h_tbh, dropped_tbh)) if with_hidden else out


def num_params(params: Params) -> int:
    """Total number of scalars in a params pytree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
