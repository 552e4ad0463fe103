"""Configuration: every field declared once, the default ``ConfigDict`` and its frozen form.

Each field is one :class:`~rnnjax.config.fields.Field` (default, one-line doc, rule), declared in
its group's module (``data_fields``, ``model_fields``, ``train_fields``). From these lists come
:func:`default_config` (the ``ConfigDict`` that ``configs/*.py`` start from), the frozen dataclasses
(:class:`Config`, ``cfg.model.cell``), :func:`resolve`'s checks, :func:`allowed`, the command line's
messages, what a resume may change and ``docs/config.md`` (``python -m rnnjax.config.config_doc``).
Nothing inside jitted code ever sees a ``ConfigDict``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from rnnjax.config import data_fields, model_fields, train_fields
from rnnjax.config.fields import INT_LIMIT, Field, Rule, annotation, thaw
from rnnjax.config.model_fields import IMPLS, SAME_PARAMS_IMPLS
from rnnjax.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "CheckpointConfig",
    "ParallelConfig",
    "GenerateConfig",
    "FIELDS",
    "GROUPS",
    "IMPLS",
    "SAME_PARAMS_IMPLS",
    "RESUMABLE_CHANGES",
    "SEED",
    "allowed",
    "default_config",
    "first_difference",
    "resolve",
    "smoke",
    "variant",
]

SEED = Field(
    "seed",
    0,
    "Seed for parameter init, the samplers' offsets and dropout.",
    "an integer in [0, 2**32)",
    lambda v, c: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32,
)


# The groups in order (each module declares its own): their fields and cross-field rules.
GROUPS: dict[str, tuple[str, list[Field | Rule]]] = {
    **data_fields.GROUPS,
    **model_fields.GROUPS,
    **train_fields.GROUPS,
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
    config.train.max_steps, config.train.max_minutes = 0, 0.0  # 3 epochs, not a budget
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
            shown, rule = item.show(value), item.rule_for(c)
            if type(value) is int and abs(value) >= INT_LIMIT and item is not SEED:
                rule += " below 2**31"  # rnnjax.config.fields.is_int: JAX's int32 holds no more
            raise ConfigError(f"config.{name} = {shown!r} is not allowed: {rule}")


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
