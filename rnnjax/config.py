"""Configuration: the default ``ConfigDict`` and its validated, frozen form.

``configs/*.py`` start from :func:`default_config` and change a few fields.
:func:`resolve` checks every field once, at the boundary, and returns frozen
dataclasses; nothing inside jitted code ever sees a ``ConfigDict``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections
from ml_collections import config_dict

from rnnjax import cells
from rnnjax.errors import ConfigError

IMPLS = ("rnnjax", "autodiff", "flax", "cudnn")  # the values of rnnjax.model.Impl (not imported here: no JAX in config)


def default_config() -> ml_collections.ConfigDict:
    """The reference experiment: 2-layer LSTM, hidden 256, on The Time Machine."""
    c = ml_collections.ConfigDict()
    # Seed for parameter init, the samplers' offsets and dropout.
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    # UTF-8 text files, concatenated in order; [] = the bundled Time Machine.
    c.data.paths = []
    # "d2l": every run of non-letters -> one space, then lower-case; "none": raw text.
    c.data.preprocess = "d2l"
    # "char" or "word" (whitespace-separated) tokens.
    c.data.tokenizer = "char"
    # Tokens seen fewer times than this in the training split map to <unk>.
    c.data.min_freq = 0
    # Extra tokens always in the vocabulary (e.g. ["<pad>"]).
    c.data.reserved_tokens = []
    # Splits by count (d2l's): the first max_tokens tokens train, the next num_val validate and the
    # next num_test test (0 = no test split). max_tokens = 0: every token before the held-out ones.
    c.data.max_tokens = 10_000
    c.data.num_val = 5_000
    c.data.num_test = 0
    # Splits by fraction (used when val_fraction > 0; num_val and num_test are then ignored): the last
    # test_fraction of each file tests, the val_fraction before it validates, the rest trains (capped
    # at max_tokens unless 0). Several files are then also evaluated per file.
    c.data.val_fraction = 0.0
    c.data.test_fraction = 0.0
    # Minibatch: batch_size streams x num_steps time steps.
    c.data.batch_size = 32
    c.data.num_steps = 35
    # "sequential" (carry kept across minibatches) or "random" (carry reset each minibatch).
    c.data.sampler = "sequential"
    # Refuse a text file larger than this many MiB (a guard against a wrong path); raise it for big corpora.
    c.data.max_file_mb = 1024

    c.model = ml_collections.ConfigDict()
    # "rnnjax" (pure-function cells, hand-written backward), "autodiff" (the same cells, lax.scan
    # differentiated by JAX) or "flax" (Flax's own cells; the reference): rnnjax.model.Impl. Same numbers.
    c.model.impl = "rnnjax"
    # "rnn", "gru", "lstm", or the parallel-scan cells "mingru", "minlstm" (no recurrent weights).
    c.model.cell = "lstm"
    c.model.hidden_size = 256
    c.model.num_layers = 2
    # Vanilla RNN activation phi_l: one name ("tanh", "relu") or a list with one per layer.
    c.model.activation = config_dict.FieldReference("tanh", field_type=object)
    # Dropout on every layer's output but the last, training only (0 = off).
    c.model.dropout = 0.0
    # Dropout on the top layer's output, before the output layer, training only (0 = off).
    c.model.output_dropout = 0.0

    c.train = ml_collections.ConfigDict()
    c.train.num_epochs = 500
    # "sgd", "adam" or "adamw".
    c.train.optimizer = "sgd"
    c.train.learning_rate = 2.0
    # Clip gradients to this global norm before the update (0 = no clipping).
    c.train.grad_clip = 1.0
    # Decoupled weight decay (adamw only).
    c.train.weight_decay = 0.0
    # "constant" or "warmup_cosine" (linear warm-up for warmup_steps, then cosine to 0).
    c.train.schedule = "constant"
    c.train.warmup_steps = 0
    # Show a tqdm progress bar.
    c.train.progress = True
    # Abort after this many consecutive non-finite steps (each one is skipped, not applied).
    c.train.max_nonfinite = 10
    # Per-layer statistics each epoch (metrics.jsonl, TensorBoard): gradient norms from the train step,
    # hidden-state RMS, gate saturation and forget gate from the validation pass (on the device).
    c.train.layer_stats = True
    # Capture a jax.profiler trace of this many training steps, after the first (compiled) one, into
    # WORKDIR/profile/ (TensorBoard's profile plugin); 0 = off.
    c.train.profile_steps = 0
    # Stop after this many epochs without a new best validation perplexity (0 = off). When on, every
    # new best epoch is also checkpointed, and the end-of-run samples come from the best checkpoint.
    c.train.early_stopping_patience = 0

    c.checkpoint = ml_collections.ConfigDict()
    # Save every this many epochs (and always after the last epoch) to WORKDIR/checkpoints.
    c.checkpoint.every_epochs = 10
    # Keep this many latest checkpoints, plus the one with the best validation perplexity.
    c.checkpoint.max_to_keep = 3

    c.parallel = ml_collections.ConfigDict()
    # Data-parallel devices (across all processes); 0 = all. data.batch_size must divide by it.
    c.parallel.num_devices = 0
    # CPU only: split this host's cores into this many JAX devices (set before JAX starts, by
    # scripts/train.py and scripts/sweep.py) and train data-parallel over them. 1 = JAX's
    # default (one CPU device, every core); 0 = one device per core, or the largest count
    # <= cores that divides data.batch_size. Ignored on GPU/TPU. See BENCHMARKS.md.
    c.parallel.cpu_devices = 1
    # CPU only: run the layers as a pipeline over this host's CPU devices (rnnjax/pipeline.py):
    # layer blocks on separate devices, each at the full batch, the sequence in time chunks.
    # Uses parallel.cpu_devices devices if >= 2, else one per core (at most one per layer).
    # Same numbers as the plain stack; measured slower on 2 cores (BENCHMARKS.md), so off.
    c.parallel.cpu_pipeline = False
    # Time chunks per sequence for the pipeline (the divisor of data.num_steps nearest it).
    c.parallel.pipeline_chunks = 5

    c.generate = ml_collections.ConfigDict()
    # Greedy continuations printed (and saved to samples.txt) after training.
    c.generate.prefixes = ["time traveller", "traveller"]
    c.generate.num_chars = 50
    return c


def variant(config: ml_collections.ConfigDict, arg: str | None, **variants) -> ml_collections.ConfigDict:
    """Apply the variant named by a config file's argument (``configs/x.py:smoke``).

    ``variants`` maps names to functions that change the config; ``None`` (no argument)
    returns ``config`` unchanged, and an unknown name raises :class:`ConfigError`.
    """
    variants.setdefault("smoke", smoke)
    if not arg:
        return config
    if arg not in variants:
        raise ConfigError(f"config variant {arg!r} does not exist; variants: {', '.join(sorted(variants))}")
    return variants[arg](config)


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same experiment shrunk to run in seconds (the ``:smoke`` config argument)."""
    config.data.max_tokens = 2_000
    config.data.num_val = 500
    config.data.batch_size = 8
    config.data.num_steps = 10
    config.model.hidden_size = 32
    config.train.num_epochs = 3
    config.checkpoint.every_epochs = 1
    config.generate.num_chars = 20
    return config


