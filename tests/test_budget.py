"""Budgets that anneal: train.max_steps and the time budget train.max_minutes
(rnnjax/training/budget.py)."""

import itertools
import json
import math
import shutil

import jax
import numpy as np
import pytest
from conftest import small_config

from rnnjax.config import ConfigError, resolve
from rnnjax.rundir.workdir import WorkdirError
from rnnjax.training import budget
from rnnjax.training.train import train_and_evaluate


def tree_equal(a, b):
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return all(np.array_equal(x, y) for x, y in leaves)


def cosine(**fields):
    base = {
        "train.optimizer": "adam",
        "train.learning_rate": 0.01,
        "train.schedule": "warmup_cosine",
        "train.warmup_steps": 20,
    }
    return small_config(50, **{**base, **fields})


def test_epoch_arithmetic_of_a_step_budget():
    assert budget.last_epoch(30, 24) == 2 and budget.last_epoch(48, 24) == 2
    assert [budget.stop_batch(30, 24, e) for e in (1, 2, 3)] == [24, 6, 0]


def test_max_steps_ends_the_run_part_way_through_an_epoch_at_a_decayed_rate(tmp_path):
    out = train_and_evaluate(cosine(**{"train.max_steps": 30}), tmp_path)  # 24 steps per epoch
    records = out["metrics"]
    assert [r["epoch"] for r in records] == [1, 2]  # num_epochs (50) is not what ends it
    assert records[-1]["step"] == 30
    assert records[-1]["lr"] < 0.03 * 0.01 and records[0]["lr"] > 0.5 * 0.01


def test_max_steps_resumes_bitwise_from_a_mid_epoch_save(tmp_path):
    cfg = cosine(**{"train.max_steps": 40, "checkpoint.every_minutes": 1e-9})
    cfg.checkpoint.max_to_keep = 1000
    run = tmp_path / "run"
    straight = train_and_evaluate(cfg, run)
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 40
    for s in steps:
        if s > 33:  # a kill at step 33 of 40 (in the last, partial epoch)
            shutil.rmtree(run / "checkpoints" / str(s))
    resumed = train_and_evaluate(cfg, run)
    assert tree_equal(resumed["params"], straight["params"])
    assert [r["step"] for r in resumed["metrics"]] == [24, 40]


TIMES = [0.0, 2.0, 3.9, 3.9, 4.0, 4.02, 4.05, 4.06, 4.06, 4.16, 4.16]


def test_a_time_budget_is_measured_recorded_and_kept_on_resume(tmp_path, monkeypatch):
    # A clock of our own (this machine's load would decide the length otherwise): the run starts
    # at 0 s, its compiled first step ends at 2 s, step 20 at 3.9 s (0.1 s per step); then what an
    # epoch's end costs is measured: a validation pass compiled and read (0.1 s), again (0.02 s),
    # the samples compiled (0.03 s), again (0.01 s), a checkpoint saved (0.1 s).
    times = itertools.chain(TIMES, itertools.repeat(100.0))
    monkeypatch.setattr(budget, "clock", lambda: next(times))
    cfg = cosine(**{"train.max_minutes": 0.15, "checkpoint.max_to_keep": 1000})
    run = tmp_path / "run"
    straight = train_and_evaluate(cfg, run)
    saved = json.loads((run / budget.BUDGET_FILE).read_text())
    assert saved["timed_steps"] == [1, 20] and saved["step_seconds"] == pytest.approx(0.1)
    # once: the compiles (0.08 + 0.02 s) and the run's end (a save, two passes, the samples:
    # 0.15 s); each epoch (24 steps, a save every epoch, counted twice for the deletion past
    # max_to_keep): 0.02 + 2 * 0.1 + 0.01 s. 9 s - 4.16 s spent - 2 s for the second compile -
    # 0.25 s = 2.59 s, at 0.1 + 0.23 / 24 s a step: 23 more steps
    assert saved["epoch_end_seconds"] == pytest.approx(0.23)
    total = saved["max_steps"]
    assert total == 20 + math.floor((9 - 4.16 - 2 - 0.25) / (0.1 + 0.23 / 24)) == 43
    assert straight["metrics"][-1]["step"] == total
    assert straight["metrics"][-1]["lr"] < 0.05 * 0.01  # the cosine ran to its end
    assert 20 in [int(p.name) for p in (run / "checkpoints").iterdir()]  # the timed save, kept
    for p in (run / "checkpoints").iterdir():  # a kill after epoch 1's save
        if p.name.isdigit() and int(p.name) > 24:
            shutil.rmtree(p)
    resumed = train_and_evaluate(cfg, run)  # the recorded budget, not a new measurement
    assert json.loads((run / budget.BUDGET_FILE).read_text()) == saved
    assert resumed["metrics"][-1]["step"] == total
    assert tree_equal(resumed["params"], straight["params"])


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"train.max_minutes": 1.0, "train.max_steps": 10}, "set one of them to 0"),
        ({"train.max_minutes": 1.0, "train.warmup_steps": 5}, "warmup_steps >= 20"),
    ],
)
def test_budgets_that_cannot_be_measured_are_refused_in_one_line(fields, message):
    with pytest.raises(ConfigError, match=message) as e:
        resolve(cosine(**fields))
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """A finished time-budget run (its clock our own, as above: 43 steps, into epoch 2)."""
    times = itertools.chain(TIMES, itertools.repeat(100.0))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(budget, "clock", lambda: next(times))
        cfg = cosine(**{"train.max_minutes": 0.15})
        run = tmp_path_factory.mktemp("budget") / "run"
        out = train_and_evaluate(cfg, run)
    return cfg, run, out


