"""The sweep runner's faults: bad grids and paths, relative directories, and signals."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import small_config

from rnnjax.config import ConfigError
from rnnjax.sweeps.grid import SweepError
from rnnjax.sweeps.sweep import SweepInterrupted, run_sweep
from rnnjax.sweeps.sweep_summary import summarize

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "scripts" / "sweep.py")
CONFIG = f"--config={ROOT / 'configs' / 'sweep_depth_cell.py'}:smoke"
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))

GRID_CONFIG = """
from rnnjax.config import default_config, smoke


def get_config(arg=None):
    return smoke(default_config())


def get_sweep(arg=None):
    return {
        "empty": {},
        "no_values": {"seed": []},
        "not_a_list": {"model.cell": "gru"},
        "none": None,
    }[arg]
"""


@pytest.mark.parametrize(
    "grid, match",
    [
        ({}, "the sweep grid is empty"),
        ({"seed": []}, "sweep axis seed has no values"),
        ({"model.cell": "gru"}, r"sweep axis model.cell: give a list of values, e.g. \['gru'\]"),
        (
            {"model.num_layers": ["a", "b"]},
            "sweep axis model.num_layers: 'a' is not allowed: .* type int",
        ),
        ({"model.bogus": [1, 2]}, "sweep axis model.bogus: config has no field 'bogus'"),
        (
            {"model.num_layers": [1, 0]},
            r"config.model.num_layers = 0 is not allowed",
        ),  # the second trial is checked too
    ],
)
def test_bad_grids_are_refused_before_anything_is_created(tmp_path, grid, match):
    with pytest.raises((SweepError, ConfigError), match=match):
        run_sweep(small_config(2, progress=True), grid, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_a_data_mistake_is_refused_before_any_trial_directory(tmp_path):
    """A missing data file (or a vocabulary mistake) is one line before the sweep makes anything."""
    cfg = small_config(2, progress=True, **{"data.paths": [str(tmp_path / "nonexist.txt")]})
    with pytest.raises(ConfigError, match=r"config.data.paths: cannot read .*nonexist.txt"):
        run_sweep(cfg, {"model.cell": ["gru", "lstm"]}, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_a_training_runs_workdir_is_refused_as_a_sweeps_and_left_alone(tmp_path, smoke_run):
    """A sweep pointed at a training run's folder would put trial folders inside it: one line,
    and the run's files are untouched."""
    from conftest import copy_run, snapshot

    from rnnjax.rundir.workdir import WorkdirError

    run = copy_run(smoke_run[0], tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(WorkdirError, match="holds a training run .*; give the sweep a --workdir"):
        run_sweep(small_config(1), {"seed": [0, 1]}, run)
    assert snapshot(run) == before


def test_summarize_refuses_what_is_not_a_sweep_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for name, match in [
        ("missing", "does not exist"),
        ("file", "is a file"),
        ("empty", "holds no trial results"),
    ]:
        with pytest.raises(SweepError, match=match):
            summarize(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file"] and not list(
        (tmp_path / "empty").iterdir()
    )


def test_relative_and_home_sweep_directories(tmp_path, monkeypatch):
    trial = tmp_path / "runs" / "s" / "cell=gru"
    trial.mkdir(parents=True)
    (trial / "result.json").write_text(
        json.dumps(
            {
                "name": "cell=gru",
                "cell": "gru",
                "num_layers": 1,
                "best_val_ppl": 9.0,
                "status": "done",
                "error": "",
            }
        )
    )
    (trial / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_ppl": 9.0}) + "\n")
    monkeypatch.chdir(tmp_path / "runs")
    assert [r["status"] for r in summarize("s")] == ["done"]
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir("/")
    assert [r["status"] for r in summarize("~/runs/s")] == ["done"]
    assert sorted(p.name for p in (tmp_path / "runs" / "s").iterdir()) == [
        "cell=gru",
        "results.csv",
        "results.md",
        "sweep.png",
    ]


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=120,
    )


@pytest.mark.exhaustive
@pytest.mark.slow
def test_cli_errors_are_one_line_and_create_nothing(tmp_path):
    (tmp_path / "grids.py").write_text(GRID_CONFIG)
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = [
        (
            ["--summarize=missing"],
            "sweep directory .*missing does not exist; give the directory a sweep wrote",
        ),
        (["--summarize=file"], "file is a file, not a sweep directory"),
        (["--summarize=empty"], "empty holds no trial results"),
        (["--config=grids.py:empty", "--workdir=s"], "the sweep grid is empty"),
        (["--config=grids.py:no_values", "--workdir=s"], "sweep axis seed has no values"),
        (
            ["--config=grids.py:not_a_list", "--workdir=s"],
            "sweep axis model.cell: give a list of values",
        ),
        (["--config=grids.py:none", "--workdir=s"], r"get_sweep\(\) returned NoneType"),
        ([CONFIG, "--workdir=s", "--axis=seed="], "--axis='seed=': give FIELD=v1,v2,..."),
        (
            [CONFIG, "--workdir=s", "--axis=model.num_layers=a,b"],
            "sweep axis model.num_layers: 'a' is not allowed",
        ),
        (
            [CONFIG, "--workdir=s", "--axis=model.bogus=1,2"],
            "sweep axis model.bogus: config has no field 'bogus'",
        ),
        (
            [CONFIG, "--workdir=s", "--axis=model.cell=gru,gru"],
            "would both write the directory 'cell=gru,num_layers=1'",
        ),
    ]
    import re

    for args, match in cases:
        p = _cli(*args, cwd=tmp_path)
        assert p.returncode != 0, args
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(match, lines[0]), (
            args,
            p.stderr[-2000:],
        )
        assert sorted(x.name for x in tmp_path.iterdir()) == ["empty", "file", "grids.py"], (
            args
        )  # nothing created
        assert not list((tmp_path / "empty").iterdir())


def _summary():
    return {
        "num_params": 10,
        "train_ppl": 5.0,
        "best_val_ppl": 6.0,
        "metrics": [{"tokens_per_sec": 1.0, "wall_time": 2.0}],
    }


def _statuses(root):
    return {p.parent.name: json.loads(p.read_text())["status"] for p in root.glob("*/result.json")}


def test_preempted_trial_stops_the_sweep_and_resumes(tmp_path, monkeypatch):
    import signal

    from rnnjax.training.console import Preempted

    calls = []

    def fake_train(cfg, workdir, resume="auto"):
        calls.append(workdir.name)
        workdir.mkdir(exist_ok=True)
        if workdir.name == "cell=lstm" and calls.count("cell=lstm") == 1:
            raise Preempted(
                signal.SIGINT, 7
            )  # what train_and_evaluate raises after saving a checkpoint
        return _summary()

    monkeypatch.setattr("rnnjax.sweeps.sweep.train_and_evaluate", fake_train)
    grid = {"model.cell": ["gru", "lstm", "rnn"]}
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(
        SweepInterrupted,
        match=r"stopped by SIGINT with 1 of 3 trials done, cell=lstm interrupted; rerun",
    ):
        run_sweep(small_config(2, progress=True), grid, tmp_path)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    assert calls == ["cell=gru", "cell=lstm"]  # the sweep stopped: cell=rnn never started
    assert _statuses(tmp_path) == {"cell=gru": "done", "cell=lstm": "interrupted"}
    assert not (tmp_path / "cell=lstm" / "error.txt").exists()
    summarize(tmp_path)
    assert (
        "- cell=lstm interrupted: stopped by SIGINT; rerun the sweep"
        in (tmp_path / "results.md").read_text()
    )
    # the rerun resumes the interrupted trial and finishes the rest
    rows = run_sweep(small_config(2, progress=True), grid, tmp_path)
    assert calls == ["cell=gru", "cell=lstm", "cell=lstm", "cell=rnn"]
    assert [r["status"] for r in rows] == ["done"] * 3


def test_signal_taken_by_the_trainer_without_raising_still_stops_the_sweep(tmp_path, monkeypatch):
    import signal

    calls = []

    # as train_and_evaluate when SIGTERM comes after its last check: flagged, not raised
    def fake_train(cfg, workdir, resume="auto"):
        calls.append(workdir.name)
        workdir.mkdir(exist_ok=True)
        old = signal.signal(signal.SIGTERM, lambda signum, frame: None)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            signal.signal(signal.SIGTERM, old)
        return _summary()

    monkeypatch.setattr("rnnjax.sweeps.sweep.train_and_evaluate", fake_train)
    with pytest.raises(
        SweepInterrupted, match="stopped by SIGTERM with 1 of 2 trials done; rerun"
    ) as info:
        run_sweep(small_config(2, progress=True), {"model.cell": ["gru", "lstm"]}, tmp_path)
    assert info.value.signum == signal.SIGTERM and calls == ["cell=gru"]
    assert _statuses(tmp_path) == {"cell=gru": "done"}
    assert signal.set_wakeup_fd(-1) == -1  # the sweep put the wakeup fd back


def test_signal_during_a_vectorized_group_stops_the_sweep(tmp_path, monkeypatch):
    import signal
    import time

    groups, finished = [], []

    def fake_vectorized(cfgs, dirs, resume=None):
        groups.append([d.name for d in dirs])
        assert signal.getsignal(signal.SIGTERM) not in (
            signal.SIG_DFL,
            None,
        )  # else the signal would kill pytest
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        finished.append(True)

    monkeypatch.setattr("rnnjax.training.vectorize.train_vectorized", fake_vectorized)
    grid = {"model.cell": ["gru", "lstm"], "seed": [0, 1]}
    with pytest.raises(SweepInterrupted) as info:
        run_sweep(small_config(2, progress=True), grid, tmp_path, vectorize=True)
    assert info.value.signum == signal.SIGTERM and not finished
    assert groups == [["cell=gru,seed=0", "cell=gru,seed=1"]]  # the lstm group never started
    assert _statuses(tmp_path) == {
        "cell=gru,seed=0": "interrupted",
        "cell=gru,seed=1": "interrupted",
    }


# The exhaustive tier: the default run keeps the CLI's SIGTERM-then-rerun of a sweep in
# test_vectorize (test_an_interrupted_vectorized_group_resumes_with_every_record_once) and the
# sweep's signal handling in-process (the three tests above).
@pytest.mark.exhaustive
@pytest.mark.slow
def test_sigterm_stops_the_cli_sweep_and_a_rerun_finishes_it(tmp_path):
    import signal
    import time

    cmd = [
        sys.executable,
        SCRIPT,
        CONFIG,
        "--workdir=runs/s",
        "--config.train.num_epochs=2",
        "--axis=model.num_layers=1",
    ]
    root = tmp_path / "runs" / "s"
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path
    )
    deadline = time.time() + 120
    while (
        not list(root.glob("*/metrics.jsonl")) + list(root.glob("*/checkpoints"))
        and time.time() < deadline
    ):
        time.sleep(0.05)  # signal once the first trial has started
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert (
        "rerun the same command to resume" in err.strip().splitlines()[-1]
        and "Traceback" not in err
    )
    statuses = _statuses(root)
    assert "failed" not in statuses.values() and "interrupted" in statuses.values()
    assert (
        list(statuses.values()).count("done") < 2 and "| interrupted |" in out
    )  # the summary of what finished
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert list(_statuses(root).values()) == ["done"] * 2 and p.stdout.count("| done |") == 2
    for m in root.glob("*/metrics.jsonl"):
        assert [json.loads(x)["epoch"] for x in m.read_text().splitlines()] == [1, 2]
    p = subprocess.run(
        [sys.executable, SCRIPT, "--summarize=~/runs/s"],
        capture_output=True,
        text=True,
        env=dict(ENV, HOME=str(tmp_path)),
        cwd="/",
        timeout=120,
    )
    assert p.returncode == 0 and p.stdout.count("| done |") == 2, p.stderr[-2000:]


