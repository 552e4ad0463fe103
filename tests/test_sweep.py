"""The sweep runner: names, resumability, failures, shards and the summary files."""

import contextlib
import csv
import io
import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import small_config

import rnnjax
from rnnjax.config import ConfigError
from rnnjax.sweeps.grid import (
    SweepError,
    apply_overrides,
    parse_shard,
    trial_dir,
    trial_name,
    trials,
)
from rnnjax.sweeps.sweep import run_sweep
from rnnjax.sweeps.sweep_summary import summarize

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_grid_names_and_overrides():
    grid = {"model.cell": ["gru", "lstm"], "model.num_layers": [1, 3]}
    ts = trials(grid)
    assert len(ts) == 4 and ts[1] == {"model.cell": "gru", "model.num_layers": 3}
    assert trial_name(ts[1]) == "cell=gru,num_layers=3"
    assert apply_overrides(small_config(2, progress=True), ts[1]).model.num_layers == 3
    assert (
        trial_name({"data.paths": ["../../etc/passwd"]}) == "paths=__.._.._etc_passwd__-6eefe4"
    )  # no "/": stays inside DIR
    assert trial_dir(pathlib.Path("/tmp/s"), {"x": ".."}).parent == pathlib.Path("/tmp/s").resolve()
    with pytest.raises(ConfigError, match="no field 'depth'"):
        apply_overrides(small_config(2, progress=True), {"model.depth": 2})
    assert parse_shard("1/3") == (1, 3)
    with pytest.raises(ValueError, match="give i/n"):
        parse_shard("3/3")


def test_trial_names_stay_unique_after_sanitising(tmp_path, monkeypatch):
    assert (
        trial_name({"model.cell": "gru", "model.num_layers": 3}) == "cell=gru,num_layers=3"
    )  # old sweeps still resume
    assert trial_name({"seed": 0, "train.learning_rate": 1e38}) == "seed=0,learning_rate=1e+38"
    a, b = trial_name({"data.paths": ["a/b.txt"]}), trial_name({"data.paths": ["a_b.txt"]})
    assert (a, b) == (
        "paths=__a_b.txt__-e0305f",
        "paths=__a_b.txt__-b8ed9e",
    )  # a stable hash of the overrides
    prefixes = [
        trial_name({"generate.prefixes": [p]})
        for p in ("time traveller", "time/traveller", "time_traveller")
    ]
    assert len(set(prefixes)) == 3
    long = trial_name({"generate.prefixes": ["x" * 300]})
    assert len(long) <= 210 and long != trial_name({"generate.prefixes": ["x" * 301]})

    # Both trials run, each with its own result.json: none overwrites the other.
    from rnnjax.dataset.data import bundled_path

    text = pathlib.Path(bundled_path()).read_text()[:30_000]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.txt").write_text(text)
    (tmp_path / "a_b.txt").write_text(text)
    monkeypatch.chdir(tmp_path)  # the paths are relative, as a user gives them
    rows = run_sweep(
        small_config(1, progress=True), {"data.paths": [["a/b.txt"], ["a_b.txt"]]}, tmp_path / "s"
    )
    assert [r["name"] for r in rows] == [a, b] and [r["status"] for r in rows] == ["done", "done"]
    assert json.loads((tmp_path / "s" / a / "result.json").read_text())["paths"] == ["a/b.txt"]
    assert json.loads((tmp_path / "s" / b / "result.json").read_text())["paths"] == ["a_b.txt"]


