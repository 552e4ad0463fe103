"""cuDNN's LSTM (``model.impl = "cudnn"``, rnnjax/network/impls/cudnn.py).

Here (no GPU): the packing into cuDNN's flat weight vector round-trips exactly and is PyTorch's
layout; ``jax.experimental.rnn.lstm_ref`` (JAX's reference of the cuDNN op) on the packed weights,
through this module's whole stack (dropout, carry, the shard_map over 4 fake CPU devices), equals
rnnjax's LSTM in logits, carry and gradients; and the refusals are one line. On a CUDA GPU
(``scripts/gpu_check.sh`` runs this file with ``RNNJAX_TEST_PLATFORMS=cuda``): cuDNN's forward and
gradients equal rnnjax's at "highest" matmul precision (no TF32), and a 3-epoch run with
``impl="cudnn"`` equals ``impl="rnnjax"`` in perplexity.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, small_config, train_cli

from rnnjax import DeepRNN
from rnnjax.config import ConfigError, resolve
from rnnjax.network.impls import cudnn
from rnnjax.training.train import train_and_evaluate
from rnnjax.training.vectorize import check_vectorizable
from rnnjax.use import interop

gpu = pytest.mark.skipif(
    not cudnn.available(), reason="needs a CUDA GPU (scripts/gpu_check.sh runs these on one)"
)


def _case(num_layers=3, hidden=16, vocab=11, b=4, t=9, dropout=0.3):
    spec = DeepRNN(vocab, hidden, num_layers, "lstm", dropout=dropout)
    params = spec.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (b, t), 0, vocab)
    carry = jax.tree_util.tree_map(
        lambda x: x + 0.25, spec.initial_carry(b)
    )  # a carried, non-zero state
    return spec, params, tokens, carry


def _max_diff(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(x - y)))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def test_packing_round_trips_exactly_in_pytorchs_layout():
    spec, params, _, _ = _case()
    rnn_state, _ = interop.to_torch(params)
    for k, layer in enumerate(params["layers"]):
        d = layer["w_x"].shape[0]
        w = cudnn.pack(layer)
        assert w.shape == (cudnn.num_weights(d, spec.hidden_size),)
        torch_order = np.concatenate(
            [
                rnn_state[f"{n}_l{k}"].ravel()
                for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            ]
        )
        assert np.array_equal(
            np.asarray(w), torch_order
        )  # cuDNN's flat vector is PyTorch's arrays, concatenated
        back = cudnn.unpack(w, d, spec.hidden_size)
        assert all(np.array_equal(np.asarray(back[n]), np.asarray(layer[n])) for n in layer)


@pytest.mark.exhaustive  # by default: test_packing_round_trips_exactly_in_pytorchs_layout
def test_lstm_ref_on_packed_weights_equals_rnnjax_with_dropout_and_carry():
    spec, params, tokens, carry = _case()
    key = jax.random.key(2)
    ref = functools.partial(cudnn.apply, kernel=cudnn.reference_kernel)
    for dropout_key in (None, key):
        want = spec.apply(params, tokens, carry, dropout_key=dropout_key)
        got = ref(spec, params, tokens, carry, dropout_key)
        assert _max_diff(want, got) <= 1e-5

    def loss(apply, p):
        logits, new_carry = apply(p)
        return jnp.mean(logits**2) + sum(jnp.mean(x) for x in jax.tree_util.tree_leaves(new_carry))

    g_want = jax.grad(
        functools.partial(loss, lambda p: spec.apply(p, tokens, carry, dropout_key=key))
    )(params)
    g_got = jax.grad(functools.partial(loss, lambda p: ref(spec, p, tokens, carry, key)))(params)
    assert _max_diff(g_want, g_got) <= 1e-5


SHARDED = textwrap.dedent("""
    import functools, json, jax
    jax.config.update("jax_num_cpu_devices", 4)
    jax.config.update("jax_default_matmul_precision", "highest")
    import dataclasses, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import numpy as np
    from rnnjax import DeepRNN
    from rnnjax.network.impls import cudnn
    from rnnjax.network.model import Placement
    spec = DeepRNN(11, 16, 2, "lstm", dropout=0.2)
    four = Placement(data_devices=4)
    params = spec.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (8, 7), 0, 11)
    carry = jax.tree_util.tree_map(lambda x: x + 0.25, spec.initial_carry(8))
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    rows = NamedSharding(mesh, P("data"))
    s_tokens, s_carry = jax.device_put(tokens, rows), jax.device_put(carry, rows)
    key = jax.random.key(3)
    def loss(apply, p, tok, c):
        logits, new_carry = apply(p, tok, c)
        leaves = jax.tree_util.tree_leaves(new_carry)
        return jnp.mean(logits ** 2) + sum(jnp.mean(x) for x in leaves)
    plain = lambda p, tok, c: spec.apply(p, tok, c, dropout_key=key)
    ref = lambda p, tok, c: cudnn.apply(spec, p, tok, c, key, four, kernel=cudnn.reference_kernel)
    want = jax.jit(jax.value_and_grad(functools.partial(loss, plain)))(params, tokens, carry)
    got = jax.jit(jax.value_and_grad(functools.partial(loss, ref)))(params, s_tokens, s_carry)
    leaves = jax.tree_util.tree_leaves
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(leaves(want), leaves(got)))
    kernel = cudnn.reference_kernel
    text = jax.jit(lambda p, tok, c: cudnn.apply(spec, p, tok, c, None, four, kernel=kernel)).lower(
        params, s_tokens, s_carry).as_text()
    sharded = "shard_map" in text or "sdy.manual_computation" in text
    result = {"devices": len(jax.devices()), "diff": diff, "shard_map": sharded}
    print("RESULT " + json.dumps(result))