@dataclasses.dataclass(frozen=True)
class DataConfig:
    paths: tuple[str, ...]
    preprocess: str
    tokenizer: str
    min_freq: int
    reserved_tokens: tuple[str, ...]
    max_tokens: int
    num_val: int
    batch_size: int
    num_steps: int
    sampler: str
    max_file_mb: int = 1024  # defaults: runs saved before these fields existed still load
    num_test: int = 0
    val_fraction: float = 0.0
    test_fraction: float = 0.0

    @property
    def by_fraction(self) -> bool:
        """Splits by fraction of each file (``val_fraction`` > 0) rather than by token count."""
        return self.val_fraction > 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    impl: str
    cell: str
    hidden_size: int
    num_layers: int
    activation: tuple[str, ...]
    dropout: float
    output_dropout: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    num_epochs: int
    optimizer: str
    learning_rate: float
    grad_clip: float
    weight_decay: float
    schedule: str
    warmup_steps: int
    progress: bool
    max_nonfinite: int
    layer_stats: bool = True  # defaults: runs saved before these fields existed still load
    profile_steps: int = 0
    early_stopping_patience: int = 0


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_epochs: int
    max_to_keep: int


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    num_devices: int
    cpu_devices: int = 1  # a default: runs saved before the field existed still load
    cpu_pipeline: bool = False
    pipeline_chunks: int = 5


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    prefixes: tuple[str, ...]
    num_chars: int


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    checkpoint: CheckpointConfig
    parallel: ParallelConfig
    generate: GenerateConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(ok: bool, field: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field} = {value!r} is not allowed: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _strings(v: Any) -> bool:
    return isinstance(v, tuple) and all(isinstance(x, str) for x in v)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _build(cls: type, d: dict[str, Any], prefix: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    unknown, missing = sorted(set(d) - names), sorted(names - set(d) - optional)
    if unknown:
        raise ConfigError(f"config.{prefix}{unknown[0]} is not a known field; known: {', '.join(sorted(names))}")
    if missing:
        raise ConfigError(f"config.{prefix}{missing[0]} is missing; start from rnnjax.config.default_config()")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# Fields a resumed run may change; any other difference from the run's config.json is refused.
RESUMABLE_CHANGES = ("train.num_epochs", "train.progress", "train.layer_stats", "train.profile_steps",
                     "train.early_stopping_patience",
                     "checkpoint.", "parallel.", "generate.", "data.max_file_mb")
# model.impl may change on resume between these (one params pytree, one optimizer state); not to "flax".
SAME_PARAMS_IMPLS = ("rnnjax", "autodiff", "cudnn")


def first_difference(saved: dict[str, Any], requested: dict[str, Any], prefix: str = "") -> str | None:
    """The first dotted field whose value differs between two config dicts (None: same)."""
    for key in sorted(set(saved) | set(requested)):
        name = f"{prefix}{key}"
        a, b = saved.get(key), requested.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_difference(a, b, name + ".")
            if found:
                return found
        elif (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            if name == "model.impl" and a in SAME_PARAMS_IMPLS and b in SAME_PARAMS_IMPLS:
                continue
            if not any(name == f or (f.endswith(".") and name.startswith(f)) for f in RESUMABLE_CHANGES):
                return name
    return None


def resolve(cfg: ml_collections.ConfigDict | dict[str, Any]) -> Config:
    """Validate every field and return the frozen :class:`Config`; raises :class:`ConfigError`."""
    d = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    d = {k: dict(v) if isinstance(v, (dict, ml_collections.ConfigDict)) else v for k, v in d.items()}
    act = d.get("model", {}).get("activation")
    if isinstance(act, str):
        d["model"]["activation"] = [act]
    groups = {
        "data": DataConfig, "model": ModelConfig, "train": TrainConfig,
        "checkpoint": CheckpointConfig, "parallel": ParallelConfig, "generate": GenerateConfig,
    }
    for name in set(d) - set(groups) - {"seed"}:
        raise ConfigError(f"config.{name} is not a known field; known: seed, {', '.join(groups)}")
    if "seed" not in d:
        raise ConfigError("config.seed is missing; start from rnnjax.config.default_config()")
    built = {k: _build(cls, d.get(k, {}), f"{k}.") for k, cls in groups.items()}
    c = Config(seed=d["seed"], **built)
    _validate(c)
    return c


class _Unset:
    """A value no check accepts: :func:`allowed` sets a field to it to read that field's rule."""

    def __repr__(self) -> str:
        return "?"


def allowed(field: str) -> str | None:
    """What ``field`` (dotted, e.g. ``"model.dropout"``) accepts, in the words of its validation
    message (``"a number in [0, 1)"``); None for a field without a rule of its own."""
    d = default_config().to_dict()
    *groups, leaf = field.split(".")
    node = d
    for g in groups:
        node = node.get(g) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        return None
    node[leaf] = _Unset()
    try:
        resolve(d)
    except ConfigError as e:
        head, sep, rule = str(e).partition(" is not allowed: ")
        return rule if sep and head == f"config.{field} = ?" else None
    except Exception:  # noqa: BLE001 - a check that cannot take the stand-in: no rule to quote
        return None
    return None


def _validate(c: Config) -> None:
    _check(_is_int(c.seed) and 0 <= c.seed < 2**32, "seed", c.seed, "an integer in [0, 2**32)")
    dt, m, t = c.data, c.model, c.train
    _check(_strings(dt.paths) and all(dt.paths), "data.paths", dt.paths, "a list of file paths")
    _check(dt.preprocess in ("d2l", "none"), "data.preprocess", dt.preprocess, "'d2l' or 'none'")
    _check(dt.tokenizer in ("char", "word"), "data.tokenizer", dt.tokenizer, "'char' or 'word'")
    _check(_is_int(dt.min_freq) and dt.min_freq >= 0, "data.min_freq", dt.min_freq, "an integer >= 0")
    _check(_strings(dt.reserved_tokens), "data.reserved_tokens", dt.reserved_tokens, "a list of strings")
    _check(_is_int(dt.max_tokens) and (dt.max_tokens >= 2 or dt.max_tokens == 0), "data.max_tokens", dt.max_tokens,
           "an integer >= 2, or 0 for every training token")
    _check(_is_int(dt.batch_size) and dt.batch_size >= 1, "data.batch_size", dt.batch_size, "an integer >= 1")
    _check(_is_int(dt.num_steps) and dt.num_steps >= 1, "data.num_steps", dt.num_steps, "an integer >= 1")
    _check(
        _is_int(dt.num_val) and dt.num_val >= dt.batch_size + 1,
        "data.num_val", dt.num_val, f"an integer >= data.batch_size + 1 = {dt.batch_size + 1}",
    )
    _check(
        _is_int(dt.num_test) and (dt.num_test == 0 or dt.num_test >= dt.batch_size + 1 or dt.val_fraction > 0),
        "data.num_test", dt.num_test, f"0 (no test split) or an integer >= data.batch_size + 1 = {dt.batch_size + 1}",
    )
    for name in ("val_fraction", "test_fraction"):
        v = getattr(dt, name)
        _check(_is_num(v) and 0 <= v < 1, f"data.{name}", v, "a number in [0, 1)")
    if dt.test_fraction > 0 and dt.val_fraction == 0:
        raise ConfigError("config.data.test_fraction needs config.data.val_fraction > 0 too (splits by fraction "
                          "always validate); set both, e.g. 0.05 and 0.05")
    _check(dt.val_fraction + dt.test_fraction < 0.9, "data.val_fraction", dt.val_fraction,
           f"with data.test_fraction = {dt.test_fraction}, they must leave at least 10% of each file to train")
    _check(dt.sampler in ("sequential", "random"), "data.sampler", dt.sampler, "'sequential' or 'random'")
    _check(_is_int(dt.max_file_mb) and dt.max_file_mb >= 1, "data.max_file_mb", dt.max_file_mb, "an integer >= 1 (MiB)")
    _check(m.impl in IMPLS, "model.impl", m.impl, "'rnnjax', 'autodiff', 'flax' or 'cudnn'")
    _check(m.cell in cells.names(), "model.cell", m.cell, "one of " + ", ".join(map(repr, cells.names())))
    _check(_is_int(m.hidden_size) and m.hidden_size >= 1, "model.hidden_size", m.hidden_size, "an integer >= 1")
    _check(_is_int(m.num_layers) and m.num_layers >= 1, "model.num_layers", m.num_layers, "an integer >= 1")
    _check(_strings(m.activation), "model.activation", m.activation, "'tanh' or 'relu', or a list with one per layer")
    acts = list(m.activation)
    _check(
        all(a in ("tanh", "relu") for a in acts) and len(acts) in (1, m.num_layers),
        "model.activation", acts[0] if len(acts) == 1 else acts,
        f"'tanh' or 'relu', or a list of them with one per layer ({m.num_layers})",
    )
    _check(_is_num(m.dropout) and 0 <= m.dropout < 1, "model.dropout", m.dropout, "a number in [0, 1)")
    _check(_is_num(m.output_dropout) and 0 <= m.output_dropout < 1, "model.output_dropout", m.output_dropout,
           "a number in [0, 1)")
    _check(_is_int(t.num_epochs) and t.num_epochs >= 1, "train.num_epochs", t.num_epochs, "an integer >= 1")
    _check(t.optimizer in ("sgd", "adam", "adamw"), "train.optimizer", t.optimizer, "'sgd', 'adam' or 'adamw'")
    _check(_is_num(t.learning_rate) and t.learning_rate > 0, "train.learning_rate", t.learning_rate, "a finite number > 0")
    _check(_is_num(t.grad_clip) and t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "a finite number >= 0 (0 = off)")
    _check(_is_num(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "a number >= 0")
    _check(t.schedule in ("constant", "warmup_cosine"), "train.schedule", t.schedule, "'constant' or 'warmup_cosine'")
    _check(_is_int(t.warmup_steps) and t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "an integer >= 0")
    _check(isinstance(t.progress, bool), "train.progress", t.progress, "True or False")
    _check(_is_int(t.max_nonfinite) and t.max_nonfinite >= 1, "train.max_nonfinite", t.max_nonfinite, "an integer >= 1")
    _check(isinstance(t.layer_stats, bool), "train.layer_stats", t.layer_stats, "True or False")
    _check(_is_int(t.profile_steps) and t.profile_steps >= 0, "train.profile_steps", t.profile_steps,
           "an integer >= 0 (0 = no profile)")
    _check(_is_int(t.early_stopping_patience) and t.early_stopping_patience >= 0, "train.early_stopping_patience",
           t.early_stopping_patience, "an integer >= 0 (epochs without a new best validation perplexity; 0 = off)")
    k = c.checkpoint
    _check(_is_int(k.every_epochs) and k.every_epochs >= 1, "checkpoint.every_epochs", k.every_epochs, "an integer >= 1")
    _check(_is_int(k.max_to_keep) and k.max_to_keep >= 1, "checkpoint.max_to_keep", k.max_to_keep, "an integer >= 1")
    p = c.parallel.num_devices
    _check(_is_int(p) and p >= 0, "parallel.num_devices", p, "an integer >= 0 (0 = all devices)")
    p = c.parallel.cpu_devices
    _check(_is_int(p) and p >= 0, "parallel.cpu_devices", p, "an integer >= 0 (1 = JAX's default, 0 = one per core)")
    p = c.parallel.cpu_pipeline
    _check(isinstance(p, bool), "parallel.cpu_pipeline", p, "True or False")
    if p and m.impl in ("flax", "cudnn"):
        raise ConfigError("config.parallel.cpu_pipeline needs rnnjax's stack; use model.impl = 'rnnjax' or 'autodiff'")
    p = c.parallel.pipeline_chunks
    _check(_is_int(p) and p >= 1, "parallel.pipeline_chunks", p, "an integer >= 1")
    g = c.generate
    _check(_strings(g.prefixes), "generate.prefixes", g.prefixes, "a list of strings")
    _check(_is_int(g.num_chars) and g.num_chars >= 0, "generate.num_chars", g.num_chars, "an integer >= 0")
    cells.check_supported(m.impl, m.cell)  # last: it imports the cell (and JAX), once every field is valid
