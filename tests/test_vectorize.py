"""Vectorized trials (one vmapped program) give the numbers and checkpoints of trials run one by
one."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from conftest import param_bytes, small_config, train_cli

from rnnjax.sweeps.sweep import run_sweep


def test_vectorized_trials_equal_one_by_one(tmp_path):
    import jax
    import numpy as np

    import rnnjax

    grid = {"seed": [0, 1], "train.learning_rate": [1.0, 2.0]}
    cfg = small_config(2, progress=True)
    cfg.model.dropout = 0.2  # per-trial dropout keys must follow each trial's seed too
    seq = run_sweep(cfg, grid, tmp_path / "seq")
    vec = run_sweep(cfg, grid, tmp_path / "vec", vectorize=True)
    assert [r["status"] for r in vec] == ["done"] * 4
    for a, b in zip(seq, vec):
        assert a["name"] == b["name"]
        assert b["best_val_ppl"] == pytest.approx(a["best_val_ppl"], rel=1e-5)
        assert b["train_ppl"] == pytest.approx(a["train_ppl"], rel=1e-5)
        pa = rnnjax.load(tmp_path / "seq" / a["name"], step="latest").params
        pb = rnnjax.load(
            tmp_path / "vec" / b["name"], step="latest"
        ).params  # vectorized trials leave loadable checkpoints
        for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
    assert seq[0]["best_val_ppl"] != seq[1]["best_val_ppl"]  # the trials really differ


ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
SWEEP = [
    sys.executable,
    str(ROOT / "scripts" / "sweep.py"),
    f"--config={ROOT / 'configs' / 'sweep_depth_cell.py'}:smoke",
    "--axis=model.cell=lstm",
    "--axis=model.num_layers=1",
    "--vectorize",
]


def _epochs(path: pathlib.Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]


def _wait_for_records(path: pathlib.Path, proc: subprocess.Popen, n: int = 1) -> None:
    deadline = time.time() + 180
    while not (path.exists() and len(path.read_text().splitlines()) >= n):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)


@pytest.mark.exhaustive  # by default: test_workdir.py's lock tests
@pytest.mark.slow
def test_a_vectorized_sweep_leaves_a_running_trainers_trial_alone(tmp_path):
    """Issue 25.1: a trainer runs in a trial directory when a vectorized sweep over it starts."""
    trial = tmp_path / "S" / "cell=lstm,num_layers=1,seed=0"
    trainer = subprocess.Popen(
        train_cli(trial, "--config.model.num_layers=1", "--config.train.num_epochs=200"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        _wait_for_records(trial / "metrics.jsonl", trainer, 2)
        config = (trial / "config.json").read_text()
        p = subprocess.run(
            [
                *SWEEP,
                "--axis=seed=0,1",
                f"--workdir={tmp_path / 'S'}",
                "--config.train.num_epochs=2",
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=300,
        )
        assert trainer.poll() is None  # the trainer still runs, its files untouched
        assert (trial / "config.json").read_text() == config
        assert _epochs(trial / "metrics.jsonl")[:2] == [1, 2]
        assert "Traceback" not in p.stderr
        # the group is skipped as busy (issue 35.12): said on stderr, not recorded as failed
        assert (
            "is in use by another trainer" in p.stderr and "skipped here, not recorded" in p.stderr
        )
        assert not (trial / "result.json").exists()
        assert not (tmp_path / "S" / "cell=lstm,num_layers=1,seed=1" / "metrics.jsonl").exists()
    finally:
        trainer.send_signal(signal.SIGTERM)
        out, err = trainer.communicate(timeout=120)
    assert trainer.returncode == 128 + signal.SIGTERM, err[-3000:]
    epochs = _epochs(trial / "metrics.jsonl")
    assert epochs == list(range(1, len(epochs) + 1))  # every record kept, each once, in order


@pytest.mark.exhaustive  # by default: test_a_vectorized_group_refuses_history_as_a_single_run_does
@pytest.mark.slow
def test_the_same_vectorized_sweep_twice_at_once_loses_no_record(tmp_path):
    """Issue 25.1: the second of two identical vectorized sweeps is refused; the first's records
    stay."""
    cmd = [
        *SWEEP,
        "--axis=seed=0,1",
        f"--workdir={tmp_path / 'S'}",
        "--config.train.num_epochs=1000",
    ]
    first = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    records = [
        tmp_path / "S" / f"cell=lstm,num_layers=1,seed={seed}" / "metrics.jsonl" for seed in (0, 1)
    ]
    try:
        _wait_for_records(records[1], first, 1)
        second = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
        assert "is in use by another trainer" in second.stderr and "Traceback" not in second.stderr
        assert "busy=2" in second.stderr + second.stdout  # skipped, not failed (issue 35.12)
        seen = len(_epochs(records[0]))
        _wait_for_records(records[0], first, seen + 1)  # the first goes on writing
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    for path in records:
        epochs = _epochs(path)
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= seen


def test_a_vectorized_group_refuses_history_as_a_single_run_does(tmp_path):
    """A trial directory holding records of no known run is refused as a single run refuses it; the
    sweep's rerun of the failed trial restarts it, its records kept in discarded/, never deleted."""
    grid = {"seed": [0, 1]}
    trial = tmp_path / "s" / "seed=0"
    trial.mkdir(parents=True)
    (trial / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_ppl": 9.0}) + "\n")
    rows = run_sweep(small_config(2), grid, tmp_path / "s", vectorize=True)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "holds 1 epoch record(s) in metrics.jsonl but no checkpoint" in rows[0]["error"]
    assert _epochs(trial / "metrics.jsonl") == [1]
    rows = run_sweep(small_config(2), grid, tmp_path / "s", vectorize=True)
    assert [r["status"] for r in rows] == ["done", "done"]
    assert _epochs(trial / "metrics.jsonl") == [1, 2]
    assert [_epochs(p) for p in (trial / "discarded").glob("*/metrics.jsonl")] == [[1]]


@pytest.mark.exhaustive  # by default: test_vectorized_trials_equal_one_by_one
@pytest.mark.slow
def test_an_interrupted_vectorized_group_resumes_with_every_record_once(tmp_path):
    """Issue 24.3: SIGTERM mid-epoch, then SIGKILL between checkpoints; the same command resumes
    each time, and the trials end as an uninterrupted group: every epoch's record once, bitwise
    equal."""
    import rnnjax

    def cmd(root):
        return [
            *SWEEP,
            "--axis=seed=0,1",
            f"--workdir={root}",
            "--config.train.num_epochs=6",
            "--config.checkpoint.every_epochs=2",
        ]

    names = [f"cell=lstm,num_layers=1,seed={seed}" for seed in (0, 1)]
    root = tmp_path / "S"
    proc = subprocess.Popen(
        cmd(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    _wait_for_records(root / names[1] / "metrics.jsonl", proc, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM and "rerun the same command" in err, err[-3000:]
    proc = subprocess.Popen(
        cmd(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    _wait_for_records(root / names[1] / "metrics.jsonl", proc, 5)
    proc.kill()  # after epoch 5's record, past the checkpoint of epoch 4
    proc.communicate(timeout=60)
    p = subprocess.run(cmd(root), capture_output=True, text=True, env=ENV, timeout=600)
    assert p.returncode == 0 and p.stdout.count("| done |") == 2, p.stderr[-3000:]
    ref = subprocess.run(
        cmd(tmp_path / "ref"), capture_output=True, text=True, env=ENV, timeout=600
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    for name in names:
        got = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines()]
        want = [
            json.loads(x)
            for x in (tmp_path / "ref" / name / "metrics.jsonl").read_text().splitlines()
        ]
        assert [r["epoch"] for r in got] == list(range(1, 7))
        assert [(r["train_ppl"], r["val_ppl"]) for r in got] == [
            (r["train_ppl"], r["val_ppl"]) for r in want
        ]
        a, b = (rnnjax.load(d / name, step="latest").params for d in (root, tmp_path / "ref"))
        assert param_bytes(a) == param_bytes(b)
