"""Vectorized trials: K runs that differ only in seed or optimizer hyperparameters, trained
as one compiled program with ``jax.vmap`` over stacked train states.

Learning rate and weight decay live in each trial's optimizer state
(``optax.inject_hyperparams``), so one program serves every value. Each trial still gets
its own run directory (config.json, vocab.json, metrics.jsonl, curves.png, and a final
checkpoint that ``rnnjax.load`` reads). Vectorized trials are checkpointed at the end
only: an interrupted group restarts from scratch.
"""

from __future__ import annotations

import functools
import json
import pathlib
import statistics
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import data
from rnnjax import workdir as rundir
from rnnjax.checkpoint import Checkpointer
from rnnjax.config import Config, ConfigError
from rnnjax.inside import HAS_RETAIN
from rnnjax.metrics import EvalMetrics, LayerStats, TrainMetrics, best_record, epoch_record
from rnnjax.model import num_params
from rnnjax.optim import make_optimizer
from rnnjax.plotting import plot_curves
from rnnjax.steps import TrainState, make_eval_step, make_stats_eval_step, make_train_step
from rnnjax.tensorboard_log import TensorBoardLog
from rnnjax.train import build_model, checkpoint_items
from rnnjax.workdir import MetricsWriter, WorkdirError, finite, write_run

# Fields that may differ between the trials of one vectorized group (they live in the optimizer state).
VECTORIZABLE = ("seed", "train.learning_rate", "train.weight_decay")


def shape_key(cfg: Config) -> str:
    """Trials with equal keys can share one compiled program."""
    d = cfg.to_dict()
    d.pop("seed")
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("learning_rate", "weight_decay")}
    return json.dumps(d, sort_keys=True)


def stack_trials(tree: Any, k: int) -> Any:
    """The same pytree for each of k trials: every leaf [...] -> [k, ...]."""
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (k, *x.shape)), tree)


def check_vectorizable(c: Config) -> None:
    """Refuse, in one line, a config that vectorized trials cannot train (checked by the sweep before anything runs)."""
    if c.parallel.cpu_pipeline:
        raise ConfigError("vectorized trials run on one device; set parallel.cpu_pipeline = False or drop --vectorize")
    if c.model.impl == "cudnn":
        raise ConfigError("vectorized trials vmap the model and cuDNN's LSTM call cannot be vmapped; "
                          "set model.impl = 'rnnjax' or drop --vectorize")
    if c.train.early_stopping_patience:
        raise ConfigError("vectorized trials train every epoch together; set train.early_stopping_patience = 0 "
                          "or drop --vectorize")
    if c.data.num_test or c.data.test_fraction:
        raise ConfigError("vectorized trials have no test evaluation; set data.num_test = 0 and data.test_fraction = 0, "
                          "or drop --vectorize")