def test_grid_with_colliding_trial_names_is_refused(tmp_path):
    for grid in ({"model.cell": ["gru", "gru"]}, {"generate.num_chars": [5, "5"]}):
        with pytest.raises(
            SweepError, match=r"would both write the directory '(cell=gru|num_chars=5)'.*duplicate"
        ):
            run_sweep(small_config(2, progress=True), grid, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_sweep_runs_records_failures_and_resumes(tmp_path):
    grid = {"model.cell": ["gru", "lstm"], "train.learning_rate": [1.0, 1e38]}
    cfg = small_config(2, progress=True)
    cfg.train.grad_clip, cfg.train.max_nonfinite = 0.0, 2  # lr 1e38 diverges: those trials fail
    rows = run_sweep(cfg, grid, tmp_path)
    status = {r["name"]: r["status"] for r in rows}
    assert status == {
        "cell=gru,learning_rate=1.0": "done",
        "cell=gru,learning_rate=1e+38": "failed",
        "cell=lstm,learning_rate=1.0": "done",
        "cell=lstm,learning_rate=1e+38": "failed",
    }
    failed = json.loads((tmp_path / "cell=gru,learning_rate=1e+38" / "result.json").read_text())
    assert failed["error"].startswith("FloatingPointError: aborting")
    before = (tmp_path / "cell=gru,learning_rate=1.0" / "metrics.jsonl").read_bytes()
    again = run_sweep(cfg, grid, tmp_path)  # finished trials are skipped, not rerun
    assert (tmp_path / "cell=gru,learning_rate=1.0" / "metrics.jsonl").read_bytes() == before
    assert [r["status"] for r in again] == [r["status"] for r in rows]
    summary = summarize(tmp_path)
    assert len(summary) == 4
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert {r["cell"] for r in table if r["status"] == "done"} == {"gru", "lstm"}
    # the implementation each trial ran, as its records say (native where built, else rnnjax)
    ran = json.loads(
        (tmp_path / "cell=gru,learning_rate=1.0" / "metrics.jsonl").read_text().splitlines()[0]
    )["impl"]
    assert ran.split()[0] in ("native", "rnnjax")
    assert {r["impl"] for r in table if r["status"] == "done" and r["cell"] == "gru"} == {ran}
    assert float(table[0]["best_val_ppl"]) > 1.0 and int(table[0]["num_params"]) > 0
    assert [(r["cell"], r["learning_rate"], r["status"]) for r in table] == [
        ("gru", "1.0", "done"),
        ("gru", "1e+38", "failed"),
        ("lstm", "1.0", "done"),
        ("lstm", "1e+38", "failed"),
    ]
    assert failed["overrides"] == {"model.cell": "gru", "train.learning_rate": 1e38}
    assert "failed: FloatingPointError" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # rnnjax.sweep_results: the same rows, read back without writing; docs/sweeps.md's block runs
    listing = sorted(p.name for p in tmp_path.rglob("*"))
    read = rnnjax.sweep_results(tmp_path)
    assert read == summary and sorted(p.name for p in tmp_path.rglob("*")) == listing
    assert [r["name"] for r in read] == sorted(r["name"] for r in read)
    assert read[0]["learning_rate"] == 1.0 and read[0]["status"] == "done"
    assert read[0]["metrics"]["val_ppl"] == read[0]["best_val_ppl"]  # the best epoch's record
    text = (ROOT / "docs" / "sweeps.md").read_text()
    block = text.split('rnnjax.sweep_results("DIR")', 1)[1].split("```python\n", 1)[1]
    block = block.split("```", 1)[0].replace("runs/sweep_smoke", str(tmp_path))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "docs/sweeps.md", "exec"), {})
    best = min((r for r in rows if r["status"] == "done"), key=lambda r: r["best_val_ppl"])
    assert out.getvalue() == f"{best['name']} {best['best_val_ppl']}\n"


def test_interrupted_trial_resumes_from_its_checkpoint(tmp_path):
    grid = {"model.cell": ["gru"]}
    cfg = small_config(2, progress=True)
    cfg.train.num_epochs = 1
    run_sweep(cfg, grid, tmp_path)
    (tmp_path / "cell=gru" / "result.json").unlink()  # as if killed after its checkpoint
    cfg.train.num_epochs = 2
    (row,) = run_sweep(cfg, grid, tmp_path)
    lines = (tmp_path / "cell=gru" / "metrics.jsonl").read_text().splitlines()
    assert row["status"] == "done" and [json.loads(x)["epoch"] for x in lines] == [1, 2]


@pytest.mark.exhaustive  # by default: test_sweep_runs_records_failures_and_resumes
@pytest.mark.slow
def test_sweep_cli_with_shards_and_summarize(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "sweep.py"),
        f"--config={ROOT / 'configs' / 'sweep_depth_cell.py'}:smoke",
        f"--workdir={tmp_path}",
        "--config.train.num_epochs=1",
    ]
    for shard in ("0/2", "1/2"):
        p = subprocess.run(
            cmd + [f"--shard={shard}"], capture_output=True, text=True, env=env, timeout=300
        )
        assert p.returncode == 0, p.stderr[-2000:]
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sweep.py"), f"--summarize={tmp_path}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0 and p.stdout.count("| done |") == 4


@pytest.mark.exhaustive
@pytest.mark.slow
def test_sweep_survives_sigkill_and_rerun(tmp_path):
    import signal
    import time

    # without the session's compilation cache: JAX writes its entries in place, and a kill mid-write
    # would leave one that later tests' processes warn about
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"} | {
        "JAX_PLATFORMS": "cpu"
    }
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "sweep.py"),
        f"--config={ROOT / 'configs' / 'sweep_depth_cell.py'}:smoke",
        f"--workdir={tmp_path}",
        "--config.train.num_epochs=3",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while (
        not list(tmp_path.glob("*/result.json")) and time.time() < deadline
    ):  # kill once a trial finished
        time.sleep(0.1)
    time.sleep(2.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name for p in tmp_path.glob("*/result.json")}
    assert 1 <= len(finished) < 4
    before = {name: (tmp_path / name / "metrics.jsonl").read_bytes() for name in finished}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("| done |") == 4
    for name, data in before.items():  # finished trials were skipped, not rerun
        assert (tmp_path / name / "metrics.jsonl").read_bytes() == data
