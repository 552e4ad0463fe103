"""rnnjax: deep (stacked) RNN, GRU and LSTM language models in JAX."""

from rnnjax import interop
from rnnjax.cells import CELLS, Cell, gru, lstm, rnn
from rnnjax.config import Config, ConfigError, default_config, resolve
from rnnjax.data import Corpus, load_corpus
from rnnjax.flax_model import from_flax, to_flax
from rnnjax.generate import generate
from rnnjax.inside import Inside, Timescales, inspect, timescales
from rnnjax.model import DeepRNN, Impl, num_params
from rnnjax.run import Run, load
from rnnjax.steps import perplexity
from rnnjax.train import build_model, train_and_evaluate
from rnnjax.vocab import Vocab

__all__ = [
    "CELLS", "Cell", "Config", "ConfigError", "Corpus", "DeepRNN", "Impl", "Inside", "Timescales", "Vocab",
    "build_model", "default_config", "interop", "from_flax", "generate", "gru", "inspect", "load_corpus", "lstm",
    "Run", "load", "num_params", "perplexity", "resolve", "rnn", "timescales", "to_flax", "train_and_evaluate",
]
