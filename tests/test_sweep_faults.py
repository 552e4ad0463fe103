"""The sweep runner's faults: bad grids and paths, relative directories, and signals."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from rnnjax.config import ConfigError, default_config, smoke
from rnnjax.sweep import SweepError, run_sweep, summarize

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "scripts" / "sweep.py")
CONFIG = f"--config={ROOT / 'configs' / 'sweep_depth_cell.py'}:smoke"
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))

GRID_CONFIG = '''
from rnnjax.config import default_config, smoke


def get_config(arg=None):
    return smoke(default_config())


def get_sweep(arg=None):
    return {"empty": {}, "no_values": {"seed": []}, "not_a_list": {"model.cell": "gru"}, "none": None}[arg]
'''


def base():
    cfg = smoke(default_config())
    cfg.train.num_epochs = 2
    return cfg


@pytest.mark.parametrize("grid, match", [
    ({}, "the sweep grid is empty"),
    ({"seed": []}, "sweep axis seed has no values"),
    ({"model.cell": "gru"}, r"sweep axis model.cell: give a list of values, e.g. \['gru'\]"),
    ({"model.num_layers": ["a", "b"]}, "sweep axis model.num_layers: 'a' is not allowed: .* type int"),
    ({"model.bogus": [1, 2]}, "sweep axis model.bogus: config has no field 'bogus'"),
    ({"model.num_layers": [1, 0]}, r"config.model.num_layers = 0 is not allowed"),  # the second trial is checked too
])
def test_bad_grids_are_refused_before_anything_is_created(tmp_path, grid, match):
    with pytest.raises((SweepError, ConfigError), match=match):
        run_sweep(base(), grid, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_summarize_refuses_what_is_not_a_sweep_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for name, match in [("missing", "does not exist"), ("file", "is a file"), ("empty", "holds no trial results")]:
        with pytest.raises(SweepError, match=match):
            summarize(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file"] and not list((tmp_path / "empty").iterdir())


def test_relative_and_home_sweep_directories(tmp_path, monkeypatch):
    trial = tmp_path / "runs" / "s" / "cell=gru"
    trial.mkdir(parents=True)
    (trial / "result.json").write_text(json.dumps({
        "name": "cell=gru", "cell": "gru", "num_layers": 1, "best_val_ppl": 9.0, "status": "done", "error": "",
    }))
    (trial / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_ppl": 9.0}) + "\n")
    monkeypatch.chdir(tmp_path / "runs")
    assert [r["status"] for r in summarize("s")] == ["done"]
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir("/")
    assert [r["status"] for r in summarize("~/runs/s")] == ["done"]
    assert sorted(p.name for p in (tmp_path / "runs" / "s").iterdir()) == [
        "cell=gru", "results.csv", "results.md", "sweep.png"]


def _cli(*args, cwd):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=120)


@pytest.mark.slow
def test_cli_errors_are_one_line_and_create_nothing(tmp_path):
    (tmp_path / "grids.py").write_text(GRID_CONFIG)
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = [
        (["--summarize=missing"], "sweep directory .*missing does not exist; give the directory a sweep wrote"),
        (["--summarize=file"], "file is a file, not a sweep directory"),
        (["--summarize=empty"], "empty holds no trial results"),
        (["--config=grids.py:empty", "--workdir=s"], "the sweep grid is empty"),
        (["--config=grids.py:no_values", "--workdir=s"], "sweep axis seed has no values"),
        (["--config=grids.py:not_a_list", "--workdir=s"], "sweep axis model.cell: give a list of values"),
        (["--config=grids.py:none", "--workdir=s"], r"get_sweep\(\) returned NoneType"),
        ([CONFIG, "--workdir=s", "--axis=seed="], "--axis='seed=': give FIELD=v1,v2,..."),
        ([CONFIG, "--workdir=s", "--axis=model.num_layers=a,b"], "sweep axis model.num_layers: 'a' is not allowed"),
        ([CONFIG, "--workdir=s", "--axis=model.bogus=1,2"], "sweep axis model.bogus: config has no field 'bogus'"),
        ([CONFIG, "--workdir=s", "--axis=model.cell=gru,gru"], "would both write the directory 'cell=gru,num_layers=1'"),
    ]
    import re

    for args, match in cases:
        p = _cli(*args, cwd=tmp_path)
        assert p.returncode != 0, args
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(match, lines[0]), (args, p.stderr[-2000:])
        assert sorted(x.name for x in tmp_path.iterdir()) == ["empty", "file", "grids.py"], args  # nothing created
        assert not list((tmp_path / "empty").iterdir())
