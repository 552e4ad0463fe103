"""A config field declared once: :class:`Field` holds its default, one-line doc and rule.

``rnnjax.config`` lists the fields of each group; the ``ConfigDict``, the frozen dataclasses,
validation, ``allowed()``, the command line's messages, what a resume may change and
``docs/config.md`` all derive from that list. Standard library only (no JAX).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any


class FrozenDict(dict):
    """A read-only, hashable dict: the frozen form of a dict field (``train.optimizer_kwargs``)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a frozen config field cannot change; use dataclasses.replace")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted((k, repr(v)) for k, v in self.items())))

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and deepcopy without __setitem__
        return (FrozenDict, (dict(self),))


def freeze(value: Any) -> Any:
    """The frozen form of a field's value: lists become tuples, dicts :class:`FrozenDict`."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Mapping):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    return value


def thaw(value: Any) -> Any:
    """The inverse of :func:`freeze` for dicts (``to_dict`` gives plain dicts, tuples stay)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(thaw(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field. ``rule`` says what it accepts, in the words of its error message (a
    function of the resolved config when it names another field); ``ok(value, config)``
    checks it."""

    name: str
    default: Any
    doc: str
    rule: str | Callable[[Any], str]
    ok: Callable[[Any, Any], bool]
    # May differ on resume from the run's config.json (a function: for these (saved, new) values).
    resumable: bool | Callable[[Any, Any], bool] = False
    added: bool = False  # added after runs were saved: a saved config without it takes the default
    convert: Callable[[Any], Any] = freeze  # the value in the frozen form
    show: Callable[[Any], Any] = lambda v: v  # the value as an error message quotes it
    literal: bool = False  # untyped in the ConfigDict: any Python literal on the command line
    # the weight of the loss term of the same name (rnnjax.training.steps.LOSS_TERMS; a train field,
    # 0 = off)
    loss_term: bool = False

    def rule_for(self, config: Any) -> str:
        return self.rule(config) if callable(self.rule) else self.rule

    def accepts(self, value: Any, config: Any = None) -> bool:
        try:
            return bool(self.ok(value, config))
        except (TypeError, ValueError, AttributeError):  # a value of another type than the rule's
            return False

    def may_change(self, saved: Any, requested: Any) -> bool:
        """May a resumed run change this field from ``saved`` to ``requested``?"""
        return self.resumable(saved, requested) if callable(self.resumable) else self.resumable


@dataclasses.dataclass(frozen=True)
class Rule:
    """A rule across fields: ``problem(config)`` is the one-line error, or None when it holds."""

    doc: str
    problem: Callable[[Any], str | None]
    last: bool = False  # checked once every field holds (it may import JAX: rnnjax.cells)


# Rule builders: Field(name, default, doc, **at_least(1)).


# Integers above this overflow where they become JAX's int32 (step counts, positions, schedules).
INT_LIMIT = 2**31


def is_int(v: Any) -> bool:
    """An integer (not a bool) of magnitude below :data:`INT_LIMIT`."""
    return isinstance(v, int) and not isinstance(v, bool) and -INT_LIMIT < v < INT_LIMIT


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(lo: int, note: str = "") -> dict[str, Any]:
    """An integer >= lo; ``note`` explains a special value, e.g. ``"0 = off"``."""
    rule = f"an integer >= {lo}" + (f" ({note})" if note else "")
    return {"rule": rule, "ok": lambda v, c: is_int(v) and v >= lo}


def one_of(*values: str) -> dict[str, Any]:
    words = [repr(v) for v in values]
    rule = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
    return {"rule": rule, "ok": lambda v, c: isinstance(v, str) and v in values}


def boolean() -> dict[str, Any]:
    return {"rule": "True or False", "ok": lambda v, c: isinstance(v, bool)}


def fraction() -> dict[str, Any]:
    return {"rule": "a number in [0, 1)", "ok": lambda v, c: is_num(v) and 0 <= v < 1}


def real(rule: str, ok: Callable[[float], bool]) -> dict[str, Any]:
    """A finite number for which ``ok`` holds."""
    return {"rule": rule, "ok": lambda v, c: is_num(v) and ok(v)}


def strings(rule: str = "a list of strings", nonempty: bool = False) -> dict[str, Any]:
    return {
        "rule": rule,
        "ok": lambda v, c: (
            isinstance(v, tuple) and all(isinstance(x, str) and (x or not nonempty) for x in v)
        ),
    }


def annotation(f: Field) -> Any:
    """The frozen dataclass's type for a field (documentation only)."""
    d = f.convert(f.default)
    if isinstance(d, tuple):
        return tuple[str, ...]
    if isinstance(d, Mapping):
        return Mapping[str, Any]
    return type(d)
