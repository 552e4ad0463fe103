"""Sweeps: a grid of config overrides, one run directory per trial, resumable and shardable.

A grid is plain data: ``{"model.cell": ["rnn", "gru", "lstm"], "model.num_layers": [1, 2]}``.
Each trial is the base config with one combination set (as config overrides, never as
generated files) and trains into ``DIR/<name>`` where the name is built from the
overrides (``cell=gru,num_layers=3``). Finished trials (``result.json``) are skipped,
interrupted ones resume from their checkpoints, failed ones record their error and the
sweep goes on. SIGTERM/SIGINT stop the sweep: the running trial is recorded "interrupted"
(its checkpoint kept) and :class:`SweepInterrupted` is raised; running the sweep again
resumes it.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import itertools
import json
import os
import pathlib
import re
import signal
import socket
import statistics
import threading
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import tqdm

from rnnjax.config import ConfigError, resolve
from rnnjax.console import Preempted
from rnnjax.host import retain_freed_memory
from rnnjax.train import train_and_evaluate
from rnnjax.workdir import WorkdirError, check_writable, has_checkpoint, read_metrics, write_atomic
from rnnjax.workdir import resolve as user_path

COLUMNS = ["name", "cell", "num_layers", "hidden_size", "num_params", "train_ppl", "best_val_ppl", "tokens_per_sec",
           "wall_time", "status", "error"]


class SweepError(ValueError):
    """A sweep that cannot run or be summarized as asked; the message says why and what to do."""


class SweepInterrupted(Exception):
    """SIGTERM or SIGINT stopped the sweep: the running trials are recorded "interrupted" and
    no other trial was started. ``rows``: the result rows recorded (or found done) so far."""

    def __init__(self, signum: int, rows: list[dict[str, Any]], total: int):
        self.signum, self.rows = signum, rows
        done = sum(r["status"] == "done" for r in rows)
        stopped = [r["name"] for r in rows if r["status"] == "interrupted"]
        super().__init__(
            f"stopped by {signal.Signals(signum).name} with {done} of {total} trials done"
            + (f", {', '.join(stopped)} interrupted" if stopped else "") + "; rerun the same command to resume"
        )


class _Signal(BaseException):
    """Raised by the sweep's own SIGTERM/SIGINT handler (outside train_and_evaluate's)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _StopOnSignals:
    """While the sweep runs, the first SIGTERM/SIGINT raises :class:`_Signal` where the sweep is
    (a vectorized group, between trials); later ones are ignored while it records and stops.

    train_and_evaluate installs its own handler while it trains (it saves a checkpoint and
    raises Preempted) and puts this one back; a signal it took without raising (after its
    last check) is still seen by :meth:`received`, from the wakeup fd that the interpreter
    writes every signal number to, whichever Python handler runs. Main thread only, as
    signal handlers are.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.stopping = False
        self._old: dict[int, Any] = {}
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._old_fd = -1

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._wakeup = socket.socketpair()
            for sock in self._wakeup:
                sock.setblocking(False)
            self._old_fd = signal.set_wakeup_fd(self._wakeup[1].fileno(), warn_on_full_buffer=False)
            self._old = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if not self.stopping:
            self.stopping = True
            raise _Signal(signum)

    def received(self) -> int | None:
        """The first SIGTERM/SIGINT that arrived since the last call, if any."""
        data = b""
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := self._wakeup[0].recv(4096) if self._wakeup else b"":
                data += chunk
        return next((b for b in data if b in self.SIGNALS), None)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._wakeup:
            signal.set_wakeup_fd(self._old_fd)
            for sock in self._wakeup:
                sock.close()


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
    """Refuse a grid that is not ``{field: [value, ...]}`` with at least one field and one value per field."""
    example = "e.g. {'model.cell': ['gru', 'lstm']}"
    if not isinstance(grid, Mapping) or not grid:
        raise SweepError(f"the sweep grid is empty: get_sweep() must return {{field: [values]}} with a field, {example}")
    for field, values in grid.items():
        if not isinstance(values, list):
            raise SweepError(f"sweep axis {field}: give a list of values, e.g. [{values!r}], not {values!r}")
        if not values:
            raise SweepError(f"sweep axis {field} has no values; give at least one, {example}")


def check_names(grid: Mapping[str, Sequence[Any]]) -> None:
    """Refuse a grid in which two trials would write the same directory."""
    seen: dict[str, dict[str, Any]] = {}
    for t in trials(grid):
        name = trial_name(t)
        if name in seen:
            raise SweepError(
                f"sweep trials {_show(seen[name])} and {_show(t)} would both write the directory {name!r}; "
                "remove the duplicate value from the grid"
            )
        seen[name] = t


def _show(overrides: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v!r}" for k, v in overrides.items()) or "{}"


def apply_overrides(base: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
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
                    f"sweep axis {field}: {value!r} is not allowed: {field} takes values of type {node.get_type(leaf).__name__}"
                ) from None
    return cfg


def parse_shard(shard: str) -> tuple[int, int]:
    """'i/n' -> (i, n), 0 <= i < n."""
    m = re.fullmatch(r"(\d+)/(\d+)", shard)
    if not m or not int(m[1]) < int(m[2]):
        raise ValueError(f"--shard={shard!r} is not allowed: give i/n with 0 <= i < n, e.g. 0/4")
    return int(m[1]), int(m[2])


def _resume_mode(d: pathlib.Path) -> str:
    """A trial that failed before its first checkpoint starts over (its old files kept in discarded/);
    every other trial resumes from its checkpoint if it has one."""
    result = d / "result.json"
    failed = result.exists() and json.loads(result.read_text()).get("status") == "failed"
    return "restart" if failed and not has_checkpoint(d) else "auto"


def run_sweep(
    base: ml_collections.ConfigDict, grid: Mapping[str, Sequence[Any]], workdir: str | os.PathLike, shard: str = "0/1",
    vectorize: bool = False,
) -> list[dict[str, Any]]:
    """Run this shard's trials (trial k belongs to shard k mod n); returns their result rows.

    ``vectorize``: trials that differ only in seed, learning rate or weight decay train
    together as one vmapped program (see :mod:`rnnjax.vectorize`).
    """
    from rnnjax.vectorize import shape_key, train_vectorized

    root = user_path(workdir)
    check_writable(root)  # a file, or under a file, or read-only: one line, nothing created
    i, n = parse_shard(shard)
    check_grid(grid)
    check_names(grid)
    mine = [t for k, t in enumerate(trials(grid)) if k % n == i]
    cfgs = {}
    for k, t in enumerate(mine):  # every override must resolve before anything runs
        cfg = apply_overrides(base, t)
        cfg.train.progress = False
        cfgs[k] = resolve(cfg)
        trial_dir(root, t)
    root.mkdir(parents=True, exist_ok=True)
    retain_freed_memory()  # one-by-one trials get it from train_and_evaluate, vmapped groups from here
    rows: dict[int, dict[str, Any]] = {}
    pending: dict[str, list[int]] = {}
    for k, t in enumerate(mine):
        result_path = trial_dir(root, t) / "result.json"
        if result_path.exists() and json.loads(result_path.read_text())["status"] == "done":
            rows[k] = json.loads(result_path.read_text())
        else:
            pending.setdefault(shape_key(cfgs[k]) if vectorize else str(k), []).append(k)
    counts = {"done": 0, "failed": 0, "skipped": len(rows)}
    signum = None
    bar = tqdm.tqdm(total=len(mine), initial=len(rows), desc="sweep", unit="trial")
    with _StopOnSignals() as stop, contextlib.closing(bar):
        try:
            for group in pending.values():
                dirs = [trial_dir(root, mine[k]) for k in group]
                bar.set_postfix(running=",".join(d.name for d in dirs)[:60], **counts)
                try:
                    if len(group) == 1:
                        summaries = [train_and_evaluate(cfgs[group[0]], dirs[0], resume=_resume_mode(dirs[0]))]
                    else:
                        summaries = train_vectorized([cfgs[k] for k in group], dirs)
                    errors = [None] * len(group)
                    if (received := stop.received()) is not None:  # taken by train_and_evaluate's handler, not raised
                        stop.stopping, signum = True, received
                except (Preempted, _Signal) as e:  # recorded "interrupted"; the sweep stops
                    stop.stopping, signum = True, e.signum
                    summaries, errors = [None] * len(group), [e] * len(group)
                except Exception as e:  # a failed trial is recorded and the sweep goes on
                    summaries, errors = [None] * len(group), [e] * len(group)
                for k, d, summary, error in zip(group, dirs, summaries, errors):
                    rows[k] = _row(d, mine[k], cfgs[k], summary, error)
                    status = rows[k]["status"]
                    counts[status] = counts.get(status, 0) + 1
                bar.update(len(group))
                if signum is not None:
                    break
        except _Signal as e:  # between trials, or while recording one (its result.json is not written)
            signum = e.signum
        bar.set_postfix(**counts)
    if signum is not None:
        raise SweepInterrupted(signum, [rows[k] for k in sorted(rows)], len(mine))
    return [rows[k] for k in range(len(mine))]


def _row(d: pathlib.Path, overrides: Mapping[str, Any], cfg: Any, summary: dict | None, error: Exception | None) -> dict:
    row = {"name": d.name, **{k.split(".")[-1]: v for k, v in overrides.items()}, "overrides": dict(overrides)}
    m = cfg.model
    row.update(cell=m.cell, num_layers=m.num_layers, hidden_size=m.hidden_size)  # for every status: the table shows them
    if isinstance(error, (Preempted, _Signal)):  # not done: the next run resumes it from its checkpoint
        name = signal.Signals(error.signum).name
        row.update(status="interrupted", error=f"stopped by {name}; rerun the sweep to resume this trial")
        d.mkdir(parents=True, exist_ok=True)
    elif error is None:
        row.update(
            num_params=summary["num_params"], train_ppl=summary["train_ppl"], best_val_ppl=summary["best_val_ppl"],
            tokens_per_sec=statistics.median(r["tokens_per_sec"] for r in summary["metrics"]),
            wall_time=summary["metrics"][-1]["wall_time"], status="done", error="",
        )
    else:
        row.update(status="failed", error=f"{type(error).__name__}: {error}".splitlines()[0])
        d.mkdir(parents=True, exist_ok=True)
        (d / "error.txt").write_text("".join(traceback.format_exception(error)))
    write_atomic(d / "result.json", json.dumps(row))
    return row


# Overridden fields that a standard column shows already.
_SHOWN = {"model.cell": "cell", "model.num_layers": "num_layers", "model.hidden_size": "hidden_size"}


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
            legacy = {k: v for k, v in r.items() if k not in COLUMNS and k != "overrides"}
            out.append({(min(full[k]) if len(full.get(k, ())) == 1 else k): v for k, v in legacy.items()})
    return out


def axis_columns(overrides: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The table column of every overridden field that no standard column shows: its last
    part (``learning_rate``) if no other field or column has that name, else the full field."""
    fields = list(dict.fromkeys(f for o in overrides for f in o if f not in _SHOWN))
    last = [f.split(".")[-1] for f in fields]
    return {f: n if last.count(n) == 1 and n not in COLUMNS else f for f, n in zip(fields, last)}


