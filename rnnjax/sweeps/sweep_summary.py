"""A sweep's results, read back: the table (``sweep.md``, ``sweep.csv``) with a column per grid
axis, and the plot (``sweep.png``: best validation perplexity against depth per cell, seeds
aggregated). Reads only what :func:`rnnjax.sweeps.sweep.run_sweep` wrote; never trains.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import pathlib
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from rnnjax.rundir import workdir as rundir
from rnnjax.rundir.workdir import Key, WorkdirError, read_metrics, resolve_path, write_atomic
from rnnjax.sweeps.grid import SweepError

COLUMNS = [
    "name",
    "cell",
    "num_layers",
    "hidden_size",
    Key.IMPL,
    "num_params",
    Key.TRAIN_PPL,
    "best_val_ppl",
    "best_val_bpc",
    Key.BEST_EPOCH,
    Key.TEST_PPL,
    Key.TEST_BPC,
    Key.TOKENS_PER_SEC,
    Key.WALL_TIME,
    "status",
    "error",
]


STATUSES = ("done", "failed", "interrupted")
# The columns that hold numbers (or None: not measured): all but these.
_TEXT = ("name", "cell", Key.IMPL, "status", "error")
_NUMERIC = tuple(c for c in COLUMNS if c not in _TEXT)


def read_result(path: pathlib.Path) -> tuple[dict[str, Any] | None, str | None]:
    """A trial's ``result.json`` as ``(row, None)``, or ``(None, why)`` when it is damaged: not
    JSON, not an object, no ``name``/``status`` (one of :data:`STATUSES`), no ``cell`` or whole
    ``num_layers``, a number column that holds something else, ``overrides``/``metrics``/``test``
    that are not objects, or a metric that is not a number (or a list of them)."""
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return None, f"cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})"
    if not isinstance(row, dict):
        return None, f"holds a JSON {type(row).__name__}, not an object"
    if not isinstance(row.get("name"), str) or row.get("status") not in STATUSES:
        return None, "has no name, or no status of " + "/".join(STATUSES)
    if row["name"] != path.parent.name:
        return None, f"names trial {row['name']!r}, not its folder's {path.parent.name!r}"
    for c in _TEXT:
        if row.get(c) is not None and not isinstance(row[c], str):
            return None, f"{c} is {row[c]!r}, not text"
    for c in _NUMERIC:
        v = row.get(c)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return None, f"{c} is {v!r}, not a number"
    if not isinstance(row.get("cell"), str) or type(row.get("num_layers")) is not int:
        return None, "has no cell, or no whole num_layers (every trial records its model)"
    for c in ("overrides", "metrics", "test"):
        if row.get(c) is not None and not isinstance(row[c], dict):
            return None, f"{c} is not an object"
    for c in ("metrics", "test"):
        for k, v in (row.get(c) or {}).items():
            if not _number_or_numbers(v):
                return None, f"{c}.{k} is {v!r}, not a number"
    return row, None


def _number_or_numbers(v: Any) -> bool:
    """A metric's value: a number, null (not finite), or a list of them (per layer)."""
    if isinstance(v, list):
        return all(_number_or_numbers(x) and not isinstance(x, list) for x in v)
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


# Overridden fields that a standard column shows already.
_SHOWN = {
    "model.cell": "cell",
    "model.num_layers": "num_layers",
    "model.hidden_size": "hidden_size",
}


