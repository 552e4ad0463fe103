"""The run's length in steps, over which every schedule runs: ``train.max_steps``,
``train.num_epochs`` epochs, or a time budget (``train.max_minutes``).

A time budget becomes a step budget once the warm-up steps have run (their learning rates do not
depend on the length): from the measured step time, the time already spent and the validation
passes still to come. It is written to ``WORKDIR/budget.json``; a resumed run reads it back, so
its schedule is the one the run started with (and resumes bitwise).
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax

from rnnjax.config import TrainConfig
from rnnjax.config.train_fields import MEASURED_STEPS

BUDGET_FILE = "budget.json"
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


def recorded(workdir: pathlib.Path, tc: TrainConfig) -> int | None:
    """The step budget a run with ``tc.max_minutes`` recorded in ``workdir`` (None: not yet)."""
    path = pathlib.Path(workdir) / BUDGET_FILE
    if not tc.max_minutes or not path.exists():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    return int(saved["max_steps"]) if saved.get("max_minutes") == tc.max_minutes else None


class TimeBudget:
    """Measures the step time during warm-up and sets the group's length from ``max_minutes``.

    Call :meth:`after_step` after each training step with the steps done so far; once the
    warm-up steps are timed it records the budget and calls ``group.set_total``."""

    def __init__(self, group: Any, workdirs: Sequence[pathlib.Path], start_step: int):
        tc = group.cfgs[0].train
        self.group, self.workdirs, self.tc = group, list(workdirs), tc
        self.pending = tc.max_minutes > 0 and group.total == UNMEASURED
        self.began = clock()  # the run's (or this resumed part's) start
        warm = tc.warmup_steps if tc.schedule == "warmup_cosine" else MEASURED_STEPS + 1
        self.end = max(warm, start_step + 2)  # at least one timed step after the compiled one
        self.first: tuple[int, float] | None = None

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

    def after_step(self, done: int, state: Any) -> None:
        """``done``: steps taken so far (the run's position); ``state``: the train state."""
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
        dc = g.cfgs[0].data
        # a validation pass reads each held-out token once, forward only (~1/3 of a step's work)
        eval_s = step_s * len(g.corpus.val) / (dc.batch_size * dc.num_steps) / 3
        left = 60 * self.tc.max_minutes - (now - self.began) - compile_s
        total = done + max(0, math.floor(left / (step_s + eval_s / g.n)))
        budget = {
            "max_minutes": self.tc.max_minutes,
            "max_steps": total,
            "step_seconds": round(step_s, 6),
            "timed_steps": [self.first[0], done],
        }
        from rnnjax.workdir import write_atomic

        for d in self.workdirs:
            write_atomic(pathlib.Path(d) / BUDGET_FILE, json.dumps(budget, indent=2))
        self.pending = False
        g.set_total(max(total, done))


def group_budget(group: Any, workdirs: Sequence[pathlib.Path], position: int) -> TimeBudget:
    """Set ``group``'s length from a time budget its run recorded (a resume), and return the
    :class:`TimeBudget` that measures it when none is recorded yet. ``position``: steps done."""
    steps = recorded(workdirs[0], group.cfgs[0].train)
    if steps:
        group.set_total(steps)
    return TimeBudget(group, workdirs, position)


def shown_epochs(group: Any) -> int:
    """The last epoch the start block names: the budget's, or num_epochs before a time budget is
    measured (its note says so)."""
    return group.cfgs[0].train.num_epochs if group.total == UNMEASURED else group.last_epoch