def train_vectorized(
    cfgs: Sequence[Config], workdirs: Sequence[str | pathlib.Path], resume: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Train every config of one group together; returns one summary per trial (as train_and_evaluate).

    Each trial's workdir is locked (a busy one refuses the group in one line) and checked as a single
    run's is (:func:`rnnjax.workdir.check_resumable`, ``resume`` per trial: "auto" or "restart").
    """
    if len({shape_key(c) for c in cfgs}) != 1:
        raise ConfigError(f"vectorized trials may differ only in {', '.join(VECTORIZABLE)}; run the others one by one")
    c0 = cfgs[0]
    if c0.train.schedule != "constant":
        raise ConfigError("vectorized trials need train.schedule = 'constant'; run scheduled trials one by one")
    check_vectorizable(c0)
    dc = c0.data
    corpus = data.load_corpus(dc)
    dirs = [rundir.resolve(w) for w in workdirs]
    modes = list(resume) if resume is not None else ["auto"] * len(dirs)
    locks: list[rundir.WorkdirLock] = []
    try:
        for d in dirs:
            rundir.check_writable(d)
            d.mkdir(parents=True, exist_ok=True)
            lock = rundir.WorkdirLock(d)
            lock.acquire()  # a busy trial: one line, and no trial of the group is touched
            locks.append(lock)
        for d, c, mode in zip(dirs, cfgs, modes):
            rundir.check_resumable(d, c, corpus.vocab, mode)
            if rundir.has_checkpoint(d):
                raise WorkdirError(f"{d} holds checkpoints of an earlier run, which a vectorized group cannot resume; "
                                   "rerun the sweep without --vectorize")
        for d, c, mode in zip(dirs, cfgs, modes):
            if mode == "restart":
                rundir.set_aside(d)  # kept in discarded/, never deleted
            write_run(d, c, corpus.vocab)
        return _start(cfgs, dirs, corpus)
    finally:
        for lock in locks:
            lock.release()


def _start(cfgs: Sequence[Config], dirs: list[pathlib.Path], corpus: data.Corpus) -> list[dict[str, Any]]:
    c0 = cfgs[0]
    dc, tc = c0.data, c0.train
    model = build_model(c0, len(corpus.vocab))
    n = data.batches_per_epoch(dc, len(corpus.train))
    keys = [jax.random.split(jax.random.key(c.seed)) for c in cfgs]
    init_keys, rngs = jnp.stack([k[0] for k in keys]), jnp.stack([k[1] for k in keys])

    txs = [make_optimizer(c.train, n * c.train.num_epochs)[0] for c in cfgs]
    params = jax.vmap(lambda k: model.init(k))(init_keys)
    opt_states = [tx.init(jax.tree_util.tree_map(lambda x, i=i: x[i], params)) for i, tx in enumerate(txs)]
    opt_state = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *opt_states)
    k = len(cfgs)
    state = TrainState(jnp.zeros(k, jnp.int32), params, opt_state, jnp.zeros(k, jnp.int32))
    # The update reads each trial's hyperparameters from its own optimizer state.
    step = jax.jit(jax.vmap(make_train_step(model, txs[0], dc.sampler == "random"), in_axes=(0, 0, 0, 0, 0, None, 0)),
                   donate_argnums=(0, 1, 2))
    eval_step = make_stats_eval_step(model) if tc.layer_stats else make_eval_step(model)
    evaluate = jax.jit(jax.vmap(eval_step, in_axes=(0, 0, 0, *([0] if tc.layer_stats else []), None, None)))
    boards = [TensorBoardLog(d, 1) for d in dirs]  # an interrupted group restarts: earlier points are dropped
    try:
        return _train(cfgs, dirs, boards, corpus, model, n, state, step, evaluate, rngs)
    finally:
        for b in boards:
            b.close()


def _train(cfgs, dirs, boards, corpus, model, n, state, step, evaluate, rngs) -> list[dict[str, Any]]:
    c0 = cfgs[0]
    dc, tc, k = c0.data, c0.train, len(cfgs)
    stack = functools.partial(stack_trials, k=k)
    records: list[list[dict[str, Any]]] = [[] for _ in cfgs]
    start = time.perf_counter()
    for epoch in range(1, tc.num_epochs + 1):
        batches = [data.epoch_batches(corpus.train, dc, c.seed, epoch) for c in cfgs]
        xs_knbt, ys_knbt = jnp.asarray(np.stack([b[0] for b in batches])), jnp.asarray(np.stack([b[1] for b in batches]))
        carry = stack(model.initial_carry(dc.batch_size))
        metrics = TrainMetrics.zeros((k,), c0.model.num_layers if tc.layer_stats else 0)
        t0 = time.perf_counter()
        for i in range(n):
            state, carry, metrics = step(state, carry, metrics, xs_knbt, ys_knbt, i, rngs)
        sums = metrics.to_host()  # [k] and [k, L + 1]
        train_time = time.perf_counter() - t0
        estats = LayerStats.zeros((k,), c0.model.num_layers)
        parts = []  # each held-out part read on its own, from a zero carry (as a single run does)
        for _, ids in corpus.val_parts:
            ecarry, emetrics = stack(model.initial_carry(dc.batch_size)), EvalMetrics.zeros((k,))
            for x_bt, y_bt in data.eval_windows(ids, dc.batch_size, dc.num_steps):
                if tc.layer_stats:
                    ecarry, emetrics, estats = evaluate(state.params, ecarry, emetrics, estats, x_bt, y_bt)
                else:
                    ecarry, emetrics = evaluate(state.params, ecarry, emetrics, x_bt, y_bt)
            parts.append(emetrics)
        emetrics = functools.reduce(EvalMetrics.__add__, parts)
        for j, d in enumerate(dirs):
            val_ppl = EvalMetrics(emetrics.nll[j], emetrics.tokens[j]).perplexity()
            by_source = {name: EvalMetrics(m.nll[j], m.tokens[j]).perplexity()
                         for (name, _), m in zip(corpus.val_parts, parts)} if len(parts) > 1 else None
            layers = LayerStats(*(x[j] for x in estats)).summary(HAS_RETAIN[c0.model.cell]) if tc.layer_stats else None
            record = epoch_record(  # tokens/s per trial; the group does k x more
                epoch, epoch * n, TrainMetrics(*(x[j] for x in sums)), val_ppl, n * dc.batch_size * dc.num_steps / train_time,
                cfgs[j].train.learning_rate, time.perf_counter() - start, layers, dc.tokenizer == "char", by_source)
            records[j].append(record)
            MetricsWriter(d / "metrics.jsonl").write(record)
            boards[j].record(record)
    summaries = []
    for j, (d, c) in enumerate(zip(dirs, cfgs)):
        one = jax.tree_util.tree_map(lambda x, j=j: x[j], state)
        ckpt = Checkpointer(d, c.checkpoint.max_to_keep)
        meta = {"epoch": tc.num_epochs, "batch": 0, "val_ppl": records[j][-1]["val_ppl"], "record": finite(records[j][-1])}
        items = checkpoint_items(one, jax.random.key_data(rngs[j]), model.initial_carry(dc.batch_size), TrainMetrics.zeros())
        ckpt.save(int(one.step), *items, meta)
        ckpt.close()
        plot_curves(records[j], d / "curves.png", title=f"{c.model.num_layers}-layer {c.model.cell}")
        boards[j].finish(c.to_dict(), records[j], best_record(records[j])["val_ppl"])
        summaries.append({
            "params": one.params, "model": model, "vocab": corpus.vocab, "num_params": num_params(one.params),
            "train_ppl": records[j][-1]["train_ppl"], "val_ppl": records[j][-1]["val_ppl"],
            "best_val_ppl": best_record(records[j])["val_ppl"], "wall_time": time.perf_counter() - start,
            "samples": [], "metrics": records[j],
            "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in records[j]),
        })
    return summaries
