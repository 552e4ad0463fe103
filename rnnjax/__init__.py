"""rnnjax: deep (stacked) RNN, GRU and LSTM language models in JAX.

The names below load on first use (PEP 562), so that ``import rnnjax.config`` or the scripts'
flag parsing does not wait for JAX, Flax, Orbax and TensorBoard to import: a mistyped flag is
answered in a second. ``import rnnjax; rnnjax.load(...)`` and ``from rnnjax import load`` work
as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_WHERE = {
    "CELLS": "cells",
    "Cell": "cells",
    "Config": "config",
    "ConfigError": "config",
    "default_config": "config",
    "resolve": "config",
    "Corpus": "data",
    "load_corpus": "data",
    "from_flax": "flax_model",
    "to_flax": "flax_model",
    "generate": "sampling",
    "Inside": "inside",
    "Timescales": "inside",
    "inspect": "inside",
    "timescales": "inside",
    "DeepRNN": "model",
    "Impl": "model",
    "Placed": "model",
    "Placement": "model",
    "num_params": "model",
    "Run": "run",
    "load": "run",
    "perplexity": "steps",
    "sweep_results": "sweep_summary",
    "build_model": "build",
    "train_and_evaluate": "train",
    "Vocab": "vocab",
}
_MODULES = ("interop",)

__all__ = [  # = _WHERE and _MODULES (tests/test_first_contact.py checks)
    "CELLS",
    "Cell",
    "Config",
    "ConfigError",
    "Corpus",
    "DeepRNN",
    "Impl",
    "Inside",
    "Placed",
    "Placement",
    "Timescales",
    "Vocab",
    "build_model",
    "default_config",
    "interop",
    "from_flax",
    "generate",
    "inspect",
    "load_corpus",
    "Run",
    "load",
    "num_params",
    "perplexity",
    "resolve",
    "sweep_results",
    "timescales",
    "to_flax",
    "train_and_evaluate",
]


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
