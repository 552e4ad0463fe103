"""The ``model`` group's fields: the network and its implementation."""

from __future__ import annotations

import enum
from typing import Any

from rnnjax import cells
from rnnjax.config.fields import Field, Rule, at_least, fraction, one_of
from rnnjax.errors import ConfigError


class Impl(str, enum.Enum):
    """How the stack is computed (``config.model.impl``); every one gives the same numbers. The one
    list of the implementations' names (imports no JAX; :mod:`rnnjax.network.model` runs them)."""

    AUTO = "auto"  # NATIVE on a CPU where the kernels are built, else FUSED (resolve_impl)
    # rnnjax.network.impls.fused.scan_layer per layer: hand-written backward (the reference)
    FUSED = "rnnjax"
    AUTODIFF = "autodiff"  # jax.lax.scan over cells.*.recur, differentiated by JAX
    FLAX = "flax"  # Flax's own cells under nn.RNN (rnnjax.network.impls.flax_model): the reference
    # cuDNN's fused LSTM per layer (rnnjax.network.impls.cudnn; LSTM on a CUDA GPU only)
    CUDNN = "cudnn"
    NATIVE = (
        "native"  # each layer's time loop in one native FFI call (rnnjax.network.impls.native; CPU)
    )

    def __str__(self) -> str:
        return self.value


IMPLS = tuple(i.value for i in Impl)
# model.impl may change on resume among these (one params pytree, one optimizer state); "auto" is
# one of them wherever it resolves (rnnjax.network.model.resolve_impl: native, rnnjax or autodiff).
SAME_PARAMS_IMPLS = tuple(i.value for i in Impl if i is not Impl.FLAX)
# The implementations that run rnnjax's own stack (rnnjax.network.model._apply): its dropout masks,
# DropConnect on W_h before each layer runs, and the top layer's outputs for the loss terms.
OUR_STACK_IMPLS = tuple(i.value for i in (Impl.AUTO, Impl.FUSED, Impl.NATIVE, Impl.AUTODIFF))


def one_of_impls(impls: tuple[str, ...]) -> str:
    """'auto', 'rnnjax', 'native' or 'autodiff': the names for a message."""
    quoted = [repr(i) for i in impls]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _activations(v: Any) -> Any:
    return (v,) if isinstance(v, str) else tuple(v) if isinstance(v, (list, tuple)) else v


def _activation_rule(c: Any) -> str:
    return f"'tanh' or 'relu', or a list of them with one per layer ({c.model.num_layers})"


def _activation_ok(v: Any, c: Any) -> bool:
    n = c.model.num_layers
    return isinstance(v, tuple) and all(a in ("tanh", "relu") for a in v) and len(v) in (1, n)


def _show_activations(v: Any) -> Any:
    if isinstance(v, tuple):
        return v[0] if len(v) == 1 else list(v)
    return v


def _cell_and_impl(c: Any) -> str | None:
    """The implementation can run the cell (each cell declares what it has: rnnjax.cells)."""
    try:
        cells.check_supported(c.model.impl, c.model.cell)
    except ConfigError as e:
        return str(e)
    return None


def _param_names(cell: str) -> set[str]:
    """The names of a cell's params (shapes only: nothing is computed)."""
    import jax

    init = cells.CELLS[cell].init
    return set(jax.eval_shape(lambda k: init(k, 2, 2), jax.random.key(0)))


def _regularisers_apply(c: Any) -> str | None:
    """locked_dropout and weight_drop live in rnnjax's stack; weight_drop needs W_h."""
    m = c.model
    for name in ("locked_dropout", "weight_drop"):
        if getattr(m, name) > 0 and m.impl not in OUR_STACK_IMPLS:
            return (
                f"config.model.{name} runs in rnnjax's stack, not impl {m.impl!r}; "
                f"use model.impl = {one_of_impls(OUR_STACK_IMPLS)}, or set it to 0"
            )
    if m.weight_drop > 0 and "w_h" not in _param_names(m.cell):
        return (
            f"config.model.weight_drop drops recurrent weights W_h and cell {m.cell!r} has none; "
            "use cell 'rnn', 'gru' or 'lstm', or set it to 0"
        )
    return None


# Each group: its one-line doc, then its fields and cross-field rules, checked in this order.
GROUPS: dict[str, tuple[str, list[Field | Rule]]] = {
    "model": (
        "The network (rnnjax/network/model.py).",
        [
            Field(
                "impl",
                "auto",
                "'auto' ('native' on a CPU where its kernels are built, for a cell with one and "
                "a batch on one device; else 'rnnjax': rnnjax.network.model.resolve_impl), "
                "'rnnjax' (pure-function cells, hand-written backward), "
                "'autodiff' (the same cells, lax.scan differentiated by JAX), 'flax' (Flax's own "
                "cells; the reference), 'cudnn' or 'native' (C++ recurrent loops through "
                "jax.ffi, CPU; docs/performance.md): rnnjax.network.model.Impl; same numbers.",
                **one_of(*IMPLS),
                resumable=lambda a, b: a in SAME_PARAMS_IMPLS and b in SAME_PARAMS_IMPLS,
            ),
            Field(
                "cell",
                "lstm",
                "A cell of rnnjax/cells/'s REGISTRY (docs/cells.md): the rule lists them.",
                rule=lambda c: "one of " + ", ".join(map(repr, cells.names())),
                ok=lambda v, c: isinstance(v, str) and v in cells.REGISTRY,
            ),
            Rule(
                "The implementation can run the cell (what each cell has: rnnjax/cells/).",
                _cell_and_impl,
                last=True,
            ),
            Field("hidden_size", 256, "Units per layer.", **at_least(1)),
            Field("num_layers", 2, "Stacked recurrent layers.", **at_least(1)),
            Field(
                "activation",
                "tanh",
                "Vanilla RNN activation phi_l: one name ('tanh', 'relu') or a list with one per "
                "layer.",
                _activation_rule,
                _activation_ok,
                convert=_activations,
                show=_show_activations,
                literal=True,
            ),
            Field(
                "dropout",
                0.0,
                "Dropout on every layer's output but the last, training only (0 = off).",
                **fraction(),
            ),
            Field(
                "output_dropout",
                0.0,
                "Dropout on the top layer's output, before the output layer, training only "
                "(0 = off).",
                **fraction(),
                added=True,
            ),
            Field(
                "locked_dropout",
                0.0,
                "Locked (variational) dropout, training only (0 = off): one mask per sequence, "
                "the same at every time step, on the one-hot input (a sequence drops whole "
                "token types), between layers and on the top layer's output; with dropout and "
                "output_dropout if those are set too (AWD-LSTM's dropouti/dropouth/dropout).",
                **fraction(),
                added=True,
            ),
            Field(
                "weight_drop",
                0.0,
                "DropConnect on each layer's recurrent weights W_h, training only (0 = off): one "
                "mask per minibatch, shared by its sequences and time steps; the weights' "
                "gradients are masked too (AWD-LSTM's weight drop). Cells with W_h: rnn, gru, "
                "lstm.",
                **fraction(),
                added=True,
            ),
            Rule(
                "locked_dropout and weight_drop run in rnnjax's stack (impl auto, rnnjax, native, "
                "autodiff), on cells with W_h.",
                _regularisers_apply,
                last=True,
            ),
        ],
    ),
}
