"""The sweep runner: names, resumability, failures, shards and the summary files."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest

from rnnjax.config import ConfigError, default_config, smoke
from rnnjax.sweep import SweepError, apply_overrides, parse_shard, run_sweep, trial_dir, trial_name, trials
from rnnjax.sweep_summary import aggregate_depth, plot_sweep, summarize

ROOT = pathlib.Path(__file__).resolve().parents[1]


def fake_trial(root, overrides, best, status="done", cell="gru", num_layers=1, epochs=3):
    """A trial directory as run_sweep leaves it (result.json with the overrides, metrics.jsonl), no training."""
    d = root / trial_name(overrides)
    d.mkdir(parents=True)
    o = {"model.cell": cell, "model.num_layers": num_layers, **overrides}
    row = {"name": d.name, **{k.split(".")[-1]: v for k, v in overrides.items()}, "overrides": overrides,
           "cell": o["model.cell"], "num_layers": o["model.num_layers"], "hidden_size": 32, "num_params": 1000,
           "train_ppl": best + 1, "best_val_ppl": best, "tokens_per_sec": 1e4, "wall_time": 1.0, "status": status, "error": ""}
    (d / "result.json").write_text(json.dumps(row))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val_ppl": best + epochs - e}) + "\n"
                                            for e in range(1, epochs + 1)))
    return d


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def base():
    cfg = smoke(default_config())
    cfg.train.num_epochs = 2
    return cfg


def test_grid_names_and_overrides():
    grid = {"model.cell": ["gru", "lstm"], "model.num_layers": [1, 3]}
    ts = trials(grid)
    assert len(ts) == 4 and ts[1] == {"model.cell": "gru", "model.num_layers": 3}
    assert trial_name(ts[1]) == "cell=gru,num_layers=3"
    assert apply_overrides(base(), ts[1]).model.num_layers == 3
    assert trial_name({"data.paths": ["../../etc/passwd"]}) == "paths=__.._.._etc_passwd__-6eefe4"  # no "/": stays inside DIR
    assert trial_dir(pathlib.Path("/tmp/s"), {"x": ".."}).parent == pathlib.Path("/tmp/s").resolve()
    with pytest.raises(ConfigError, match="no field 'depth'"):
        apply_overrides(base(), {"model.depth": 2})
    assert parse_shard("1/3") == (1, 3)
    with pytest.raises(ValueError, match="give i/n"):
        parse_shard("3/3")


def test_trial_names_stay_unique_after_sanitising(tmp_path):
    assert trial_name({"model.cell": "gru", "model.num_layers": 3}) == "cell=gru,num_layers=3"  # old sweeps still resume
    assert trial_name({"seed": 0, "train.learning_rate": 1e38}) == "seed=0,learning_rate=1e+38"
    a, b = trial_name({"data.paths": ["a/b.txt"]}), trial_name({"data.paths": ["a_b.txt"]})
    assert (a, b) == ("paths=__a_b.txt__-e0305f", "paths=__a_b.txt__-b8ed9e")  # a stable hash of the overrides
    prefixes = [trial_name({"generate.prefixes": [p]}) for p in ("time traveller", "time/traveller", "time_traveller")]
    assert len(set(prefixes)) == 3
    long = trial_name({"generate.prefixes": ["x" * 300]})
    assert len(long) <= 210 and long != trial_name({"generate.prefixes": ["x" * 301]})

    # Both trials fail (no such files), each with its own result.json: none overwrites the other.
    rows = run_sweep(base(), {"data.paths": [["a/b.txt"], ["a_b.txt"]]}, tmp_path / "s")
    assert [r["name"] for r in rows] == [a, b] and [r["status"] for r in rows] == ["failed", "failed"]
    assert json.loads((tmp_path / "s" / a / "result.json").read_text())["paths"] == ["a/b.txt"]
    assert json.loads((tmp_path / "s" / b / "result.json").read_text())["paths"] == ["a_b.txt"]


def test_grid_with_colliding_trial_names_is_refused(tmp_path):
    for grid in ({"model.cell": ["gru", "gru"]}, {"generate.num_chars": [5, "5"]}):
        with pytest.raises(SweepError, match=r"would both write the directory '(cell=gru|num_chars=5)'.*duplicate"):
            run_sweep(base(), grid, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_summary_has_a_column_per_axis(tmp_path):
    for seed in (0, 1, 2):
        for lr in (1.0, 2.0):
            fake_trial(tmp_path, {"seed": seed, "train.learning_rate": lr}, best=10 + seed + lr)
    legacy = fake_trial(tmp_path, {"seed": 7, "train.learning_rate": 0.5}, best=9.0)  # result.json without "overrides"
    row = json.loads((legacy / "result.json").read_text())
    del row["overrides"]
    (legacy / "result.json").write_text(json.dumps(row))
    summarize(tmp_path)
    table = read_csv(tmp_path / "results.csv")
    assert list(table[0])[:6] == ["name", "cell", "num_layers", "hidden_size", "seed", "learning_rate"]
    got = sorted((r["seed"], r["learning_rate"], r["best_val_ppl"]) for r in table)
    assert got == sorted([(str(s), str(lr), str(10 + s + lr)) for s in (0, 1, 2) for lr in (1.0, 2.0)] + [("7", "0.5", "9.0")])
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0] == ("| cell | num_layers | hidden_size | seed | learning_rate | num_params | train_ppl | best_val_ppl "
                     "| tokens_per_sec | wall_time | status |")
    assert "| gru | 1 | 32 | 2 | 1.0 | 1000 | 14.000 | 13.000 |" in "\n".join(md)
    assert len(set(md[2:])) == 7  # no two rows look the same


def test_axis_columns_are_named_by_last_part_when_unambiguous(tmp_path):
    fake_trial(tmp_path, {"model.cell": "lstm", "train.x": 1, "data.x": "a|b", "data.status": 3}, best=5.0, cell="lstm")
    summarize(tmp_path)
    (row,) = read_csv(tmp_path / "results.csv")
    assert list(row) == ["name", "cell", "num_layers", "hidden_size", "train.x", "data.x", "data.status", "num_params",
                         "train_ppl", "best_val_ppl", "tokens_per_sec", "wall_time", "status", "error"]
    assert (row["cell"], row["train.x"], row["data.x"], row["data.status"], row["status"]) == ("lstm", "1", "a|b", "3", "done")
    assert "| lstm | 1 | 32 | 1 | a\\|b | 3 |" in (tmp_path / "results.md").read_text()


def test_depth_aggregates_over_seeds_per_cell_and_other_axes():
    def row(cell, layers, ppl, status="done", **overrides):
        o = {"model.cell": cell, "model.num_layers": layers, **overrides}
        return {"cell": cell, "num_layers": layers, "best_val_ppl": ppl, "status": status, "overrides": o}

    rows = [row("gru", 1, 10.0, seed=0), row("gru", 1, 14.0, seed=1), row("gru", 1, 12.0, seed=2),
            row("gru", 2, 9.0, seed=0), row("gru", 2, 99.0, "failed", seed=1),
            row("lstm", 2, 8.0, seed=0), row("lstm", 2, 6.0, seed=1),
            row("lstm", 2, 20.0, seed=0, **{"train.learning_rate": 2.0})]
    rows.append({"cell": "rnn", "num_layers": 3, "best_val_ppl": 30.0, "status": "done", "seed": 4})  # no "overrides"
    assert aggregate_depth(rows) == [
        {"cell": "gru", "group": "", "num_layers": 1, "mean": 12.0, "min": 10.0, "max": 14.0, "n": 3},
        {"cell": "gru", "group": "", "num_layers": 2, "mean": 9.0, "min": 9.0, "max": 9.0, "n": 1},
        {"cell": "lstm", "group": "", "num_layers": 2, "mean": 7.0, "min": 6.0, "max": 8.0, "n": 2},
        {"cell": "lstm", "group": "learning_rate=2.0", "num_layers": 2, "mean": 20.0, "min": 20.0, "max": 20.0, "n": 1},
        {"cell": "rnn", "group": "", "num_layers": 3, "mean": 30.0, "min": 30.0, "max": 30.0, "n": 1},
    ]


def test_sweep_plot_of_32_trials_is_readable_and_leaves_the_backend_alone(tmp_path):
    import matplotlib

    dirs = [fake_trial(tmp_path, {"model.cell": c, "model.num_layers": n, "seed": s}, best=10 + n * (c == "gru") + s,
                       cell=c, num_layers=n) for c in ("gru", "lstm") for n in (1, 2, 3, 4) for s in (0, 1, 2, 3)]
    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # as a notebook's backend: summarize must not switch it
    try:
        rows = summarize(tmp_path)
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)
    assert len(rows) == 32 and (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    fig = plot_sweep([json.loads((d / "result.json").read_text()) for d in dirs], dirs)
    depth, curves = fig.axes
    assert list(depth.get_xticks()) == [1, 2, 3, 4]  # integer depths only
    means = [line.get_ydata().tolist() for line in depth.get_lines()]
    assert means == [[12.5, 13.5, 14.5, 15.5], [11.5, 11.5, 11.5, 11.5]]  # one line per cell: the mean over 4 seeds
    assert [t.get_text() for t in depth.get_legend().get_texts()] == ["gru (n=4)", "lstm (n=4)"]
    assert len(curves.get_lines()) == 32 and [t.get_text() for t in curves.get_legend().get_texts()] == ["gru", "lstm"]


def test_sweep_runs_records_failures_and_resumes(tmp_path):
    grid = {"model.cell": ["gru", "lstm"], "train.learning_rate": [1.0, 1e38]}
    cfg = base()
    cfg.train.grad_clip, cfg.train.max_nonfinite = 0.0, 2  # lr 1e38 diverges: those trials fail
    rows = run_sweep(cfg, grid, tmp_path)
    status = {r["name"]: r["status"] for r in rows}
    assert status == {"cell=gru,learning_rate=1.0": "done", "cell=gru,learning_rate=1e+38": "failed",
                      "cell=lstm,learning_rate=1.0": "done", "cell=lstm,learning_rate=1e+38": "failed"}
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
    assert float(table[0]["best_val_ppl"]) > 1.0 and int(table[0]["num_params"]) > 0
    assert [(r["cell"], r["learning_rate"], r["status"]) for r in table] == [
        ("gru", "1.0", "done"), ("gru", "1e+38", "failed"), ("lstm", "1.0", "done"), ("lstm", "1e+38", "failed")]
    assert failed["overrides"] == {"model.cell": "gru", "train.learning_rate": 1e38}
    assert "failed: FloatingPointError" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_interrupted_trial_resumes_from_its_checkpoint(tmp_path):
    grid = {"model.cell": ["gru"]}
    cfg = base()
    cfg.train.num_epochs = 1
    run_sweep(cfg, grid, tmp_path)
    (tmp_path / "cell=gru" / "result.json").unlink()  # as if killed after its checkpoint
    cfg.train.num_epochs = 2
    (row,) = run_sweep(cfg, grid, tmp_path)
    lines = (tmp_path / "cell=gru" / "metrics.jsonl").read_text().splitlines()
    assert row["status"] == "done" and [json.loads(x)["epoch"] for x in lines] == [1, 2]


@pytest.mark.slow
def test_sweep_cli_with_shards_and_summarize(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, str(ROOT / "scripts" / "sweep.py"), f"--config={ROOT / 'configs' / 'sweep_depth_cell.py'}:smoke",
           f"--workdir={tmp_path}", "--config.train.num_epochs=1"]
    for shard in ("0/2", "1/2"):
        p = subprocess.run(cmd + [f"--shard={shard}"], capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep.py"), f"--summarize={tmp_path}"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and p.stdout.count("| done |") == 4


def test_vectorized_trials_equal_one_by_one(tmp_path):
    import jax
    import numpy as np

    import rnnjax

    grid = {"seed": [0, 1], "train.learning_rate": [1.0, 2.0]}
    cfg = base()
    cfg.model.dropout = 0.2  # per-trial dropout keys must follow each trial's seed too
    seq = run_sweep(cfg, grid, tmp_path / "seq")
    vec = run_sweep(cfg, grid, tmp_path / "vec", vectorize=True)
    assert [r["status"] for r in vec] == ["done"] * 4
    for a, b in zip(seq, vec):
        assert a["name"] == b["name"]
        assert b["best_val_ppl"] == pytest.approx(a["best_val_ppl"], rel=1e-5)
        assert b["train_ppl"] == pytest.approx(a["train_ppl"], rel=1e-5)
        pa = rnnjax.load(tmp_path / "seq" / a["name"], step="latest").params
        pb = rnnjax.load(tmp_path / "vec" / b["name"], step="latest").params  # vectorized trials leave loadable checkpoints
        for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
    assert seq[0]["best_val_ppl"] != seq[1]["best_val_ppl"]  # the trials really differ


@pytest.mark.slow
def test_sweep_survives_sigkill_and_rerun(tmp_path):
    import signal
    import time

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, str(ROOT / "scripts" / "sweep.py"), f"--config={ROOT / 'configs' / 'sweep_depth_cell.py'}:smoke",
           f"--workdir={tmp_path}", "--config.train.num_epochs=3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not list(tmp_path.glob("*/result.json")) and time.time() < deadline:  # kill once a trial finished
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
