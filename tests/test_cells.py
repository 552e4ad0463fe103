"""Each cell against a NumPy transcription of its equations."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, small_config, train_cli
from test_mincells import numpy_layer

from rnnjax import cells
from rnnjax.network.model import DeepRNN, Impl
from rnnjax.training.steps import cross_entropy
from rnnjax.training.train import train_and_evaluate


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_rnn(p, h, x, act):
    z = x @ p["w_x"] + p["b_x"] + h @ p["w_h"] + p["b_h"]
    return np.tanh(z) if act == "tanh" else np.maximum(z, 0.0)


def np_gru(p, h, x):
    H = h.shape[-1]
    W_x, W_h, b_x, b_h = p["w_x"], p["w_h"], p["b_x"], p["b_h"]
    sl = lambda k: slice(k * H, (k + 1) * H)  # noqa: E731
    r = sigmoid(x @ W_x[:, sl(0)] + b_x[sl(0)] + h @ W_h[:, sl(0)] + b_h[sl(0)])
    z = sigmoid(x @ W_x[:, sl(1)] + b_x[sl(1)] + h @ W_h[:, sl(1)] + b_h[sl(1)])
    n = np.tanh(x @ W_x[:, sl(2)] + b_x[sl(2)] + r * (h @ W_h[:, sl(2)] + b_h[sl(2)]))
    return (1 - z) * n + z * h


def np_lstm(p, c, h, x):
    H = h.shape[-1]
    pre = (  # noqa: E731
        lambda k: (
            x @ p["w_x"][:, k * H : (k + 1) * H]
            + h @ p["w_h"][:, k * H : (k + 1) * H]
            + p["b_x"][k * H : (k + 1) * H]
            + p["b_h"][k * H : (k + 1) * H]
        )
    )
    i, f, g, o = sigmoid(pre(0)), sigmoid(pre(1)), np.tanh(pre(2)), sigmoid(pre(3))
    c = f * c + i * g
    return c, o * np.tanh(c)


def np_indrnn(p, h, x, act):
    """IndRNN (Li et al., 2018): h' = phi(x W_x + b_x + u * h), u element-wise."""
    z = x @ p["w_x"] + p["b_x"] + p["u"] * h
    return np.tanh(z) if act == "tanh" else np.maximum(z, 0.0)


def np_min(name):
    def step(p, h, x, act):
        return numpy_layer(name, (x @ p["w_x"] + p["b_x"])[None], h)[0]

    return step


# One step of each cell's equations in float64, written out here apart from rnnjax's own code:
# (params, carry, x, activation) -> new carry (its h is the output). A cell added to the registry
# without an entry here is still checked by every test that takes CELLS (the stack against a loop
# of its steps, gradients against finite differences, the fused backward against autodiff); this
# test says what it lacks.
EQUATIONS = {
    "rnn": np_rnn,
    "gru": lambda p, h, x, act: np_gru(p, h, x),
    "lstm": lambda p, carry, x, act: np_lstm(p, *carry, x),
    "indrnn": np_indrnn,
    "mingru": np_min("mingru"),
    "minlstm": np_min("minlstm"),
}


@pytest.mark.parametrize("name", list(cells.CELLS))
def test_cell_step_matches_numpy_equations(name):
    if name not in EQUATIONS:
        pytest.skip(f"no NumPy transcription of {name!r} in tests/test_cells.py's EQUATIONS")
    cell = cells.CELLS[name]
    d, h, b = 3, 4, 2
    params = cell.init(jax.random.key(0), d, h)
    npp = {k: np.asarray(v, np.float64) for k, v in params.items()}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, d)).astype(np.float32)
    carry = jax.tree_util.tree_map(
        lambda a: rng.normal(size=a.shape).astype(np.float32), cell.initial_carry(b, h)
    )
    assert params["w_x"].shape == (d, cell.num_gates * h)
    for act in ("tanh", "relu") if cell.uses_activation else ("tanh",):
        new, y = cell.step(params, carry, x, act)
        ref = EQUATIONS[name](npp, jax.tree_util.tree_map(np.float64, carry), x, act)
        for got, want in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(ref)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(y, cell.hidden(new))


def test_every_registered_cell_is_complete_and_named_by_its_entry():
    """The registry is the one list of cells: each entry's module defines CELL under that name,
    with as many gate slabs as its input projection has."""
    for name, cell in cells.CELLS.items():
        assert cell.name == name
        params = cell.init(jax.random.key(0), 3, 4)
        assert params["w_x"].shape == (3, cell.num_gates * 4)
        assert set(cell.sigmoid_gates) | set(cell.tanh_gates) <= set(cell.gates)


def _documented_example() -> str:
    text = (ROOT / "docs" / "cells.md").read_text()
    block = text.split("<!-- example: janet_cell.py -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_documented_example_cell_trains_with_exact_gradients(tmp_path, monkeypatch):
    """docs/cells.md's complete example, as a user adds it: a file of their own and one registry
    line. Its fused gradients equal autodiff's, and it trains and generates through the CLI's
    code."""
    (tmp_path / "janet_cell.py").write_text(_documented_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cells.REGISTRY, "janet", "janet_cell")
    fused = DeepRNN(vocab_size=9, hidden_size=8, num_layers=2, cell="janet")
    auto = dataclasses.replace(fused, impl=Impl.AUTODIFF)
    params = fused.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (3, 7), 0, 9)
    carry = jax.tree_util.tree_map(lambda a: a + 0.5, fused.initial_carry(3))

    def loss(model):
        def f(p, c):
            logits, new = model.apply(p, tokens[:, :-1], c)
            return cross_entropy(logits, tokens[:, 1:]).mean() + jnp.sum(jnp.sin(new[-1]))

        return f

    gf = jax.grad(loss(fused), argnums=(0, 1))(params, carry)
    ga = jax.grad(loss(auto), argnums=(0, 1))(params, carry)
    for a, b in zip(jax.tree_util.tree_leaves(gf), jax.tree_util.tree_leaves(ga)):
        assert float(jnp.abs(b).max()) > 0
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    summary = train_and_evaluate(small_config(2, **{"model.cell": "janet"}), tmp_path / "run")
    assert summary["train_ppl"] < summary["metrics"][0]["train_ppl"] * 1.5 and np.isfinite(
        summary["val_ppl"]
    )
    assert summary["samples"] and summary["samples"][0].startswith("time traveller")


@pytest.mark.exhaustive  # by default: test_the_documented_example_cell_trains_with_exact_gradients
@pytest.mark.slow
def test_indrnn_trains_from_the_cli_and_generates(tmp_path):
    """--config.model.cell=indrnn from the command line, then scripts/generate.py on its run."""
    run = tmp_path / "run"
    cmd = train_cli(
        run,
        "--config.model.cell=indrnn",
        "--config.model.activation=relu",
        "--config.train.num_epochs=2",
        "--config.train.learning_rate=1.0",
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["train_ppl"] < records[0][
        "train_ppl"
    ]
    assert json.loads((run / "config.json").read_text())["model"]["cell"] == "indrnn"
    gen = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "generate.py"),
            f"--workdir={run}",
            "--prefix=the time",
            "--num_chars=20",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert (
        gen.stdout.strip().startswith("the time")
        and len(gen.stdout.strip()) >= len("the time") + 20
    )
