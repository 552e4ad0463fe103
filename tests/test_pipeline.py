"""The layer pipeline over CPU devices (rnnjax/network/impls/pipeline.py): its plan, exactness
against the plain stack for every cell and depth (10 training steps on fake CPU devices), and the
CLI run with checkpoints interchangeable with the plain stack."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import small_config, tiered

from rnnjax.cells import CELLS
from rnnjax.config import ConfigError, resolve
from rnnjax.network.impls.pipeline import plan
from rnnjax.network.parallel import pipeline_device_count

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_plan_blocks_chunks_and_bubble():
    p = plan(2, 2, 35, 5)
    assert (p.stages, p.layers_per_stage, p.num_chunks) == (2, 1, 5) and p.bubble == pytest.approx(
        1 / 6
    )
    assert (plan(3, 2, 35, 5).stages, plan(3, 2, 35, 5).layers_per_stage) == (2, 2)  # blocks [2, 1]
    assert (plan(4, 2, 35, 5).stages, plan(4, 2, 35, 5).layers_per_stage) == (2, 2)
    assert (plan(5, 4, 35, 5).stages, plan(5, 4, 35, 5).layers_per_stage) == (
        3,
        2,
    )  # [2, 2, 1]: no empty stage
    assert plan(1, 2, 35, 5).stages == 1  # one layer: the plain stack
    assert plan(4, 1, 35, 5).stages == 1  # one device: the plain stack
    assert plan(2, 2, 35, 6).num_chunks == 7  # the nearest divisor of t (ties: the larger)
    assert plan(2, 2, 1, 5).num_chunks == 1
    assert pipeline_device_count(1, 4, cores=2) == 2 and pipeline_device_count(0, 1, cores=2) == 1
    assert pipeline_device_count(3, 2, cores=8) == 2  # never more stages than layers


def test_bad_pipeline_settings_are_one_line_errors():
    with pytest.raises(
        ConfigError,
        match=r"^config.parallel.cpu_pipeline needs rnnjax's stack; use model.impl = 'rnnjax'",
    ):
        resolve(small_config(**{"parallel.cpu_pipeline": True, "model.impl": "flax"}))
    with pytest.raises(ConfigError, match=r"parallel.pipeline_chunks.*an integer >= 1"):
        resolve(small_config(**{"parallel.pipeline_chunks": 0}))


EXACT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    jax.config.update("jax_default_matmul_precision", "highest")
    import jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from rnnjax.network.impls import pipeline
    from rnnjax.network.model import DeepRNN, Placed, Placement
    from rnnjax.training.steps import init_train_state, make_train_step, train_sums

    V, b, t = 11, 4, 12
    rng = np.random.default_rng(0)
    xs, ys = (jnp.asarray(rng.integers(0, V, (10, b, t))) for _ in range(2))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0))

    def train(model):  # 10 steps of the real train step, replicated on the pipeline's devices
        stages = (pipeline.stages_for(model.num_layers, model.placement.pipeline_stages)
                  if isinstance(model, Placed) else 1)
        rep = NamedSharding(Mesh(np.asarray(jax.devices()[:stages]), ("d",)), P())
        state = init_train_state(model, tx, jax.random.PRNGKey(0))
        state, carry, metrics = jax.device_put(
            (state, model.initial_carry(b), train_sums(model, state.params, False)), rep)
        step = make_train_step(model, tx, reset_carry=False)
        for i in range(10):
            state, carry, metrics = step(state, carry, metrics, xs, ys, i, jax.random.PRNGKey(1))
        return jax.tree_util.tree_leaves((state.params, carry)), float(metrics["loss"])

    out = []
    for cell, L, D, dropout in json.loads(sys.argv[1]):
        m = DeepRNN(V, 8, L, cell, ("tanh",), dropout)
        piped = Placed.of(m, Placement(pipeline_stages=D, pipeline_chunks=3))
        (a, la), (p, lp) = train(m), train(piped)
        diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, p))
        out.append({"case": [cell, L, D, dropout], "stages": pipeline.stages_for(L, D),
                    "diff": diff,
                    "loss": [la, lp]})
    print("RESULT " + json.dumps(out))
""")

EVERY_CELL = [[cell, L, 2, 0.0] for cell in CELLS for L in (2, 3, 4)]
EXTRAS = [
    ["lstm", 3, 2, 0.3],
    ["lstm", 3, 4, 0.0],
    ["gru", 4, 3, 0.0],
]  # dropout; 3 stages of 1; 2 stages of 2


@pytest.mark.slow
@pytest.mark.parametrize("first", tiered(["lstm:3", *CELLS, "extras"], lambda c: c == "lstm:3"))
def test_pipeline_trains_like_the_plain_stack_for_every_cell_and_depth(first):
    """Same params and carry after 10 steps (<= 1e-5) for L in 2..4 and every cell, on fake CPU
    devices (L = 1 has one stage: the plain stack itself, see test_plan_blocks_chunks_and_bubble);
    L = 3 on 2 devices runs blocks [2, 1] (an empty slot). One process per cell (and one for the
    extra cases), so that the test workers share them."""
    if first == "lstm:3":  # by default: blocks [2, 1] on 2 devices, an empty slot included
        cases = [["lstm", 3, 2, 0.0]]
    else:
        cases = EXTRAS if first == "extras" else [c for c in EVERY_CELL if c[0] == first]
        assert len(cases) == 3
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-c", EXACT, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=dict(env, JAX_PLATFORMS="cpu"),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(
        [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT ") :]
    )
    assert [r["case"] for r in results] == cases
    for r in results:
        cell, L, D, _ = r["case"]
        assert r["stages"] == {(3, 4): 3, (4, 3): 2}.get((L, D), min(L, 2)), r
        assert r["diff"] <= 1e-5, r
        assert np.isfinite(r["loss"]).all() and abs(r["loss"][0] - r["loss"][1]) <= 1e-5, r


@pytest.mark.exhaustive
@pytest.mark.slow
def test_cli_pipeline_run_matches_and_swaps_checkpoints_with_the_plain_stack(tmp_path):
    """scripts/train.py with --config.parallel.cpu_pipeline=True (relative workdir, 2 CPU devices)
    gives the plain run's metrics; its checkpoint resumes without the pipeline to the plain run's
    params."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"

    def train(workdir, epochs, *flags):
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "train.py"),
                f"--config={ROOT / 'configs' / 'deep_lstm.py'}:smoke",
                f"--workdir={workdir}",
                f"--config.train.num_epochs={epochs}",
                "--config.train.progress=True",
                "--config.model.dropout=0.2",
                *flags,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    out = train("piped", 2, "--config.parallel.cpu_pipeline=True")
    assert "2 cpu device(s) (layer pipeline: 2 stages, 5 time chunks)" in out
    train("plain", 3)
    train(
        "piped", 3
    )  # resumes the pipeline's checkpoint on the plain stack (parallel.* may change on resume)
    records = {
        d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("piped", "plain")
    }
    assert [r["epoch"] for r in records["piped"]] == [1, 2, 3]
    for a, b in zip(records["piped"], records["plain"]):
        assert abs(np.log(a["train_ppl"]) - np.log(b["train_ppl"])) <= 1e-5
        assert abs(np.log(a["val_ppl"]) - np.log(b["val_ppl"])) <= 1e-5
    assert (tmp_path / "piped" / "samples.txt").read_text() == (
        tmp_path / "plain" / "samples.txt"
    ).read_text()
