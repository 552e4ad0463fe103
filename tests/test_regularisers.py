"""AWD-LSTM's regularisers in the one stack loop (rnnjax/network/stack.py): model.weight_drop
(DropConnect on W_h, one mask per minibatch, its gradients masked under the fused backward too) and
model.locked_dropout (one mask per sequence); train.ar and train.tar; train.weight_average (EMA or
Polyak weights in the train step, used for evaluation); their gradients, bitwise resume and
refusals."""

import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import small_config, tiered

import rnnjax
from rnnjax.config import ConfigError, resolve
from rnnjax.dataset import data
from rnnjax.network import stack
from rnnjax.network.impls import native
from rnnjax.network.model import DeepRNN
from rnnjax.training.metrics import add_sums
from rnnjax.training.steps import LOSS_TERMS, Outputs, cross_entropy
from rnnjax.training.train import train_and_evaluate

V, B, T = 11, 3, 7
ROOT = pathlib.Path(__file__).resolve().parents[1]
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
    out = Outputs(None, None, None, None, h, d)
    assert float(LOSS_TERMS["ar"](out)) == pytest.approx(np.mean(np.asarray(d) ** 2), rel=1e-6)
    want = np.mean(np.diff(np.asarray(h), axis=0) ** 2)
    assert float(LOSS_TERMS["tar"](out)) == pytest.approx(want, rel=1e-6)
    assert float(LOSS_TERMS["tar"](out._replace(hidden=h[:1]))) == 0.0  # one step: no change
    x, y = batch()
    import optax

    from rnnjax.training.steps import init_train_state, make_train_step, train_sums

    def one_step(impl, weights):
        model = DeepRNN(V, 8, 2, output_dropout=0.3, impl=impl)
        tx = optax.sgd(0.5)
        state = init_train_state(model, tx, jax.random.key(0))
        step = make_train_step(model, tx, False, weights)
        sums = train_sums(model, state.params, False)
        xs, ys = x[None], y[None]
        state, _, sums = step(state, model.initial_carry(B), sums, xs, ys, 0, jax.random.key(3))
        return state.params, float(sums["loss"])

    plain, loss0 = one_step("rnnjax", {})
    fused, loss1 = one_step("rnnjax", {"ar": 2.0, "tar": 3.0})
    auto, loss2 = one_step("autodiff", {"ar": 2.0, "tar": 3.0})
    assert loss0 == pytest.approx(loss1) == pytest.approx(loss2)  # the recorded loss: cross-entropy
    close(fused, auto)  # the penalty's gradient through the hand-written backward
    diff = np.abs(np.asarray(fused["layers"][0]["w_h"]) - np.asarray(plain["layers"][0]["w_h"]))
    assert diff.max() > 1e-6


def train_steps(impl, average, n=6):
    """n steps of the real train step (SGD, dropout on): the raw params and the average after each
    step, and the final state."""
    import optax

    from rnnjax.training.steps import init_train_state, make_train_step, train_sums

    model = DeepRNN(V, 8, 2, dropout=0.2, impl=impl)
    tx = optax.sgd(0.5)
    state = init_train_state(model, tx, jax.random.key(0), average)
    step = make_train_step(model, tx, False, average=average)
    sums, carry = train_sums(model, state.params, False), model.initial_carry(B)
    rng = np.random.default_rng(0)
    xs, ys = (jnp.asarray(rng.integers(0, V, (n, B, T))) for _ in range(2))

    def copy(tree):  # the step donates its state: copies, not views of its buffers
        return [np.array(x) for x in jax.tree_util.tree_leaves(tree)]

    seen, averages = [copy(state.params)], [copy(state.average)]
    for i in range(n):
        state, carry, sums = step(state, carry, sums, xs, ys, i, jax.random.key(3))
        seen.append(copy(state.params))
        averages.append(copy(state.average))
    return seen, averages, state


