"""Inside the stack: the trace runs the same equations as ``apply`` (equal logits), the per-layer
statistics of metrics.jsonl equal a NumPy recomputation, ``rnnjax.inspect`` and
``rnnjax.timescales`` on a loaded run, autocorrelation times of signals whose answer is known, and
the notebook."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_notebook, small_config

import rnnjax
from rnnjax.cells import CELLS
from rnnjax.dataset import batches, data
from rnnjax.network.model import DeepRNN
from rnnjax.training.trace import layer_stats, trace
from rnnjax.training.train import train_and_evaluate
from rnnjax.use.inside import autocorrelation_times

ROOT = pathlib.Path(__file__).resolve().parents[1]
CASES = [
    (c, i) for c in CELLS for i in ("rnnjax", "autodiff", "flax") if i != "flax" or CELLS[c].flax
]


@pytest.mark.parametrize("cell,impl", CASES)
def test_trace_gives_apply_s_logits_and_carry(cell, impl):
    model = DeepRNN(20, 16, 3, cell, impl=impl)
    params = model.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (4, 9), 0, 20)
    carry = jax.tree_util.tree_map(lambda x: x + 0.1, model.initial_carry(4))
    logits, new_carry = jax.jit(model.apply)(params, tokens, carry)
    t_logits, t_carry, traces = jax.jit(trace, static_argnums=0)(model, params, tokens, carry)
    np.testing.assert_allclose(t_logits, logits, rtol=0, atol=1e-6)
    if impl == "rnnjax":  # the default: the very same numbers
        np.testing.assert_array_equal(t_logits, logits)
    for a, b in zip(jax.tree_util.tree_leaves(t_carry), jax.tree_util.tree_leaves(new_carry)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert len(traces) == 3 and all(t.h.shape == (9, 4, 16) for t in traces)
    np.testing.assert_allclose(
        traces[-1].h[-1], CELLS[cell].hidden(new_carry[-1]), atol=1e-6
    )  # the carry's h


def test_layer_stats_match_numpy_on_the_lstm_s_gates():
    model = DeepRNN(20, 8, 2, "lstm")
    params = jax.tree_util.tree_map(
        lambda x: 6 * x, model.init(jax.random.key(0))
    )  # large weights: saturated gates
    tokens = jax.random.randint(jax.random.key(1), (3, 11), 0, 20)
    _, _, traces = trace(model, params, tokens, model.initial_carry(3))
    stats = layer_stats(model, traces)
    for l, t in enumerate(traces):
        i, f, g, o, h = (
            np.asarray(x, np.float64)
            for x in (t.gates["i"], t.gates["f"], t.gates["g"], t.gates["o"], t.h)
        )
        sat = sum(((a < 0.01) | (a > 0.99)).sum() for a in (i, f, o)) + (np.abs(g) > 0.99).sum()
        assert stats.saturated[l] == sat and stats.gates[l] == 4 * h.size and sat > 0
        np.testing.assert_allclose(stats.h2[l], (h**2).sum(), rtol=1e-5)
        np.testing.assert_allclose(stats.forget[l], f.sum(), rtol=1e-5)
        assert stats.positions[l] == h.size


@pytest.fixture(scope="module")
def raw_run(tmp_path_factory):
    """A 3-epoch run on raw text (case and punctuation kept, so some characters can be unknown)."""
    d = tmp_path_factory.mktemp("inside") / "run"
    out = train_and_evaluate(
        small_config(3, **{"data.preprocess": "none", "generate.prefixes": ["The Time"]}), d
    )
    return d, out


def test_metrics_jsonl_layer_stats_equal_a_numpy_recomputation(raw_run):
    """The last epoch's statistics (summed on the device during validation) recomputed from the
    trace."""
    d, out = raw_run
    cfg = rnnjax.load(d, step="latest").config
    corpus = data.load_corpus(cfg.data)
    model, params = out["model"], out["params"]
    carry = model.initial_carry(cfg.data.batch_size)
    h2, sat, gates, forget, n = (np.zeros(2) for _ in range(5))
    for x, _ in batches.eval_windows(corpus.val, cfg.data.batch_size, cfg.data.num_steps):
        _, carry, traces = trace(model, params, jnp.asarray(x), carry)
        for l, t in enumerate(traces):
            h = np.asarray(t.h, np.float64)
            h2[l] += (h**2).sum()
            n[l] += h.size
            forget[l] += np.asarray(t.gates["f"], np.float64).sum()
            sat[l] += sum(
                ((np.asarray(t.gates[k]) < 0.01) | (np.asarray(t.gates[k]) > 0.99)).sum()
                for k in "ifo"
            )
            sat[l] += (np.abs(np.asarray(t.gates["g"])) > 0.99).sum()
            gates[l] += 4 * h.size
    last = out["metrics"][-1]
    np.testing.assert_allclose(last["h_rms"], np.sqrt(h2 / n), rtol=1e-4)
    np.testing.assert_allclose(last["gate_saturation"], sat / gates, rtol=1e-6)
    np.testing.assert_allclose(last["forget_gate"], forget / n, rtol=1e-4)
    np.testing.assert_allclose(last["memory_length"], 1 / (1 - forget / n), rtol=1e-3)


def test_inspect_returns_layers_time_hidden_and_reports_unknown_characters(raw_run, caplog):
    d, out = raw_run
    run = rnnjax.load(d, step="latest")
    text = "The Time Traveller Ω smiled"
    inside = rnnjax.inspect(run, text)
    assert inside.h.shape == (2, len(text), 32) and inside.c.shape == (2, len(text), 32)
    assert set(inside.gates) == {"i", "f", "g", "o"} and inside.gates["f"].shape == (
        2,
        len(text),
        32,
    )
    np.testing.assert_array_equal(inside.retain, inside.gates["f"])
    assert (
        inside.unknown == [(text.index("Ω"), "Ω")] and "outside the run's vocabulary" in caplog.text
    )
    ids = jnp.asarray(run.vocab.encode(list(text)))[None]
    logits, carry = run.model.apply(run.params, ids, run.model.initial_carry(1))
    # the trace runs rnnjax's equations: apply's numbers bit for bit under impl rnnjax; the default
    # auto runs the native kernels here, which agree within float32 rounding (tests/test_native.py)
    same = (
        np.testing.assert_array_equal
        if run.model.impl == "rnnjax"
        else functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-5)
    )
    same(inside.logits, logits[0])  # the same apply, no second model
    same(inside.h[:, -1], np.stack([c[1][0] for c in carry]))
    with pytest.raises(ValueError, match="at least 1 token"):
        rnnjax.inspect(run, "")


def test_timescales_summarise_each_layer(raw_run):
    d, _ = raw_run
    run = rnnjax.load(d, step="latest")
    text = data.read_texts([data.bundled_path()])[:600]
    ts = rnnjax.timescales(run, text)
    assert ts.per_unit.shape == (2, 32) and ts.median.shape == (2,) and ts.max_lag == 150
    assert np.all(
        (ts.per_unit[~np.isnan(ts.per_unit)] >= 1) & (ts.per_unit[~np.isnan(ts.per_unit)] <= 150)
    )
    np.testing.assert_allclose(ts.median, np.nanmedian(ts.per_unit, axis=1))
    assert rnnjax.timescales(run, text, state="c").state == "c"
    with pytest.raises(
        ValueError, match=r"state = 'x' is not allowed for a lstm run: give 'h' or 'c'"
    ):
        rnnjax.timescales(run, text, state="x")


def test_autocorrelation_times_of_known_signals():
    rng = np.random.default_rng(0)
    t, units = 20_000, 8
    x = np.zeros((t, units))
    phi = np.array([0.5, 0.9, 0.97, 0.5, 0.9, 0.97, 0.5, 0.9])  # AR(1): autocorrelation phi^k
    noise = rng.standard_normal((t, units))
    for s in range(1, t):
        x[s] = phi * x[s - 1] + noise[s]
    lags = autocorrelation_times(x, max_lag=200)
    want = np.ceil(-1 / np.log(phi))  # the first k with phi^k < 1/e: 2, 10, 33
    np.testing.assert_array_equal(lags[phi < 0.95], want[phi < 0.95])
    np.testing.assert_allclose(lags, want, rtol=0.1)  # 0.97: the estimate at lag ~33 is noisier
    x[:, 0] = 3.0  # a constant unit has no timescale
    assert np.isnan(autocorrelation_times(x, max_lag=200)[0])
    slow = np.cumsum(
        rng.standard_normal((t, 1)), axis=0
    )  # a random walk never decorrelates within 50 steps
    assert autocorrelation_times(slow, max_lag=50)[0] == 50
    with pytest.raises(ValueError, match="max_lag = 0 is not allowed"):
        autocorrelation_times(x, max_lag=0)


@pytest.mark.exhaustive  # by default: test_run.py::test_notebook_runs_against_a_tiny_run
def test_notebook_runs_on_a_tiny_run(tmp_path):
    pytest.importorskip("nbformat")
    train_and_evaluate(small_config(3, **{"model.num_layers": 3}), tmp_path / "run")
    text, images = run_notebook(
        "inside_the_stack.ipynb", tmp_path, RNNJAX_WORKDIRS=str(tmp_path / "run")
    )
    assert "3-layer lstm" in text and "layer 3: median timescale" in text
    assert images >= 3