def test_a_trial_that_cannot_be_recorded_does_not_stop_the_sweep(tmp_path, monkeypatch, caplog):
    import errno

    from rnnjax.sweeps import sweep

    calls = []

    def fake_train(cfg, workdir, resume="auto"):
        calls.append(workdir.name)
        workdir.mkdir(exist_ok=True)
        return _summary()

    real_write = sweep.write_atomic

    def read_only_gru(path, data):
        if path.parent.name == "cell=gru" and len(calls) < 4:
            raise OSError(errno.EROFS, "Read-only file system")
        real_write(path, data)

    monkeypatch.setattr("rnnjax.sweeps.sweep.train_and_evaluate", fake_train)
    monkeypatch.setattr(sweep, "write_atomic", read_only_gru)
    grid = {"model.cell": ["gru", "lstm", "rnn"]}
    run_sweep(small_config(2), grid, tmp_path)
    assert calls == ["cell=gru", "cell=lstm", "cell=rnn"]  # the sweep went on
    assert _statuses(tmp_path) == {"cell=lstm": "done", "cell=rnn": "done"}
    assert "cannot record trial cell=gru" in caplog.text and "Read-only file system" in caplog.text
    run_sweep(small_config(2), grid, tmp_path)  # the rerun runs the unrecorded trial only
    assert calls == ["cell=gru", "cell=lstm", "cell=rnn", "cell=gru"]
    assert set(_statuses(tmp_path).values()) == {"done"}


