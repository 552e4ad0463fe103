"""Checkpoints written before the params-only layout (main at bea6fc2) still load and resume.

``tests/fixtures/run_v1`` is a 2-epoch run of a 2-layer LSTM (hidden 8) trained by that
commit; ``expected.json`` holds what ``rnnjax.load`` returned then.
"""

import json
import pathlib
import shutil

import jax
import numpy as np

import rnnjax
from rnnjax.config import default_config
from rnnjax.train import train_and_evaluate

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "run_v1"


def _sums(params):
    return {jax.tree_util.keystr(p): float(np.asarray(x, np.float64).sum())
            for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_old_checkpoint_loads_with_the_same_params_and_samples(tmp_path):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    run_dir = tmp_path / "run_v1"
    shutil.copytree(FIXTURE, run_dir)
    run = rnnjax.load(run_dir)
    assert run.step == expected["step"]
    assert _sums(run.params) == expected["param_sums"]  # sha256-verified on restore too
    assert run.generate("time traveller", 20) == expected["greedy"]
    assert sorted(p.name for p in run_dir.rglob("*")) == sorted(p.name for p in FIXTURE.rglob("*"))  # read-only


def test_old_checkpoint_resumes_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(FIXTURE, "run_v1")
    c = default_config()
    c.model.hidden_size, c.model.num_layers = 8, 2
    c.data.max_tokens, c.data.num_val, c.data.batch_size, c.data.num_steps = 400, 200, 4, 5
    c.train.num_epochs, c.train.progress, c.generate.prefixes = 3, False, []
    out = train_and_evaluate(c, "run_v1")
    assert [r["epoch"] for r in out["metrics"]] == [1, 2, 3]
    assert out["metrics"][-1]["step"] == 57
    assert rnnjax.load("run_v1", step="latest").step == 57
