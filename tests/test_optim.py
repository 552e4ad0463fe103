"""The optimizer's gradient clipping bounds the update."""

import dataclasses

import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import small_config

from rnnjax.config import resolve
from rnnjax.optim import make_optimizer
from rnnjax.steps import TrainState, make_train_step, train_sums
from rnnjax.train import build_model


def test_clipping_is_applied():
    """d2l's JAX trainer never clipped: an update must move params by exactly lr * clip
    (in global norm) when the gradient norm exceeds the clip, and by lr * |g| without clipping."""
    cfg = resolve(small_config())
    model = build_model(cfg, 28)
    params = model.init(jax.random.key(0))
    xs = jax.random.randint(jax.random.key(1), (1, 8, 10), 0, 28)
    ys = jnp.roll(xs, -1, axis=-1)
    deltas = {}
    for clip in (0.01, 0.0):
        tc = dataclasses.replace(cfg.train, grad_clip=clip)
        tx, _ = make_optimizer(tc, 10)
        step = make_train_step(model, tx, reset_carry=False)
        fresh = jax.tree_util.tree_map(jnp.copy, params)  # the step donates its input
        state = TrainState(jnp.int32(0), fresh, tx.init(fresh), jnp.int32(0))
        new, _, acc = step(state, model.initial_carry(8), train_sums(model, fresh, False), xs, ys, 0, jax.random.key(0))
        diff = jax.tree_util.tree_map(lambda a, b: a - b, new.params, params)
        deltas[clip] = (float(optax.tree.norm(diff)), float(acc["grad_norm"]))
    (clipped, gnorm), (unclipped, gnorm2) = deltas[0.01], deltas[0.0]
    assert gnorm > 0.01 and gnorm == pytest.approx(gnorm2)
    assert clipped == pytest.approx(2.0 * 0.01, rel=1e-4)
    assert unclipped == pytest.approx(2.0 * gnorm, rel=1e-4)