def test_a_trial_another_sweep_is_running_is_skipped_not_failed(tmp_path, monkeypatch):
    from rnnjax.rundir.lock import WorkdirLock

    def fake_train(cfg, workdir, resume="auto"):
        workdir.mkdir(exist_ok=True)
        lock = WorkdirLock(workdir)
        lock.acquire()  # as the trainer does: refused while another process holds it
        lock.release()
        return _summary()

    monkeypatch.setattr("rnnjax.sweeps.sweep.train_and_evaluate", fake_train)
    (tmp_path / "cell=lstm").mkdir(parents=True)
    other = WorkdirLock(tmp_path / "cell=lstm")  # a second sweep on the same folder runs it
    other.acquire()
    try:
        rows = run_sweep(small_config(2), {"model.cell": ["gru", "lstm", "rnn"]}, tmp_path)
    finally:
        other.release()
    assert [r["status"] for r in rows] == ["done", "busy", "done"]
    assert _statuses(tmp_path) == {"cell=gru": "done", "cell=rnn": "done"}
    assert not (tmp_path / "cell=lstm" / "error.txt").exists()


def test_a_trial_done_on_a_rerun_leaves_no_stale_error_txt(tmp_path, monkeypatch):
    attempts = []

    def fake_train(cfg, workdir, resume="auto"):
        attempts.append(workdir.name)
        workdir.mkdir(exist_ok=True)
        if len(attempts) == 1:
            raise RuntimeError("out of luck")
        return _summary()

    monkeypatch.setattr("rnnjax.sweeps.sweep.train_and_evaluate", fake_train)
    run_sweep(small_config(2), {"seed": [0]}, tmp_path)
    assert "out of luck" in (tmp_path / "seed=0" / "error.txt").read_text()
    run_sweep(small_config(2), {"seed": [0]}, tmp_path)
    assert _statuses(tmp_path) == {"seed=0": "done"}
    assert not (tmp_path / "seed=0" / "error.txt").exists()