@pytest.mark.parametrize("impl", tiered(["rnnjax", "autodiff", "flax"], lambda i: i == "rnnjax"))
def test_ema_and_polyak_weights_match_an_independent_numpy_average(impl):
    from rnnjax.training.steps import NO_AVERAGE, Average

    raw, _, plain = train_steps(impl, NO_AVERAGE)
    assert plain.average is None  # off: no extra state
    # EMA from step 2: the params themselves up to it, then decay * avg + (1 - decay) * params
    seen, averages, ema = train_steps(impl, Average("ema", 0.7, 2))
    for k in range(3):  # steps 0, 1, 2: the params, bitwise
        assert all(np.array_equal(a, p) for a, p in zip(averages[k], seen[k]))
    want = [p.astype(np.float64) for p in seen[2]]
    for params in seen[3:]:
        want = [0.7 * a + 0.3 * p for a, p in zip(want, params)]
    for got, w, params in zip(jax.tree_util.tree_leaves(ema.average), want, seen[-1]):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
        assert np.abs(got - params).max() > 1e-4  # not the params themselves
    # Polyak from step 2: the plain mean of the params after steps 3 .. 6
    seen, _, polyak = train_steps(impl, Average("polyak", 0.999, 2))
    for i, got in enumerate(jax.tree_util.tree_leaves(polyak.average)):
        mean = np.mean([s[i].astype(np.float64) for s in seen[3:]], axis=0)
        np.testing.assert_allclose(got, mean, rtol=1e-5, atol=1e-6)
    # the raw params do not see the average: bitwise those of a run without it
    for a, b, c in zip(raw[-1], seen[-1], jax.tree_util.tree_leaves(plain.params)):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_evaluation_samples_and_load_use_the_averaged_weights(tmp_path):
    from rnnjax.training.evaluation import eval_sums
    from rnnjax.training.metrics import sums_perplexity

    fields = {"data.num_test": 300, "checkpoint.max_to_keep": 1000}
    cfg = small_config(
        2, **fields, **{"train.weight_average": "ema", "train.weight_average_decay": 0.8}
    )
    run = tmp_path / "ema"
    out = train_and_evaluate(cfg, run)
    plain = train_and_evaluate(small_config(2, **fields), tmp_path / "plain")
    # off by default: the raw params are bitwise a plain run's; its checkpoints hold no average
    for a, b in zip(
        jax.tree_util.tree_leaves(out["params"]), jax.tree_util.tree_leaves(plain["params"])
    ):
        assert np.array_equal(a, b)
    assert plain["average"] is None
    for step in (tmp_path / "plain" / "checkpoints").iterdir():
        assert not (step / "average").exists()
        assert "average" not in json.loads((step / "meta" / "metadata").read_text())
    assert all((s / "average").is_dir() for s in (run / "checkpoints").iterdir())
    # the validation records come from the averaged params, computed here by hand
    corpus = data.load_corpus(resolve(cfg).data)
    d, model = resolve(cfg).data, out["model"]

    def ppl(params, parts):
        sums = [eval_sums(model, params, ids, d.batch_size, d.num_steps) for _, ids in parts]
        return sums_perplexity(functools.reduce(add_sums, sums))

    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_ppl"] == pytest.approx(ppl(out["average"], corpus.val_parts), rel=1e-6)
    assert records[-1]["val_ppl"] != pytest.approx(ppl(out["params"], corpus.val_parts), rel=1e-4)
    assert records[-1]["val_ppl"] != plain["val_ppl"]
    # rnnjax.load: the best step's averaged params (evaluation.json's test figure), or the raw
    best = rnnjax.load(run)
    assert best.weights == "average" and "ema weights" in best.describe_step()
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["test_ppl"] == pytest.approx(ppl(best.params, corpus.test_parts), rel=1e-6)
    last, raw = rnnjax.load(run, "latest"), rnnjax.load(run, "latest", weights="raw")
    for name, a, b in (("average", last, out["average"]), ("raw", raw, out["params"])):
        for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b)):
            assert np.array_equal(x, y), name
    # the end-of-run samples: greedy from the final averaged params
    prefixes, n = list(resolve(cfg).generate.prefixes), resolve(cfg).generate.num_chars
    assert (run / "samples.txt").read_text() == "".join(
        t + "\n" for t in last.generate(prefixes, n)
    )
    # scripts/generate.py --weights=raw: the raw params' text, and it says which weights
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate.py"), f"--workdir={run}"]
        + ["--step=latest", "--weights=raw", "--prefix=time", "--num_chars=30"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "raw weights" in proc.stderr and proc.stdout == raw.generate("time", 30) + "\n"
    with pytest.raises(ValueError, match="trained without weight averaging") as e:
        rnnjax.load(tmp_path / "plain", weights="average")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="'average', 'raw' or None"):
        rnnjax.load(run, weights="ema")


