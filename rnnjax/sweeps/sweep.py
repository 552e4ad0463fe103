"""Running a sweep: every trial of a grid (:mod:`rnnjax.sweeps.grid`) trains into its own run
directory, resumable and shardable.

Finished trials (``result.json``) are skipped, interrupted ones resume from their checkpoints,
failed ones record their error and the sweep goes on. SIGTERM/SIGINT stop the sweep: the running
trial is recorded "interrupted" (its checkpoint kept) and :class:`SweepInterrupted` is raised;
running the sweep again resumes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import signal
import socket
import statistics
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import tqdm

from rnnjax.config import resolve
from rnnjax.config.model_fields import Impl
from rnnjax.dataset import data
from rnnjax.host import retain_freed_memory
from rnnjax.network.impls import cudnn
from rnnjax.rundir import workdir as rundir
from rnnjax.rundir.lock import WorkdirInUse
from rnnjax.rundir.workdir import (
    Key,
    WorkdirError,
    check_writable,
    finite,
    has_checkpoint,
    resolve_path,
    write_atomic,
)
from rnnjax.sweeps.grid import (
    apply_overrides,
    check_grid,
    check_names,
    parse_shard,
    trial_dir,
    trials,
)
from rnnjax.sweeps.sweep_summary import read_result
from rnnjax.training.console import Preempted
from rnnjax.training.metrics import best_record, bpc
from rnnjax.training.train import train_and_evaluate


class SweepInterrupted(Exception):
    """SIGTERM or SIGINT stopped the sweep: the running trials are recorded "interrupted" and
    no other trial was started. ``rows``: the result rows recorded (or found done) so far."""

    def __init__(self, signum: int, rows: list[dict[str, Any]], total: int):
        self.signum, self.rows = signum, rows
        done = sum(r["status"] == "done" for r in rows)
        stopped = [r["name"] for r in rows if r["status"] == "interrupted"]
        super().__init__(
            f"stopped by {signal.Signals(signum).name} with {done} of {total} trials done"
            + (f", {', '.join(stopped)} interrupted" if stopped else "")
            + "; rerun the same command to resume"
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


def _resume_mode(d: pathlib.Path) -> str:
    """A trial that failed before its first checkpoint starts over (its old files kept in
    discarded/); every other trial resumes from its checkpoint if it has one."""
    row, _ = read_result(d / rundir.RESULT)
    failed = row is not None and row["status"] == "failed"
    return "restart" if failed and not has_checkpoint(d) else "auto"


def run_sweep(
    base: ml_collections.ConfigDict,
    grid: Mapping[str, Sequence[Any]],
    workdir: str | os.PathLike,
    shard: str = "0/1",
    vectorize: bool = False,
) -> list[dict[str, Any]]:
    """Run this shard's trials (trial k belongs to shard k mod n); returns their result rows.

    ``vectorize``: trials that differ only in seed, learning rate or weight decay train
    together as one vmapped program (see :mod:`rnnjax.training.vectorize`).
    """
    from rnnjax.training.vectorize import check_vectorizable, shape_key, train_vectorized

    root = resolve_path(workdir)
    check_writable(root)  # a file, or under a file, or read-only: one line, nothing created
    if has_checkpoint(root) or (root / rundir.METRICS).exists():
        raise WorkdirError(
            f"workdir {root} holds a training run (checkpoints/, metrics.jsonl), not a sweep; "
            "give the sweep a --workdir of its own"
        )
    i, n = parse_shard(shard)
    check_grid(grid)
    check_names(grid)
    mine = [t for k, t in enumerate(trials(grid)) if k % n == i]
    cfgs = {}
    for k, t in enumerate(mine):  # every override must resolve before anything runs
        cfg = apply_overrides(base, t)
        cfg.train.progress = False
        cfgs[k] = resolve(cfg)
        if vectorize:
            check_vectorizable(cfgs[k])
        if cfgs[k].model.impl == Impl.CUDNN:
            cudnn.check_available()  # one line, before any trial directory exists
        trial_dir(root, t)
    for data_cfg in {
        c.data for c in cfgs.values()
    }:  # a path or vocabulary mistake: one line, nothing made
        data.load_corpus(data_cfg)
    root.mkdir(parents=True, exist_ok=True)
    # one-by-one trials get it from train_and_evaluate, vmapped groups from here
    retain_freed_memory()
    rows: dict[int, dict[str, Any]] = {}
    pending: dict[str, list[int]] = {}
    for k, t in enumerate(mine):
        result_path = trial_dir(root, t) / rundir.RESULT
        row, why = read_result(result_path) if result_path.exists() else (None, None)
        if why:
            logging.warning("%s %s: the trial runs again (from its checkpoints)", result_path, why)
        if row is not None and row["status"] == "done":
            rows[k] = row
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
                        summaries = [
                            train_and_evaluate(
                                cfgs[group[0]], dirs[0], resume=_resume_mode(dirs[0])
                            )
                        ]
                    else:  # a trial whose steps stayed non-finite comes back as its error
                        summaries = train_vectorized(
                            [cfgs[k] for k in group], dirs, [_resume_mode(d) for d in dirs]
                        )
                    errors = [s if isinstance(s, Exception) else None for s in summaries]
                    summaries = [None if isinstance(s, Exception) else s for s in summaries]
                    if (
                        received := stop.received()
                    ) is not None:  # taken by train_and_evaluate's handler, not raised
                        stop.stopping, signum = True, received
                except (Preempted, _Signal) as e:  # recorded "interrupted"; the sweep stops
                    stop.stopping, signum = True, e.signum
                    summaries, errors = [None] * len(group), [e] * len(group)
                except WorkdirInUse as e:  # another sweep (or trainer) runs it: not failed
                    bar.write(f"{e}; skipped here, not recorded", file=sys.stderr)
                    for k, d in zip(group, dirs):
                        rows[k] = {"name": d.name, "status": "busy", "error": str(e)}
                    counts["busy"] = counts.get("busy", 0) + len(group)
                    bar.update(len(group))
                    continue
                except Exception as e:  # a failed trial is recorded and the sweep goes on
                    summaries, errors = [None] * len(group), [e] * len(group)
                for k, d, summary, error in zip(group, dirs, summaries, errors):
                    rows[k] = _row(d, mine[k], cfgs[k], summary, error)
                    status = rows[k]["status"]
                    counts[status] = counts.get(status, 0) + 1
                bar.update(len(group))
                if signum is not None:
                    break
        except (
            _Signal
        ) as e:  # between trials, or while recording one (its result.json is not written)
            signum = e.signum
        bar.set_postfix(**counts)
    if signum is not None:
        raise SweepInterrupted(signum, [rows[k] for k in sorted(rows)], len(mine))
    return [rows[k] for k in range(len(mine))]


def _row(
    d: pathlib.Path,
    overrides: Mapping[str, Any],
    cfg: Any,
    summary: dict | None,
    error: Exception | None,
) -> dict:
    row = {
        "name": d.name,
        **{k.split(".")[-1]: v for k, v in overrides.items()},
        "overrides": dict(overrides),
    }
    m = cfg.model
    row.update(
        cell=m.cell, num_layers=m.num_layers, hidden_size=m.hidden_size
    )  # for every status: the table shows them
    if isinstance(
        error, (Preempted, _Signal)
    ):  # not done: the next run resumes it from its checkpoint
        name = signal.Signals(error.signum).name
        row.update(
            status="interrupted", error=f"stopped by {name}; rerun the sweep to resume this trial"
        )
    elif error is None:
        best = best_record(summary["metrics"])
        row.update(
            num_params=summary["num_params"],
            train_ppl=summary[Key.TRAIN_PPL],
            best_val_ppl=summary["best_val_ppl"],
            best_val_bpc=bpc(summary["best_val_ppl"]) if cfg.data.tokenizer == "char" else None,
            best_epoch=best[Key.EPOCH] if best else None,
            test_ppl=summary.get(Key.TEST_PPL),
            test_bpc=summary.get(Key.TEST_BPC),
            impl=summary["metrics"][-1].get(Key.IMPL),
            tokens_per_sec=statistics.median(r[Key.TOKENS_PER_SEC] for r in summary["metrics"]),
            wall_time=summary["metrics"][-1][Key.WALL_TIME],
            status="done",
            error="",
            metrics={
                k: v
                for k, v in (best or {}).items()  # every metric of the best epoch, by name
                if k not in (Key.EPOCH, Key.STEP, Key.WALL_TIME)
                and isinstance(v, (int, float, list))
            },
            test={  # every test metric of evaluation.json (the best saved checkpoint's)
                k: v
                for k, v in summary.items()
                if k.startswith("test_") and isinstance(v, (int, float))
            },
        )
    else:
        row.update(status="failed", error=f"{type(error).__name__}: {error}".splitlines()[0])
    try:  # a trial that cannot be recorded (read-only, disk full) runs again next time
        d.mkdir(parents=True, exist_ok=True)
        if row["status"] == "failed":
            write_atomic(d / rundir.ERROR, "".join(traceback.format_exception(error)))
        elif row["status"] == "done":
            (d / rundir.ERROR).unlink(missing_ok=True)  # an earlier attempt's, no longer true
        write_atomic(d / rundir.RESULT, json.dumps(finite(row), allow_nan=False))
    except (OSError, WorkdirError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        logging.warning(
            "cannot record trial %s in %s (%s): it is not counted as finished and runs again "
            "when the sweep is rerun",
            d.name,
            d,
            why,
        )
    return row
