"""Training: gradients, clipping, determinism, learning, the files a run writes, generation."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from rnnjax import data
from rnnjax.config import default_config, resolve, smoke
from rnnjax.generate import generate
from rnnjax.metrics import TrainMetrics
from rnnjax.model import DeepRNN
from rnnjax.optim import make_optimizer
from rnnjax.steps import TrainState, cross_entropy, make_train_step
from rnnjax.train import build_model, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(**model):
    cfg = smoke(default_config())
    cfg.train.progress = False
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


def tree_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_gradients_match_finite_differences(cell):
    model = DeepRNN(vocab_size=5, hidden_size=3, num_layers=2, cell=cell)
    tokens = jnp.array([[0, 1, 2, 3], [4, 3, 2, 1]])
    targets = jnp.roll(tokens, -1, axis=1)
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), model.init(jax.random.key(0)))
        carry = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), model.initial_carry(2))

        def loss(p):
            return cross_entropy(model.apply(p, tokens, carry)[0], targets).mean()

        check_grads(loss, (params,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_clipping_is_applied():
    """d2l's JAX trainer never clipped: an update must move params by exactly lr * clip
    (in global norm) when the gradient norm exceeds the clip, and by lr * |g| without clipping."""
    cfg = resolve(smoke_config())
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
        new, _, acc = step(state, model.initial_carry(8), TrainMetrics.zeros(), xs, ys, 0, jax.random.key(0))
        diff = jax.tree_util.tree_map(lambda a, b: a - b, new.params, params)
        deltas[clip] = (float(optax.tree.norm(diff)), float(acc.grad_norm))
    (clipped, gnorm), (unclipped, gnorm2) = deltas[0.01], deltas[0.0]
    assert gnorm > 0.01 and gnorm == pytest.approx(gnorm2)
    assert clipped == pytest.approx(2.0 * 0.01, rel=1e-4)
    assert unclipped == pytest.approx(2.0 * gnorm, rel=1e-4)


def test_training_is_deterministic_and_lowers_perplexity(tmp_path):
    cfg = smoke_config()
    cfg.train.num_epochs = 15
    cfg.train.optimizer, cfg.train.learning_rate = "adam", 0.01
    a = train_and_evaluate(cfg, tmp_path / "a")
    b = train_and_evaluate(cfg, tmp_path / "b")
    assert tree_equal(a["params"], b["params"])  # same config and seed: bitwise equal
    first, last = a["metrics"][0], a["metrics"][-1]
    assert last["train_ppl"] < 0.75 * first["train_ppl"]
    assert last["val_ppl"] < first["val_ppl"]
    cfg.seed = 1
    c = train_and_evaluate(cfg, tmp_path / "c")
    assert not tree_equal(a["params"], c["params"])


def test_flax_impl_trains_like_rnnjax(tmp_path):
    """Both start from the same weights; they differ only in bias layout (PyTorch's two biases
    per gate vs Flax's one, so SGD moves the summed bias twice as fast), hence loose agreement."""
    cfg = smoke_config(cell="gru")
    cfg.train.num_epochs = 15
    cfg.train.optimizer, cfg.train.learning_rate = "adam", 0.01
    ours = train_and_evaluate(cfg, tmp_path / "ours")
    cfg.model.impl = "flax"
    theirs = train_and_evaluate(cfg, tmp_path / "flax")
    assert set(theirs["params"]) == {"layer_0", "layer_1", "out"}  # really Flax's parameter tree
    assert theirs["metrics"][-1]["train_ppl"] < 0.75 * theirs["metrics"][0]["train_ppl"]
    assert theirs["metrics"][-1]["val_ppl"] == pytest.approx(ours["metrics"][-1]["val_ppl"], rel=0.05)


@pytest.mark.parametrize("cell,sampler,dropout", [("rnn", "random", 0.0), ("lstm", "sequential", 0.3)])
def test_run_writes_its_files(tmp_path, cell, sampler, dropout):
    cfg = smoke_config(cell=cell, dropout=dropout, num_layers=3)
    cfg.data.sampler = sampler
    out = train_and_evaluate(cfg, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["cell"] == cell and config["data"]["sampler"] == sampler
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for key in ("step", "train_ppl", "val_ppl", "tokens_per_sec", "grad_norm", "lr"):
        assert all(np.isfinite(r[key]) for r in records)
    assert records[-1]["step"] == 3 * data.batches_per_epoch(resolve(cfg).data, 2000)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = (tmp_path / "samples.txt").read_text().splitlines()
    assert samples[0].startswith("time traveller") and len(samples[0]) == len("time traveller") + 20
    assert json.loads((tmp_path / "vocab.json").read_text())["idx_to_token"][0] == " "
    assert out["val_ppl"] == records[-1]["val_ppl"]


def test_generation_greedy_sampled_and_batched():
    model = DeepRNN(vocab_size=28, hidden_size=16, num_layers=2, cell="lstm")
    params = model.init(jax.random.key(0))
    vocab = data.load_corpus(resolve(default_config()).data).vocab
    greedy = generate(model, params, vocab, "time traveller", 30)
    assert greedy.startswith("time traveller") and len(greedy) == 44
    assert generate(model, params, vocab, "time traveller", 30, temperature=1.0, top_k=1, seed=5) == greedy
    s1 = generate(model, params, vocab, "time traveller", 30, temperature=1.0, seed=1)
    assert s1 == generate(model, params, vocab, "time traveller", 30, temperature=1.0, seed=1)
    assert s1 != generate(model, params, vocab, "time traveller", 30, temperature=1.0, seed=2)
    both = generate(model, params, vocab, ["time traveller", "the time machi", "x"], 30)
    assert both[0] == greedy and both[1] == generate(model, params, vocab, "the time machi", 30)
    assert generate(model, params, vocab, "Time-Traveller!", 5).startswith("time traveller ")  # d2l preprocessing


@pytest.mark.slow
def test_cli_trains_the_smoke_config_end_to_end(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
         "--config=" + os.path.join(ROOT, "configs", "deep_gru.py") + ":smoke", f"--workdir={tmp_path}",
         "--config.model.num_layers=3", "--config.train.progress=False"],
        capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "validation perplexity" in proc.stdout
    assert json.loads((tmp_path / "config.json").read_text())["model"]["num_layers"] == 3
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
