"""The training loop, one for K >= 1 trials: restore, then per epoch train, evaluate, record, maybe
save and early-stop, then finish (:func:`train_group`).

The trials are a :class:`Group` (one trial, or K stacked under ``jax.vmap``: their model,
optimizers, jitted steps, batches and validation);
each trial keeps its own workdir: its checkpoints, ``metrics.jsonl`` (appended), TensorBoard events,
curves, samples and ``evaluation.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from rnnjax.config import Config
from rnnjax.dataset import batches, data
from rnnjax.network.build import build_model, shape_mismatch
from rnnjax.network.parallel import DataParallel
from rnnjax.rundir import workdir as rundir
from rnnjax.rundir.checkpoint import Checkpointer, CheckpointError
from rnnjax.rundir.tensorboard_log import TensorBoardLog, has_hparams
from rnnjax.training import budget as time_budget
from rnnjax.training.budget import ABSENT, TimeBudget, group_budget
from rnnjax.training.console import PipeSafe, Preempted, StopFlag
from rnnjax.training.evaluation import EVAL_METRICS, eval_sums, make_eval_step, make_stats_eval_step
from rnnjax.training.finish import finish, samples
from rnnjax.training.layout import checkpoint_items, saved_meta
from rnnjax.training.metrics import (
    EvalSums,
    LayerStats,
    TrainSums,
    add_sums,
    best_record,
    eval_zeros,
    to_host,
)
from rnnjax.training.optim import make_optimizer
from rnnjax.training.profiling import Profiler
from rnnjax.training.records import (
    abort_error,
    commit,
    describe,
    kept_records,
    make_record,
    quiet_start,
    stopped_early,
)
from rnnjax.training.resume import restore
from rnnjax.training.steps import (
    Average,
    evaluated,
    init_train_state,
    loss_weights,
    make_train_step,
    train_sums,
)


class Group:
    """K >= 1 trials of one model shape (they may differ in seed and optimizer hyperparameters) and
    the jitted steps that train them together. ``vmapped``: every array has a leading [K] trial
    axis."""

    def __init__(
        self, cfgs: Sequence[Config], corpus: data.Corpus, dp: DataParallel, vmapped: bool
    ):
        self.cfgs, self.corpus, self.dp, self.vmapped = tuple(cfgs), corpus, dp, vmapped
        dc, tc = cfgs[0].data, cfgs[0].train
        self.model = build_model(cfgs[0], len(corpus.vocab))
        self.n = batches.batches_per_epoch(dc, len(corpus.train))
        self.set_total(time_budget.planned_steps(tc, self.n))
        self.plain_eval_step = make_eval_step(self.model)
        evaluate = make_stats_eval_step(self.model) if tc.layer_stats else self.plain_eval_step
        if vmapped:
            evaluate = jax.jit(
                jax.vmap(evaluate, in_axes=(0, 0, 0, *([0] if tc.layer_stats else []), None, None))
            )
        self.eval_step = evaluate
        self.zero_sums = train_sums(
            self.model,
            jax.eval_shape(self.model.init, jax.random.key(0)),
            tc.layer_stats,
            loss_weights(tc),
        )

    def set_total(self, total: int) -> None:
        """Make every schedule run over ``total`` steps (:mod:`rnnjax.training.budget`): the
        optimizers and the training step (compiled at its next call)."""
        self.total = total
        optimizers = [make_optimizer(c.train, total_steps=total) for c in self.cfgs]
        self.txs, self.schedules = [o[0] for o in optimizers], [o[1] for o in optimizers]
        # The update reads each trial's hyperparameters from its own optimizer state.
        reset = self.cfgs[0].data.sampler == "random"
        tc = self.cfgs[0].train
        step = make_train_step(self.model, self.txs[0], reset, loss_weights(tc), Average.of(tc))
        if self.vmapped:
            step = jax.jit(
                jax.vmap(step, in_axes=(0, 0, 0, 0, 0, None, 0)), donate_argnums=(0, 1, 2)
            )
        self.train_step = step

    @property
    def last_epoch(self) -> int:
        """The epoch in which the run's last step falls."""
        return time_budget.last_epoch(self.total, self.n)

    def stop_batch(self, epoch: int) -> int:
        """The minibatches ``epoch`` trains: n, or fewer in the run's last epoch."""
        return time_budget.stop_batch(self.total, self.n, epoch)

    def take(self, tree: Any, j: int) -> Any:
        """Trial j's part of a group's pytree."""
        return jax.tree_util.tree_map(lambda x: x[j], tree) if self.vmapped else tree

    def stack(self, trees: Sequence[Any]) -> Any:
        """One pytree per trial -> the group's pytree (inverse of :meth:`take`)."""
        return (
            jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees) if self.vmapped else trees[0]
        )

    def init(self) -> tuple[Any, Any]:
        """Each trial's step-0 train state and RNG key data, from its own seed (as a single run of
        it)."""
        states, rngs = [], []
        for c, tx in zip(self.cfgs, self.txs):
            init_key, rng = jax.random.split(jax.random.key(c.seed))
            init = jax.jit(
                lambda k, tx=tx, c=c: init_train_state(self.model, tx, k, Average.of(c.train)),
                out_shardings=self.dp.replicated,
            )
            states.append(init(init_key))
            rngs.append(self.dp.replicate(np.asarray(jax.random.key_data(rng))))
        return self.stack(states), self.stack(rngs)

    def fresh(self) -> tuple[Any, TrainSums]:
        """A zero carry and zero metric sums for the start of an epoch, placed on the mesh."""
        carry = self.dp.shard_carry(self.model.initial_carry(self.cfgs[0].data.batch_size))
        metrics = jax.tree_util.tree_map(lambda x: self.dp.replicate(np.asarray(x)), self.zero_sums)
        return self.stack([carry] * len(self.cfgs)), self.stack([metrics] * len(self.cfgs))

    def batches(self, epoch: int) -> tuple[jax.Array, jax.Array]:
        """Each trial's minibatches of ``epoch`` (its own seed's order): [n, b, t], or [K, n, b,
        t]."""
        xs, ys = zip(
            *(batches.epoch_batches(self.corpus.train, c.data, c.seed, epoch) for c in self.cfgs)
        )
        if not self.vmapped:
            return self.dp.shard(xs[0], 1), self.dp.shard(ys[0], 1)
        return jnp.asarray(np.stack(xs)), jnp.asarray(np.stack(ys))

    def evaluate(self, params) -> tuple[EvalSums, LayerStats | None, tuple[EvalSums, ...]]:
        """Dispatch the validation pass over each held-out part, each from a zero carry (with
        ``train.layer_stats`` also the per-layer statistics of the same pass): (all parts' sums,
        statistics, each part's sums when there are several), on the device, read with the
        record."""
        dc, with_stats = self.cfgs[0].data, self.cfgs[0].train.layer_stats
        k, parts, stats = len(self.cfgs), [], None
        for _, ids in self.corpus.val_parts:
            if not self.vmapped:
                sums = eval_sums(
                    self.model,
                    params,
                    ids,
                    dc.batch_size,
                    dc.num_steps,
                    self.eval_step,
                    self.dp,
                    with_stats=with_stats,
                )
                sums = sums if with_stats else (sums,)
            else:
                carry = self.stack([self.model.initial_carry(dc.batch_size)] * k)
                zeros = (
                    eval_zeros(EVAL_METRICS),
                    LayerStats.zeros(num_layers=self.model.num_layers),
                )
                sums = self.stack([zeros if with_stats else zeros[:1]] * k)
                for x_bt, y_bt in batches.eval_windows(ids, dc.batch_size, dc.num_steps):
                    carry, *sums = self.eval_step(params, carry, *sums, x_bt, y_bt)
            parts.append(sums[0])
            if with_stats:
                stats = sums[1] if stats is None else stats + sums[1]
        total = parts[0]
        for more in parts[1:]:
            total = add_sums(total, more)
        return total, stats, tuple(parts) if len(parts) > 1 else ()


