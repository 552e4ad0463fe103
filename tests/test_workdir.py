"""The workdir: one trainer at a time (the lock), and a run is resumed only by the config that made
it (another architecture or optimizer is refused, naming the field)."""

import os
import pathlib
import subprocess
import sys

import pytest
from conftest import copy_run, small_config, snapshot, train_cli

from rnnjax.rundir.checkpoint import CheckpointError
from rnnjax.training.train import train_and_evaluate

ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


@pytest.mark.parametrize(
    "field,value,name",
    [
        ("num_layers", 3, "model.num_layers"),
        ("hidden_size", 16, "model.hidden_size"),
        ("cell", "gru", "model.cell"),
    ],
)
def test_other_architecture_is_refused_naming_the_field(tmp_path, field, value, name, smoke_run):
    run = copy_run(smoke_run[0], tmp_path / "run")  # a finished run of small_config()
    before = snapshot(run)
    with pytest.raises(
        CheckpointError,
        match=f"different config.{name} \\(.* there, {value!r} here\\); use another",
    ):
        train_and_evaluate(small_config(**{f"model.{field}": value}), run)
    cfg = small_config()
    cfg.train.optimizer = "adam"
    with pytest.raises(CheckpointError, match="different config.train.optimizer"):
        train_and_evaluate(cfg, run)
    assert snapshot(run) == before


def test_second_trainer_on_a_workdir_exits_at_once(tmp_path, smoke_run):
    run = copy_run(smoke_run[0], tmp_path / "run")  # a finished run of small_config()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
                "fcntl.flock(fd, fcntl.LOCK_EX); "
                "print('locked', flush=True); time.sleep(60)"
            ),
            str(run / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        proc = subprocess.run(
            train_cli(run, "--config.train.num_epochs=5"),
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
        assert proc.returncode != 0
        assert "is in use by another trainer" in proc.stderr.strip().splitlines()[-1]
        assert snapshot(run) == before
    finally:
        holder.kill()


@pytest.mark.slow
def test_deleting_the_lock_file_does_not_let_a_second_trainer_in(tmp_path):
    """The lock is held on the workdir directory itself: ``rm WORKDIR/.lock`` while a trainer runs
    changes nothing; a second trainer is refused in one line and the first keeps every record."""
    import signal
    import time

    from rnnjax.rundir.workdir import read_metrics

    run = tmp_path / "run"
    first = subprocess.Popen(
        train_cli(run, "--config.train.num_epochs=500"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 240
        while not ((run / "metrics.jsonl").exists() and read_metrics(run / "metrics.jsonl")):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.2)
        (run / ".lock").unlink()
        second = subprocess.run(
            train_cli(run, "--config.train.num_epochs=500"),
            capture_output=True,
            text=True,
            env=ENV,
            timeout=240,
        )
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"error: {run} is in use by another trainer (it holds the workdir's lock); "
            "wait for it or use another "
            "--workdir"
        ], second.stderr[-2000:]
        assert first.poll() is None  # the first trainer is untouched by the attempt
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    epochs = [r["epoch"] for r in read_metrics(run / "metrics.jsonl")]
    assert epochs == list(range(1, len(epochs) + 1))
    assert not (run / "checkpoints").exists() or not [
        p for p in (run / "checkpoints").iterdir() if "tmp" in p.name
    ]


def test_a_symlink_loop_is_one_line_for_text_workdir_and_load(tmp_path):
    import pathlib

    import rnnjax
    from rnnjax.rundir.workdir import WorkdirError, resolve_path

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    loop = str(tmp_path / "a")
    with pytest.raises(WorkdirError, match=r"/a is a loop of symbolic links \(.*\); give a path"):
        resolve_path(loop)
    with pytest.raises(WorkdirError, match="is a loop of symbolic links"):
        rnnjax.load(loop)
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "scripts" / "evaluate.py"),
            f"--workdir={tmp_path}",
            f"--text={loop}",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: --text={loop} is a loop of symbolic links ("), (
        proc.stderr
    )


def test_resume_restart_sets_aside_a_run_of_another_config(tmp_path):
    """--resume=restart moves the old run to discarded/ whole: another config is not a reason to
    refuse (it is what a restart is for)."""
    train_and_evaluate(small_config(1), tmp_path)
    other = small_config(1, **{"model.hidden_size": 16})
    out = train_and_evaluate(other, tmp_path, resume="restart")
    assert [r["epoch"] for r in out["metrics"]] == [1]
    (kept,) = (tmp_path / "discarded").iterdir()
    assert '"hidden_size": 32' in (kept / "config.json").read_text()
    assert '"hidden_size": 16' in (tmp_path / "config.json").read_text()


def test_every_record_key_is_written_once():
    """The keys code reads from a run's records are the constants of ``workdir.Key``: no module of
    rnnjax spells one as a literal where it indexes, looks up, builds or compares a record (the
    checkpoint tree's own "step", rnnjax/training/layout.py, is another name)."""
    import ast

    from rnnjax.rundir.workdir import Key

    keys = {v for k, v in vars(Key).items() if k.isupper()}
    root = pathlib.Path(__file__).resolve().parents[1] / "rnnjax"
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == "Key":
                continue
            literals = []
            if isinstance(node, ast.Subscript):
                literals = [node.slice]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                literals = node.args[:1] if node.func.attr in ("get", "pop", "setdefault") else []
            elif isinstance(node, ast.Dict):
                literals = [k for k in node.keys if k is not None]
            elif isinstance(node, (ast.Tuple, ast.Compare)):
                literals = node.elts if isinstance(node, ast.Tuple) else node.comparators
            for lit in literals:
                if isinstance(lit, ast.Constant) and lit.value in keys:
                    where = f"{path.relative_to(root.parent)}:{lit.lineno}"
                    if not (path.name == "layout.py" and lit.value == Key.STEP):
                        found.append(f"{where} {lit.value!r}")
    assert not found, "record keys spelled out instead of workdir.Key:\n" + "\n".join(found)
