"""minGRU and minLSTM: the parallel scan equals a loop of steps and a NumPy transcription of the
equations, stays finite in log-space-hard regimes, and trains, resumes, loads and generates
through the same stack as RNN/GRU/LSTM."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import param_bytes, small_config, tiered

import rnnjax
from rnnjax.cells import CELLS
from rnnjax.config import ConfigError, resolve
from rnnjax.network.model import DeepRNN
from rnnjax.training.train import train_and_evaluate

MIN_CELLS = tuple(c for c in CELLS if CELLS[c].sequence)  # the cells with a parallel form
# The end-to-end checks run the first of them by default, the others in the exhaustive tier; the
# scan-equals-loop tests below check every one by default.
FIRST_ONLY = tiered(list(MIN_CELLS), lambda c: c == MIN_CELLS[0])


def numpy_layer(cell, xw, h0):
    """The paper's equations, step by step, in float64: xw [t, b, G*h], h0 [b, h] -> h [t, b, h]."""
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    g = lambda x: np.where(x >= 0, x + 0.5, sig(x))  # noqa: E731
    xw, h = np.asarray(xw, np.float64), np.asarray(h0, np.float64)
    out = []
    for x in xw:
        if cell == "mingru":
            kz, kh = np.split(x, 2, -1)
            z = sig(kz)
            h = (1 - z) * h + z * g(kh)
        else:
            kf, ki, kh = np.split(x, 3, -1)
            f, i = sig(kf), sig(ki)
            h = f / (f + i) * h + i / (f + i) * g(kh)
        out.append(h)
    return np.stack(out)


def step_loop(cell, xw, h0):
    c = CELLS[cell]
    h, hs = jax.lax.scan(
        lambda h, x: c.pointwise(tuple(jnp.split(x, c.num_gates, -1)), (), h)[:2], h0, xw
    )
    return hs, h


def inputs(cell, t, b, h=16, scale=2.0, nonzero=True, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    xw = scale * jax.random.normal(k1, (t, b, CELLS[cell].num_gates * h))
    h0 = jax.random.uniform(k2, (b, h), minval=-1.0, maxval=1.0) if nonzero else jnp.zeros((b, h))
    return xw, h0


@pytest.mark.parametrize("cell", MIN_CELLS)
@pytest.mark.parametrize("t", tiered([1, 35, 1024], lambda t: t < 1024))
@pytest.mark.parametrize("b", [1, 32])
@pytest.mark.parametrize("nonzero", [False, True])
def test_parallel_scan_equals_the_step_loop_and_numpy(cell, t, b, nonzero):
    xw, h0 = inputs(cell, t, b, nonzero=nonzero)
    hs, last = jax.jit(CELLS[cell].sequence)(xw, h0)
    loop_hs, loop_last = jax.jit(step_loop, static_argnums=0)(cell, xw, h0)
    np.testing.assert_allclose(hs, loop_hs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last, loop_last, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hs, numpy_layer(cell, xw, h0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", MIN_CELLS)
@pytest.mark.parametrize("t", tiered([1, 35, 1024], lambda t: t < 1024))
@pytest.mark.parametrize("nonzero", [False, True])
def test_parallel_scan_gradients_equal_the_step_loop(cell, t, nonzero):
    xw, h0 = inputs(cell, t, 32, nonzero=nonzero)
    w = jax.random.normal(jax.random.key(7), (t, 32, 16))  # a loss that weighs every output

    def loss(f):
        return lambda xw, h0: (f(xw, h0)[0] * w).sum() + f(xw, h0)[1].sum()

    g_par = jax.jit(jax.grad(loss(CELLS[cell].sequence), argnums=(0, 1)))(xw, h0)
    g_seq = jax.jit(jax.grad(loss(lambda xw, h0: step_loop(cell, xw, h0)), argnums=(0, 1)))(xw, h0)
    for a, b in zip(g_par, g_seq):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


@pytest.mark.exhaustive  # by default: test_stack_parallel_equals_sequential_impl_with_dropout
@pytest.mark.parametrize("cell", FIRST_ONLY)
def test_values_and_gradients_stay_finite_for_large_inputs_and_long_sequences(cell):
    xw, h0 = inputs(cell, 4096, 2, scale=1.0)
    xw = 50.0 * jnp.sign(xw)  # |x W| = 50 everywhere: gates saturate at 0 and 1
    hs, last = jax.jit(CELLS[cell].sequence)(xw, h0)
    grads = jax.jit(jax.grad(lambda xw, h0: CELLS[cell].sequence(xw, h0)[0].sum(), argnums=(0, 1)))(
        xw, h0
    )
    assert all(bool(jnp.isfinite(a).all()) for a in (hs, last, *grads))


@pytest.mark.parametrize("cell", FIRST_ONLY)
def test_stack_parallel_equals_sequential_impl_with_dropout(cell):
    """impl 'rnnjax' (parallel scan) and 'autodiff' (lax.scan of the step): same logits, carry and
    gradients."""
    tokens = jax.random.randint(jax.random.key(1), (4, 35), 0, 28)
    models = [DeepRNN(28, 16, 3, cell, dropout=0.3, impl=impl) for impl in ("rnnjax", "autodiff")]
    params = models[0].init(jax.random.key(0))
    assert "w_h" not in params["layers"][0] and set(params["layers"][1]) == {"w_x", "b_x"}

    def loss(model, params):
        logits, carry = model.apply(
            params, tokens, model.initial_carry(4), dropout_key=jax.random.key(3)
        )
        return logits.sum() + sum(c.sum() for c in carry)

    (v1, g1), (v2, g2) = (jax.value_and_grad(lambda p, m=m: loss(m, p))(params) for m in models)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.exhaustive  # by default: test_checkpoint.py::test_resume_continues_exactly
@pytest.mark.parametrize("cell", FIRST_ONLY)
def test_trains_resumes_exactly_loads_and_generates(tmp_path, cell):
    full = train_and_evaluate(small_config(3, **{"model.cell": cell}), tmp_path / "full")
    train_and_evaluate(small_config(2, **{"model.cell": cell}), tmp_path / "split")
    resumed = train_and_evaluate(small_config(3, **{"model.cell": cell}), tmp_path / "split")
    assert param_bytes(resumed["params"]) == param_bytes(full["params"])
    records = [
        json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[-1]["train_ppl"] < records[0]["train_ppl"]  # it learns
    run = rnnjax.load(tmp_path / "full", step="latest")
    assert run.config.model.cell == cell and param_bytes(run.params) == param_bytes(full["params"])
    text = run.generate("the time", 30)
    assert text.startswith("the time") and len(text) == len("the time") + 30
    assert text == run.generate("the time", 30)  # greedy: deterministic


def test_flax_impl_and_torch_interop_refuse_min_cells_in_one_line():
    cfg = small_config(1, **{"model.cell": "mingru"})
    cfg.model.impl = "flax"
    with pytest.raises(
        ConfigError,
        match=r"^config.model.impl = 'flax' has no mingru cell .*use model.impl = 'rnnjax'$",
    ):
        resolve(cfg)
    params = DeepRNN(28, 8, 1, "minlstm").init(jax.random.key(0))
    with pytest.raises(ValueError, match="no PyTorch module"):
        rnnjax.use.interop.to_torch(params)
