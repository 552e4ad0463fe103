"""Vectorized trials (one vmapped program) give the numbers and checkpoints of trials run one by one."""

import pytest
from conftest import small_config

from rnnjax.sweep import run_sweep


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
        pb = rnnjax.load(tmp_path / "vec" / b["name"], step="latest").params  # vectorized trials leave loadable checkpoints
        for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
    assert seq[0]["best_val_ppl"] != seq[1]["best_val_ppl"]  # the trials really differ