@dataclasses.dataclass
class Live:
    """What training carries from step to step (every trial, stacked): the train state, the data
    order's key data, the recurrent carry and the epoch's metric sums."""

    state: Any
    rng_data: Any
    carry: Any
    metrics: Any


@dataclasses.dataclass
class SaveClock:
    """``checkpoint.every_minutes``: a save is due once ``every_s`` seconds (0: never) have passed
    since the last one."""

    every_s: float
    saved: float = dataclasses.field(default_factory=time.monotonic)

    def due(self) -> bool:
        return self.every_s > 0 and time.monotonic() - self.saved >= self.every_s

    def mark(self) -> None:
        self.saved = time.monotonic()


@dataclasses.dataclass
class Epochs:
    """What each epoch of a run reads besides :class:`Live`: the trials, their checkpointers, the
    profiler, the stop flag, the time budget, the timed saves' clock and the trials that failed."""

    group: Group
    ckpts: list[Checkpointer]
    profiler: Profiler
    stop: StopFlag
    timer: TimeBudget
    clock: SaveClock
    failed: dict[int, Exception]

    def save_all(self, live: Live, epoch: int, batch: int, budget: dict | None) -> None:
        """Checkpoint every trial still training at this step (position ``epoch``, ``batch``)."""
        for j, ckpt in enumerate(self.ckpts):
            if j not in self.failed:
                save(self.group, ckpt, j, live, epoch, batch, budget)
        self.clock.mark()


