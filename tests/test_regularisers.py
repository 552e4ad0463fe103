"""AWD-LSTM's regularisers in the one stack loop (rnnjax/stack.py): model.weight_drop (DropConnect
on W_h, one mask per minibatch, its gradients masked under the fused backward too) and
model.locked_dropout (one mask per sequence); their gradients, bitwise resume and refusals."""

import json
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import small_config

from rnnjax import native, stack
from rnnjax.config import ConfigError, resolve
from rnnjax.model import DeepRNN
from rnnjax.steps import cross_entropy
from rnnjax.train import train_and_evaluate

V, B, T = 11, 3, 7
KEY = jax.random.key(5)


def batch():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.integers(0, V, (B, T))) for _ in range(2))


def loss_and_grads(model, params=None):
    x, y = batch()
    params = params or model.init(jax.random.key(0))

    def loss(p):
        logits, _ = model.apply(p, x, model.initial_carry(B), dropout_key=KEY)
        return cross_entropy(logits, y).mean()

    return jax.value_and_grad(loss)(params)


def close(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_weight_drop_masks_w_h_and_its_gradient_under_the_fused_backward(cell):
    rate = 0.5
    model = DeepRNN(V, 8, 2, cell, weight_drop=rate)
    loss, grads = loss_and_grads(model)  # impl rnnjax: the hand-written backward
    auto_loss, auto_grads = loss_and_grads(
        DeepRNN(V, 8, 2, cell, weight_drop=rate, impl="autodiff")
    )
    assert loss == pytest.approx(float(auto_loss), rel=1e-6)
    close(grads, auto_grads)
    # the reference: the masked weights given to a model without weight drop, by the chain rule
    params = model.init(jax.random.key(0))
    key = jax.random.fold_in(KEY, stack.WEIGHT_SALT)
    keeps = [
        stack.dropout_keep(key, l, rate, p["w_h"].shape) for l, p in enumerate(params["layers"])
    ]
    masked = {
        **params,
        "layers": [
            {**p, "w_h": jnp.where(k, p["w_h"] / (1 - rate), 0.0)}
            for p, k in zip(params["layers"], keeps)
        ],
    }
    ref_loss, ref_grads = loss_and_grads(DeepRNN(V, 8, 2, cell), masked)
    assert loss == pytest.approx(float(ref_loss), rel=1e-6)
    for l, k in enumerate(keeps):
        g = np.asarray(grads["layers"][l]["w_h"])
        assert (g[~np.asarray(k)] == 0).all() and 0.3 < np.asarray(k).mean() < 0.7
        np.testing.assert_allclose(
            g, np.where(k, ref_grads["layers"][l]["w_h"] / (1 - rate), 0.0), rtol=2e-5, atol=1e-7
        )
    assert not np.array_equal(
        np.asarray(loss), np.asarray(loss_and_grads(DeepRNN(V, 8, 2, cell))[0])
    )


def test_locked_dropout_draws_one_mask_per_sequence_and_autodiff_agrees():
    rate = 0.4
    h = stack.locked(DeepRNN(V, 8, 2, locked_dropout=rate), KEY, 1, jnp.ones((T, B, 8)))
    assert (h == h[0]).all()  # the same mask at every step
    np.testing.assert_allclose(np.unique(h), [0.0, 1 / (1 - rate)])
    tokens = jnp.asarray(np.tile(np.arange(V)[:, None], (2, B)))  # each token twice per sequence
    spec = DeepRNN(V, 8, 2, locked_dropout=rate)
    _, scale_tb = stack.locked_input(spec, KEY, tokens, {"w_x": jnp.zeros((V, 32))})
    np.testing.assert_array_equal(scale_tb[:V], scale_tb[V:])  # a token type kept or dropped
    assert len({tuple(np.asarray(scale_tb[:, j])) for j in range(B)}) > 1  # per sequence
    loss, grads = loss_and_grads(DeepRNN(V, 8, 2, locked_dropout=rate))
    auto_loss, auto_grads = loss_and_grads(DeepRNN(V, 8, 2, locked_dropout=rate, impl="autodiff"))
    assert loss == pytest.approx(float(auto_loss), rel=1e-6)
    close(grads, auto_grads)
    # dropped input token types get no gradient in that sequence's rows of w_x
    plain_loss, _ = loss_and_grads(DeepRNN(V, 8, 2))
    assert float(loss) != float(plain_loss)


def test_ar_and_tar_penalise_the_top_outputs_and_their_gradient_reaches_the_weights():
    h = jnp.asarray(np.random.default_rng(1).normal(size=(T, B, 8)), jnp.float32)
    d = h * 2
    want = 3 * np.mean(np.asarray(d) ** 2) + 5 * np.mean(np.diff(np.asarray(h), axis=0) ** 2)
    assert float(stack.activation_penalty(3.0, 5.0, h, d)) == pytest.approx(want, rel=1e-6)
    x, y = batch()
    import optax

    from rnnjax.steps import init_train_state, make_train_step, train_sums

    def one_step(impl, ar_tar):
        model = DeepRNN(V, 8, 2, output_dropout=0.3, impl=impl)
        tx = optax.sgd(0.5)
        state = init_train_state(model, tx, jax.random.key(0))
        step = make_train_step(model, tx, False, ar_tar)
        sums = train_sums(model, state.params, False)
        xs, ys = x[None], y[None]
        state, _, sums = step(state, model.initial_carry(B), sums, xs, ys, 0, jax.random.key(3))
        return state.params, float(sums["loss"])

    plain, loss0 = one_step("rnnjax", (0.0, 0.0))
    fused, loss1 = one_step("rnnjax", (2.0, 3.0))
    auto, loss2 = one_step("autodiff", (2.0, 3.0))
    assert loss0 == pytest.approx(loss1) == pytest.approx(loss2)  # the recorded loss: cross-entropy
    close(fused, auto)  # the penalty's gradient through the hand-written backward
    diff = np.abs(np.asarray(fused["layers"][0]["w_h"]) - np.asarray(plain["layers"][0]["w_h"]))
    assert diff.max() > 1e-6


@pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.why_not()}")
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_native_runs_the_regularisers_in_rnnjax_s_stack_as_rnnjax_does(cell):
    """impl native (and so auto) shares rnnjax's stack: locked dropout's masks, weight drop's W_h
    masked before the layer runs, and the top outputs AR/TAR read; one step agrees with rnnjax's."""
    import optax

    from rnnjax.steps import init_train_state, make_train_step, train_sums

    x, y = batch()

    def one_step(impl):
        model = DeepRNN(
            V, 8, 2, cell, output_dropout=0.2, locked_dropout=0.3, weight_drop=0.4, impl=impl
        )
        tx = optax.sgd(0.5)
        state = init_train_state(model, tx, jax.random.key(0))
        step = make_train_step(model, tx, False, (2.0, 3.0))
        sums = train_sums(model, state.params, False)
        state, _, sums = step(
            state, model.initial_carry(B), sums, x[None], y[None], 0, jax.random.key(3)
        )
        return state.params, float(sums["loss"])

    (fused, loss), (nat, nat_loss) = one_step("rnnjax"), one_step("native")
    assert nat_loss == pytest.approx(loss, rel=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(nat), jax.tree_util.tree_leaves(fused)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    for impl in ("native", "auto"):
        fields = {"model.weight_drop": 0.2, "model.locked_dropout": 0.2, "train.ar": 1.0}
        assert resolve(small_config(**fields, **{"model.impl": impl})).model.impl == impl


def test_off_by_default_draws_no_key_and_changes_nothing():
    m = DeepRNN(V, 8, 2)
    assert not stack.draws_masks(m) and stack.draws_masks(DeepRNN(V, 8, 2, weight_drop=0.1))
    params = m.init(jax.random.key(0))
    assert stack.drop_weights(m, params["layers"], KEY) is params["layers"]


def test_both_regularisers_resume_bitwise_from_a_mid_epoch_save(tmp_path):
    cfg = small_config(
        2,
        **{
            "model.weight_drop": 0.3,
            "model.locked_dropout": 0.2,
            "train.ar": 2.0,
            "train.tar": 1.0,
            "checkpoint.every_minutes": 1e-9,
            "checkpoint.max_to_keep": 1000,
        },
    )
    run = tmp_path / "run"
    straight = train_and_evaluate(cfg, run)
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    for s in steps:
        if s > 30:  # a kill inside epoch 2
            shutil.rmtree(run / "checkpoints" / str(s))
    resumed = train_and_evaluate(cfg, run)
    for a, b in zip(
        jax.tree_util.tree_leaves(resumed["params"]), jax.tree_util.tree_leaves(straight["params"])
    ):
        assert np.array_equal(a, b)
    plain = train_and_evaluate(small_config(2), tmp_path / "plain")
    assert plain["val_ppl"] != straight["val_ppl"]


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"model.weight_drop": 0.2, "model.impl": "flax"}, "weight_drop runs in rnnjax's stack"),
        ({"model.locked_dropout": 0.2, "model.impl": "cudnn"}, "locked_dropout runs in rnnjax"),
        ({"model.weight_drop": 0.2, "model.cell": "mingru"}, "cell 'mingru' has none"),
        ({"model.locked_dropout": 0.2, "parallel.cpu_pipeline": True}, "not in the layer pipe"),
        ({"model.weight_drop": 1.0}, "config.model.weight_drop"),
        ({"train.tar": 1.0, "model.impl": "flax"}, "train.ar and train.tar read the top layer"),
        ({"train.ar": -1.0}, "config.train.ar"),
    ],
)
def test_where_a_regulariser_cannot_apply_it_is_refused_in_one_line(fields, message):
    with pytest.raises(ConfigError, match=message) as e:
        resolve(small_config(**fields))
    assert "\n" not in str(e.value)


