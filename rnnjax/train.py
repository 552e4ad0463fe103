"""Training: restore -> for each epoch: train, evaluate, record, maybe save -> finish.

Flow: config -> data -> model -> train step (:mod:`rnnjax.steps`) -> metrics
(:mod:`rnnjax.metrics`) -> checkpoint -> generate. One training step is one
``jax.jit``-compiled function; metrics are summed on the device and read back once per epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import pathlib
import sys
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import tqdm

from rnnjax import cudnn, data, pipeline
from rnnjax import workdir as rundir
from rnnjax.capacity import check_fits
from rnnjax.cells import CELLS
from rnnjax.checkpoint import Checkpointer, CheckpointError
from rnnjax.config import Config, ConfigError, resolve
from rnnjax.console import PipeSafe, Preempted, StopFlag
from rnnjax.generate import generate
from rnnjax.host import retain_freed_memory
from rnnjax.metrics import EvalMetrics, LayerStats, TrainMetrics, best_record, bpc, epoch_record
from rnnjax.model import Carry, DeepRNN, Impl, Params, Placed, Placement, num_params
from rnnjax.optim import make_optimizer
from rnnjax.parallel import DataParallel, pipeline_device_count, set_cpu_devices_for
from rnnjax.plotting import plot_curves
from rnnjax.profiling import Profiler
from rnnjax.steps import (
    TrainState,
    eval_sums,
    init_train_state,
    make_eval_step,
    make_stats_eval_step,
    make_train_step,
    nonfinite_part,
)
from rnnjax.tensorboard_log import TensorBoardLog
from rnnjax.workdir import RESUME_MODES

Array = jax.Array


def build_model(cfg: Config, vocab_size: int) -> DeepRNN | Placed:
    """The model the config asks for (``model.impl``: an :class:`Impl` value) and, where it runs other
    than on one device, its :class:`Placement` (``parallel.cpu_pipeline``: its layers pipelined over
    the CPU devices; ``impl="cudnn"``: cuDNN's call split over the data-parallel devices)."""
    m, p = cfg.model, cfg.parallel
    spec = DeepRNN(vocab_size, m.hidden_size, m.num_layers, m.cell, tuple(m.activation), m.dropout, Impl(m.impl),
                   output_dropout=m.output_dropout)
    stages = pipeline_device_count(p.cpu_devices, m.num_layers) if p.cpu_pipeline else 1
    # cuDNN's call runs under shard_map over the data-parallel devices (XLA cannot partition it)
    data_devices = (p.num_devices or len(jax.devices())) if m.impl == "cudnn" else 1
    placement = Placement(stages, p.pipeline_chunks, data_devices)
    return spec if placement == Placement(pipeline_chunks=p.pipeline_chunks) else Placed(spec, placement)


def make_placement(cfg: Config) -> DataParallel:
    """Where the run's arrays live: split over ``parallel.num_devices`` devices (data parallel), or
    replicated over the layer pipeline's stages (``parallel.cpu_pipeline``)."""
    if cfg.parallel.cpu_pipeline:
        if jax.process_count() > 1:
            raise ConfigError("config.parallel.cpu_pipeline runs in one process; set it to False for multi-process runs")
        return DataParallel.replicated_over(pipeline.stages_for(cfg.model.num_layers, pipeline_device_count(
            cfg.parallel.cpu_devices, cfg.model.num_layers)))
    return DataParallel.create(cfg.parallel.num_devices, cfg.data.batch_size)


def checkpoint_items(state: TrainState, rng_data: Array, carry: Carry, metrics: TrainMetrics) -> tuple[Params, dict]:
    """A checkpoint's ``params`` and ``state`` items (layout in :mod:`rnnjax.checkpoint`); ``rng_data`` is
    ``jax.random.key_data(key)``. The metric sums are stored as the [4] array ``acc`` and the per-layer
    gradient norm sums, when tracked, as ``acc_layers`` [L + 1] (checkpoints written before it lack it)."""
    train = {"step": state.step, "opt_state": state.opt_state, "nonfinite": state.nonfinite}
    item = {"train": train, "rng": rng_data, "carry": carry, "acc": metrics.to_array()}
    return state.params, item | ({"acc_layers": metrics.layer_grad_norm} if metrics.tracks_layers else {})


def from_checkpoint_items(params: Params, item: dict[str, Any]) -> tuple[TrainState, Array, Carry, TrainMetrics]:
    """Inverse of :func:`checkpoint_items`: (train state, rng_data, carry, metric sums)."""
    train = item["train"]
    state = TrainState(train["step"], params, train["opt_state"], train["nonfinite"])
    return state, item["rng"], item["carry"], TrainMetrics.from_array(item["acc"], item.get("acc_layers"))


def train_and_evaluate(
    config: ml_collections.ConfigDict | Config, workdir: str | os.PathLike, resume: str = "auto"
) -> dict[str, Any]:
    """Train the configured model in ``workdir``, resuming from its latest good checkpoint.

    ``workdir`` may be relative (to the current directory). ``resume``: "auto" (resume if
    there is a checkpoint), "must" (fail at once, creating nothing, if there is none),
    "never" (refuse a workdir holding checkpoints) or "restart" (move the workdir's files to
    ``WORKDIR/discarded/<time>/`` and start over). A workdir with history (metric records,
    damaged checkpoints) but no checkpoint is refused unless ``resume="restart"``. Writes
    config.json, vocab.json, metrics.jsonl, checkpoints/, curves.png and samples.txt.
    Returns a summary dict with the final ``params``. Raises :class:`Preempted` on
    SIGTERM/SIGINT (after saving, once training has started).
    """
    cfg = config if isinstance(config, Config) else resolve(config)
    if resume not in RESUME_MODES:
        raise ConfigError(f"resume = {resume!r} is not allowed: one of {', '.join(map(repr, RESUME_MODES))}")
    workdir = rundir.resolve(workdir)
    rundir.check_writable(workdir)
    if resume == "must" and not rundir.has_checkpoint(workdir):
        raise CheckpointError(f"--resume=must but {workdir} has no checkpoint to resume from")
    if resume == "never" and rundir.has_checkpoint(workdir):
        raise CheckpointError(f"--resume=never but {workdir} already holds checkpoints; use a new --workdir")
    with StopFlag() as stop:  # from here on SIGTERM/SIGINT end the run with a message, never mid-write
        corpus = data.load_corpus(cfg.data)  # validates the data before any compute
        retain_freed_memory()  # XLA's per-step scratch block reuses its pages (rnnjax/host.py)
        set_cpu_devices_for(cfg)  # a no-op, or an error if JAX started otherwise
        dp = make_placement(cfg)
        if cfg.model.impl == "cudnn":
            cudnn.check_available()  # one line on a machine without CUDA: never a silent fallback
        check_fits(cfg, len(corpus.vocab))
        primary = jax.process_index() == 0  # only process 0 writes files (orbax coordinates checkpoints)
        workdir.mkdir(parents=True, exist_ok=True)
        lock = rundir.WorkdirLock(workdir)
        if primary:
            lock.acquire()
        try:
            rundir.check_resumable(workdir, cfg, corpus.vocab, resume)
            if resume == "restart" and primary and (moved := rundir.set_aside(workdir)):
                logging.warning("--resume=restart: moved the old run to %s", moved)
            if stop.signum is not None:
                raise Preempted(stop.signum, None)
            return _Trainer(cfg, corpus, workdir, dp, primary, stop).run()
        finally:
            lock.release()


class _EpochResult(NamedTuple):
    """An epoch's training sums (on the host) and its dispatched validation sums: what its record is built from."""

    epoch: int
    step: int
    sums: TrainMetrics
    tokens_per_sec: float
    lr: float
    val: EvalMetrics  # every held-out part together
    stats: LayerStats | None  # with train.layer_stats
    parts: tuple[EvalMetrics, ...]  # per source (corpus.val_parts), when there are several


@dataclasses.dataclass
class _Trainer:
    """One training run in a locked workdir: the pieces the epoch loop shares."""

    cfg: Config
    corpus: data.Corpus
    workdir: pathlib.Path
    dp: DataParallel
    primary: bool
    stop: StopFlag

    def __post_init__(self):
        dc, tc = self.cfg.data, self.cfg.train
        self.model = build_model(self.cfg, len(self.corpus.vocab))
        self.n = data.batches_per_epoch(dc, len(self.corpus.train))
        self.tx, self.schedule = make_optimizer(tc, total_steps=self.n * tc.num_epochs)
        self.train_step = make_train_step(self.model, self.tx, reset_carry=dc.sampler == "random")
        self.plain_eval_step = make_eval_step(self.model)
        self.eval_step = make_stats_eval_step(self.model) if tc.layer_stats else self.plain_eval_step
        self.metrics_path = self.workdir / "metrics.jsonl"

    def fresh(self) -> tuple[Carry, TrainMetrics]:
        """A zero carry and zero metric sums for the start of an epoch, placed on the mesh."""
        carry = self.dp.shard_carry(self.model.initial_carry(self.cfg.data.batch_size))
        zeros = TrainMetrics.zeros(num_layers=self.cfg.model.num_layers if self.cfg.train.layer_stats else 0)
        return carry, jax.tree_util.tree_map(lambda x: self.dp.replicate(np.asarray(x)), zeros)

    def save(self, ckpt: Checkpointer, state, rng_data, carry, metrics, epoch: int, batch: int, record=None) -> None:
        """Checkpoint the current step. Its meta holds the position and (at an epoch end) the epoch's
        record, so a damaged ``metrics.jsonl`` can get it back."""
        meta = {"epoch": epoch, "batch": batch, "val_ppl": record["val_ppl"] if record else None,
                "record": rundir.finite(record) if record else None, "acc_layers": int(metrics.layer_grad_norm.shape[-1])}
        ckpt.save(int(state.step), *checkpoint_items(state, rng_data, carry, metrics), meta)

    def restore(self, ckpt: Checkpointer):
        """The latest good checkpoint, or a fresh state: (state, rng_data, carry, metrics, epoch, batch, step or None)."""
        init_key, rng = jax.random.split(jax.random.key(self.cfg.seed))
        state = jax.jit(lambda k: init_train_state(self.model, self.tx, k), out_shardings=self.dp.replicated)(init_key)
        rng_data = self.dp.replicate(np.asarray(jax.random.key_data(rng)))
        carry, metrics = self.fresh()
        def target(meta):  # acc_layers as saved: absent before it existed and when layer_stats was off
            saved = TrainMetrics(*metrics[:4], self.dp.replicate(np.zeros((meta.get("acc_layers", 0),), np.float32)))
            return self.dp.abstract(checkpoint_items(state, rng_data, carry, saved))

        restored = ckpt.restore(target)
        if restored is None:
            return state, rng_data, carry, metrics, 1, 0, None, None
        step, params, item, meta = restored
        state, rng_data, carry, sums = from_checkpoint_items(params, item)
        if sums.layer_grad_norm.shape != metrics.layer_grad_norm.shape:  # layer_stats changed, or an older checkpoint:
            fill = np.nan if meta["batch"] else 0.0  # this epoch's per-layer norms are unknown mid-epoch
            sums = sums._replace(layer_grad_norm=self.dp.replicate(np.full(metrics.layer_grad_norm.shape, fill, np.float32)))
        return state, rng_data, carry, sums, meta["epoch"] + 1, meta["batch"], step, meta.get("record")

    def train_epoch(self, ckpt, state, rng_data, carry, metrics, epoch: int, first: int):
        """Minibatches ``first`` .. n-1 of ``epoch``; on SIGTERM/SIGINT, save this step and raise :class:`Preempted`."""
        xs_nbt, ys_nbt = (self.dp.shard(a, 1) for a in data.epoch_batches(self.corpus.train, self.cfg.data, self.cfg.seed, epoch))
        rng = jax.random.wrap_key_data(rng_data)
        for i in range(first, self.n):
            state, carry, metrics = self.train_step(state, carry, metrics, xs_nbt, ys_nbt, i, rng)
            self.profiler.after_step(state)
            if self.stop.signum is not None:
                self.save(ckpt, state, rng_data, carry, metrics, epoch - 1, i + 1)
                raise Preempted(self.stop.signum, int(state.step))
        return state, carry, metrics

    def start_eval(self, params) -> tuple[EvalMetrics, LayerStats | None, tuple[EvalMetrics, ...]]:
        """Dispatch the validation pass over each held-out part (with ``train.layer_stats``, also the per-layer
        statistics of the same pass): (all parts' sums, statistics, each part's sums when there are several).
        The sums are read when the epoch's record is written."""
        dc, with_stats = self.cfg.data, self.cfg.train.layer_stats
        parts, stats = [], None
        for _, ids in self.corpus.val_parts:
            sums = eval_sums(self.model, params, ids, dc.batch_size, dc.num_steps, self.eval_step, self.dp,
                             with_stats=with_stats)
            if with_stats:
                sums, part_stats = sums
                stats = part_stats if stats is None else stats + part_stats
            parts.append(sums)
        total = parts[0]
        for more in parts[1:]:
            total = total + more
        return total, stats, tuple(parts) if len(parts) > 1 else ()

    def evaluate_parts(self, params, parts: tuple[tuple[str, np.ndarray], ...]) -> dict[str, float]:
        """Perplexity of each held-out part and of all of them together (key "all"), read back now."""
        dc = self.cfg.data
        sums = {name: eval_sums(self.model, params, ids, dc.batch_size, dc.num_steps, self.plain_eval_step, self.dp)
                for name, ids in parts}
        total = functools.reduce(EvalMetrics.__add__, sums.values())
        return {"all": total.perplexity()} | ({k: m.perplexity() for k, m in sums.items()} if len(sums) > 1 else {})

    def abort_nonfinite(self, state, carry, epoch: int):
        """Raise the one-line error for a run whose last ``train.max_nonfinite`` steps were all non-finite."""
        tc = self.cfg.train
        xs_nbt, ys_nbt = data.epoch_batches(self.corpus.train, self.cfg.data, self.cfg.seed, epoch)
        x_bt, y_bt = (self.dp.shard(a[self.n - 1], 0) for a in (xs_nbt, ys_nbt))
        what = nonfinite_part(self.model, self.tx, state, carry, x_bt, y_bt, self.cfg.data.sampler == "random")
        clip = f"train.grad_clip = {tc.grad_clip}" + (" (off)" if tc.grad_clip == 0 else "")
        fix = "lower train.learning_rate" + (" or set train.grad_clip (e.g. 1.0)" if tc.grad_clip == 0 else "")
        raise FloatingPointError(
            f"aborting at step {int(state.step)}: {int(state.nonfinite)} consecutive non-finite training steps "
            f"(train.max_nonfinite = {tc.max_nonfinite}), none applied; the {what} was not finite with "
            f"train.optimizer = {tc.optimizer!r}, train.learning_rate = {tc.learning_rate}, {clip}; {fix}"
        )

    def run(self) -> dict[str, Any]:
        cfg, tc = self.cfg, self.cfg.train
        if self.primary:
            rundir.write_run(self.workdir, cfg, self.corpus.vocab)
        ckpt = Checkpointer(self.workdir, cfg.checkpoint.max_to_keep)
        with contextlib.closing(ckpt), contextlib.ExitStack() as cleanup:
            state, rng_data, carry, metrics, start_epoch, start_batch, step, saved = self.restore(ckpt)
            records = [r for r in rundir.read_metrics(self.metrics_path) if r["epoch"] < start_epoch]
            if saved and not any(r["epoch"] == saved["epoch"] for r in records):  # a damaged metrics.jsonl lost it
                logging.warning("metrics.jsonl lacked epoch %d: its record is restored from the checkpoint", saved["epoch"])
                records = sorted([*records, saved], key=lambda r: r["epoch"])
            if self.primary:  # records after the checkpoint are redone (identically); none before it is dropped
                rundir.write_metrics(self.metrics_path, records)
            if tc.progress:
                PipeSafe(sys.stdout).write(self.start_block(state.params, step, start_epoch, start_batch) + "\n")
            stopped = self.stopped_early(records)  # a finished early-stopped run trains no further
            last_epoch = stopped if stopped else tc.num_epochs
            self.tb = TensorBoardLog(self.workdir, start_epoch) if self.primary and start_epoch <= last_epoch else None
            if self.tb:
                cleanup.callback(self.tb.close)
            self.profiler = Profiler(self.workdir / "profile", tc.profile_steps if self.primary else 0)
            cleanup.callback(self.profiler.stop)  # also when a signal or an error ends the run
            start = time.perf_counter()
            bar = tqdm.trange(start_epoch, last_epoch + 1, desc=f"{cfg.model.num_layers}x{cfg.model.cell}",
                              disable=not tc.progress or start_epoch > last_epoch, file=PipeSafe(sys.stderr))
            # Each epoch: its steps, one read of their metric sums, its validation pass, its record. (Reading
            # the validation pass behind the next epoch's steps measured no faster on 2 cores: BENCHMARKS.md.)
            for epoch in bar:
                first = start_batch if epoch == start_epoch else 0
                if first == 0:
                    carry, metrics = self.fresh()
                t0 = time.perf_counter()
                state, carry, metrics = self.train_epoch(ckpt, state, rng_data, carry, metrics, epoch, first)
                sums = metrics.to_host()  # the one host sync of the training steps
                tokens_per_sec = (self.n - first) * cfg.data.batch_size * cfg.data.num_steps / (time.perf_counter() - t0)
                done = _EpochResult(epoch, int(state.step), sums, tokens_per_sec, float(self.schedule(int(state.step) - 1)),
                                *self.start_eval(state.params))
                # Written in this order: TensorBoard, the checkpoint (its meta holds the record), metrics.jsonl.
                # A kill between any two leaves a run that resumes: events past the last checkpoint are purged,
                # and a record missing from metrics.jsonl is restored from the checkpoint's meta.
                records.append(self.make_record(done, start))
                saving = epoch % cfg.checkpoint.every_epochs == 0 or epoch == tc.num_epochs
                if int(state.nonfinite) >= tc.max_nonfinite:
                    self.commit_record(records[-1], bar)
                    self.abort_nonfinite(state, carry, epoch)
                stopped = self.stopped_early(records)
                new_best = tc.early_stopping_patience > 0 and best_record(records) is records[-1]
                if saving or new_best or stopped:
                    try:
                        self.save(ckpt, state, rng_data, carry, metrics, epoch, 0, records[-1])
                    except BaseException:  # e.g. disk full: the epoch's record is still kept
                        with contextlib.suppress(OSError):
                            self.commit_record(records[-1], bar)
                        raise
                self.commit_record(records[-1], bar)
                if saving and self.tb and cfg.generate.prefixes:
                    self.tb.samples(epoch, list(cfg.generate.prefixes), self.samples(state.params))
                if stopped:
                    break
            self.profiler.stop()
            best_step = next(iter(ckpt.best_steps()), None)
            best_saved = next((r["epoch"] for r in records if r["step"] == best_step), None)
            best_params = state.params if best_step in (None, int(state.step)) else ckpt.restore(
                lambda meta: (self.dp.abstract(state.params), None), best_step)[1]
            return self.finish(state, records, time.perf_counter() - start, best_saved, self.tb, best_params, stopped)

    def stopped_early(self, records: list[dict[str, Any]]) -> int | None:
        """The epoch at which ``train.early_stopping_patience`` epochs have passed without a new best
        validation perplexity (None: training goes on). Read from the records, so a resumed run knows too."""
        patience = self.cfg.train.early_stopping_patience
        if not patience or not records:
            return None
        best = best_record(records)
        since = records[-1]["epoch"] - (best["epoch"] if best else 0)
        return records[-1]["epoch"] if since >= patience else None

    def make_record(self, p: _EpochResult, start: float) -> dict[str, Any]:
        """Read an epoch's validation and build its record; write it to TensorBoard (first of its files:
        a resume purges any event a kill left past the last checkpoint)."""
        layers = p.stats.summary(CELLS[self.cfg.model.cell].retains) if p.stats is not None else None
        by_source = {name: m.perplexity() for (name, _), m in zip(self.corpus.val_parts, p.parts)} if p.parts else None
        record = epoch_record(p.epoch, p.step, p.sums, p.val.perplexity(), p.tokens_per_sec, p.lr,
                              time.perf_counter() - start, layers, self.cfg.data.tokenizer == "char", by_source)
        if self.tb:
            self.tb.record(record)
        return record

    def commit_record(self, record: dict[str, Any], bar) -> None:
        """Append an epoch's record to metrics.jsonl (fsynced) and show it on the progress bar."""
        if self.primary:
            rundir.append_metrics(self.metrics_path, record)
        bar.set_postfix(train_ppl=f"{record['train_ppl']:.2f}", val_ppl=f"{record['val_ppl']:.2f}")

    def start_block(self, params, step: int | None, start_epoch: int, start_batch: int) -> str:
        m, epochs = self.cfg.model, self.cfg.train.num_epochs
        what = f"{m.num_layers}-layer {m.cell} (hidden {m.hidden_size}, impl {m.impl}), {num_params(params):,} parameters"
        where = f"{self.dp.num_devices} {jax.default_backend()} device(s)"
        if not self.dp.split_batch:
            where += f" (layer pipeline: {self.dp.num_devices} stages, {self.cfg.parallel.pipeline_chunks} time chunks)"
        where += f"; workdir {rundir.shown(self.workdir)}"
        if step is None:
            todo = f"training epochs 1-{epochs}"
        elif start_epoch > epochs:
            todo = f"already trained {start_epoch - 1} epochs: nothing to resume (raise --config.train.num_epochs to extend)"
        elif self.stopped_early(rundir.read_metrics(self.metrics_path)):
            patience = self.cfg.train.early_stopping_patience
            todo = (f"stopped early at epoch {start_epoch - 1} (train.early_stopping_patience = {patience}): nothing "
                    "to resume (raise --config.train.early_stopping_patience to go on)")
        else:
            todo = f"resuming from epoch {start_epoch}, step {step} (minibatch {start_batch})"
        return f"{what}\n{where}\n{todo}"

    def samples(self, params) -> list[str]:
        """The greedy continuation of each ``generate.prefixes``."""
        cfg, dc = self.cfg, self.cfg.data
        return generate(
            self.model, params, self.corpus.vocab, list(cfg.generate.prefixes), cfg.generate.num_chars,
            preprocess=dc.preprocess, tokenizer=dc.tokenizer,
        ) if cfg.generate.prefixes else []

    def finish(self, state: TrainState, records: list[dict[str, Any]], wall_time: float, best_saved: int | None,
               tb: TensorBoardLog | None = None, best_params=None, stopped: int | None = None) -> dict[str, Any]:
        """Curves, samples, the test evaluation (with the best checkpoint's ``best_params``), hparams and
        the summary a caller gets back."""
        cfg = self.cfg
        best_params = state.params if best_params is None else best_params
        if self.primary:
            plot_curves(records, self.workdir / "curves.png", title=f"{cfg.model.num_layers}-layer {cfg.model.cell}")
        samples = self.samples(best_params if cfg.train.early_stopping_patience else state.params)
        if self.primary:
            rundir.write_atomic(self.workdir / "samples.txt", "".join(s + "\n" for s in samples))
        best, last = best_record(records), records[-1] if records else {}
        evaluation = self.evaluation(best_params, best_saved, best, stopped)
        if self.primary:
            rundir.write_atomic(self.workdir / "evaluation.json", json.dumps(rundir.finite(evaluation), indent=1) + "\n")
        if tb is not None:
            tb.finish(cfg.to_dict(), records, best["val_ppl"] if best else float("nan"))
        return evaluation | {
            "params": state.params, "model": self.model, "vocab": self.corpus.vocab, "num_params": num_params(state.params),
            "train_ppl": last.get("train_ppl", float("nan")), "val_ppl": last.get("val_ppl", float("nan")),
            "best_val_ppl": best["val_ppl"] if best else float("nan"), "best_epoch": best["epoch"] if best else None,
            "best_saved_epoch": best_saved,  # what rnnjax.load(workdir) restores: checkpoints are every_epochs apart
            "workdir": self.workdir, "wall_time": wall_time, "num_devices": self.dp.num_devices, "samples": samples,
            "metrics": records, "samples_from": "best" if cfg.train.early_stopping_patience else "final",
        }

    def evaluation(self, best_params, best_saved: int | None, best: dict[str, Any] | None, stopped: int | None
                   ) -> dict[str, Any]:
        """What ``evaluation.json`` holds: the best epoch's validation figures and, with a test split, the test
        perplexity of the best saved checkpoint (``best_params``), overall and per source."""
        char = self.cfg.data.tokenizer == "char"
        out: dict[str, Any] = {"best_epoch": best["epoch"] if best else None, "best_saved_epoch": best_saved,
                               "stopped_early_at": stopped, "best_val_ppl": best["val_ppl"] if best else None}
        if best and "val_ppl_by_source" in best:
            out["best_val_ppl_by_source"] = best["val_ppl_by_source"]
        if self.corpus.test_parts:
            test = self.evaluate_parts(best_params, self.corpus.test_parts)
            out["test_ppl"] = test.pop("all")
            if test:
                out["test_ppl_by_source"] = test
        if char:
            for key in [k for k in out if "_ppl" in k]:
                v = out[key]
                out[key.replace("_ppl", "_bpc")] = {k: bpc(x) for k, x in v.items()} if isinstance(v, dict) else (
                    bpc(v) if v is not None else None)
        return out
