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


def _public() -> dict[str, str]:
    """The public names, read from the ``if TYPE_CHECKING:`` imports at the end of this file (the
    one list of them, which type checkers and editors follow): name -> the module (or, for a
    module imported whole, the package) it comes from."""
    where = {}
    for node in ast.parse(pathlib.Path(__file__).read_text()).body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            where |= {a.name: imp.module for imp in node.body for a in imp.names}
    return where


_WHERE = _public()
__all__ = sorted(_WHERE, key=str.lower)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'rnnjax' has no attribute {name!r}")
    module = importlib.import_module(_WHERE[name])
    if (value := getattr(module, name, None)) is None:  # a submodule, imported whole
        value = importlib.import_module(f"{_WHERE[name]}.{name}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from rnnjax.cells import CELLS
    from rnnjax.cells.base import Cell
    from rnnjax.config import Config, ConfigError, default_config, resolve
    from rnnjax.dataset.data import Corpus, load_corpus
    from rnnjax.dataset.vocab import Vocab
    from rnnjax.network.build import build_model
    from rnnjax.network.impls.flax_model import from_flax, to_flax
    from rnnjax.network.model import DeepRNN, Impl, Placed, Placement, num_params
    from rnnjax.network.sampling import generate
    from rnnjax.sweeps.sweep_summary import sweep_results
    from rnnjax.training.evaluation import perplexity
    from rnnjax.training.train import train_and_evaluate
    from rnnjax.use import interop
    from rnnjax.use.inside import Inside, Timescales, inspect, timescales
    from rnnjax.use.run import Run, load
