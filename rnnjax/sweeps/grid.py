"""A sweep's grid as plain data: ``{"model.cell": ["gru", "lstm"], "model.num_layers": [1, 2]}``.

Its trials (every combination), their directory names (``cell=gru,num_layers=3``), the checks a
grid must pass before anything runs, a trial's config (the base with its overrides) and shards.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from rnnjax.config import ConfigError


class SweepError(ValueError):
    """A sweep that cannot run or be summarized as asked; the message says why and what to do."""


def trials(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order: [{"model.cell": "rnn", ...}, ...]."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


MAX_NAME = 200  # characters of a trial directory's name (file systems allow 255 bytes)


def trial_name(overrides: Mapping[str, Any]) -> str:
    """``cell=gru,num_layers=3``: the last part of each field, sanitised to [A-Za-z0-9._=,+-].

    When sanitising changed the name (``paths=__a_b.txt__`` from ``['a/b.txt']``) or it was
    too long, ``-`` and 6 hex digits of the overrides' sha256 are appended, so that values
    differing only in replaced characters still get their own directories.
    """
    raw = ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items()) or "base"
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", raw)
    name = "_" + name if name.startswith(".") else name
    if name != raw or len(name) > MAX_NAME:
        digest = hashlib.sha256(repr(dict(overrides)).encode()).hexdigest()[:6]
        name = f"{name[:MAX_NAME]}-{digest}"
    return name


def trial_dir(root: pathlib.Path, overrides: Mapping[str, Any]) -> pathlib.Path:
    path = (root / trial_name(overrides)).resolve()
    if path.parent != root.resolve():
        raise ValueError(f"trial directory {path} would be outside the sweep directory {root}")
    return path


def check_grid(grid: Any) -> None:
    """Refuse a grid that is not ``{field: [value, ...]}`` with at least one field and one value per
    field."""
    example = "e.g. {'model.cell': ['gru', 'lstm']}"
    if not isinstance(grid, Mapping) or not grid:
        raise SweepError(
            f"the sweep grid is empty: get_sweep() must return {{field: [values]}} with a field, "
            f"{example}"
        )
    for field, values in grid.items():
        if not isinstance(values, list):
            raise SweepError(
                f"sweep axis {field}: give a list of values, e.g. [{values!r}], not {values!r}"
            )
        if not values:
            raise SweepError(f"sweep axis {field} has no values; give at least one, {example}")


def check_names(grid: Mapping[str, Sequence[Any]]) -> None:
    """Refuse a grid in which two trials would write the same directory."""
    seen: dict[str, dict[str, Any]] = {}
    for t in trials(grid):
        name = trial_name(t)
        if name in seen:
            raise SweepError(
                f"sweep trials {_show(seen[name])} and {_show(t)} would both write the directory "
                f"{name!r}; remove the duplicate value from the grid"
            )
        seen[name] = t


def _show(overrides: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v!r}" for k, v in overrides.items()) or "{}"


def apply_overrides(
    base: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    cfg = copy.deepcopy(base)
    with cfg.unlocked():
        for field, value in overrides.items():
            *groups, leaf = field.split(".")
            node = cfg
            for g in groups:
                if g not in node:
                    raise ConfigError(f"sweep axis {field}: config has no group {g!r}")
                node = node[g]
            if leaf not in node:
                raise ConfigError(f"sweep axis {field}: config has no field {leaf!r}")
            try:
                node[leaf] = value
            except TypeError:  # a typed ml_collections field
                raise ConfigError(
                    f"sweep axis {field}: {value!r} is not allowed: {field} takes values of type "
                    f"{node.get_type(leaf).__name__}"
                ) from None
    return cfg


def parse_shard(shard: str) -> tuple[int, int]:
    """'i/n' -> (i, n), 0 <= i < n."""
    m = re.fullmatch(r"(\d+)/(\d+)", shard)
    if not m or not int(m[1]) < int(m[2]):
        raise ValueError(f"--shard={shard!r} is not allowed: give i/n with 0 <= i < n, e.g. 0/4")
    return int(m[1]), int(m[2])
