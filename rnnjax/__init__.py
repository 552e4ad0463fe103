"""rnnjax: deep (stacked) RNN, GRU and LSTM language models in JAX.

The names below load on first use (PEP 562), so that ``import rnnjax.config`` or the scripts'
flag parsing does not wait for JAX, Flax, Orbax and TensorBoard to import: a mistyped flag is
answered in a second. ``import rnnjax; rnnjax.load(...)`` and ``from rnnjax import load`` work
as usual. The public names are listed once, as the ``TYPE_CHECKING`` imports at the end (what
editors and type checkers follow); a new one is one import line there.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
from typing import TYPE_CHECKING, Any


def _public() -> tuple[dict[str, str], tuple[str, ...]]:
    """The public names, read from the ``if TYPE_CHECKING:`` imports at the end of this file (the
    one list of them, which type checkers and editors follow): (name -> the module that defines
    it, the submodules imported whole)."""
    where, modules = {}, []
    for node in ast.parse(pathlib.Path(__file__).read_text()).body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                if imp.module == "rnnjax":
                    modules += [a.name for a in imp.names]
                else:
                    where |= {a.name: imp.module.removeprefix("rnnjax.") for a in imp.names}
    return where, tuple(modules)


_WHERE, _MODULES = _public()
__all__ = sorted([*_WHERE, *_MODULES], key=str.lower)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"rnnjax.{name}")
    if name in _WHERE:
        value = getattr(importlib.import_module(f"rnnjax.{_WHERE[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'rnnjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from rnnjax import interop
    from rnnjax.build import build_model
    from rnnjax.cells import CELLS, Cell
    from rnnjax.config import Config, ConfigError, default_config, resolve
    from rnnjax.data import Corpus, load_corpus
    from rnnjax.flax_model import from_flax, to_flax
    from rnnjax.inside import Inside, Timescales, inspect, timescales
    from rnnjax.model import DeepRNN, Impl, Placed, Placement, num_params
    from rnnjax.run import Run, load
    from rnnjax.sampling import generate
    from rnnjax.steps import perplexity
    from rnnjax.sweep_summary import sweep_results
    from rnnjax.train import train_and_evaluate
    from rnnjax.vocab import Vocab