def test_the_average_is_its_own_checkpoint_item_read_on_request(tmp_path):
    from rnnjax.rundir.checkpoint import Checkpointer, CheckpointError

    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    average = jax.tree_util.tree_map(lambda x: x / 2, params)
    state = {"step": np.int32(7)}
    target = jax.eval_shape(lambda: (params, state))
    ckpt = Checkpointer(tmp_path, max_to_keep=5)
    try:
        ckpt.save(7, params, state, {"epoch": 1, "batch": 0, "val_ppl": 3.0}, average=average)
        ckpt.save(8, params, state, {"epoch": 1, "batch": 0, "val_ppl": 2.0})
        _, (p, a), _, meta = ckpt.restore(lambda meta: target, 7, with_average=True)
        assert meta["average"] is True and "['average']" in str(meta["checksums"])
        assert all(
            np.array_equal(x, y) for x, y in zip(*map(jax.tree_util.tree_leaves, (a, average)))
        )
        assert all(
            np.array_equal(x, y) for x, y in zip(*map(jax.tree_util.tree_leaves, (p, params)))
        )
        plain = ckpt.restore(lambda meta: target, 8)
        assert (
            "average" not in plain[3] and not (tmp_path / "checkpoints" / "8" / "average").exists()
        )
        with pytest.raises(CheckpointError, match="step 8 .* holds no averaged weights") as e:
            ckpt.restore(lambda meta: target, 8, with_average=True)
        assert "\n" not in str(e.value)
        (tmp_path / "checkpoints" / "7" / "average" / "manifest.ocdbt").unlink()  # damage
        with pytest.raises(CheckpointError, match=r"missing array data \(average/manifest"):
            ckpt.restore(lambda meta: target, 7, with_average=True)
    finally:
        ckpt.close()


PIPED_AVERAGE = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    import conftest, jax, numpy as np
    from conftest import small_config, tiered
    from rnnjax.training.train import train_and_evaluate
    cfg = small_config(1, **{"parallel.cpu_pipeline": True, "train.weight_average": "ema",
                             "train.weight_average_decay": 0.8})
    out = train_and_evaluate(cfg, sys.argv[1])
    np.savez(sys.argv[1] + ".npz", *jax.tree_util.tree_leaves(out["average"]))
    print("RESULT", repr(out["val_ppl"]), out["num_devices"])
""")


# by default: test_weight_drop_under_the_layer_pipeline_equals_the_plain_stack
@pytest.mark.exhaustive
def test_weight_average_under_the_layer_pipeline_equals_the_plain_stack(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-c", PIPED_AVERAGE, str(tmp_path / "piped"), str(ROOT / "tests")],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(env, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1].split()
    assert line[2] == "2"  # two stages
    cfg = small_config(1, **{"train.weight_average": "ema", "train.weight_average_decay": 0.8})
    plain = train_and_evaluate(cfg, tmp_path / "plain")
    assert abs(np.log(float(line[1])) - np.log(plain["val_ppl"])) <= 1e-5
    piped = np.load(str(tmp_path / "piped") + ".npz")
    for i, x in enumerate(jax.tree_util.tree_leaves(plain["average"])):
        np.testing.assert_allclose(piped[f"arr_{i}"], x, atol=1e-5, rtol=0)


# by default: test_ema_and_polyak_weights_match_an_independent_numpy_average
@pytest.mark.exhaustive
def test_vectorized_trials_average_as_one_by_one(tmp_path):
    from rnnjax.sweeps.sweep import run_sweep

    grid = {"seed": [0, 1]}
    cfg = small_config(1, **{"train.weight_average": "polyak", "train.weight_average_start": 5})
    seq = run_sweep(cfg, grid, tmp_path / "seq")
    vec = run_sweep(cfg, grid, tmp_path / "vec", vectorize=True)
    assert [r["status"] for r in vec] == ["done"] * 2
    for a, b in zip(seq, vec):
        assert b["best_val_ppl"] == pytest.approx(a["best_val_ppl"], rel=1e-5)
        pa, pb = (rnnjax.load(tmp_path / w / r["name"]) for w, r in (("seq", a), ("vec", b)))
        assert pa.weights == pb.weights == "average"
        for x, y in zip(jax.tree_util.tree_leaves(pa.params), jax.tree_util.tree_leaves(pb.params)):
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)


@pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.why_not()}")
@pytest.mark.parametrize("cell", tiered(["lstm", "gru", "rnn"], lambda c: c == "lstm"))
def test_native_runs_the_regularisers_in_rnnjax_s_stack_as_rnnjax_does(cell):
    """impl native (and so auto) shares rnnjax's stack: locked dropout's masks, weight drop's W_h
    masked before the layer runs, and the top outputs AR/TAR read; one step agrees with rnnjax's."""
    import optax

    from rnnjax.training.steps import init_train_state, make_train_step, train_sums

    x, y = batch()

    def one_step(impl):
        model = DeepRNN(
            V, 8, 2, cell, output_dropout=0.2, locked_dropout=0.3, weight_drop=0.4, impl=impl
        )
        tx = optax.sgd(0.5)
        state = init_train_state(model, tx, jax.random.key(0))
        step = make_train_step(model, tx, False, {"ar": 2.0, "tar": 3.0})
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


