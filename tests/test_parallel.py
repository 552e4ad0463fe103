"""Data parallelism: 4 (fake CPU) devices train like 1, checkpoints move between device
counts, 2 processes under jax.distributed train like 1, and one CPU device per core."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import small_config

import rnnjax
from rnnjax.config import ConfigError
from rnnjax.training.train import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]

FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from rnnjax.config import ConfigError, default_config, smoke
    from rnnjax.network.parallel import DataParallel
    from rnnjax.training.train import train_and_evaluate
    out = {"devices": len(jax.devices())}
    for n in (1, 4):
        cfg = smoke(default_config()); cfg.train.progress = False; cfg.parallel.num_devices = n
        s = train_and_evaluate(cfg, sys.argv[1] + f"/d{n}")
        out[f"loss{n}"] = [float(np.log(r["train_ppl"])) for r in s["metrics"]]
        out[f"val{n}"] = [float(np.log(r["val_ppl"])) for r in s["metrics"]]
        leaves = jax.tree_util.tree_leaves(s["params"])
        np.savez(sys.argv[1] + f"/params{n}.npz", *[np.asarray(x) for x in leaves])
        if n == 4:
            leaf = jax.tree_util.tree_leaves(s["params"])[0]
            where = leaf.sharding
            out["params_replicated"] = where.is_fully_replicated and len(where.device_set) == 4
    dp = DataParallel.create(0, 8)
    batch = dp.shard(np.zeros((3, 8, 10)), 1)
    out["batch_shard_shape"] = list(batch.sharding.shard_shape((3, 8, 10)))
    try:
        DataParallel.create(0, 6)
    except ConfigError as e:
        out["indivisible"] = str(e)
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture
def four_device_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp")
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4"
    )
    proc = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES, str(tmp)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return tmp, json.loads(line[len("RESULT ") :])


def test_four_devices_train_like_one_and_their_checkpoint_resumes_on_one(
    four_device_runs, tmp_path
):
    """One test for both, so the four-device runs are trained once whatever the test workers do."""
    tmp, out = four_device_runs
    assert out["devices"] == 4 and out["params_replicated"]
    assert out["batch_shard_shape"] == [3, 2, 10]  # each device holds 2 of the 8 rows
    np.testing.assert_allclose(out["loss4"], out["loss1"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["val4"], out["val1"], atol=1e-5, rtol=0)
    p1, p4 = np.load(tmp / "params1.npz"), np.load(tmp / "params4.npz")
    for k in p1.files:
        np.testing.assert_allclose(p4[k], p1[k], atol=1e-5, rtol=0)
    assert out["indivisible"] == (
        "config.data.batch_size = 6 does not divide by the 4 devices; use a multiple of 4 or set "
        "config.parallel.num_devices"
    )
    # the checkpoint saved on four devices restores on one, bit for bit, and resumes there
    assert len(jax.devices()) == 1
    run = rnnjax.load(tmp / "d4", step="latest")
    for k, leaf in zip(p4.files, jax.tree_util.tree_leaves(run.params)):
        np.testing.assert_array_equal(np.asarray(leaf), p4[k])
    cfg = small_config(4)
    resumed = train_and_evaluate(cfg, tmp / "d4")  # resumes at epoch 4 on 1 device
    direct = train_and_evaluate(cfg, tmp_path / "direct")
    for a, b in zip(
        jax.tree_util.tree_leaves(resumed["params"]), jax.tree_util.tree_leaves(direct["params"])
    ):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_more_devices_than_visible_is_refused(tmp_path):
    cfg = small_config(progress=True, **{"parallel.num_devices": 2})
    with pytest.raises(
        ConfigError, match=r"config.parallel.num_devices = 2 but only 1 devices are visible"
    ):
        train_and_evaluate(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.exhaustive
@pytest.mark.slow
def test_two_processes_under_jax_distributed_train_like_one(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    base = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        f"--config={ROOT / 'configs' / 'deep_gru.py'}:smoke",
        "--config.train.progress=False",
    ]
    port = _free_port()
    procs = [
        subprocess.Popen(
            base
            + [
                f"--workdir={tmp_path / 'multi'}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    single = subprocess.run(
        base + [f"--workdir={tmp_path / 'single'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    multi_lines = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    assert len(multi_lines) == 3  # written once, by process 0
    m, s = (
        rnnjax.load(tmp_path / "multi", step="latest"),
        rnnjax.load(tmp_path / "single", step="latest"),
    )
    for a, b in zip(jax.tree_util.tree_leaves(m.params), jax.tree_util.tree_leaves(s.params)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    for a, b in zip(m.metrics, s.metrics):
        assert abs(np.log(a["train_ppl"]) - np.log(b["train_ppl"])) <= 1e-5


def test_cpu_device_count_for_one_device_per_core():
    from rnnjax.network.parallel import cpu_device_count

    assert cpu_device_count(1, 32) == 1 and cpu_device_count(3, 32) == 3
    assert cpu_device_count(0, 32, cores=2) == 2
    assert cpu_device_count(0, 30, cores=4) == 3  # the largest count <= cores dividing the batch
    assert cpu_device_count(0, 7, cores=2) == 1


def test_set_cpu_devices_before_and_after_jax_starts():
    code = (
        "import jax\n"
        "from rnnjax.network.parallel import set_cpu_devices\n"
        "from rnnjax.config import ConfigError\n"
        "assert set_cpu_devices(2, 32) == 2\n"
        "assert len(jax.devices()) == 2\n"
        "assert set_cpu_devices(2, 32) == 2  # same count again: fine\n"
        "try:\n"
        "    set_cpu_devices(3, 30)\n"
        "except ConfigError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(env, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "ERR config.parallel.cpu_devices = 3 (3 CPU devices) must be set before JAX starts"
        in proc.stdout
    )


@pytest.mark.exhaustive
@pytest.mark.slow
def test_cli_trains_on_one_cpu_device_per_core_like_on_one(tmp_path):
    """--config.parallel.cpu_devices=2 splits the CPU into 2 devices; the run matches the 1-device
    run."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    ppl = {}
    for n in (1, 2):
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "train.py"),
                f"--config={ROOT / 'configs' / 'deep_lstm.py'}:smoke",
                f"--workdir={tmp_path / str(n)}",
                f"--config.parallel.cpu_devices={n}",
                "--config.train.progress=False",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"on {n} device(s)" in proc.stdout
        ppl[n] = [
            json.loads(line)["train_ppl"]
            for line in (tmp_path / str(n) / "metrics.jsonl").read_text().splitlines()
        ]
    np.testing.assert_allclose(ppl[2], ppl[1], rtol=1e-5)
