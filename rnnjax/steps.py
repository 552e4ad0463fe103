"""The jitted pieces of training: the train state, one training step, one evaluation step, and
perplexity over a token stream. Metrics are summed on the device (:mod:`rnnjax.metrics`).

Shapes: n = minibatches per epoch, b = batch, t = time steps, V = vocabulary.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax import data
from rnnjax.metrics import EvalMetrics
from rnnjax.model import DeepRNN, Params, State
from rnnjax.parallel import DataParallel

Array = jax.Array


class TrainState(NamedTuple):
    step: Array  # int32 scalar: optimizer steps taken (skipped non-finite steps included)
    params: Params
    opt_state: optax.OptState
    nonfinite: Array  # int32 scalar: consecutive non-finite steps so far


def init_state(model: DeepRNN, tx: optax.GradientTransformation, key: Array) -> TrainState:
    params = model.init(key)
    return TrainState(jnp.int32(0), params, tx.init(params), jnp.int32(0))


def cross_entropy(logits: Array, targets: Array) -> Array:
    """Per-token cross-entropy: logits [b, t, V], targets [b, t] -> [b, t]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def make_train_step(model: DeepRNN, tx: optax.GradientTransformation, reset_state: bool):
    """Returns ``train_step(state, carry, metrics, xs [n,b,t], ys [n,b,t], i, key) -> (state, carry, metrics)``.

    Trains on minibatch i. The carry (every layer's hidden state) comes in as data, so no
    gradient flows into earlier minibatches (truncated BPTT); ``reset_state`` zeroes it
    first (random sampling). ``metrics`` (:class:`TrainMetrics`) sums loss, pre-clip gradient
    norm, applied and skipped steps. A step whose loss, gradient or update is not finite
    changes nothing but the counters: params, optimizer state and carry stay as they were.
    """

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train_step(state, carry, metrics, xs, ys, i, key):
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

        def keep(new, old):
            return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)

        nonfinite = jnp.where(ok, 0, state.nonfinite + 1)
        new_state = TrainState(state.step + 1, keep(params, state.params), keep(opt_state, state.opt_state), nonfinite)
        return new_state, keep(new_carry, carry), metrics.add(loss, gnorm, ok)

    return train_step


def make_eval_step(model: DeepRNN):
    """Returns ``eval_step(params, carry, metrics, x [b,t], y [b,t]) -> (carry, metrics)`` (:class:`EvalMetrics`)."""

    @jax.jit
    def eval_step(params, carry, metrics, x, y):
        logits, carry = model.apply(params, x, carry)
        return carry, metrics.add(cross_entropy(logits, y))

    return eval_step


def perplexity(
    model: DeepRNN, params: Params, tokens: np.ndarray, batch_size: int, num_steps: int,
    eval_step=None, dp: DataParallel | None = None,
) -> float:
    """exp(mean next-token cross-entropy) over a token stream read as ``batch_size`` rows, state carried.
    With ``dp``, the rows are split over its devices."""
    eval_step = eval_step or make_eval_step(model)
    carry: State = model.initial_state(batch_size)
    metrics = EvalMetrics.zeros()
    if dp is not None:
        carry = dp.shard_state(carry)
        metrics = jax.tree_util.tree_map(lambda x: dp.replicate(np.asarray(x)), metrics)
    for x, y in data.eval_windows(tokens, batch_size, num_steps):
        if dp is not None:
            x, y = dp.shard(x, 0), dp.shard(y, 0)
        carry, metrics = eval_step(params, carry, metrics, x, y)
    return metrics.perplexity()


def nonfinite_part(model: DeepRNN, tx, state: TrainState, carry: State, x: Array, y: Array, reset_state: bool) -> str:
    """Which of loss, gradient or update is not finite on minibatch (x [b,t], y [b,t]): the abort message names it."""
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
