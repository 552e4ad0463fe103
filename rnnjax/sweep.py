"""Sweeps: a grid of config overrides, one run directory per trial, resumable and shardable.

A grid is plain data: ``{"model.cell": ["rnn", "gru", "lstm"], "model.num_layers": [1, 2]}``.
Each trial is the base config with one combination set (as config overrides, never as
generated files) and trains into ``DIR/<name>`` where the name is built from the
overrides (``cell=gru,num_layers=3``). Finished trials (``result.json``) are skipped,
interrupted ones resume from their checkpoints, failed ones record their error and the
sweep goes on.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import os
import pathlib
import re
import statistics
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import tqdm

from rnnjax.config import ConfigError, resolve
from rnnjax.train import train_and_evaluate

COLUMNS = ["name", "cell", "num_layers", "hidden_size", "num_params", "train_ppl", "best_val_ppl", "tokens_per_sec",
           "wall_time", "status", "error"]


def trials(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order: [{"model.cell": "rnn", ...}, ...]."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def trial_name(overrides: Mapping[str, Any]) -> str:
    """``cell=gru,num_layers=3``: the last part of each field, sanitised to [A-Za-z0-9._=,+-]."""
    parts = [f"{k.split('.')[-1]}={v}" for k, v in overrides.items()] or ["base"]
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts))
    return "_" + name if name.startswith(".") else name


def trial_dir(root: pathlib.Path, overrides: Mapping[str, Any]) -> pathlib.Path:
    path = (root / trial_name(overrides)).resolve()
    if path.parent != root.resolve():
        raise ValueError(f"trial directory {path} would be outside the sweep directory {root}")
    return path


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
            node[leaf] = value
    return cfg


def parse_shard(shard: str) -> tuple[int, int]:
    """'i/n' -> (i, n), 0 <= i < n."""
    m = re.fullmatch(r"(\d+)/(\d+)", shard)
    if not m or not int(m[1]) < int(m[2]):
        raise ValueError(f"--shard={shard!r} is not allowed: give i/n with 0 <= i < n, e.g. 0/4")
    return int(m[1]), int(m[2])


def run_sweep(
    base: ml_collections.ConfigDict, grid: Mapping[str, Sequence[Any]], workdir: str | os.PathLike, shard: str = "0/1"
) -> list[dict[str, Any]]:
    """Run this shard's trials (trial k belongs to shard k mod n); returns their result rows."""
    root = pathlib.Path(workdir)
    i, n = parse_shard(shard)
    mine = [t for k, t in enumerate(trials(grid)) if k % n == i]
    for t in mine:  # every override must resolve before anything runs
        resolve(apply_overrides(base, t))
        trial_dir(root, t)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    counts = {"done": 0, "failed": 0, "skipped": 0}
    bar = tqdm.tqdm(mine, desc="sweep", unit="trial")
    for t in bar:
        d = trial_dir(root, t)
        bar.set_postfix(running=d.name, **counts)
        result_path = d / "result.json"
        if result_path.exists() and json.loads(result_path.read_text())["status"] == "done":
            counts["skipped"] += 1
            rows.append(json.loads(result_path.read_text()))
            continue
        cfg = apply_overrides(base, t)
        cfg.train.progress = False
        row = {"name": d.name, **{k.split(".")[-1]: v for k, v in t.items()}}
        try:
            summary = train_and_evaluate(cfg, d)
            m = resolve(cfg).model
            row.update(
                cell=m.cell, num_layers=m.num_layers, hidden_size=m.hidden_size, num_params=summary["num_params"],
                train_ppl=summary["train_ppl"], best_val_ppl=summary["best_val_ppl"],
                tokens_per_sec=statistics.median(r["tokens_per_sec"] for r in summary["metrics"]),
                wall_time=summary["metrics"][-1]["wall_time"], status="done", error="",
            )
            counts["done"] += 1
        except Exception as e:  # a failed trial is recorded and the sweep goes on
            row.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0])
            d.mkdir(parents=True, exist_ok=True)
            (d / "error.txt").write_text(traceback.format_exc())
            counts["failed"] += 1
        tmp = result_path.with_name("result.json.tmp")
        tmp.write_text(json.dumps(row))
        os.replace(tmp, result_path)
        rows.append(row)
    bar.set_postfix(**counts)
    bar.close()
    return rows


def summarize(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Merge every trial's result.json under ``workdir`` into results.csv, results.md and sweep.png."""
    root = pathlib.Path(workdir)
    rows = [json.loads(p.read_text()) for p in sorted(root.glob("*/result.json"))]
    with open(root / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    cols = [c for c in COLUMNS if c not in ("name", "error")]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    failed = [r for r in rows if r.get("status") == "failed"]
    lines += ["", *[f"- {r['name']} failed: {r['error']}" for r in failed]] if failed else []
    (root / "results.md").write_text("\n".join(lines) + "\n")
    _plot(root, rows)
    return rows


def _plot(root: pathlib.Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.get("status") == "done"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for cell in sorted({r["cell"] for r in done}):
        pts = sorted((r["num_layers"], r["best_val_ppl"]) for r in done if r["cell"] == cell)
        a.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=cell)
    a.set(xlabel="depth L", ylabel="best validation perplexity", title="validation perplexity vs depth")
    a.legend()
    for r in done:
        metrics = [json.loads(x) for x in (root / r["name"] / "metrics.jsonl").read_text().splitlines() if x.strip()]
        b.plot([m["epoch"] for m in metrics], [m["val_ppl"] for m in metrics], label=r["name"], lw=1)
    b.set(xlabel="epoch", ylabel="validation perplexity", yscale="log", title="training curves")
    if done:
        b.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(root / "sweep.png", dpi=100)
    plt.close(fig)