def _files(run):
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and "events" not in p.name and p.name != budget.BUDGET_FILE
    }


@pytest.mark.parametrize(
    "damage",
    [
        None,
        b'{"max_minutes": 0.15, "max_st',
        b"[1, 2]",
        b'{"max_minutes": 0.15}',
        b'{"max_minutes": 0.15, "max_steps": 9}',
    ],
    ids=["deleted", "truncated", "a list", "no max_steps", "edited"],
)
def test_a_finished_time_budget_run_keeps_its_length_when_budget_json_is_lost(
    budget_run, tmp_path, damage, caplog
):
    cfg, src, out = budget_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    saved = json.loads((run / budget.BUDGET_FILE).read_text())
    assert out["metrics"][-1]["step"] == saved["max_steps"] == 43
    before = _files(run)
    if damage is None:
        (run / budget.BUDGET_FILE).unlink()
    else:
        (run / budget.BUDGET_FILE).write_bytes(damage)
    again = train_and_evaluate(cfg, run)  # the budget comes back from the checkpoint's meta
    assert again["metrics"][-1]["step"] == 43 and tree_equal(again["params"], out["params"])
    assert json.loads((run / budget.BUDGET_FILE).read_text()) == saved
    assert "taken from the checkpoint and written back" in caplog.text
    assert not (run / "discarded").exists()
    after = _files(run)
    assert {k: v for k, v in after.items() if k.startswith("checkpoints")} == {
        k: v for k, v in before.items() if k.startswith("checkpoints")
    }  # no step trained, none rotated away
    assert after["samples.txt"] == before["samples.txt"]


def test_a_checkpoint_without_the_budget_and_no_budget_json_is_refused_in_one_line(
    budget_run, tmp_path
):
    cfg, src, _ = budget_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    (run / budget.BUDGET_FILE).unlink()
    for meta in (run / "checkpoints").glob("*/meta/metadata"):  # as saved before 2026-12-07
        m = json.loads(meta.read_text())
        del m["budget"]
        meta.write_text(json.dumps(m))
    before = _files(run)
    with pytest.raises(WorkdirError, match="budget.json is missing .* train.max_steps") as e:
        train_and_evaluate(cfg, run)
    assert "\n" not in str(e.value) and _files(run) == before


def test_a_budget_spent_by_warm_up_ends_the_run_inside_its_first_epoch(tmp_path, monkeypatch):
    # the budget is gone by step 20 (the clock jumps to 100 s while the epoch's end is measured):
    # the run stops there, not at the end of its epoch of 24 steps
    times = itertools.chain([0.0, 2.0, 3.9], itertools.repeat(100.0))
    monkeypatch.setattr(budget, "clock", lambda: next(times))
    out = train_and_evaluate(cosine(**{"train.max_minutes": 0.15}), tmp_path)
    assert json.loads((tmp_path / budget.BUDGET_FILE).read_text())["max_steps"] == 20
    assert [(r["epoch"], r["step"]) for r in out["metrics"]] == [(1, 20)]


def test_a_warm_up_longer_than_the_time_budget_is_one_line_at_step_21(tmp_path, monkeypatch):
    # 0.1 s a step from step 1 (2 s) to 21 (4 s): 9 s buy ~50 steps, far fewer than 2,000
    times = itertools.chain([0.0, 2.0, 4.0], itertools.repeat(100.0))
    monkeypatch.setattr(budget, "clock", lambda: next(times))
    cfg = cosine(**{"train.max_minutes": 0.15, "train.warmup_steps": 2000})
    with pytest.raises(
        ConfigError, match="warmup_steps = 2000 is longer than the time budget"
    ) as e:
        train_and_evaluate(cfg, tmp_path)
    assert "\n" not in str(e.value)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]  # no save


def test_a_budget_that_ends_at_the_timed_save_is_finished_on_the_rerun(tmp_path, monkeypatch):
    """The timed save at step 20 is replaced by the epoch's end save (its record, its budget): a
    rerun finds the run finished, and a lost budget.json comes back from it."""
    times = itertools.chain([0.0, 2.0, 3.9], itertools.repeat(100.0))
    monkeypatch.setattr(budget, "clock", lambda: next(times))
    cfg = cosine(**{"train.max_minutes": 0.15})
    out = train_and_evaluate(cfg, tmp_path)
    records = (tmp_path / "metrics.jsonl").read_bytes()
    (tmp_path / budget.BUDGET_FILE).unlink()
    again = train_and_evaluate(cfg, tmp_path)
    assert [(r["epoch"], r["step"]) for r in again["metrics"]] == [(1, 20)]
    assert (tmp_path / "metrics.jsonl").read_bytes() == records
    assert not (tmp_path / "discarded").exists() and tree_equal(again["params"], out["params"])
    assert json.loads((tmp_path / budget.BUDGET_FILE).read_text())["max_steps"] == 20
