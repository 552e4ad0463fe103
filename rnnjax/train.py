"""Training: the jitted train step, evaluation, and the epoch loop.

Flow: config -> data -> model -> train step -> metrics (-> generate). One training
step is one ``jax.jit``-compiled function; metrics are summed on the device and read
back once per epoch.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from rnnjax import data
from rnnjax.config import Config, resolve
from rnnjax.flax_model import FlaxDeepRNN
from rnnjax.generate import generate
from rnnjax.model import DeepRNN, Params, State, num_params
from rnnjax.optim import make_optimizer
from rnnjax.plotting import plot_curves

Array = jax.Array


class TrainState(NamedTuple):
    step: Array  # int32 scalar: optimizer steps taken
    params: Params
    opt_state: optax.OptState


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
    first (random sampling). ``acc`` [3] sums (loss, pre-clip gradient norm, steps).
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
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        acc = acc + jnp.stack([loss, optax.tree.norm(grads), 1.0])
        return TrainState(state.step + 1, params, opt_state), new_carry, acc

    return train_step


def make_eval_step(model: DeepRNN):
    """Returns ``eval_step(params, carry, acc, x [b,t], y [b,t]) -> (carry, acc)``; acc [2] = (nll sum, tokens)."""

    @jax.jit
    def eval_step(params, carry, acc, x, y):
        logits, carry = model.apply(params, x, carry)
        nll = cross_entropy(logits, y)
        return carry, acc + jnp.stack([nll.sum(), jnp.float32(nll.size)])

    return eval_step


def perplexity(model: DeepRNN, params: Params, tokens: np.ndarray, batch_size: int, num_steps: int, eval_step=None) -> float:
    """exp(mean next-token cross-entropy) over a token stream read as ``batch_size`` rows, state carried."""
    eval_step = eval_step or make_eval_step(model)
    carry: State = model.initial_state(batch_size)
    acc = jnp.zeros(2, jnp.float32)
    for x, y in data.eval_windows(tokens, batch_size, num_steps):
        carry, acc = eval_step(params, carry, acc, x, y)
    nll, n = np.asarray(acc, np.float64)
    return math.exp(nll / n)


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl``, flushed and fsynced each time."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def train_and_evaluate(config: ml_collections.ConfigDict | Config, workdir: str | os.PathLike) -> dict[str, Any]:
    """Train the configured model, writing config.json, vocab.json, metrics.jsonl,
    curves.png and samples.txt to ``workdir``. Returns a summary dict with ``params``."""
    cfg = config if isinstance(config, Config) else resolve(config)
    workdir = pathlib.Path(workdir)
    if (workdir / "metrics.jsonl").exists():
        raise FileExistsError(f"{workdir} already holds a run (metrics.jsonl); pass a new --workdir or delete it")
    corpus = data.load_corpus(cfg.data)  # validates the data before any compute
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    corpus.vocab.save(workdir / "vocab.json")

    dc, tc = cfg.data, cfg.train
    model = build_model(cfg, len(corpus.vocab))
    init_key, dropout_key = jax.random.split(jax.random.key(cfg.seed))
    params = model.init(init_key)
    n = data.batches_per_epoch(dc, len(corpus.train))
    tx, schedule = make_optimizer(tc, total_steps=n * tc.num_epochs)
    state = TrainState(jnp.int32(0), params, tx.init(params))
    train_step = make_train_step(model, tx, reset_state=dc.sampler == "random")
    eval_step = make_eval_step(model)
    writer = MetricsWriter(workdir / "metrics.jsonl")

    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = tqdm.trange(1, tc.num_epochs + 1, desc=f"{cfg.model.num_layers}x{cfg.model.cell}", disable=not tc.progress)
    for epoch in bar:
        xs, ys = (jax.device_put(a) for a in data.epoch_batches(corpus.train, dc, cfg.seed, epoch))
        carry, acc = model.initial_state(dc.batch_size), jnp.zeros(3, jnp.float32)
        t0 = time.perf_counter()
        for i in range(n):
            state, carry, acc = train_step(state, carry, acc, xs, ys, i, dropout_key)
        loss_sum, gnorm_sum, steps = np.asarray(acc, np.float64)  # the one host sync of the epoch
        train_time = time.perf_counter() - t0
        record = {
            "epoch": epoch,
            "step": int(state.step),
            "train_ppl": math.exp(loss_sum / steps) if math.isfinite(loss_sum) else float("nan"),
            "val_ppl": perplexity(model, state.params, corpus.val, dc.batch_size, dc.num_steps, eval_step),
            "tokens_per_sec": steps * dc.batch_size * dc.num_steps / train_time,
            "grad_norm": gnorm_sum / steps,
            "lr": float(schedule(int(state.step) - 1)),
            "wall_time": time.perf_counter() - start,
        }
        writer.write(record)
        records.append(record)
        bar.set_postfix(train_ppl=f"{record['train_ppl']:.2f}", val_ppl=f"{record['val_ppl']:.2f}")
        if not math.isfinite(loss_sum):
            raise FloatingPointError(
                f"training diverged at epoch {epoch}: the loss is not finite; "
                "lower train.learning_rate or set train.grad_clip"
            )

    plot_curves(records, workdir / "curves.png", title=f"{cfg.model.num_layers}-layer {cfg.model.cell}")
    samples = generate(
        model, state.params, corpus.vocab, list(cfg.generate.prefixes), cfg.generate.num_chars,
        preprocess_mode=dc.preprocess, tokenizer=dc.tokenizer,
    ) if cfg.generate.prefixes else []
    (workdir / "samples.txt").write_text("".join(s + "\n" for s in samples))
    return {
        "params": state.params,
        "model": model,
        "vocab": corpus.vocab,
        "num_params": num_params(state.params),
        "train_ppl": records[-1]["train_ppl"],
        "val_ppl": records[-1]["val_ppl"],
        "best_val_ppl": min(r["val_ppl"] for r in records),
        "wall_time": time.perf_counter() - start,
        "samples": samples,
        "metrics": records,
    }
