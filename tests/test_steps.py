"""The train step's non-finite guard: a non-finite step changes nothing and is counted; a run of
them aborts."""

import json

import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import param_bytes, small_config

import rnnjax
from rnnjax.config import resolve
from rnnjax.training.steps import init_train_state, make_train_step, train_sums
from rnnjax.training.train import train_and_evaluate


def test_nonfinite_step_is_skipped_and_run_aborts(tmp_path):
    cfg = resolve(small_config())
    model = rnnjax.build_model(cfg, 28)
    tx = optax.sgd(float("inf"))
    state = init_train_state(model, tx, jax.random.key(0))
    before = param_bytes(state.params)
    xs = jax.random.randint(jax.random.key(1), (1, 8, 10), 0, 28)
    step = make_train_step(model, tx, reset_carry=False)
    sums = train_sums(model, state.params, False)
    new, _, acc = step(
        state, model.initial_carry(8), sums, xs, jnp.roll(xs, -1, -1), 0, jax.random.key(0)
    )
    assert (
        param_bytes(new.params) == before
        and int(new.nonfinite) == 1
        and float(acc["skipped"]) == 1.0
    )
    bad = small_config(3)
    bad.train.learning_rate, bad.train.grad_clip = 1e38, 0.0
    with pytest.raises(
        FloatingPointError,
        match=r"consecutive non-finite training steps \(train.max_nonfinite = 10\)",
    ):
        train_and_evaluate(bad, tmp_path)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["skipped_steps"] == 24  # every step skipped, none applied
    assert not any(
        p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir()
    )  # nothing non-finite saved


@pytest.mark.parametrize("impl", ["rnnjax", "native"])
def test_validation_in_long_windows_equals_t_step_windows(impl):
    """The held-out pass reads windows of up to batches.EVAL_WINDOW_TOKENS tokens (one call over a
    small split); the carry goes on, so the perplexity is that of t-step windows up to float32
    rounding of the sums."""
    import numpy as np

    from rnnjax.dataset import batches
    from rnnjax.network.model import DeepRNN
    from rnnjax.training.evaluation import perplexity
    from rnnjax.training.steps import cross_entropy

    model = DeepRNN(28, 16, 2, "lstm", impl=impl)
    params = model.init(jax.random.key(0))
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (4 * 300 + 1,), 0, 28))
    b, t = 4, 7
    assert len(batches.eval_windows(tokens, b, t)) == 1  # 300 steps: one window
    row = (len(tokens) - 1) // b
    xs, ys = tokens[: b * row].reshape(b, row), tokens[1 : 1 + b * row].reshape(b, row)
    carry, nll = model.initial_carry(b), []
    for i in range(0, row, t):  # the t-step windows of the pass before
        logits, carry = model.apply(params, jnp.asarray(xs[:, i : i + t]), carry)
        nll.append(np.asarray(cross_entropy(logits, jnp.asarray(ys[:, i : i + t]))).ravel())
    want = float(np.exp(np.concatenate(nll).astype(np.float64).mean()))
    assert perplexity(model, params, tokens, b, t) == pytest.approx(want, rel=1e-6)


def test_an_abort_names_the_activation_penalty_in_the_loss(tmp_path):
    """train.tar = 1e30 makes every step's loss (and gradient) non-finite: the one-line abort names
    train.tar beside the learning rate, and lowering it as a fix."""
    bad = small_config(3, **{"train.tar": 1e30})
    with pytest.raises(FloatingPointError) as e:
        train_and_evaluate(bad, tmp_path)
    said = str(e.value)
    assert "\n" not in said and "train.tar = 1e+30" in said and "lower train.tar" in said, said
