"""The training loop, one for K >= 1 trials: restore, then per epoch train, evaluate, record, maybe
save and early-stop, then finish (:func:`train_group`).

A single run is a :class:`Group` of one trial without a trial axis, placed over its devices
(:class:`rnnjax.parallel.DataParallel`); a vectorized group (:mod:`rnnjax.vectorize`) stacks K
trials on a leading [K] axis and runs the same jitted step under ``jax.vmap`` on one device. Each
trial keeps its own workdir: its checkpoints, ``metrics.jsonl`` (appended), TensorBoard events,
curves, samples and ``evaluation.json``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from rnnjax import data
from rnnjax import workdir as rundir
from rnnjax.build import build_model
from rnnjax.cells import CELLS
from rnnjax.checkpoint import Checkpointer
from rnnjax.config import Config
from rnnjax.console import PipeSafe, Preempted, StopFlag, start_block
from rnnjax.evaluation import evaluation, part_perplexities, write_evaluation
from rnnjax.layout import (
    checkpoint_items,
    fit_sums,
    from_checkpoint_items,
    saved_meta,
    target_items,
)
from rnnjax.metrics import EvalMetrics, LayerStats, TrainSums, best_record, epoch_record, to_host
from rnnjax.model import num_params
from rnnjax.optim import make_optimizer
from rnnjax.parallel import DataParallel
from rnnjax.plotting import plot_curves
from rnnjax.preflight import set_aside_records
from rnnjax.profiling import Profiler
from rnnjax.sampling import generate
from rnnjax.steps import (
    eval_sums,
    init_train_state,
    make_eval_step,
    make_stats_eval_step,
    make_train_step,
    nonfinite_part,
    train_sums,
)
from rnnjax.tensorboard_log import TensorBoardLog


class Group:
    """K >= 1 trials of one model shape (they may differ in seed and optimizer hyperparameters) and the
    jitted steps that train them together. ``vmapped``: every array has a leading [K] trial axis."""

    def __init__(
        self, cfgs: Sequence[Config], corpus: data.Corpus, dp: DataParallel, vmapped: bool
    ):
        self.cfgs, self.corpus, self.dp, self.vmapped = tuple(cfgs), corpus, dp, vmapped
        dc, tc = cfgs[0].data, cfgs[0].train
        self.model = build_model(cfgs[0], len(corpus.vocab))
        self.n = data.batches_per_epoch(dc, len(corpus.train))
        optimizers = [
            make_optimizer(c.train, total_steps=self.n * c.train.num_epochs) for c in cfgs
        ]
        self.txs, self.schedules = [o[0] for o in optimizers], [o[1] for o in optimizers]
        # The update reads each trial's hyperparameters from its own optimizer state (inject_hyperparams).
        step = make_train_step(self.model, self.txs[0], reset_carry=dc.sampler == "random")
        self.plain_eval_step = make_eval_step(self.model)
        evaluate = make_stats_eval_step(self.model) if tc.layer_stats else self.plain_eval_step
        if vmapped:
            step = jax.jit(
                jax.vmap(step, in_axes=(0, 0, 0, 0, 0, None, 0)), donate_argnums=(0, 1, 2)
            )
            evaluate = jax.jit(
                jax.vmap(evaluate, in_axes=(0, 0, 0, *([0] if tc.layer_stats else []), None, None))
            )
        self.train_step, self.eval_step = step, evaluate
        self.zero_sums = train_sums(
            self.model, jax.eval_shape(self.model.init, jax.random.key(0)), tc.layer_stats
        )

    def take(self, tree: Any, j: int) -> Any:
        """Trial j's part of a group's pytree."""
        return jax.tree_util.tree_map(lambda x: x[j], tree) if self.vmapped else tree

    def stack(self, trees: Sequence[Any]) -> Any:
        """One pytree per trial -> the group's pytree (inverse of :meth:`take`)."""
        return (
            jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees) if self.vmapped else trees[0]
        )

    def init(self) -> tuple[Any, Any]:
        """Each trial's step-0 train state and RNG key data, from its own seed (as a single run of it)."""
        states, rngs = [], []
        for c, tx in zip(self.cfgs, self.txs):
            init_key, rng = jax.random.split(jax.random.key(c.seed))
            init = jax.jit(
                lambda k, tx=tx: init_train_state(self.model, tx, k),
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
        """Each trial's minibatches of ``epoch`` (its own seed's order): [n, b, t], or [K, n, b, t]."""
        xs, ys = zip(
            *(data.epoch_batches(self.corpus.train, c.data, c.seed, epoch) for c in self.cfgs)
        )
        if not self.vmapped:
            return self.dp.shard(xs[0], 1), self.dp.shard(ys[0], 1)
        return jnp.asarray(np.stack(xs)), jnp.asarray(np.stack(ys))

    def evaluate(self, params) -> tuple[EvalMetrics, LayerStats | None, tuple[EvalMetrics, ...]]:
        """Dispatch the validation pass over each held-out part, each from a zero carry (with
        ``train.layer_stats`` also the per-layer statistics of the same pass): (all parts' sums,
        statistics, each part's sums when there are several), on the device, read with the record."""
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
                zeros = (EvalMetrics.zeros(), LayerStats.zeros(num_layers=self.model.num_layers))
                sums = self.stack([zeros if with_stats else zeros[:1]] * k)
                for x_bt, y_bt in data.eval_windows(ids, dc.batch_size, dc.num_steps):
                    carry, *sums = self.eval_step(params, carry, *sums, x_bt, y_bt)
            parts.append(sums[0])
            if with_stats:
                stats = sums[1] if stats is None else stats + sums[1]
        total = parts[0]
        for more in parts[1:]:
            total = total + more
        return total, stats, tuple(parts) if len(parts) > 1 else ()


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
    ``notes``: each workdir's lines for the start block (:func:`rnnjax.preflight.claimed`)."""
    cfg, tc, k = group.cfgs[0], group.cfgs[0].train, len(group.cfgs)
    if primary:
        for d, c in zip(workdirs, group.cfgs):
            rundir.write_run(d, c, group.corpus.vocab)
    with contextlib.ExitStack() as cleanup:
        ckpts = [Checkpointer(d, c.checkpoint.max_to_keep) for d, c in zip(workdirs, group.cfgs)]
        for ckpt in ckpts:
            cleanup.callback(ckpt.close)
        state, rng_data, carry, metrics, start_epoch, start_batch, step, saved = restore(
            group, ckpts
        )
        notes = [list(n) for n in notes] or [[] for _ in workdirs]
        records = [
            kept_records(d, start_epoch, s, primary, n) for d, s, n in zip(workdirs, saved, notes)
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
        last_epoch = stopped if stopped else tc.num_epochs
        boards = [
            TensorBoardLog(d, start_epoch) if primary and start_epoch <= last_epoch else None
            for d in workdirs
        ]
        for tb in boards:
            if tb:
                cleanup.callback(tb.close)
        profiler = Profiler(workdirs[0] / "profile", tc.profile_steps if primary else 0)
        cleanup.callback(profiler.stop)  # also when a signal or an error ends the run
        failed: dict[int, Exception] = {}
        start = time.perf_counter()
        bar = tqdm.trange(
            start_epoch,
            last_epoch + 1,
            desc=f"{cfg.model.num_layers}x{cfg.model.cell}",
            disable=not tc.progress or start_epoch > last_epoch,
            file=PipeSafe(sys.stderr),
        )
        clock = {"every_s": 60.0 * cfg.checkpoint.every_minutes, "saved": time.monotonic()}
        # Each epoch: its steps, one read of their metric sums, its validation pass, its records.
        for epoch in bar:
            first = start_batch if epoch == start_epoch else 0
            if first == 0:
                carry, metrics = group.fresh()
            t0 = time.perf_counter()
            state, carry, metrics = train_epoch(
                group,
                ckpts,
                profiler,
                stop,
                state,
                rng_data,
                carry,
                metrics,
                epoch,
                first,
                failed,
                clock,
            )
            sums = to_host(metrics)  # the one host sync of the training steps
            tokens_per_sec = (
                (group.n - first)
                * cfg.data.batch_size
                * cfg.data.num_steps
                / (time.perf_counter() - t0)
            )
            val, stats, parts = group.evaluate(state.params)
            active = [j for j in range(k) if j not in failed]
            # Written in this order: TensorBoard, the checkpoint (its meta holds the record), metrics.jsonl.
            # A kill between any two leaves a run that resumes: events past the last checkpoint are purged,
            # and a record missing from metrics.jsonl is restored from the checkpoint's meta.
            for j in active:
                records[j].append(
                    make_record(
                        group, j, epoch, state, sums, val, stats, parts, tokens_per_sec, start
                    )
                )
                if boards[j]:
                    boards[j].record(records[j][-1])
            for j in active:
                if error := abort_error(group, j, state, carry, epoch, records[j][-1]):
                    commit(workdirs[j], records[j][-1], bar, primary)
                    if not group.vmapped:
                        raise error
                    failed[j] = error
            active = [j for j in active if j not in failed]
            saving = (
                epoch % cfg.checkpoint.every_epochs == 0
                or epoch == tc.num_epochs
                or 0 < clock["every_s"] <= time.monotonic() - clock["saved"]
            )
            stopped = stopped_early(tc.early_stopping_patience, [records[j] for j in active])
            for j in active:
                new_best = (
                    tc.early_stopping_patience > 0 and best_record(records[j]) is records[j][-1]
                )
                if saving or new_best or stopped:
                    clock["saved"] = time.monotonic()
                    try:
                        save(
                            group,
                            ckpts[j],
                            j,
                            state,
                            rng_data,
                            carry,
                            metrics,
                            epoch,
                            0,
                            records[j][-1],
                        )
                    except BaseException:  # e.g. disk full: the epoch's record is still kept
                        with contextlib.suppress(OSError):
                            commit(workdirs[j], records[j][-1], bar, primary)
                        raise
                commit(workdirs[j], records[j][-1], bar, primary)
                if saving and boards[j] and cfg.generate.prefixes:
                    boards[j].samples(
                        epoch,
                        list(cfg.generate.prefixes),
                        samples(group, group.take(state.params, j)),
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


def restore(group: Group, ckpts: list[Checkpointer]):
    """The trials' latest common good checkpoint, or a fresh state: (state, rng_data, carry, metrics,
    epoch, batch, step or None, each trial's saved record or None)."""
    state, rng_data = group.init()
    carry, metrics = group.fresh()
    k = len(ckpts)

    def target(j: int):
        def of(
            meta,
        ):  # the metric sums as saved (their names and shapes, or an earlier layout's arrays)
            one = (group.take(x, j) for x in (state, rng_data, carry, metrics))
            return group.dp.abstract(target_items(*one, meta, group.dp.replicate))

        return of

    found = [ckpt.restore(target(j)) for j, ckpt in enumerate(ckpts)]
    steps = {f[0] if f else None for f in found}
    if (
        len(steps) > 1
    ):  # a kill between the trials' saves (or damage): go on from a step every trial has
        common = None if None in steps else min(steps)
        found = [
            f
            if f is None or f[0] == common
            else ckpt.restore(target(j), common)
            if common in ckpt.steps()
            else None
            for j, (f, ckpt) in enumerate(zip(found, ckpts))
        ]
        if any(f is None for f in found):
            found = [None] * k
    if found[0] is None:
        return state, rng_data, carry, metrics, 1, 0, None, [None] * k
    trials = []
    for j, (_, params, item, meta) in enumerate(found):
        s, r, c, sums = from_checkpoint_items(params, item)
        # metrics added since (or layer_stats changed): 0 from an epoch's start, unknown mid-epoch
        trials.append(
            (
                s,
                r,
                c,
                fit_sums(sums, group.take(metrics, j), meta["batch"] != 0, group.dp.replicate),
            )
        )
    state, rng_data, carry, metrics = (group.stack([t[i] for t in trials]) for i in range(4))
    meta = found[0][3]
    return (
        state,
        rng_data,
        carry,
        metrics,
        meta["epoch"] + 1,
        meta["batch"],
        found[0][0],
        [f[3].get("record") for f in found],
    )


def kept_records(
    workdir: pathlib.Path,
    start_epoch: int,
    saved: dict[str, Any] | None,
    primary: bool,
    notes: list[str],
) -> list[dict[str, Any]]:
    """The records of the epochs before ``start_epoch``; one a damaged ``metrics.jsonl`` lost is taken
    from the checkpoint's meta (``saved``). Those after the checkpoint (a kill past it) are redone,
    identically: they are set aside in ``discarded/<time>/metrics.jsonl`` and ``notes`` says so."""
    path = workdir / "metrics.jsonl"
    every = rundir.read_metrics(path)
    records = [r for r in every if r["epoch"] < start_epoch]
    if saved and not any(r["epoch"] == saved["epoch"] for r in records):
        logging.warning(
            "metrics.jsonl lacked epoch %d: its record is restored from the checkpoint",
            saved["epoch"],
        )
        records = sorted([*records, saved], key=lambda r: r["epoch"])
    later = [r for r in every if r["epoch"] >= start_epoch]
    if primary and later:
        dest = set_aside_records(workdir, later)
        epochs = (
            f"{later[0]['epoch']}-{later[-1]['epoch']}"
            if len(later) > 1
            else f"{later[0]['epoch']}"
        )
        notes.append(
            f"no checkpoint covers the record(s) of epoch {epochs}: set aside in {rundir.shown(dest)}, "
            "redone from the checkpoint"
        )
    if primary:
        rundir.write_metrics(path, records)
    return records


def train_epoch(
    group: Group,
    ckpts,
    profiler: Profiler,
    stop: StopFlag,
    state,
    rng_data,
    carry,
    metrics,
    epoch: int,
    first: int,
    failed: dict[int, Exception],
    clock: dict[str, float],
):
    """Minibatches ``first`` .. n-1 of ``epoch``; on SIGTERM/SIGINT, save this step and raise
    :class:`Preempted`; with ``checkpoint.every_minutes`` (``clock["every_s"]``), also save this step
    once that long has passed since the last save (a kill then loses at most that much)."""
    xs_nbt, ys_nbt = group.batches(epoch)
    rng = jax.random.wrap_key_data(rng_data)
    for i in range(first, group.n):
        state, carry, metrics = group.train_step(state, carry, metrics, xs_nbt, ys_nbt, i, rng)
        profiler.after_step(state)
        timed = clock["every_s"] > 0 and time.monotonic() - clock["saved"] >= clock["every_s"]
        if stop.signum is not None or (timed and i + 1 < group.n):
            for j, ckpt in enumerate(ckpts):
                if j not in failed:
                    save(group, ckpt, j, state, rng_data, carry, metrics, epoch - 1, i + 1)
            clock["saved"] = time.monotonic()
        if stop.signum is not None:
            raise Preempted(stop.signum, int(group.take(state.step, 0)))
    return state, carry, metrics


def save(
    group: Group,
    ckpt: Checkpointer,
    j: int,
    state,
    rng_data,
    carry,
    metrics,
    epoch: int,
    batch: int,
    record: dict[str, Any] | None = None,
) -> None:
    """Checkpoint trial j at its current step (position ``epoch``, ``batch``; ``record`` at an epoch end)."""
    one = [group.take(x, j) for x in (state, rng_data, carry, metrics)]
    ckpt.save(int(one[0].step), *checkpoint_items(*one), saved_meta(one[3], epoch, batch, record))


def make_record(
    group: Group,
    j: int,
    epoch: int,
    state,
    sums: dict[str, np.ndarray],
    val: EvalMetrics,
    stats: LayerStats | None,
    parts: tuple[EvalMetrics, ...],
    tokens_per_sec: float,
    start: float,
) -> dict[str, Any]:
    """Trial j's record of ``epoch`` (reads its validation sums)."""
    c = group.cfgs[j]
    step = int(group.take(state.step, j))
    layers = (
        group.take(stats, j).summary(CELLS[c.model.cell].retains) if stats is not None else None
    )
    by_source = (
        {name: group.take(m, j).perplexity() for (name, _), m in zip(group.corpus.val_parts, parts)}
        if parts
        else None
    )
    return epoch_record(
        epoch,
        step,
        group.take(sums, j),
        group.take(val, j).perplexity(),
        tokens_per_sec,
        float(group.schedules[j](step - 1)),
        time.perf_counter() - start,
        layers,
        c.data.tokenizer == "char",
        by_source,
    )


def commit(workdir: pathlib.Path, record: dict[str, Any], bar, primary: bool) -> None:
    """Append an epoch's record to metrics.jsonl (fsynced) and show it on the progress bar."""
    if primary:
        rundir.append_metrics(workdir / "metrics.jsonl", record)
    bar.set_postfix(train_ppl=f"{record['train_ppl']:.2f}", val_ppl=f"{record['val_ppl']:.2f}")


def stopped_early(patience: int, records: Sequence[list[dict[str, Any]]]) -> int | None:
    """The epoch at which every trial has gone ``train.early_stopping_patience`` epochs without a new best
    validation perplexity (None: training goes on). Read from the records, so a resumed run knows too."""
    if not patience or not records or not all(records):
        return None
    for rs in records:
        best = best_record(rs)
        if rs[-1]["epoch"] - (best["epoch"] if best else 0) < patience:
            return None
    return records[0][-1]["epoch"]


def abort_error(
    group: Group, j: int, state, carry, epoch: int, record: dict[str, Any]
) -> FloatingPointError | None:
    """The one-line error that ends trial j after ``epoch`` (None: it goes on): its last
    ``train.max_nonfinite`` steps were all non-finite, or its loss is finite but so large that its
    perplexity (``record``) overflows to inf."""
    c, tc = group.cfgs[j], group.cfgs[j].train
    one = group.take(state, j)
    clip = f"train.grad_clip = {tc.grad_clip}" + (" (off)" if tc.grad_clip == 0 else "")
    fix = "lower train.learning_rate" + (
        " or set train.grad_clip (e.g. 1.0)" if tc.grad_clip == 0 else ""
    )
    with_what = f"train.optimizer = {tc.optimizer!r}, train.learning_rate = {tc.learning_rate}, {clip}; {fix}"
    if int(one.nonfinite) >= tc.max_nonfinite:
        xs_nbt, ys_nbt = group.batches(epoch)
        x_bt, y_bt = group.take(xs_nbt, j)[group.n - 1], group.take(ys_nbt, j)[group.n - 1]
        what = nonfinite_part(
            group.model,
            group.txs[j],
            one,
            group.take(carry, j),
            x_bt,
            y_bt,
            c.data.sampler == "random",
        )
        return FloatingPointError(
            f"aborting at step {int(one.step)}: {int(one.nonfinite)} consecutive non-finite training steps "
            f"(train.max_nonfinite = {tc.max_nonfinite}), none applied; the {what} was not finite with {with_what}"
        )
    overflowed = [
        name
        for name, key in (("training", "train_ppl"), ("validation", "val_ppl"))
        if record[key] == math.inf
    ]
    if overflowed:
        return FloatingPointError(
            f"aborting at epoch {epoch} (step {int(one.step)}): the {' and '.join(overflowed)} perplexity "
            f"{'is' if len(overflowed) == 1 else 'are'} inf "
            f"(the mean loss overflows exp: the run diverged) with {with_what}"
        )
    return None


def describe(
    group: Group,
    workdirs: Sequence[pathlib.Path],
    params,
    step: int | None,
    start_epoch: int,
    start_batch: int,
    stopped: int | None,
    notes: tuple[str, ...] = (),
) -> str:
    """The start block (:func:`rnnjax.console.start_block`) of the group's first trial."""
    c = group.cfgs[0]
    m = c.model
    what = f"{m.num_layers}-layer {m.cell} (hidden {m.hidden_size}, impl {m.impl}), {num_params(params):,} parameters"
    if len(group.cfgs) > 1:
        what += f", {len(group.cfgs)} trials vectorized"
    where = f"{group.dp.num_devices} {jax.default_backend()} device(s)"
    if not group.dp.split_batch:
        where += f" (layer pipeline: {group.dp.num_devices} stages, {group.cfgs[0].parallel.pipeline_chunks} time chunks)"
    where += f"; workdir {rundir.shown(workdirs[0])}"
    patience = c.train.early_stopping_patience if stopped else None
    return start_block(
        what, where, step, start_epoch, start_batch, c.train.num_epochs, patience, notes
    )


def samples(group: Group, params) -> list[str]:
    """The greedy continuation of each ``generate.prefixes``."""
    c = group.cfgs[0]
    return (
        generate(
            group.model,
            params,
            group.corpus.vocab,
            list(c.generate.prefixes),
            c.generate.num_chars,
            preprocess=c.data.preprocess,
            tokenizer=c.data.tokenizer,
        )
        if c.generate.prefixes
        else []
    )


def finish(
    group: Group,
    j: int,
    workdir: pathlib.Path,
    ckpt: Checkpointer,
    state,
    records: list[dict[str, Any]],
    wall_time: float,
    tb: TensorBoardLog | None,
    stopped: int | None,
    primary: bool,
) -> dict[str, Any]:
    """Trial j's curves, samples, evaluation (with its best checkpoint's params), hparams and summary."""
    c, one = group.cfgs[j], group.take(state, j)
    best_step = next(iter(ckpt.best_steps()), None)
    best_saved = next((r["epoch"] for r in records if r["step"] == best_step), None)
    best_params = (
        one.params
        if best_step in (None, int(one.step))
        else ckpt.restore(lambda meta: (group.dp.abstract(one.params), None), best_step)[1]
    )
    if primary:
        plot_curves(
            records, workdir / "curves.png", title=f"{c.model.num_layers}-layer {c.model.cell}"
        )
    texts = samples(group, best_params if c.train.early_stopping_patience else one.params)
    if primary:
        rundir.write_atomic(workdir / "samples.txt", "".join(s + "\n" for s in texts))
    test = (
        part_perplexities(
            group.model,
            best_params,
            group.corpus.test_parts,
            c.data,
            group.plain_eval_step,
            group.dp,
        )
        if group.corpus.test_parts
        else None
    )
    out = evaluation(records, best_saved, stopped, c.data.tokenizer == "char", test)
    if primary:
        write_evaluation(workdir, out)
    best, last = best_record(records), records[-1] if records else {}
    if tb is not None:
        tb.finish(c.to_dict(), records, best["val_ppl"] if best else math.nan)
    return (
        out
        | {
            "params": one.params,
            "model": group.model,
            "vocab": group.corpus.vocab,
            "num_params": num_params(one.params),
            "train_ppl": last.get("train_ppl", math.nan),
            "val_ppl": last.get("val_ppl", math.nan),
            "best_val_ppl": best["val_ppl"] if best else math.nan,
            "best_epoch": best["epoch"] if best else None,
            "best_saved_epoch": best_saved,  # what rnnjax.load(workdir) restores: checkpoints are every_epochs apart
            "workdir": workdir,
            "wall_time": wall_time,
            "num_devices": group.dp.num_devices,
            "samples": texts,
            "metrics": records,
            "samples_from": "best" if c.train.early_stopping_patience else "final",
        }
    )