PIPED = textwrap.dedent("""
    import jax, json
    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_default_matmul_precision", "highest")
    import jax.numpy as jnp, numpy as np
    from rnnjax.model import DeepRNN, Placed, Placement
    from rnnjax.steps import cross_entropy
    rng = np.random.default_rng(0)
    x, y = (jnp.asarray(rng.integers(0, 11, (3, 12))) for _ in range(2))
    def run(m):
        def loss(p):
            logits, _ = m.apply(p, x, m.initial_carry(3), dropout_key=jax.random.key(5))
            return cross_entropy(logits, y).mean()
        return jax.value_and_grad(loss)(m.init(jax.random.key(0)))
    spec = DeepRNN(11, 8, 2, "lstm", weight_drop=0.5)
    (a, ga), (b, gb) = run(spec), run(Placed(spec, Placement(pipeline_stages=2, pipeline_chunks=3)))
    diff = max(float(np.max(np.abs(u - v))) for u, v in zip(jax.tree_util.tree_leaves(ga),
                                                            jax.tree_util.tree_leaves(gb)))
    print("RESULT " + json.dumps([float(a), float(b), diff]))
""")


def test_weight_drop_under_the_layer_pipeline_equals_the_plain_stack():
    proc = subprocess.run(
        [sys.executable, "-c", PIPED], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    a, b, diff = json.loads(line[len("RESULT ") :])
    assert abs(a - b) <= 1e-5 and diff <= 1e-5