def trial_overrides(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each result row's overrides by full field name (``{"train.learning_rate": 1.0}``).

    Rows written before result.json stored ``overrides`` have them only by their last
    name among the other keys: such a name stands for the one full field of the other rows
    that ends with it, if there is exactly one, and for itself otherwise.
    """
    full: dict[str, set[str]] = {}
    for r in rows:
        for f in r.get("overrides") or {}:
            full.setdefault(f.split(".")[-1], set()).add(f)
    out = []
    for r in rows:
        if isinstance(r.get("overrides"), dict):
            out.append(dict(r["overrides"]))
        else:
            legacy = {
                k: v
                for k, v in r.items()
                if k not in COLUMNS and k not in ("overrides", "metrics", "test")
            }
            out.append(
                {(min(full[k]) if len(full.get(k, ())) == 1 else k): v for k, v in legacy.items()}
            )
    return out


def axis_columns(overrides: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The table column of every overridden field that no standard column shows: its last
    part (``learning_rate``) if no other field or column has that name, else the full field."""
    fields = list(dict.fromkeys(f for o in overrides for f in o if f not in _SHOWN))
    last = [f.split(".")[-1] for f in fields]
    return {f: n if last.count(n) == 1 and n not in COLUMNS else f for f, n in zip(fields, last)}


def sweep_results(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every trial's ``result.json`` under a sweep's ``workdir``, read and checked, in trial-name
    order: one dict per trial (``name``, ``status``, ``cell``, ``num_layers``, ``best_val_ppl``,
    ...; docs/sweeps.md lists the keys). Writes nothing. A damaged result.json is left out with a
    warning naming it; none readable, or no sweep there, is a :class:`SweepError` in one line."""
    root = resolve_path(workdir)
    return [row for row, _ in _read_all(root)]


def _read_all(root: pathlib.Path) -> list[tuple[dict[str, Any], pathlib.Path]]:
    """(row, path) of every readable trial result under the sweep directory ``root``."""
    hint = "give the directory a sweep wrote (its --workdir)"
    if not root.exists():
        raise SweepError(f"sweep directory {root} does not exist; {hint}")
    if not root.is_dir():
        raise SweepError(f"{root} is a file, not a sweep directory; {hint}")
    paths = sorted(root.glob(f"*/{rundir.RESULT}"))
    if not paths:
        if (root / rundir.RESULT).exists():
            raise SweepError(
                f"{root} is one trial's directory; give the sweep directory above it, {root.parent}"
            )
        raise SweepError(
            f"{root} holds no trial results (*/result.json); {hint}, after at least one trial "
            "finished"
        )
    read = {p: read_result(p) for p in paths}
    for p, (_, why) in read.items():
        if why:
            logging.warning(
                "%s %s: left out of the summary; delete it and rerun the sweep to redo that trial",
                p,
                why,
            )
    rows = [(row, p) for p, (row, _) in read.items() if row is not None]
    if not rows:
        first, (_, why) = next(iter(read.items()))
        raise SweepError(
            f"no trial result under {root} can be read ({first} {why}); delete the damaged "
            "result.json files and rerun the sweep to redo those trials"
        )
    return rows


def summarize(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Merge every trial's result.json under ``workdir`` (:func:`sweep_results`) into results.csv,
    results.md and sweep.png; returns the rows."""
    root = resolve_path(workdir)
    read = _read_all(root)
    paths = [p for _, p in read]
    rows = [row for row, _ in read]
    overrides = trial_overrides(rows)
    axes = axis_columns(overrides)  # field -> column
    k = COLUMNS.index("hidden_size") + 1  # the grid's other axes go after the model's shape
    header = [*COLUMNS[:k], *axes.values(), *COLUMNS[k:]]
    table = [
        {**{c: r.get(c) for c in COLUMNS}, **{c: o.get(f) for f, c in axes.items()}}
        for r, o in zip(rows, overrides)
    ]
    # Every metric of each trial's best epoch (result.json "metrics"), as "best_epoch.<name>" in the
    # CSV.
    metrics = list(dict.fromkeys(k for r in rows for k in (r.get("metrics") or {})))
    # and every test metric (result.json "test") that no standard column shows, under its name.
    tests = list(dict.fromkeys(k for r in rows for k in (r.get("test") or {}) if k not in COLUMNS))
    for t, r in zip(table, rows):
        t |= {f"best_epoch.{k}": (r.get("metrics") or {}).get(k) for k in metrics}
        t |= {k: (r.get("test") or {}).get(k) for k in tests}
    try:
        _write(root, rows, paths, table, header, metrics, tests)
    except (OSError, WorkdirError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SweepError(
            f"cannot write the summary in {root} ({why}); the trials' results are untouched: "
            "move aside what is in the way or make the folder writable, or summarize a copy"
        ) from None
    return rows


def aggregate_depth(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Best validation perplexity of the finished trials per cell, group and depth, over seeds.

    A trial's group is its overrides other than cell, depth and seed (``learning_rate=0.5``;
    "" when there are none): seeds are aggregated, every other axis keeps its own line.
    Returns ``[{"cell", "group", "num_layers", "mean", "min", "max", "n"}]`` sorted by them.
    """
    overrides = trial_overrides(rows)
    names = axis_columns(overrides)
    acc: dict[tuple[str, str, int], list[float]] = {}
    for r, o in zip(rows, overrides):
        if r.get("status") != "done" or r.get("best_val_ppl") is None:  # null: not finite
            continue
        other = [
            (f, v)
            for f, v in o.items()
            if f not in ("model.cell", "model.num_layers") and f.split(".")[-1] != "seed"
        ]
        group = ",".join(f"{names.get(f, f.split('.')[-1])}={v}" for f, v in other)
        acc.setdefault((r["cell"], group, r["num_layers"]), []).append(r["best_val_ppl"])
    return [
        {
            "cell": c,
            "group": g,
            "num_layers": n,
            "mean": statistics.fmean(v),
            "min": min(v),
            "max": max(v),
            "n": len(v),
        }
        for (c, g, n), v in sorted(acc.items())
    ]


def plot_sweep(rows: Sequence[Mapping[str, Any]], dirs: Sequence[pathlib.Path]):
    """A matplotlib Figure: mean best validation perplexity against depth (min-max band over
    seeds), one line per cell and group; and every finished trial's validation curve,
    coloured by cell. Uses no pyplot: the caller's backend (a notebook's) is left alone."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    a, b = fig.subplots(1, 2)
    agg = aggregate_depth(rows)
    color = {
        c: f"C{i % 10}"
        for i, c in enumerate(sorted({r["cell"] for r in rows if r.get("status") == "done"}))
    }
    groups = list(dict.fromkeys((e["cell"], e["group"]) for e in agg))
    for cell, group in groups:
        es = [e for e in agg if (e["cell"], e["group"]) == (cell, group)]
        x, n = [e["num_layers"] for e in es], max(e["n"] for e in es)
        style = ["-", "--", ":", "-."][[g for c, g in groups if c == cell].index(group) % 4]
        label = " ".join(filter(None, [cell, group, f"(n={n})" if n > 1 else ""]))
        a.plot(x, [e["mean"] for e in es], marker="o", color=color[cell], ls=style, label=label)
        if n > 1:
            a.fill_between(
                x,
                [e["min"] for e in es],
                [e["max"] for e in es],
                color=color[cell],
                alpha=0.15,
                lw=0,
            )
    a.set_xticks(sorted({e["num_layers"] for e in agg}))
    seeds = any(e["n"] > 1 for e in agg)
    a.set(
        xlabel="depth L (layers)",
        ylabel="best validation perplexity",
        title="validation perplexity vs depth"
        + (": mean, min-max band over seeds" if seeds else ""),
    )
    _legend(a)
    curves = 0
    for r, d in zip(rows, dirs):
        if r.get("status") != "done":
            continue
        try:
            metrics = read_metrics(d / rundir.METRICS)
        except (OSError, ValueError, WorkdirError) as e:
            logging.warning("%s: its validation curve is left out of sweep.png", e)
            continue
        val = [
            float("nan") if m[Key.VAL_PPL] is None else m[Key.VAL_PPL] for m in metrics
        ]  # null: not finite
        b.plot(
            [m[Key.EPOCH] for m in metrics],
            val,
            color=color[r["cell"]],
            lw=1,
            alpha=0.5 if len(rows) > 8 else 1.0,
        )
        curves += 1
    b.set(
        xlabel="epoch",
        ylabel="validation perplexity",
        yscale="log",
        title=f"validation curves of {curves} trials",
    )
    b.xaxis.set_major_locator(MaxNLocator(integer=True))
    if color:
        b.legend(
            handles=[Line2D([], [], color=c, label=cell) for cell, c in color.items()],
            fontsize=8,
            title="cell",
        )
    else:
        for ax in (a, b):
            ax.text(
                0.5, 0.5, "no finished trials", ha="center", va="center", transform=ax.transAxes
            )
    return fig


def _legend(ax, max_entries: int = 12) -> None:
    """A legend that stays readable: inside for a few entries, below the axes for more, at most
    max_entries."""
    handles, labels = ax.get_legend_handles_labels()
    if len(handles) > max_entries:
        more = len(handles) - max_entries + 1
        handles, labels = (
            handles[: max_entries - 1] + [ax.plot([], [], ls="none")[0]],
            labels[: max_entries - 1] + [f"... {more} more lines"],
        )
    if len(handles) <= 6:
        ax.legend(handles, labels, fontsize=8)
    elif handles:
        ax.legend(
            handles,
            labels,
            fontsize=7,
            ncol=2,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.15),
            frameon=False,
        )


def _write(
    root: pathlib.Path,
    rows: list[dict[str, Any]],
    paths: list[pathlib.Path],
    table: list[dict[str, Any]],
    header: list[str],
    metrics: list[str],
    tests: list[str],
) -> None:
    """results.csv, results.md and sweep.png (each written whole, never through a link)."""
    csv_text = io.StringIO(newline="")
    w = csv.DictWriter(
        csv_text, fieldnames=[*header, *(f"best_epoch.{k}" for k in metrics), *tests]
    )
    w.writeheader()
    w.writerows(table)
    write_atomic(root / rundir.RESULTS_CSV, csv_text.getvalue())

    def show(column: str, v: Any) -> str:
        text = f"{v:.3f}" if isinstance(v, float) and column in COLUMNS else str(v)
        return ("" if v is None else text).replace("|", "\\|")

    # The markdown shows only the columns some trial has (no test split: no test columns); the CSV
    # has all.
    cols = [
        c
        for c in header
        if c not in ("name", "error") and any(t[c] not in (None, "") for t in table)
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(show(c, t[c]) for c in cols) + " |" for t in table]
    notes = [
        f"- {r['name']} {r['status']}: {r.get('error')}"
        for r in rows
        if r.get("status") in ("failed", "interrupted")
    ]
    lines += ["", *notes] if notes else []
    write_atomic(root / rundir.RESULTS_MD, "\n".join(lines) + "\n")
    _plot(root / rundir.SWEEP_PLOT, rows, [p.parent for p in paths])


def _plot(
    path: pathlib.Path, rows: Sequence[Mapping[str, Any]], dirs: Sequence[pathlib.Path]
) -> None:
    fig = plot_sweep(rows, dirs)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