def test_a_summary_that_cannot_be_written_is_one_line(tmp_path):
    from test_sweep_summary import fake_trial

    fake_trial(tmp_path, {"seed": 0}, best=10.0)
    (tmp_path / "results.csv").mkdir()
    with pytest.raises(SweepError, match="cannot write the summary in .*results.csv is a dir") as e:
        summarize(tmp_path)
    assert "\n" not in str(e.value) and (tmp_path / "results.csv").is_dir()


def test_a_sweeps_folder_is_refused_as_a_training_runs(tmp_path):
    from test_sweep_summary import fake_trial

    from rnnjax.rundir.workdir import WorkdirError
    from rnnjax.training.train import train_and_evaluate

    fake_trial(tmp_path, {"seed": 0}, best=10.0)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(WorkdirError, match="holds a sweep .*; give the run a --workdir of its own"):
        train_and_evaluate(small_config(1), tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_nan_metric_is_null_in_result_json(tmp_path, monkeypatch):
    def fake_train(cfg, workdir, resume="auto"):
        workdir.mkdir(exist_ok=True)
        return {**_summary(), "train_ppl": float("nan")}

    monkeypatch.setattr("rnnjax.sweeps.sweep.train_and_evaluate", fake_train)
    run_sweep(small_config(2), {"seed": [0]}, tmp_path)
    text = (tmp_path / "seed=0" / "result.json").read_text()
    assert "NaN" not in text and json.loads(text)["train_ppl"] is None