def train_group(
    group: Group,
    workdirs: Sequence[pathlib.Path],
    stop: StopFlag,
    primary: bool = True,
    notes: Sequence[list[str]] = (),
) -> list[dict[str, Any] | Exception]:
    """Train every trial of ``group`` in its (locked, checked) workdir, resuming from their latest
    common checkpoint; one summary per trial, or the error that ended it (a vectorized trial whose
    steps stayed non-finite; a single run raises it). Raises :class:`Preempted` on SIGTERM/SIGINT.
    ``notes``: each workdir's lines for the start block
    (:func:`rnnjax.rundir.preflight.claimed`)."""
    cfg, tc, k = group.cfgs[0], group.cfgs[0].train, len(group.cfgs)
    if primary:
        for d, c in zip(workdirs, group.cfgs):
            rundir.write_run(d, c, group.corpus.vocab)
    with contextlib.ExitStack() as cleanup:
        ckpts = [Checkpointer(d, c.checkpoint.max_to_keep) for d, c in zip(workdirs, group.cfgs)]
        for ckpt in ckpts:
            cleanup.callback(ckpt.close)
        for d, c, ckpt in zip(workdirs, group.cfgs, ckpts):  # a hand-edited config.json
            stored = ckpt.stored_shapes(ckpt.steps()[-1]) if ckpt.steps() else None
            if stored and (
                why := shape_mismatch(c, len(group.corpus.vocab), stored, rundir.CONFIG)
            ):
                raise CheckpointError(f"{d}: {why}")
        state, rng_data, carry, metrics, start_epoch, start_batch, step, saved = restore(
            group, ckpts
        )
        live = Live(state, rng_data, carry, metrics)
        notes = [list(n) for n in notes] or [[] for _ in workdirs]
        position = (start_epoch - 1) * group.n + start_batch
        in_checkpoint = ckpts[0].read_meta(step).get("budget", ABSENT) if step else ABSENT
        timer = group_budget(group, workdirs, position, in_checkpoint)
        notes[0] += timer.notes()
        records = [
            kept_records(d, start_epoch, [s, *ckpt.saved_records()], primary, n)
            for d, s, n, ckpt in zip(workdirs, saved, notes, ckpts)
        ]
        stopped = stopped_early(
            tc.early_stopping_patience, records
        )  # a finished early-stopped run trains no further
        if tc.progress:
            PipeSafe(sys.stdout).write(
                describe(
                    group,
                    workdirs,
                    group.take(state.params, 0),
                    step,
                    start_epoch,
                    start_batch,
                    stopped,
                    tuple(notes[0]),
                )
                + "\n"
            )
        else:  # no start block: where it resumes (stdout) and its notes (stderr), a line each
            todo, said = quiet_start(
                group, step, start_epoch, start_batch, stopped, tuple(notes[0])
            )
            for line in todo:
                PipeSafe(sys.stdout).write(line + "\n")
            for line in said:
                PipeSafe(sys.stderr).write(f"rnnjax: {line}\n")
        last_epoch = stopped if stopped else group.last_epoch
        boards = [
            TensorBoardLog(d, start_epoch)
            if primary and (start_epoch <= last_epoch or not has_hparams(d))
            else None
            for d in workdirs
        ]
        for tb in boards:
            if tb:
                cleanup.callback(tb.close)
        profiler = Profiler(workdirs[0] / "profile", tc.profile_steps if primary else 0)
        cleanup.callback(profiler.stop)  # also when a signal or an error ends the run
        failed: dict[int, Exception] = {}
        clock = SaveClock(60.0 * cfg.checkpoint.every_minutes)
        epochs = Epochs(group, ckpts, profiler, stop, timer, clock, failed)
        start = time.perf_counter()
        bar = tqdm.trange(
            start_epoch,
            last_epoch + 1,
            desc=f"{cfg.model.num_layers}x{cfg.model.cell}",
            disable=not tc.progress or start_epoch > last_epoch,
            file=PipeSafe(sys.stderr),
        )
        # Each epoch: its steps, one read of their metric sums, its validation pass, its records.
        for epoch in bar:
            first = start_batch if epoch == start_epoch else 0
            if epoch > group.last_epoch:  # a time budget set after the bar began
                break
            if first == 0:
                live.carry, live.metrics = group.fresh()
            t0 = time.perf_counter()
            train_epoch(epochs, live, epoch, first)
            state = live.state
            bar.total = min(bar.total, group.last_epoch - start_epoch + 1)
            sums = to_host(live.metrics)  # the one host sync of the training steps
            tokens_per_sec = (
                (group.stop_batch(epoch) - first)
                * cfg.data.batch_size
                * cfg.data.num_steps
                / (time.perf_counter() - t0)
            )
            val, stats, parts = group.evaluate(evaluated(state))
            active = [j for j in range(k) if j not in failed]
            # Written in this order: TensorBoard, the checkpoint (its meta holds the record),
            # metrics.jsonl. A kill between any two leaves a run that resumes: events past the last
            # checkpoint are purged, and a record missing from metrics.jsonl is restored from the
            # checkpoint's meta.
            for j in active:
                records[j].append(
                    make_record(
                        group, j, epoch, state, sums, val, stats, parts, tokens_per_sec, start
                    )
                )
                if boards[j]:
                    boards[j].record(records[j][-1])
            for j in active:
                if error := abort_error(group, j, state, live.carry, epoch, records[j][-1]):
                    commit(workdirs[j], records[j][-1], bar, primary)
                    if not group.vmapped:
                        raise error
                    failed[j] = error
            active = [j for j in active if j not in failed]
            saving = (
                epoch % cfg.checkpoint.every_epochs == 0 or epoch == group.last_epoch or clock.due()
            )
            stopped = stopped_early(tc.early_stopping_patience, [records[j] for j in active])
            for j in active:
                new_best = (
                    tc.early_stopping_patience > 0 and best_record(records[j]) is records[j][-1]
                )
                if saving or new_best or stopped:
                    clock.mark()
                    try:
                        save(group, ckpts[j], j, live, epoch, 0, timer.record, records[j][-1])
                    except BaseException:  # e.g. disk full: the epoch's record is still kept
                        with contextlib.suppress(OSError):
                            commit(workdirs[j], records[j][-1], bar, primary)
                        raise
                commit(workdirs[j], records[j][-1], bar, primary)
                if saving and boards[j] and cfg.generate.prefixes:
                    boards[j].samples(
                        epoch,
                        list(cfg.generate.prefixes),
                        samples(group, group.take(evaluated(state), j)),
                    )
            if stopped or not active:
                break
        profiler.stop()
        wall_time = time.perf_counter() - start
        return [
            failed.get(j)
            or finish(
                group,
                j,
                workdirs[j],
                ckpts[j],
                state,
                records[j],
                wall_time,
                boards[j],
                stopped,
                primary,
            )
            for j in range(k)
        ]


