"""Recurrent cells: one file per cell, one registry.

A cell is a :class:`Cell` (``rnnjax/cells/base.py``): its params and init, gate names, pointwise
equations, the fused layer's backward step, its optional parallel form and its Flax, PyTorch and
cuDNN mappings. Every other module reads that definition; none branches on a cell's name.

Adding a cell is one new file that defines ``CELL = Cell(...)`` (``rnnjax/cells/<name>.py``, or a
module of your own) and one line in :data:`REGISTRY` (docs/cells.md#adding-a-cell). This module
imports no JAX: the names are known (for config validation) before JAX loads; ``CELLS[name]``
imports the cell's file. The shared pieces (``Cell``, ``split_gates``, ...) are imported from
:mod:`rnnjax.cells.base`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from rnnjax.errors import ConfigError

if TYPE_CHECKING:
    from rnnjax.cells.base import Cell

# cell name -> the module that defines it as ``CELL`` (a cell of your own may live outside the
# package)
REGISTRY: dict[str, str] = {
    "rnn": "rnnjax.cells.rnn",
    "gru": "rnnjax.cells.gru",
    "lstm": "rnnjax.cells.lstm",
    "mingru": "rnnjax.cells.mingru",
    "minlstm": "rnnjax.cells.minlstm",
    "indrnn": "rnnjax.cells.indrnn",
}


class _Cells(Mapping):
    """name -> :class:`Cell`, importing each cell's file on first use."""

    def __getitem__(self, name: str) -> Cell:
        if name not in REGISTRY:
            raise KeyError(name)
        return importlib.import_module(REGISTRY[name]).CELL

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


CELLS: Mapping[str, Cell] = _Cells()


# model.impl -> (the Cell attribute it needs, what it says when the cell lacks it)
IMPL_NEEDS: dict[str, tuple[str, str]] = {
    "rnnjax": (
        "fused",
        "has no fused backward for the {cell} cell (Cell.backward); use model.impl = 'autodiff'",
    ),
    "flax": ("flax", "has no {cell} cell (Flax has none: Cell.flax); use model.impl = 'rnnjax'"),
    "native": (
        "native",
        "has no native kernel for the {cell} cell (Cell.native); use model.impl = 'rnnjax'",
    ),
    "cudnn": (
        "cudnn",
        "is cuDNN's LSTM and has no {cell} cell; use model.cell = 'lstm' or model.impl = 'rnnjax'",
    ),
}


def check_supported(impl: str, cell: str) -> None:
    """Refuse, in one line (:class:`rnnjax.errors.ConfigError`), a cell that ``model.impl`` cannot
    run. Imports the cell's file (and so JAX)."""
    impl = str(impl)  # a name, or rnnjax.network.model.Impl
    if cell not in REGISTRY:
        raise ConfigError(
            f"config.model.cell = {cell!r} is not allowed: one of {', '.join(map(repr, REGISTRY))}"
        )
    attr, why = IMPL_NEEDS.get(impl, (None, ""))
    if attr is not None and not getattr(CELLS[cell], attr):
        raise ConfigError(f"config.model.impl = {impl!r} " + why.format(cell=cell))


def names() -> tuple[str, ...]:
    """Every registered cell's name, in registry order (no JAX import)."""
    return tuple(REGISTRY)
