"""Configuration: every field declared once, the default ``ConfigDict`` and its frozen form.

Each field is one :class:`~rnnjax.fields.Field` below (default, one-line doc, rule). From these
lists come :func:`default_config` (the ``ConfigDict`` that ``configs/*.py`` start from), the frozen
dataclasses (:class:`Config`, ``cfg.model.cell``), :func:`resolve`'s checks, :func:`allowed`, the
command line's messages, what a resume may change and ``docs/config.md``
(``python -m rnnjax.config_doc``). Nothing inside jitted code ever sees a ``ConfigDict``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from rnnjax import cells
from rnnjax.errors import ConfigError
from rnnjax.fields import (
    Field,
    Rule,
    annotation,
    at_least,
    boolean,
    fraction,
    is_int,
    one_of,
    real,
    strings,
    thaw,
)

IMPLS = ("rnnjax", "autodiff", "flax", "cudnn", "native")  # rnnjax.model.Impl's values (no JAX)
# model.impl may change on resume among these (one params pytree, one optimizer state).
SAME_PARAMS_IMPLS = ("rnnjax", "autodiff", "cudnn", "native")


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


def _num_val_rule(c: Any) -> str:
    return f"an integer >= data.batch_size + 1 = {c.data.batch_size + 1}"


def _num_test_rule(c: Any) -> str:
    return f"0 (no test split) or an integer >= data.batch_size + 1 = {c.data.batch_size + 1}"


def _num_test_ok(v: Any, c: Any) -> bool:
    return is_int(v) and (v == 0 or v >= c.data.batch_size + 1 or c.data.val_fraction > 0)


def _test_needs_val(c: Any) -> str | None:
    if c.data.test_fraction > 0 and c.data.val_fraction == 0:
        return (
            "config.data.test_fraction needs config.data.val_fraction > 0 too (splits by "
            "fraction always validate); set both, e.g. 0.05 and 0.05"
        )
    return None


def _fractions_leave_training(c: Any) -> str | None:
    dt = c.data
    if dt.val_fraction + dt.test_fraction < 0.9:
        return None
    return (
        f"config.data.val_fraction = {dt.val_fraction!r} is not allowed: with "
        f"data.test_fraction = {dt.test_fraction}, they must leave at least 10% of each file "
        "to train"
    )


def _cell_and_impl(c: Any) -> str | None:
    """The implementation can run the cell (each cell declares what it has: rnnjax.cells)."""
    try:
        cells.check_supported(c.model.impl, c.model.cell)
    except ConfigError as e:
        return str(e)
    return None


def _pipeline_needs_our_stack(c: Any) -> str | None:
    if c.parallel.cpu_pipeline and c.model.impl in ("flax", "cudnn"):
        return (
            "config.parallel.cpu_pipeline needs rnnjax's stack; "
            "use model.impl = 'rnnjax' or 'autodiff'"
        )
    return None


def _kwargs_ok(v: Any, c: Any) -> bool:
    return isinstance(v, Mapping) and all(isinstance(k, str) and k.isidentifier() for k in v)


def _kwargs_not_hyperparams(c: Any) -> str | None:
    for name in ("learning_rate", "weight_decay"):
        if name in c.train.optimizer_kwargs:
            return (
                f"config.train.optimizer_kwargs sets {name}; set config.train.{name} instead "
                "(the schedule and the vectorized sweeps read it there)"
            )
    return None


SEED = Field(
    "seed",
    0,
    "Seed for parameter init, the samplers' offsets and dropout.",
    "an integer in [0, 2**32)",
    lambda v, c: is_int(v) and 0 <= v < 2**32,
)

# Each group: its one-line doc, then its fields and cross-field rules, checked in this order.
GROUPS: dict[str, tuple[str, list[Field | Rule]]] = {
    "data": (
        "The corpus, its splits and the minibatches (rnnjax/data.py).",
        [
            Field(
                "paths",
                [],
                "UTF-8 text files, concatenated in order; [] = the bundled Time Machine.",
                "a list of file paths",
                lambda v, c: strings()["ok"](v, c) and all(v),
            ),
            Field(
                "preprocess",
                "d2l",
                "'d2l': every run of non-letters -> one space, then lower-case; 'none': raw text.",
                **one_of("d2l", "none"),
            ),
            Field(
                "tokenizer",
                "char",
                "'char' or 'word' (whitespace-separated) tokens.",
                **one_of("char", "word"),
            ),
            Field(
                "min_freq",
                0,
                "Tokens seen fewer times than this in the training split map to <unk>.",
                **at_least(0),
            ),
            Field(
                "reserved_tokens",
                [],
                "Extra tokens always in the vocabulary (e.g. ['<pad>']).",
                **strings(),
            ),
            Field("batch_size", 32, "Streams per minibatch: [batch, time] rows.", **at_least(1)),
            Field(
                "num_steps", 35, "Time steps per minibatch: [batch, time] columns.", **at_least(1)
            ),
            Field(
                "max_tokens",
                10_000,
                "Splits by count (d2l's): the first max_tokens tokens train "
                "(0: every token before the held-out ones).",
                "an integer >= 2, or 0 for every training token",
                lambda v, c: is_int(v) and (v >= 2 or v == 0),
            ),
            Field(
                "num_val",
                5_000,
                "The next num_val tokens validate (ignored when val_fraction > 0).",
                _num_val_rule,
                lambda v, c: is_int(v) and v >= c.data.batch_size + 1,
            ),
            Field(
                "num_test",
                0,
                "The next num_test tokens test; 0 = no test split (ignored when val_fraction > 0).",
                _num_test_rule,
                _num_test_ok,
                added=True,
            ),
            Field(
                "val_fraction",
                0.0,
                "Splits by fraction when > 0: the val_fraction of each file before its test part "
                "validates, the rest trains (capped at max_tokens unless 0); several files are then "
                "also evaluated per file.",
                **fraction(),
                added=True,
            ),
            Field(
                "test_fraction",
                0.0,
                "With val_fraction > 0: the last test_fraction of each file tests.",
                **fraction(),
                added=True,
            ),
            Rule("test_fraction needs val_fraction > 0.", _test_needs_val),
            Rule(
                "val_fraction + test_fraction leave at least 10% of each file to train.",
                _fractions_leave_training,
            ),
            Field(
                "sampler",
                "sequential",
                "'sequential' (carry kept across minibatches) or 'random' (carry reset each "
                "minibatch).",
                **one_of("sequential", "random"),
            ),
            Field(
                "max_file_mb",
                1024,
                "Refuse a text file larger than this many MiB (a guard against a wrong path); raise "
                "it for big corpora.",
                "an integer >= 1 (MiB)",
                lambda v, c: is_int(v) and v >= 1,
                resumable=True,
                added=True,
            ),
        ],
    ),
    "model": (
        "The network (rnnjax/model.py).",
        [
            Field(
                "impl",
                "rnnjax",
                "'rnnjax' (pure-function cells, hand-written backward), 'autodiff' (the same cells, "
                "lax.scan differentiated by JAX), 'flax' (Flax's own cells; the reference) or "
                "'cudnn': rnnjax.model.Impl; same numbers.",
                **one_of(*IMPLS),
                resumable=lambda a, b: a in SAME_PARAMS_IMPLS and b in SAME_PARAMS_IMPLS,
            ),
            Field(
                "cell",
                "lstm",
                "A registered cell (rnnjax/cells/, docs/cells.md): 'rnn', 'gru', 'lstm', 'indrnn', "
                "or the parallel-scan cells 'mingru', 'minlstm' (no recurrent weights).",
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
        ],
    ),
    "train": (
        "The optimizer and the training loop (rnnjax/optim.py, rnnjax/train.py).",
        [
            Field(
                "num_epochs", 500, "Passes over the training split.", **at_least(1), resumable=True
            ),
            Field(
                "optimizer",
                "sgd",
                "Any optax optimizer by name: 'sgd', 'adam', 'adamw', 'lion', ... (a function in "
                "optax that takes learning_rate; checked by rnnjax.optim before training).",
                "the name of an optax optimizer, e.g. 'sgd', 'adam', 'adamw' or 'lion'",
                lambda v, c: isinstance(v, str) and v.isidentifier(),
            ),
            Field(
                "optimizer_kwargs",
                {},
                "Further keyword arguments of the optax optimizer, e.g. {'b1': 0.95}; on the "
                "command line --config.train.optimizer_kwargs=\"{'b1': 0.95}\".",
                "a dict of keyword arguments, e.g. {'b1': 0.95}",
                _kwargs_ok,
                added=True,
            ),
            Rule(
                "optimizer_kwargs sets neither learning_rate nor weight_decay.",
                _kwargs_not_hyperparams,
            ),
            Field(
                "learning_rate",
                2.0,
                "Peak learning rate.",
                **real("a finite number > 0", lambda v: v > 0),
            ),
            Field(
                "grad_clip",
                1.0,
                "Clip gradients to this global norm before the update (0 = no clipping).",
                **real("a finite number >= 0 (0 = off)", lambda v: v >= 0),
            ),
            Field(
                "weight_decay",
                0.0,
                "Decoupled weight decay, for optimizers that take weight_decay (adamw, lion, ...).",
                **real("a number >= 0", lambda v: v >= 0),
            ),
            Field(
                "schedule",
                "constant",
                "'constant' or 'warmup_cosine' (linear warm-up for warmup_steps, then cosine to 0).",
                **one_of("constant", "warmup_cosine"),
            ),
            Field("warmup_steps", 0, "Warm-up steps of 'warmup_cosine'.", **at_least(0)),
            Field("progress", True, "Show a tqdm progress bar.", **boolean(), resumable=True),
            Field(
                "max_nonfinite",
                10,
                "Abort after this many consecutive non-finite steps (each one is skipped, not "
                "applied).",
                **at_least(1),
            ),
            Field(
                "layer_stats",
                True,
                "Per-layer statistics each epoch (metrics.jsonl, TensorBoard): gradient norms, "
                "hidden-state RMS, gate saturation, forget gate.",
                **boolean(),
                resumable=True,
                added=True,
            ),
            Field(
                "profile_steps",
                0,
                "Capture a jax.profiler trace of this many training steps, after the first "
                "(compiled) one, into WORKDIR/profile/; 0 = off.",
                **at_least(0, "0 = no profile"),
                resumable=True,
                added=True,
            ),
            Field(
                "early_stopping_patience",
                0,
                "Stop after this many epochs without a new best validation perplexity (0 = off); "
                "every new best epoch is then checkpointed and the end-of-run samples come from it.",
                **at_least(0, "epochs without a new best validation perplexity; 0 = off"),
                resumable=True,
                added=True,
            ),
        ],
    ),
    "checkpoint": (
        "Checkpoints in WORKDIR/checkpoints (rnnjax/checkpoint.py).",
        [
            Field(
                "every_epochs",
                10,
                "Save every this many epochs (and always after the last epoch).",
                **at_least(1),
                resumable=True,
            ),
            Field(
                "max_to_keep",
                3,
                "Keep this many latest checkpoints, plus the one with the best validation "
                "perplexity.",
                **at_least(1),
                resumable=True,
            ),
            Field(
                "every_minutes",
                0.0,
                "Also save mid-epoch once this many minutes have passed since the last save, so a "
                "kill during a long epoch loses at most that much (0 = off).",
                **real("a number >= 0 (0 = off)", lambda v: v >= 0),
                resumable=True,
                added=True,
            ),
        ],
    ),
    "parallel": (
        "Devices (rnnjax/parallel.py, rnnjax/pipeline.py; BENCHMARKS.md).",
        [
            Field(
                "num_devices",
                0,
                "Data-parallel devices (across all processes); 0 = all. data.batch_size must "
                "divide by it.",
                **at_least(0, "0 = all devices"),
                resumable=True,
            ),
            Field(
                "cpu_devices",
                1,
                "CPU only: split this host's cores into this many JAX devices and train "
                "data-parallel over them; 1 = JAX's default, 0 = one per core (or the largest "
                "count that divides data.batch_size).",
                **at_least(0, "1 = JAX's default, 0 = one per core"),
                resumable=True,
                added=True,
            ),
            Field(
                "cpu_pipeline",
                False,
                "CPU only: run the layers as a pipeline over this host's CPU devices (same numbers "
                "as the plain stack; measured slower on 2 cores).",
                **boolean(),
                resumable=True,
                added=True,
            ),
            Rule("cpu_pipeline needs rnnjax's stack.", _pipeline_needs_our_stack),
            Field(
                "pipeline_chunks",
                5,
                "Time chunks per sequence for the pipeline (the divisor of data.num_steps nearest "
                "it).",
                **at_least(1),
                resumable=True,
                added=True,
            ),
        ],
    ),
    "generate": (
        "The greedy samples printed (and saved to samples.txt) after training.",
        [
            Field(
                "prefixes",
                ["time traveller", "traveller"],
                "Prompts to continue; [] = no samples.",
                **strings("a list of non-empty strings", nonempty=True),
                resumable=True,
            ),
            Field(
                "num_chars",
                50,
                "Tokens generated after each prefix (rnnjax.sampling's rule too).",
                **at_least(1),
                resumable=True,
            ),
        ],
    ),
}

# Every field by its dotted name ("seed", "model.cell").
FIELDS: dict[str, Field] = {
    "seed": SEED,
    **{
        f"{g}.{f.name}": f
        for g, (_, items) in GROUPS.items()
        for f in items
        if isinstance(f, Field)
    },
}
# Fields a resumed run may change; any other difference from the run's config.json is refused.
RESUMABLE_CHANGES = tuple(name for name, f in FIELDS.items() if f.resumable is True)


def _config_value(f: Field) -> Any:
    if f.literal:
        return config_dict.FieldReference(f.default, field_type=object)
    if isinstance(f.default, Mapping):
        return ml_collections.ConfigDict(dict(f.default))
    return list(f.default) if isinstance(f.default, list) else f.default


def default_config() -> ml_collections.ConfigDict:
    """The reference experiment: 2-layer LSTM, hidden 256, on The Time Machine."""
    c = ml_collections.ConfigDict()
    c.seed = SEED.default
    for group, (_, items) in GROUPS.items():
        c[group] = ml_collections.ConfigDict()
        for f in items:
            if isinstance(f, Field):
                c[group][f.name] = _config_value(f)
    return c


def variant(
    config: ml_collections.ConfigDict, arg: str | None, **variants
) -> ml_collections.ConfigDict:
    """Apply the variant named by a config file's argument (``configs/x.py:smoke``).

    ``variants`` maps names to functions that change the config; ``None`` (no argument)
    returns ``config`` unchanged, and an unknown name raises :class:`ConfigError`.
    """
    variants.setdefault("smoke", smoke)
    if not arg:
        return config
    if arg not in variants:
        raise ConfigError(
            f"config variant {arg!r} does not exist; variants: {', '.join(sorted(variants))}"
        )
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


def _dataclass(name: str, fields: list[tuple[str, Any, Any]], doc: str, **namespace: Any) -> type:
    """A frozen, keyword-only dataclass in this module (picklable, printable)."""
    cls = dataclasses.make_dataclass(name, fields, frozen=True, kw_only=True, namespace=namespace)
    cls.__module__, cls.__qualname__, cls.__doc__ = __name__, name, doc
    return cls


def _group_class(group: str) -> type:
    doc, items = GROUPS[group]
    spec = [
        (
            f.name,
            annotation(f),
            dataclasses.field(default=f.convert(f.default)) if f.added else dataclasses.field(),
        )
        for f in items
        if isinstance(f, Field)
    ]
    extra = {}
    if group == "data":
        extra["by_fraction"] = property(
            lambda self: self.val_fraction > 0,
            doc="Splits by fraction of each file (val_fraction > 0), not by count.",
        )
    return _dataclass(f"{group.capitalize()}Config", spec, doc, **extra)


DataConfig = _group_class("data")
ModelConfig = _group_class("model")
TrainConfig = _group_class("train")
CheckpointConfig = _group_class("checkpoint")
ParallelConfig = _group_class("parallel")
GenerateConfig = _group_class("generate")
_CLASSES = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "checkpoint": CheckpointConfig,
    "parallel": ParallelConfig,
    "generate": GenerateConfig,
}
assert set(_CLASSES) == set(GROUPS)


def _to_dict(self: Any) -> dict[str, Any]:
    """The config as plain dicts (lists as tuples), as ``config.json`` stores it."""
    return thaw(dataclasses.asdict(self))


Config = _dataclass(
    "Config",
    [("seed", int), *((g, cls) for g, cls in _CLASSES.items())],
    "A validated config: ``cfg.model.cell``; built by :func:`resolve`.",
    to_dict=_to_dict,
)


def _build(group: str, d: Any) -> Any:
    doc, items = GROUPS[group]
    fields = {f.name: f for f in items if isinstance(f, Field)}
    if not isinstance(d, Mapping):
        raise ConfigError(
            f"config.{group} = {d!r} is not allowed: a group of fields; start from "
            "rnnjax.config.default_config()"
        )
    unknown = sorted(set(d) - set(fields))
    missing = sorted(n for n, f in fields.items() if n not in d and not f.added)
    if unknown:
        raise ConfigError(
            f"config.{group}.{unknown[0]} is not a known field; known: {', '.join(sorted(fields))}"
        )
    if missing:
        raise ConfigError(
            f"config.{group}.{missing[0]} is missing; start from rnnjax.config.default_config()"
        )
    return _CLASSES[group](**{k: fields[k].convert(v) for k, v in d.items()})


def resolve(cfg: ml_collections.ConfigDict | Mapping[str, Any]) -> Config:
    """Validate every field and return the frozen :class:`Config`; raises :class:`ConfigError`."""
    d = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    d = {k: v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v for k, v in d.items()}
    for name in sorted(set(d) - set(GROUPS) - {"seed"}):
        raise ConfigError(f"config.{name} is not a known field; known: seed, {', '.join(GROUPS)}")
    if "seed" not in d:
        raise ConfigError("config.seed is missing; start from rnnjax.config.default_config()")
    c = Config(seed=d["seed"], **{g: _build(g, d.get(g, {})) for g in GROUPS})
    _validate(c)
    return c


def _validate(c: Config) -> None:
    """Every field's and cross-field rule in declaration order (rules marked ``last`` after them);
    the first failure raises."""
    checks = [("seed", SEED)] + [(g, item) for g, (_, items) in GROUPS.items() for item in items]
    checks = [x for x in checks if not getattr(x[1], "last", False)] + [
        x for x in checks if getattr(x[1], "last", False)
    ]
    for group, item in checks:
        if isinstance(item, Rule):
            problem = item.problem(c)
            if problem:
                raise ConfigError(problem)
            continue
        value = getattr(getattr(c, group), item.name) if item is not SEED else c.seed
        if not item.accepts(value, c):
            name = item.name if item is SEED else f"{group}.{item.name}"
            shown = item.show(value)
            raise ConfigError(f"config.{name} = {shown!r} is not allowed: {item.rule_for(c)}")


@functools.cache
def _default_resolved() -> Config:
    """The defaults, frozen without validation (the rules' texts read it; no JAX import)."""
    d = default_config().to_dict()
    return Config(seed=d["seed"], **{g: _build(g, d.get(g, {})) for g in GROUPS})


def allowed(field: str) -> str | None:
    """What ``field`` (dotted, e.g. ``"model.dropout"``) accepts, in the words of its validation
    message (``"a number in [0, 1)"``); None for an unknown field."""
    f = FIELDS.get(field)
    return f.rule_for(_default_resolved()) if f else None


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


def first_difference(
    saved: dict[str, Any], requested: dict[str, Any], prefix: str = ""
) -> str | None:
    """The first dotted field whose value differs between two config dicts in a way a resumed run
    may not change (each field's ``resumable``); None: none."""
    for key in sorted(set(saved) | set(requested)):
        name = f"{prefix}{key}"
        a, b = saved.get(key), requested.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping) and name not in FIELDS:
            found = first_difference(dict(a), dict(b), name + ".")
            if found:
                return found
        elif _plain(a) != _plain(b):
            f = FIELDS.get(name)
            if f is None or not f.may_change(a, b):
                return name
    return None
