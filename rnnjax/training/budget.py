"""The run's length in steps, over which every schedule runs: ``train.max_steps``,
``train.num_epochs`` epochs, or a time budget (``train.max_minutes``).

A time budget becomes a step budget once the warm-up steps have run (their learning rates do not
depend on the length): from the measured step time, the time already spent, and what each epoch
costs besides its steps, measured then too (a validation pass, and a checkpoint save, which is
kept: the run's first checkpoint). It is written to ``WORKDIR/budget.json`` and into every
checkpoint's meta; a resumed run reads it back, so its schedule is the one the run started with
(and resumes bitwise).
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from rnnjax.config import ConfigError, TrainConfig
from rnnjax.config.train_fields import MEASURED_STEPS
from rnnjax.rundir import workdir as rundir
from rnnjax.rundir.workdir import WorkdirError, refuse_directory, write_atomic

BUDGET_FILE = rundir.BUDGET
ABSENT = "absent"  # a checkpoint saved before 2026-12-07: its meta has no "budget"
UNMEASURED = 10**9  # a time budget's length before it is measured (only warm-up steps run)
clock = time.perf_counter  # seconds (tests replace it with a clock of their own)


def planned_steps(tc: TrainConfig, n: int, recorded: int | None = None) -> int:
    """The run's length in steps: a recorded time budget, ``max_steps``, or ``num_epochs`` * n
    (``n`` = minibatches per epoch); :data:`UNMEASURED` for a time budget not measured yet."""
    if recorded:
        return recorded
    if tc.max_steps:
        return tc.max_steps
    return UNMEASURED if tc.max_minutes else n * tc.num_epochs


def last_epoch(total: int, n: int) -> int:
    """The epoch in which step ``total`` falls (it may end part-way)."""
    return math.ceil(total / n)


def stop_batch(total: int, n: int, epoch: int) -> int:
    """The number of minibatches epoch ``epoch`` (1-based) trains: n, or fewer in the last."""
    return max(0, min(n, total - (epoch - 1) * n))


def _valid(budget: Any) -> bool:
    """A budget as :class:`TimeBudget` records it: ``max_minutes`` and ``max_steps`` (>= 1)."""
    return (
        isinstance(budget, dict)
        and isinstance(budget.get("max_minutes"), (int, float))
        and not isinstance(budget.get("max_steps"), bool)
        and isinstance(budget.get("max_steps"), int)
        and budget["max_steps"] >= 1
    )


def read_budget(path: pathlib.Path) -> tuple[dict[str, Any] | None, str | None]:
    """``budget.json`` as ``(budget, None)``; ``(None, None)`` if absent; ``(None, why)`` if it is
    damaged (not JSON, not an object, ``max_steps`` missing or not a positive whole number)."""
    if not path.is_file():
        return None, "a directory" if path.is_dir() else None  # recorded() refuses it
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        return None, f"not JSON: {type(e).__name__}"
    return (saved, None) if _valid(saved) else (None, "no max_minutes and max_steps >= 1")


def recorded(
    workdir: pathlib.Path, tc: TrainConfig, in_checkpoint: Any = ABSENT, position: int = 0
) -> dict[str, Any] | None:
    """The time budget a run with ``tc.max_minutes`` recorded (``{"max_minutes", "max_steps",
    ...}``; None: not yet, or recorded for another ``max_minutes``): the copy in the restored
    checkpoint's meta (``in_checkpoint``: its ``"budget"``; None when saved before the budget was
    measured, :data:`ABSENT` in checkpoints saved before 2026-12-07) or else
    ``WORKDIR/budget.json``. A missing, damaged or different file is written again from the
    checkpoint (logged). A run ``position`` steps in with neither is
    refused in one line: measuring again would set another length part-way through its schedule.
    """
    if not tc.max_minutes:
        return None
    path = pathlib.Path(workdir) / BUDGET_FILE
    saved, damage = read_budget(path)
    refuse_directory(path)
    if _valid(in_checkpoint) and saved != in_checkpoint:
        logging.warning(
            "%s is %s; the time budget (%d steps) is taken from the checkpoint and written back",
            path,
            f"damaged ({damage})" if damage else "different" if saved else "missing",
            in_checkpoint["max_steps"],
        )
        write_atomic(path, json.dumps(in_checkpoint, indent=2))
        saved = in_checkpoint
    elif saved is None and position > 0 and in_checkpoint is ABSENT:
        what = f"damaged ({damage})" if damage else "missing"
        raise WorkdirError(
            f"{path} is {what} and the checkpoint at step {position} does not record the time "
            f"budget; restore {BUDGET_FILE} from a copy, or rerun with train.max_steps set to "
            "the run's length"
        )
    if saved is None:
        return None  # measured (again: the checkpoint was saved before it was measured)
    return saved if saved["max_minutes"] == tc.max_minutes else None


class TimeBudget:
    """Measures the step time during warm-up and sets the group's length from ``max_minutes``.

    Call :meth:`after_step` after each training step with the steps done so far; once the
    warm-up steps are timed it records the budget and calls ``group.set_total``."""

    def __init__(self, group: Any, workdirs: Sequence[pathlib.Path], start_step: int):
        tc = group.cfgs[0].train
        self.group, self.workdirs, self.tc = group, list(workdirs), tc
        self.pending = tc.max_minutes > 0 and group.total == UNMEASURED
        self.began = clock()  # the run's (or this resumed part's) start
        # timed by the end of warm-up, and never later than step MEASURED_STEPS + 1: a warm-up
        # longer than the budget is found then, not when the budget is long spent
        warm = MEASURED_STEPS + 1
        if tc.schedule == "warmup_cosine":
            warm = min(tc.warmup_steps, warm)
        self.end = max(warm, start_step + 2)  # at least one timed step after the compiled one
        self.first: tuple[int, float] | None = None
        self.record: dict[str, Any] | None = None  # the budget, once measured or read back

    def _check_warmup(self, total: int, step_s: float) -> None:
        """A warm-up that the budget would end (a cosine that never anneals): one line."""
        tc = self.tc
        if tc.schedule == "warmup_cosine" and total < tc.warmup_steps:
            raise ConfigError(_warmup_error(tc, total, step_s))

    def notes(self) -> list[str]:
        """The start block's line on the run's length (none for an epoch count)."""
        g, tc = self.group, self.tc
        if self.pending:
            return [
                f"time budget {tc.max_minutes:g} min: the steps are set after warm-up step "
                f"{self.end} (WORKDIR/{BUDGET_FILE}); the learning rate ends at 0 with it"
            ]
        if tc.max_minutes or tc.max_steps:
            return [f"budget: {g.total:,} steps, into epoch {g.last_epoch} ({g.n:,} per epoch)"]
        return []

    def after_step(
        self,
        done: int,
        state: Any,
        epoch_end: Callable[[], tuple[float, float]] | None = None,
    ) -> None:
        """``done``: steps taken so far (the run's position); ``state``: the train state;
        ``epoch_end``: measures what the run does besides its steps, returning ``(once, per
        epoch)`` seconds (the validation pass's compile and the run's end; a validation pass and
        a checkpoint save every ``checkpoint.every_epochs``), called once, when the budget is set.
        """
        if not self.pending or (self.first is not None and done < self.end):
            return
        jax.block_until_ready(state)
        now = clock()
        if self.first is None:
            self.first = (done, now)
            return
        step_s = (now - self.first[1]) / (done - self.first[0])
        compile_s = self.first[1] - self.began  # a second compile follows (the new schedule)
        g = self.group
        left = 60 * self.tc.max_minutes - (now - self.began) - compile_s
        self._check_warmup(done + max(0, math.floor(left / step_s)), step_s)  # before any save
        once, per_epoch = epoch_end() if epoch_end else (0.0, 0.0)
        left = 60 * self.tc.max_minutes - (clock() - self.began) - compile_s - once
        total = done + max(0, math.floor(left / (step_s + per_epoch / g.n)))
        self._check_warmup(total, step_s)
        budget = {
            "max_minutes": self.tc.max_minutes,
            "max_steps": total,
            "step_seconds": round(step_s, 6),
            "epoch_end_seconds": round(per_epoch, 6),
            "timed_steps": [self.first[0], done],
        }
        for d in self.workdirs:
            write_atomic(pathlib.Path(d) / BUDGET_FILE, json.dumps(budget, indent=2))
        self.pending, self.record = False, budget
        g.set_total(max(total, done))


def _warmup_error(tc: TrainConfig, total: int, step_s: float) -> str:
    return (
        f"config.train.warmup_steps = {tc.warmup_steps} is longer than the time budget: "
        f"train.max_minutes = {tc.max_minutes:g} buys about {total} steps in all (what is left "
        f"after start-up and compilation, at the {1000 * step_s:.2f} ms per step measured, "
        "less each epoch's validation and checkpoint), so the learning rate would never anneal; "
        f"set warmup_steps to about a tenth of that ({max(MEASURED_STEPS, total // 10)}) or "
        "raise max_minutes (rerun with --resume=restart or a new --workdir)"
    )


def group_budget(
    group: Any, workdirs: Sequence[pathlib.Path], position: int, in_checkpoint: Any = ABSENT
) -> TimeBudget:
    """Set ``group``'s length from a time budget its run recorded (a resume: ``in_checkpoint``,
    the restored checkpoint's meta ``"budget"``, or ``budget.json``), and return the
    :class:`TimeBudget` that measures it when none is recorded yet. ``position``: steps done."""
    budget = recorded(workdirs[0], group.cfgs[0].train, in_checkpoint, position)
    if budget:
        group.set_total(int(budget["max_steps"]))
    timer = TimeBudget(group, workdirs, position)
    timer.record = budget
    return timer


def shown_epochs(group: Any) -> int:
    """The last epoch the start block names: the budget's, or num_epochs before a time budget is
    measured (its note says so)."""
    return group.cfgs[0].train.num_epochs if group.total == UNMEASURED else group.last_epoch