def summarize(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Merge every trial's result.json under ``workdir`` into results.csv, results.md and sweep.png."""
    root = user_path(workdir)
    hint = "give the directory a sweep wrote (its --workdir)"
    if not root.exists():
        raise SweepError(f"sweep directory {root} does not exist; {hint}")
    if not root.is_dir():
        raise SweepError(f"{root} is a file, not a sweep directory; {hint}")
    paths = sorted(root.glob("*/result.json"))
    if not paths:
        if (root / "result.json").exists():
            raise SweepError(f"{root} is one trial's directory; give the sweep directory above it, {root.parent}")
        raise SweepError(f"{root} holds no trial results (*/result.json); {hint}, after at least one trial finished")
    rows = [json.loads(p.read_text()) for p in paths]
    overrides = trial_overrides(rows)
    axes = axis_columns(overrides)  # field -> column
    k = COLUMNS.index("hidden_size") + 1  # the grid's other axes go after the model's shape
    header = [*COLUMNS[:k], *axes.values(), *COLUMNS[k:]]
    table = [{**{c: r.get(c) for c in COLUMNS}, **{c: o.get(f) for f, c in axes.items()}} for r, o in zip(rows, overrides)]
    with open(root / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(table)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    show = lambda c, v: (fmt(v) if c in COLUMNS else ("" if v is None else str(v))).replace("|", "\\|")  # noqa: E731
    cols = [c for c in header if c not in ("name", "error")]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(show(c, t[c]) for c in cols) + " |" for t in table]
    notes = [f"- {r['name']} {r['status']}: {r.get('error')}" for r in rows if r.get("status") in ("failed", "interrupted")]
    lines += ["", *notes] if notes else []
    (root / "results.md").write_text("\n".join(lines) + "\n")
    _plot(root / "sweep.png", rows, [p.parent for p in paths])
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
        if r.get("status") != "done":
            continue
        other = [(f, v) for f, v in o.items() if f not in ("model.cell", "model.num_layers") and f.split(".")[-1] != "seed"]
        group = ",".join(f"{names.get(f, f.split('.')[-1])}={v}" for f, v in other)
        acc.setdefault((r["cell"], group, r["num_layers"]), []).append(r["best_val_ppl"])
    return [{"cell": c, "group": g, "num_layers": n, "mean": statistics.fmean(v), "min": min(v), "max": max(v), "n": len(v)}
            for (c, g, n), v in sorted(acc.items())]


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
    color = {c: f"C{i % 10}" for i, c in enumerate(sorted({r["cell"] for r in rows if r.get("status") == "done"}))}
    groups = list(dict.fromkeys((e["cell"], e["group"]) for e in agg))
    for cell, group in groups:
        es = [e for e in agg if (e["cell"], e["group"]) == (cell, group)]
        x, n = [e["num_layers"] for e in es], max(e["n"] for e in es)
        style = ["-", "--", ":", "-."][[g for c, g in groups if c == cell].index(group) % 4]
        label = " ".join(filter(None, [cell, group, f"(n={n})" if n > 1 else ""]))
        a.plot(x, [e["mean"] for e in es], marker="o", color=color[cell], ls=style, label=label)
        if n > 1:
            a.fill_between(x, [e["min"] for e in es], [e["max"] for e in es], color=color[cell], alpha=0.15, lw=0)
    a.set_xticks(sorted({e["num_layers"] for e in agg}))
    seeds = any(e["n"] > 1 for e in agg)
    a.set(xlabel="depth L (layers)", ylabel="best validation perplexity",
          title="validation perplexity vs depth" + (": mean, min-max band over seeds" if seeds else ""))
    _legend(a)
    curves = 0
    for r, d in zip(rows, dirs):
        if r.get("status") != "done":
            continue
        try:
            metrics = read_metrics(d / "metrics.jsonl")
        except (OSError, ValueError, WorkdirError):
            continue
        val = [float("nan") if m["val_ppl"] is None else m["val_ppl"] for m in metrics]  # null: not finite
        b.plot([m["epoch"] for m in metrics], val, color=color[r["cell"]], lw=1, alpha=0.5 if len(rows) > 8 else 1.0)
        curves += 1
    b.set(xlabel="epoch", ylabel="validation perplexity", yscale="log", title=f"validation curves of {curves} trials")
    b.xaxis.set_major_locator(MaxNLocator(integer=True))
    if color:
        b.legend(handles=[Line2D([], [], color=c, label=cell) for cell, c in color.items()], fontsize=8, title="cell")
    else:
        for ax in (a, b):
            ax.text(0.5, 0.5, "no finished trials", ha="center", va="center", transform=ax.transAxes)
    return fig


def _legend(ax, max_entries: int = 12) -> None:
    """A legend that stays readable: inside for a few entries, below the axes for more, at most max_entries."""
    handles, labels = ax.get_legend_handles_labels()
    if len(handles) > max_entries:
        more = len(handles) - max_entries + 1
        handles, labels = handles[: max_entries - 1] + [ax.plot([], [], ls="none")[0]], labels[: max_entries - 1] + [
            f"... {more} more lines"]
    if len(handles) <= 6:
        ax.legend(handles, labels, fontsize=8)
    elif handles:
        ax.legend(handles, labels, fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)


def _plot(path: pathlib.Path, rows: Sequence[Mapping[str, Any]], dirs: Sequence[pathlib.Path]) -> None:
    plot_sweep(rows, dirs).savefig(path, dpi=100, bbox_inches="tight")
