"""The optimized layer (rnnjax.network.impls.fused: hand-written backward) must give the numbers of
the plain one (jax.lax.scan over cells.*.recur, differentiated by JAX): outputs, carries and every
gradient."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnnjax.cells import CELLS
from rnnjax.config import ConfigError, default_config, resolve
from rnnjax.network.impls.fused import scan_layer
from rnnjax.network.model import DeepRNN, Impl
from rnnjax.training.optim import make_optimizer
from rnnjax.training.steps import init_train_state, make_train_step, train_sums

# every registered cell the fused layer runs with its own backward step; phi-reading cells with each
# phi
CASES = [
    (c, acts)
    for c in CELLS
    if CELLS[c].backward
    for acts in (
        [("tanh",), ("relu",), ("relu", "tanh", "relu")]
        if CELLS[c].uses_activation
        else [("tanh",)]
    )
]


def _loss(model, tokens):
    def f(params, carry):
        logits, new = model.apply(params, tokens[:, :-1], carry)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
        # a cotangent on the final carry too (it is the next minibatch's initial carry)
        return nll + 0.1 * sum(jnp.sum(jnp.sin(x)) for x in jax.tree_util.tree_leaves(new))

    return f


@pytest.mark.parametrize("cell,acts", CASES)
def test_fused_layer_equals_autodiff_of_scan(cell, acts):
    fused = DeepRNN(vocab_size=11, hidden_size=16, num_layers=3, cell=cell, activation=acts)
    plain = dataclasses.replace(fused, impl=Impl.AUTODIFF)
    params = fused.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (5, 9), 0, 11)
    carry = jax.tree_util.tree_map(
        lambda a: a + 0.5, fused.initial_carry(5)
    )  # non-zero start carry

    (lf, cf), (lp, cp) = fused.apply(params, tokens, carry), plain.apply(params, tokens, carry)
    np.testing.assert_allclose(lf, lp, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(cf), jax.tree_util.tree_leaves(cp)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)

    gf = jax.grad(_loss(fused, tokens), argnums=(0, 1))(params, carry)
    gp = jax.grad(_loss(plain, tokens), argnums=(0, 1))(params, carry)
    flat_f, tree_f = jax.tree_util.tree_flatten(gf)
    flat_p, tree_p = jax.tree_util.tree_flatten(gp)
    assert tree_f == tree_p
    for a, b in zip(flat_f, flat_p):
        assert float(jnp.max(jnp.abs(b))) > 0.0
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fused_layer_under_vmap_and_jit():
    """vmap (vectorized sweeps) and jit over the custom-VJP layer give the per-example gradients."""
    h, t, b = 8, 6, 3
    keys = jax.random.split(jax.random.key(2), 4)
    w_h = jax.random.normal(keys[0], (2, h, 4 * h)) * 0.3
    b_h = jax.random.normal(keys[1], (2, 4 * h)) * 0.1
    xw = jax.random.normal(keys[2], (2, t, b, 4 * h))
    c0 = (jnp.zeros((2, b, h)), jnp.zeros((2, b, h)))

    def loss(w, bb, x, c):
        hs, (cT, hT) = scan_layer("lstm", "tanh", {"w_h": w, "b_h": bb}, x, c)
        return jnp.sum(hs**2) + jnp.sum(cT)

    batched = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2))))(w_h, b_h, xw, c0)
    for i in range(2):
        one = jax.grad(loss, argnums=(0, 1, 2))(w_h[i], b_h[i], xw[i], (c0[0][i], c0[1][i]))
        for a, b_ in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(batched)):
            np.testing.assert_allclose(b_[i], a, rtol=1e-5, atol=1e-6)


@pytest.mark.exhaustive  # by default: test_fused_layer_equals_autodiff_of_scan
def test_train_steps_with_fused_and_plain_layers_agree():
    """Ten SGD + clipping steps of the reference model: same params either way."""
    cfg = default_config()
    cfg.model.hidden_size, cfg.data.num_steps = 32, 10
    cfg = resolve(cfg)
    tx, _ = make_optimizer(cfg.train, 100)
    results = []
    for impl in (Impl.FUSED, Impl.AUTODIFF):
        model = DeepRNN(28, 32, 2, "lstm", impl=impl)
        step = make_train_step(model, tx, reset_carry=False)
        state = init_train_state(model, tx, jax.random.key(0))
        xs = jax.random.randint(jax.random.key(3), (10, 4, 11), 0, 28)
        carry, acc = model.initial_carry(4), train_sums(model, state.params, False)
        for i in range(10):
            state, carry, acc = step(
                state, carry, acc, xs[..., :-1], xs[..., 1:], i, jax.random.key(1)
            )
        results.append(state.params)
    for a, b in zip(jax.tree_util.tree_leaves(results[0]), jax.tree_util.tree_leaves(results[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_cell_without_a_backward_step_is_refused_in_one_line(monkeypatch):
    """The fused layer never falls through to another cell's backward: a registered cell without
    ``Cell.backward`` is refused (config and model), and trains under impl="autodiff"."""
    import dataclasses as dc
    import sys
    import types

    from rnnjax import cells

    module = types.ModuleType("no_backward_cell")
    module.CELL = dc.replace(CELLS["gru"], name="nobwd", backward=None)
    monkeypatch.setitem(sys.modules, "no_backward_cell", module)
    monkeypatch.setitem(cells.REGISTRY, "nobwd", "no_backward_cell")
    cfg = default_config()
    cfg.model.cell, cfg.model.impl = "nobwd", "rnnjax"  # (auto would run its native kernel)
    with pytest.raises(
        ConfigError,
        match=r"^config.model.impl = 'rnnjax' has no fused backward for the nobwd cell "
        r"\(Cell.backward\); use model.impl = 'autodiff'$",
    ) as e:
        resolve(cfg)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="has no fused backward"):
        DeepRNN(5, 4, 1, "nobwd")
    model = DeepRNN(5, 4, 1, "nobwd", impl=Impl.AUTODIFF)
    logits, _ = model.apply(
        model.init(jax.random.key(0)), jnp.zeros((2, 3), jnp.int32), model.initial_carry(2)
    )
    assert logits.shape == (2, 3, 5)
