"""Training: the jitted train step, evaluation, and the epoch loop.

Flow: config -> data -> model -> train step -> metrics (-> generate). One training
step is one ``jax.jit``-compiled function; metrics are summed on the device and read
back once per epoch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import pathlib
import signal
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from rnnjax import data
from rnnjax.checkpoint import Checkpointer, CheckpointError
from rnnjax.config import Config, ConfigError, first_difference, resolve
from rnnjax.flax_model import FlaxDeepRNN
from rnnjax.generate import generate
from rnnjax.host import retain_freed_memory
from rnnjax.model import DeepRNN, Params, State, num_params
from rnnjax.optim import make_optimizer
from rnnjax.parallel import DataParallel, set_cpu_devices
from rnnjax.plotting import plot_curves
from rnnjax.vocab import Vocab
from rnnjax.workdir import (
    MetricsWriter,
    WorkdirError,
    WorkdirLock,
    check_writable,
    history,
    read_json,
    read_metrics,
    set_aside,
    shown,
    write_atomic,
    write_metrics,
)
from rnnjax.workdir import resolve as resolve_path

Array = jax.Array


class TrainState(NamedTuple):
    step: Array  # int32 scalar: optimizer steps taken (skipped non-finite steps included)
    params: Params
    opt_state: optax.OptState
    nonfinite: Array  # int32 scalar: consecutive non-finite steps so far


def build_model(cfg: Config, vocab_size: int) -> DeepRNN:
    """The model the config asks for (``model.impl``: rnnjax or flax)."""
    cls = FlaxDeepRNN if cfg.model.impl == "flax" else DeepRNN
    m = cfg.model
    return cls(vocab_size, m.hidden_size, m.num_layers, m.cell, tuple(m.activation), m.dropout)


def cross_entropy(logits: Array, targets: Array) -> Array:
    """Per-token cross-entropy: logits [b, t, V], targets [b, t] -> [b, t]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def make_train_step(model: DeepRNN, tx: optax.GradientTransformation, reset_state: bool):
    """Returns ``train_step(state, carry, acc, xs [n,b,t], ys [n,b,t], i, key) -> (state, carry, acc)``.

    Trains on minibatch i. The carry (every layer's hidden state) comes in as data, so no
    gradient flows into earlier minibatches (truncated BPTT); ``reset_state`` zeroes it
    first (random sampling). ``acc`` [4] sums (loss, pre-clip gradient norm, applied steps,
    skipped steps). A step whose loss, gradient or update is not finite changes nothing but the
    counters: params, optimizer state and carry stay as they were.
    """

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train_step(state, carry, acc, xs, ys, i, key):
        x, y = xs[i], ys[i]
        if reset_state:
            carry = jax.tree_util.tree_map(jnp.zeros_like, carry)
        dropout_key = jax.random.fold_in(key, state.step) if model.dropout > 0 else None

        def loss_fn(params):
            logits, new_carry = model.apply(params, x, carry, dropout_key=dropout_key)
            return cross_entropy(logits, y).mean(), new_carry

        (loss, new_carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        gnorm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(gnorm) & jnp.isfinite(optax.tree.norm(updates))
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        okf = ok.astype(jnp.float32)
        acc = acc + jnp.stack([jnp.where(ok, loss, 0.0), jnp.where(ok, gnorm, 0.0), okf, 1.0 - okf])
        nonfinite = jnp.where(ok, 0, state.nonfinite + 1)
        new_state = TrainState(state.step + 1, keep(params, state.params), keep(opt_state, state.opt_state), nonfinite)
        return new_state, keep(new_carry, carry), acc

    return train_step


def make_eval_step(model: DeepRNN):
    """Returns ``eval_step(params, carry, acc, x [b,t], y [b,t]) -> (carry, acc)``; acc [2] = (nll sum, tokens)."""

    @jax.jit
    def eval_step(params, carry, acc, x, y):
        logits, carry = model.apply(params, x, carry)
        nll = cross_entropy(logits, y)
        return carry, acc + jnp.stack([nll.sum(), jnp.float32(nll.size)])

    return eval_step


def perplexity(
    model: DeepRNN, params: Params, tokens: np.ndarray, batch_size: int, num_steps: int,
    eval_step=None, dp: DataParallel | None = None,
) -> float:
    """exp(mean next-token cross-entropy) over a token stream read as ``batch_size`` rows, state carried.
    With ``dp``, the rows are split over its devices."""
    eval_step = eval_step or make_eval_step(model)
    carry: State = model.initial_state(batch_size)
    acc = jnp.zeros(2, jnp.float32)
    if dp is not None:
        carry, acc = dp.shard_state(carry), dp.replicate(np.zeros(2, np.float32))
    for x, y in data.eval_windows(tokens, batch_size, num_steps):
        if dp is not None:
            x, y = dp.shard(x, 0), dp.shard(y, 0)
        carry, acc = eval_step(params, carry, acc, x, y)
    nll, n = np.asarray(acc, np.float64)
    return math.exp(nll / n)


class Preempted(Exception):
    """Raised after SIGTERM/SIGINT once a checkpoint of the current step is saved (``step``),
    or before training started (``step`` None: nothing new was saved)."""

    def __init__(self, signum: int, step: int | None):
        if step is None:
            text = f"stopped by signal {signum} before training started: nothing was saved yet"
        else:
            text = f"stopped by signal {signum}: saved a checkpoint at step {step}; rerun the same command to resume"
        super().__init__(text)
        self.signum, self.step = signum, step


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked after every step (main thread only)."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


_GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def estimate_memory(cfg: Config, vocab_size: int) -> int:
    """Bytes a training step needs, roughly: parameters, gradients and optimizer state, plus the
    activations kept for the backward (float32). Used to refuse a config that cannot fit."""
    m, d = cfg.model, cfg.data
    g, h = _GATES[m.cell], m.hidden_size
    input_weights = vocab_size * g * h + (m.num_layers - 1) * h * g * h
    params = input_weights + m.num_layers * (h * g * h + 2 * g * h) + h * vocab_size + vocab_size
    copies = 2 + (2 if cfg.train.optimizer in ("adam", "adamw") else 0)  # params, grads (+ two moments)
    tokens = d.batch_size * d.num_steps
    activations = tokens * m.num_layers * h * (2 * g + 4) + 3 * tokens * vocab_size
    return 4 * (copies * params + activations)


def available_memory() -> int | None:
    """Bytes the accelerator (its ``bytes_limit``) or, on CPU, the host (``MemAvailable``) can still give; None: unknown."""
    if jax.default_backend() != "cpu":
        stats = jax.local_devices()[0].memory_stats() or {}
        return stats.get("bytes_limit")
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_fits(cfg: Config, vocab_size: int) -> None:
    """Refuse, before any compute, a model or batch whose estimated memory exceeds what is available."""
    need, have = estimate_memory(cfg, vocab_size), available_memory()
    if have is not None and need > have:
        gib = lambda b: f"{b / 2**30:,.1f} GiB"  # noqa: E731
        raise ConfigError(
            f"config.model.hidden_size = {cfg.model.hidden_size}, num_layers = {cfg.model.num_layers}, "
            f"data.batch_size = {cfg.data.batch_size}, num_steps = {cfg.data.num_steps} need about {gib(need)} "
            f"(parameters, gradients, optimizer state, activations) but {gib(have)} is available; make them smaller"
        )


def best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch record with the lowest finite validation perplexity (None: there is none)."""
    finite = [r for r in records if isinstance(r.get("val_ppl"), (int, float)) and math.isfinite(r["val_ppl"])]
    return min(finite, key=lambda r: r["val_ppl"]) if finite else None


def _nonfinite_part(model, tx, state: TrainState, carry: State, x, y, reset_state: bool) -> str:
    """Which of loss, gradient or update is not finite on minibatch (x, y): the abort message names it."""
    if reset_state:
        carry = jax.tree_util.tree_map(jnp.zeros_like, carry)

    def loss_fn(params):
        return cross_entropy(model.apply(params, x, carry)[0], y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, _ = tx.update(grads, state.opt_state, state.params)
    for name, value in (("loss", loss), ("gradient", optax.tree.norm(grads)), ("update", optax.tree.norm(updates))):
        if not np.isfinite(float(value)):
            return name
    return "loss, gradient or update (on an earlier minibatch)"


def _start_block(cfg: Config, model, params, dp: DataParallel, workdir, restored, start_epoch: int, start_batch: int) -> str:
    m = cfg.model
    what = f"{m.num_layers}-layer {m.cell} (hidden {m.hidden_size}, impl {m.impl}), {num_params(params):,} parameters"
    where = f"{dp.num_devices} {jax.default_backend()} device(s); workdir {shown(workdir)}"
    if restored is None:
        todo = f"training epochs 1-{cfg.train.num_epochs}"
    elif start_epoch > cfg.train.num_epochs:
        todo = f"already trained {cfg.train.num_epochs} epochs: nothing to resume (raise --config.train.num_epochs to extend)"
    else:
        todo = f"resuming from epoch {start_epoch}, step {restored[0]} (minibatch {start_batch})"
    return f"{what}\n{where}\n{todo}"


def init_state(model: DeepRNN, tx: optax.GradientTransformation, key: Array) -> TrainState:
    params = model.init(key)
    return TrainState(jnp.int32(0), params, tx.init(params), jnp.int32(0))


def _checkpoint_tree(state: TrainState, rng_data: Array, carry: State, acc: Array) -> dict[str, Any]:
    """What a checkpoint's ``state`` item holds; ``rng_data`` is ``jax.random.key_data(key)``."""
    return {"train": state._asdict(), "rng": rng_data, "carry": carry, "acc": acc}


def _check_resumable(workdir: pathlib.Path, cfg: Config, vocab) -> None:
    saved_path = workdir / "config.json"
    if saved_path.exists():
        field = first_difference(read_json(saved_path), cfg.to_dict())
        if field:
            raise CheckpointError(
                f"{workdir} holds a run with a different config.{field}; use another --workdir, or the run's own config"
            )
    vocab_path = workdir / "vocab.json"
    if vocab_path.exists():
        saved = read_json(vocab_path)
        if not isinstance(saved, dict) or Vocab(tuple(saved.get("idx_to_token", ()))) != vocab:
            raise CheckpointError(f"{workdir} holds a run with a different vocabulary; use another --workdir")


def has_checkpoint(workdir: str | os.PathLike) -> bool:
    d = pathlib.Path(workdir) / "checkpoints"
    return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


RESUME_MODES = ("auto", "must", "never", "restart")


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
    workdir = resolve_path(workdir)
    check_writable(workdir)
    if resume == "must" and not has_checkpoint(workdir):
        raise CheckpointError(f"--resume=must but {workdir} has no checkpoint to resume from")
    if resume == "never" and has_checkpoint(workdir):
        raise CheckpointError(f"--resume=never but {workdir} already holds checkpoints; use a new --workdir")
    with _StopFlag() as stop:  # from here on SIGTERM/SIGINT end the run with a message, never mid-write
        corpus = data.load_corpus(cfg.data)  # validates the data before any compute
        retain_freed_memory()  # XLA's per-step scratch block reuses its pages (rnnjax/host.py)
        set_cpu_devices(cfg.parallel.cpu_devices, cfg.data.batch_size)  # a no-op, or an error if JAX started otherwise
        dp = DataParallel.create(cfg.parallel.num_devices, cfg.data.batch_size)
        check_fits(cfg, len(corpus.vocab))
        primary = jax.process_index() == 0  # only process 0 writes files (orbax coordinates checkpoints)
        workdir.mkdir(parents=True, exist_ok=True)
        lock = WorkdirLock(workdir)
        if primary:
            lock.acquire()
        try:
            if resume == "restart" and primary:
                moved = set_aside(workdir)
                if moved:
                    logging.warning("--resume=restart: moved the old run to %s", moved)
            elif not has_checkpoint(workdir) and (found := history(workdir)):
                raise WorkdirError(
                    f"{workdir} holds {' and '.join(found)} but no checkpoint to resume from; "
                    "use a new --workdir, or --resume=restart to keep them in discarded/ and start over"
                )
            _check_resumable(workdir, cfg, corpus.vocab)
            if stop.signum is not None:
                raise Preempted(stop.signum, None)
            return _train(cfg, corpus, workdir, dp, primary, stop)
        finally:
            lock.release()


def _train(
    cfg: Config, corpus: data.Corpus, workdir: pathlib.Path, dp: DataParallel, primary: bool, stop: _StopFlag
) -> dict[str, Any]:
    if primary:
        write_atomic(workdir / "config.json", json.dumps(cfg.to_dict(), indent=2))
        write_atomic(workdir / "vocab.json", corpus.vocab.to_json())
    dc, tc = cfg.data, cfg.train
    model = build_model(cfg, len(corpus.vocab))
    n = data.batches_per_epoch(dc, len(corpus.train))
    tx, schedule = make_optimizer(tc, total_steps=n * tc.num_epochs)
    init_key, rng = jax.random.split(jax.random.key(cfg.seed))
    state = jax.jit(lambda k: init_state(model, tx, k), out_shardings=dp.replicated)(init_key)
    rng_data = dp.replicate(np.asarray(jax.random.key_data(rng)))
    fresh = lambda: (dp.shard_state(model.initial_state(dc.batch_size)), dp.replicate(np.zeros(4, np.float32)))  # noqa: E731
    carry, acc = fresh()
    ckpt = Checkpointer(workdir, cfg.checkpoint.max_to_keep)
    abstract = dp.abstract(_checkpoint_tree(state, rng_data, carry, acc))
    restored = ckpt.restore(lambda meta: abstract)
    start_epoch, start_batch = 1, 0
    if restored is not None:
        _, tree, meta = restored
        state, rng_data, carry, acc = TrainState(**tree["train"]), tree["rng"], tree["carry"], tree["acc"]
        start_epoch, start_batch = meta["epoch"] + 1, meta["batch"]
    rng = jax.random.wrap_key_data(rng_data)
    records = [r for r in read_metrics(workdir / "metrics.jsonl") if r["epoch"] < start_epoch]
    if primary:  # records after the checkpoint are redone (identically); none before it is dropped
        write_metrics(workdir / "metrics.jsonl", records)
    meta_of = lambda epoch, batch, val=None: {  # noqa: E731
        "epoch": epoch, "batch": batch, "val_ppl": val, "config": cfg.to_dict(), "vocab": list(corpus.vocab.idx_to_token)
    }
    train_step = make_train_step(model, tx, reset_state=dc.sampler == "random")
    eval_step = make_eval_step(model)
    writer = MetricsWriter(workdir / "metrics.jsonl")
    start = time.perf_counter()
    if tc.progress:
        print(_start_block(cfg, model, state.params, dp, workdir, restored, start_epoch, start_batch), flush=True)
    bar = tqdm.trange(start_epoch, tc.num_epochs + 1, desc=f"{cfg.model.num_layers}x{cfg.model.cell}",
                     disable=not tc.progress or start_epoch > tc.num_epochs)
    with contextlib.closing(ckpt):
        for epoch in bar:
            xs, ys = (dp.shard(a, 1) for a in data.epoch_batches(corpus.train, dc, cfg.seed, epoch))
            first = start_batch if epoch == start_epoch else 0
            if first == 0:
                carry, acc = fresh()
            t0 = time.perf_counter()
            for i in range(first, n):
                state, carry, acc = train_step(state, carry, acc, xs, ys, i, rng)
                if stop.signum is not None:
                    ckpt.save(int(state.step), _checkpoint_tree(state, rng_data, carry, acc), meta_of(epoch - 1, i + 1))
                    raise Preempted(stop.signum, int(state.step))
            loss_sum, gnorm_sum, steps, skipped = np.asarray(acc, np.float64)  # the one host sync of the epoch
            train_time = time.perf_counter() - t0
            record = {
                "epoch": epoch,
                "step": int(state.step),
                "train_ppl": math.exp(loss_sum / steps) if steps else float("nan"),
                "val_ppl": perplexity(model, state.params, corpus.val, dc.batch_size, dc.num_steps, eval_step, dp),
                "tokens_per_sec": (n - first) * dc.batch_size * dc.num_steps / train_time,
                "grad_norm": gnorm_sum / steps if steps else float("nan"),
                "lr": float(schedule(int(state.step) - 1)),
                "skipped_steps": int(skipped),
                "wall_time": time.perf_counter() - start,
            }
            if primary:
                writer.write(record)
            records.append(record)
            bar.set_postfix(train_ppl=f"{record['train_ppl']:.2f}", val_ppl=f"{record['val_ppl']:.2f}")
            if int(state.nonfinite) >= tc.max_nonfinite:
                what = _nonfinite_part(model, tx, state, carry, xs[n - 1], ys[n - 1], dc.sampler == "random")
                clip = f"train.grad_clip = {tc.grad_clip}" + (" (off)" if tc.grad_clip == 0 else "")
                fix = "lower train.learning_rate" + (" or set train.grad_clip (e.g. 1.0)" if tc.grad_clip == 0 else "")
                raise FloatingPointError(
                    f"aborting at step {int(state.step)}: {int(state.nonfinite)} consecutive non-finite training steps "
                    f"(train.max_nonfinite = {tc.max_nonfinite}), none applied; the {what} was not finite with "
                    f"train.optimizer = {tc.optimizer!r}, train.learning_rate = {tc.learning_rate}, {clip}; {fix}"
                )
            if epoch % cfg.checkpoint.every_epochs == 0 or epoch == tc.num_epochs:
                ckpt.save(int(state.step), _checkpoint_tree(state, rng_data, carry, acc), meta_of(epoch, 0, record["val_ppl"]),
                          val_ppl=record["val_ppl"])
    if primary:
        plot_curves(records, workdir / "curves.png", title=f"{cfg.model.num_layers}-layer {cfg.model.cell}")
    best = best_record(records)
    samples = generate(
        model, state.params, corpus.vocab, list(cfg.generate.prefixes), cfg.generate.num_chars,
        preprocess_mode=dc.preprocess, tokenizer=dc.tokenizer,
    ) if cfg.generate.prefixes else []
    if primary:
        write_atomic(workdir / "samples.txt", "".join(s + "\n" for s in samples))
    return {
        "params": state.params,
        "model": model,
        "vocab": corpus.vocab,
        "num_params": num_params(state.params),
        "train_ppl": records[-1]["train_ppl"],
        "val_ppl": records[-1]["val_ppl"],
        "best_val_ppl": best["val_ppl"] if best else float("nan"),
        "best_epoch": best["epoch"] if best else None,
        "workdir": workdir,
        "wall_time": time.perf_counter() - start,
        "num_devices": dp.num_devices,
        "samples": samples,
        "metrics": records,
    }