def test_every_regulariser_resumes_bitwise_from_a_mid_epoch_save(tmp_path):
    cfg = small_config(
        2,
        **{
            "model.weight_drop": 0.3,
            "model.locked_dropout": 0.2,
            "train.ar": 2.0,
            "train.tar": 1.0,
            "train.weight_average": "polyak",
            "train.weight_average_start": 20,  # inside epoch 1: the resumed run averages too
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
    for key in ("params", "average"):
        for a, b in zip(
            jax.tree_util.tree_leaves(resumed[key]), jax.tree_util.tree_leaves(straight[key])
        ):
            assert np.array_equal(a, b)
    assert resumed["val_ppl"] == straight["val_ppl"]
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
        ({"train.tar": 1.0, "model.impl": "flax"}, "config.train.tar reads the top layer"),
        ({"train.ar": -1.0}, "config.train.ar"),
        ({"train.weight_average": "swa"}, r"config.train.weight_average = 'swa' .*'ema' or"),
        (
            {"train.weight_average_decay": 1.0},
            r"config.train.weight_average_decay = 1.0 .*\(0, 1\)",
        ),
        (  # 1 in float32, where the average lives: it would never move
            {"train.weight_average_decay": 0.9999999999999999},
            r"weight_average_decay = 0\.9999999999999999.*float32 holds below 1",
        ),
        ({"train.weight_average_start": -1}, "config.train.weight_average_start = -1"),
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
    from rnnjax.network.model import DeepRNN, Placed, Placement
    from rnnjax.training.steps import cross_entropy
    rng = np.random.default_rng(0)
    x, y = (jnp.asarray(rng.integers(0, 11, (3, 12))) for _ in range(2))
    def run(m):
        def loss(p):
            logits, _ = m.apply(p, x, m.initial_carry(3), dropout_key=jax.random.key(5))
            return cross_entropy(logits, y).mean()
        return jax.value_and_grad(loss)(m.init(jax.random.key(0)))
    spec = DeepRNN(11, 8, 2, "lstm", weight_drop=0.5)
    piped = Placed.of(spec, Placement(pipeline_stages=2, pipeline_chunks=3))
    (a, ga), (b, gb) = run(spec), run(piped)
    diff = max(float(np.max(np.abs(u - v))) for u, v in zip(jax.tree_util.tree_leaves(ga),
                                                            jax.tree_util.tree_leaves(gb)))
    print("RESULT " + json.dumps([float(a), float(b), diff]))
""")


# by default: test_pipeline.py::test_pipeline_trains_like_the_plain_stack_for_every_cell_and_depth
@pytest.mark.exhaustive
def test_weight_drop_under_the_layer_pipeline_equals_the_plain_stack():
    proc = subprocess.run(
        [sys.executable, "-c", PIPED], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    a, b, diff = json.loads(line[len("RESULT ") :])
    assert abs(a - b) <= 1e-5 and diff <= 1e-5


def test_every_loss_term_has_its_weight_field_and_each_weight_field_its_term():
    from rnnjax.config.train_fields import loss_terms

    assert loss_terms() == list(LOSS_TERMS) == ["ar", "tar"]
    from rnnjax.training.steps import loss_weights

    tc = resolve(small_config(**{"train.tar": 0.5})).train
    assert loss_weights(tc) == {"tar": 0.5}


def test_each_loss_term_that_is_on_is_recorded_under_its_name(tmp_path):
    """train.ar and train.tar: ``ar_loss`` and ``tar_loss`` in every record, the epoch's mean of
    weight * term; train_ppl stays the cross-entropy's (the same as a run without them at epoch 1's
    first step is not checked: the penalty changes the updates)."""
    out = train_and_evaluate(small_config(2, **{"train.ar": 2.0}), tmp_path / "a")
    recs = out["metrics"]
    assert all(r["ar_loss"] > 0 for r in recs) and all("tar_loss" not in r for r in recs)
    assert recs[0]["ar_loss"] != recs[1]["ar_loss"]
    plain = train_and_evaluate(small_config(1), tmp_path / "b")["metrics"][0]
    assert "ar_loss" not in plain and "tar_loss" not in plain


def test_a_metric_sees_the_top_layer_s_hidden_states(tmp_path, monkeypatch):
    """A training metric with hidden=True reads Step.hidden, the top layer's outputs [t, b, h]."""
    from rnnjax.training.steps import TRAIN_METRICS, Metric

    seen = []

    def fraction(s):
        seen.append(s.hidden.shape)
        return jnp.mean(jnp.abs(s.hidden) > 0.5)

    monkeypatch.setitem(TRAIN_METRICS, "saturated", Metric(fraction, hidden=True))
    cfg = small_config(1)
    recs = train_and_evaluate(cfg, tmp_path / "run")["metrics"]
    c = resolve(cfg)
    assert (c.data.num_steps, c.data.batch_size, c.model.hidden_size) in seen
    assert 0 < recs[0]["saturated"] < 1


def _with_documented_edit(path: pathlib.Path, marker: str, anchor: str, after: bool) -> None:
    """Insert docs/training.md's code block under ``<!-- example: MARKER -->`` into ``path``, on
    the line after (or before) the line holding ``anchor``, as a user adds it."""
    text = (ROOT / "docs" / "training.md").read_text()
    block = text.split(f"<!-- example: {marker} -->", 1)[1].split("```python\n", 1)[1]
    block = block.split("```", 1)[0]
    lines = path.read_text().splitlines(keepends=True)
    (at,) = [i for i, line in enumerate(lines) if anchor in line]
    lines.insert(at + 1 if after else at, block)
    path.write_text("".join(lines))


@pytest.mark.slow
def test_the_documented_regulariser_is_one_entry_and_one_field_and_trains(tmp_path):
    """docs/training.md's z-loss, added as the page says to a copy of the package (its entry in
    LOSS_TERMS, its field in the train group): --config.train.zloss trains with it, records
    zloss_loss, and config.md's generator lists the field."""
    pkg = tmp_path / "src" / "rnnjax"
    shutil.copytree(ROOT / "rnnjax", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    _with_documented_edit(
        pkg / "training" / "steps.py", "loss term", "LOSS_TERMS: dict[str,", after=True
    )
    _with_documented_edit(
        pkg / "config" / "train_fields.py", "loss term field", "_loss_terms_apply),", after=False
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src"), "JAX_PLATFORMS": "cpu"}
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        f"--config={ROOT / 'configs' / 'deep_lstm.py'}:smoke",
        "--config.train.num_epochs=2",
        "--config.train.zloss=0.001",
        "--config.train.progress=False",
        f"--workdir={run}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2] and all(r["zloss_loss"] > 0 for r in recs)
    doc = subprocess.run(
        [sys.executable, "-c", "from rnnjax.config import config_doc; print(config_doc.render())"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert "`train.zloss`" in doc.stdout, doc.stderr[-1000:]