def train_epoch(epochs: Epochs, live: Live, epoch: int, first: int) -> None:
    """Minibatches ``first`` .. n-1 of ``epoch``, updating ``live``; on SIGTERM/SIGINT, save this
    step and raise :class:`Preempted`; with ``checkpoint.every_minutes`` (:class:`SaveClock`),
    also save this step once that long has passed since the last save (a kill then loses at most
    that much)."""
    group, timer = epochs.group, epochs.timer
    xs_nbt, ys_nbt = group.batches(epoch)
    rng = jax.random.wrap_key_data(live.rng_data)
    i = first
    while i < group.stop_batch(epoch):  # a time budget set mid-epoch may end this epoch early
        live.state, live.carry, live.metrics = group.train_step(
            live.state, live.carry, live.metrics, xs_nbt, ys_nbt, i, rng
        )
        if timer.pending:
            now = dataclasses.replace(live)  # this step's, as epoch_end reads it

            def epoch_end(now=now, i=i):
                """(once, per epoch) seconds besides the steps, as the epoch's end spends them:
                the metric sums read, a validation pass read (twice: the first compiles it), the
                greedy samples (twice, when there are prefixes) and a checkpoint of this step
                (kept: a timed save), counted twice per save (a save past max_to_keep also
                deletes one)."""
                tick = time_budget.clock
                weights = evaluated(now.state)
                t0 = tick()
                jax.device_get((to_host(now.metrics), group.evaluate(weights)))
                t1 = tick()
                jax.device_get((to_host(now.metrics), group.evaluate(weights)))
                t2 = tick()
                eval_s, compiled = t2 - t1, t1 - t0 - (t2 - t1)
                samples_s = 0.0
                if group.cfgs[0].generate.prefixes:
                    samples(group, group.take(weights, 0))
                    t3 = tick()
                    samples(group, group.take(weights, 0))
                    samples_s = tick() - t3
                    compiled += (t3 - t2) - samples_s
                t4 = tick()
                epochs.save_all(now, epoch - 1, i + 1, None)
                save_s = tick() - t4
                every = group.cfgs[0].checkpoint.every_epochs
                # once: the compiles, and the run's end (the best checkpoint restored and
                # evaluated, its samples and files: about a save, two passes and the samples)
                once = compiled + save_s + 2 * eval_s + samples_s
                return once, eval_s + (2 * save_s + samples_s) / every

            timer.after_step((epoch - 1) * group.n + i + 1, live.state, epoch_end)
        epochs.profiler.after_step(live.state)
        stop = epochs.stop.signum is not None
        if stop or (epochs.clock.due() and i + 1 < group.stop_batch(epoch)):
            epochs.save_all(live, epoch - 1, i + 1, timer.record)
        if stop:
            raise Preempted(epochs.stop.signum, int(group.take(live.state.step, 0)))
        i += 1


def save(
    group: Group,
    ckpt: Checkpointer,
    j: int,
    live: Live,
    epoch: int,
    batch: int,
    budget: dict[str, Any] | None,
    record: dict[str, Any] | None = None,
) -> None:
    """Checkpoint trial j at its current step (position ``epoch``, ``batch``; ``budget``: the time
    budget, once measured; ``record`` at an epoch end)."""
    one = [group.take(x, j) for x in (live.state, live.rng_data, live.carry, live.metrics)]
    ckpt.save(
        int(one[0].step),
        *checkpoint_items(*one),
        saved_meta(one[3], epoch, batch, record, budget, group.corpus.vocab.digest),
        average=one[0].average,
    )