""")


# by default: test_parallel.py::test_four_devices_train_like_one_and_their_checkpoint_resumes_on_one
@pytest.mark.exhaustive
def test_data_parallel_wraps_the_call_in_shard_map_on_four_devices():
    """The cuDNN stack under ``Placement(data_devices=4)`` (each device its own rows, lstm_ref
    standing in for cuDNN's call) gives the single-device rnnjax loss and gradients."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED],
        capture_output=True,
        text=True,
        env=dict(env, JAX_PLATFORMS="cpu"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(
        [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT ") :]
    )
    assert r["devices"] == 4 and r["shard_map"], r
    assert r["diff"] <= 1e-5, r


def test_cudnn_on_a_machine_without_cuda_is_one_line_before_anything_is_written(tmp_path):
    assert not cudnn.available()
    proc = subprocess.run(
        train_cli("run", "--config.model.impl=cudnn"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=300,
    )
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines == [
        "error: config.model.impl = 'cudnn' needs an NVIDIA GPU with CUDA "
        "(JAX's backend here is cpu, "
        "devices cpu); use model.impl = 'rnnjax' (the same params: checkpoints are interchangeable)"
    ]
    assert not (tmp_path / "run").exists()


def test_a_cudnn_sweep_without_cuda_is_one_line_before_anything_is_written(tmp_path):
    from rnnjax.sweeps.sweep import run_sweep

    with pytest.raises(
        ConfigError, match=r"^config.model.impl = 'cudnn' needs an NVIDIA GPU with CUDA"
    ):
        run_sweep(small_config(2, **{"model.impl": "cudnn"}), {"seed": [0, 1]}, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.skipif(
    shutil.which("nvidia-smi") is not None, reason="a GPU machine: the script would run its checks"
)
def test_gpu_check_script_stops_in_one_line_on_a_machine_without_a_gpu(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "out"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).strip().splitlines() == [
        "error: no NVIDIA GPU here (nvidia-smi finds none); "
        "run scripts/gpu_check.sh on a machine with one"
    ]
    assert not (tmp_path / "out").exists()


def test_cudnn_refusals_name_the_fix():
    with pytest.raises(
        ConfigError,
        match=r"^config.model.impl = 'cudnn' is cuDNN's LSTM and has no gru cell; use model.cell",
    ):
        resolve(small_config(**{"model.cell": "gru", "model.impl": "cudnn"}))
    with pytest.raises(ConfigError, match=r"^config.parallel.cpu_pipeline needs rnnjax's stack"):
        resolve(small_config(**{"model.impl": "cudnn", "parallel.cpu_pipeline": True}))
    with pytest.raises(
        ConfigError,
        match=r"^vectorized trials vmap the model and cuDNN's LSTM call cannot be vmapped",
    ):
        check_vectorizable(resolve(small_config(**{"model.impl": "cudnn"})))


# by default: test_native.py::test_a_run_trained_with_rnnjax_resumes_under_native
@pytest.mark.exhaustive
def test_impl_may_change_on_resume_within_one_params_layout(tmp_path, smoke_run):
    """A run resumes under another implementation that reads the same params (here autodiff ->
    auto, the default: native or rnnjax; cudnn is another), to the params of a run that never
    changed; load(impl=) picks one; flax is refused."""
    a = tmp_path / "a"
    train_and_evaluate(small_config(2, **{"model.impl": "autodiff"}), a)
    resumed = train_and_evaluate(small_config(3), a)
    straight = smoke_run[1]  # small_config(3) trained straight through
    assert _max_diff(resumed["params"], straight["params"]) <= 1e-5
    assert (
        json.loads((a / "config.json").read_text())["model"]["impl"] == "auto"
    )  # the latest session's (the default)
    import rnnjax
    from rnnjax.rundir.checkpoint import CheckpointError

    with pytest.raises(
        CheckpointError, match=r"a different config.model.impl \('auto' there, 'flax' here\)"
    ):
        train_and_evaluate(small_config(4, **{"model.impl": "flax"}), a)

    with pytest.raises(
        ValueError,
        match=r"impl = 'flax' is not allowed: one of 'auto', 'rnnjax', 'autodiff', 'cudnn'",
    ):
        rnnjax.load(a, impl="flax")
    with pytest.raises(
        ValueError,
        match=r"^impl='cudnn' needs a CUDA GPU \(JAX's backend here is cpu\); load it with impl=",
    ):
        rnnjax.load(a, step="latest", impl="cudnn")  # the user's choice, not the run's, is named
    gru = tmp_path / "gru"
    train_and_evaluate(small_config(1, **{"model.cell": "gru"}), gru)
    with pytest.raises(
        ValueError,
        match=r"^impl='cudnn' cannot load .*gru, a gru run \(config.model.impl = "
        r"'cudnn' is cuDNN's LSTM and has no gru cell.*; load it without impl=",
    ):
        rnnjax.load(gru, impl="cudnn")
    config = json.loads((a / "config.json").read_text())
    config["model"]["impl"] = "cudnn"  # as a run last resumed with impl=cudnn on a GPU leaves it
    (a / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=r"was trained with model.impl = 'cudnn', which needs a CUDA GPU; load it with",
    ):
        rnnjax.load(a)
    run = rnnjax.load(a, step="latest", impl="rnnjax")
    assert run.model.impl == "rnnjax" and _max_diff(run.params, resumed["params"]) == 0.0


# ---------------------------------------------------------------- on a CUDA GPU only


@gpu
def test_cudnn_forward_and_gradients_equal_rnnjax_at_highest_precision():
    with jax.default_matmul_precision("highest"):
        spec, params, tokens, carry = _case(num_layers=2, hidden=64, vocab=28, b=8, t=35)
        key = jax.random.key(2)

        def loss(apply, p):
            logits, new_carry = apply(p)
            return jnp.mean(logits**2) + sum(
                jnp.mean(x) for x in jax.tree_util.tree_leaves(new_carry)
            )

        for dropout_key in (None, key):
            want = spec.apply(params, tokens, carry, dropout_key=dropout_key)
            got = cudnn.apply(spec, params, tokens, carry, dropout_key)
            assert _max_diff(want, got) <= 1e-4
        g_want = jax.grad(
            functools.partial(loss, lambda p: spec.apply(p, tokens, carry, dropout_key=key))
        )(params)
        g_got = jax.grad(
            functools.partial(loss, lambda p: cudnn.apply(spec, p, tokens, carry, key))
        )(params)
        assert _max_diff(g_want, g_got) <= 1e-4


@gpu
def test_three_epochs_with_cudnn_equal_rnnjax_in_perplexity(tmp_path):
    with jax.default_matmul_precision("highest"):
        runs = {
            impl: train_and_evaluate(small_config(3, **{"model.impl": impl}), tmp_path / impl)
            for impl in ("rnnjax", "cudnn")
        }
    records = {
        impl: [json.loads(x) for x in (tmp_path / impl / "metrics.jsonl").read_text().splitlines()]
        for impl in runs
    }
    for a, b in zip(records["rnnjax"], records["cudnn"], strict=True):
        assert (
            abs(a["train_ppl"] - b["train_ppl"]) <= 1e-3
            and abs(a["val_ppl"] - b["val_ppl"]) <= 1e-3
        )


@gpu
def test_cli_default_command_runs_with_cudnn_and_checkpoints_resume_as_rnnjax(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    for impl, epochs in (("cudnn", 2), ("rnnjax", 3)):
        proc = subprocess.run(
            train_cli("run", f"--config.model.impl={impl}", f"--config.train.num_epochs={epochs}"),
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert (ROOT / "scripts" / "gpu_check.sh").is_file()
