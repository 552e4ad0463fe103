"""Checkpoints: exact resume (also after SIGKILL and SIGTERM), keeping the latest and the best,
resume modes, falling back from damaged steps, the params-only layout, and checkpoints of the
previous layout (``tests/fixtures/run_v1``) still loading and resuming."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from conftest import copy_run, param_bytes, small_config, snapshot, train_cli

import rnnjax
from rnnjax.config import default_config
from rnnjax.network.impls.native import cpu_isa
from rnnjax.rundir.checkpoint import CheckpointError
from rnnjax.training.train import train_and_evaluate

ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
# A 2-epoch run of a 2-layer LSTM (hidden 8) trained by main at bea6fc2, before the params-only
# layout; its expected.json holds what rnnjax.load returned then.
FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "run_v1"


def test_resume_continues_exactly(tmp_path):
    full = train_and_evaluate(small_config(5), tmp_path / "full")
    train_and_evaluate(small_config(3), tmp_path / "split")
    resumed = train_and_evaluate(
        small_config(5), tmp_path / "split"
    )  # more epochs: resumes at epoch 4
    assert param_bytes(resumed["params"]) == param_bytes(full["params"])
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4, 5]
    assert json.loads(lines[-1])["val_ppl"] == full["val_ppl"]
    again = train_and_evaluate(
        small_config(5), tmp_path / "split"
    )  # finished: nothing to redo, nothing lost
    assert param_bytes(again["params"]) == param_bytes(full["params"])
    assert (tmp_path / "split" / "metrics.jsonl").read_text().splitlines() == lines


def test_keeps_latest_and_best(tmp_path):
    cfg = small_config(6)
    cfg.checkpoint.max_to_keep = 2
    out = train_and_evaluate(cfg, tmp_path)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    best = min(out["metrics"], key=lambda r: r["val_ppl"])["step"]
    assert set(steps) == {out["metrics"][-1]["step"], out["metrics"][-2]["step"], best}


def test_best_checkpoint_survives_later_sessions(tmp_path):
    """The best step is kept by the val_ppl in its own meta, whichever process saved it: a run that
    overfits, then is extended twice (new processes each time), still holds its best epoch. (Orbax's
    own BestN kept only the metrics of its own process: the extension pruned the best.)"""
    fields = {
        "train.optimizer": "adam",
        "train.learning_rate": 0.02,
        "checkpoint.every_epochs": 1,
        "checkpoint.max_to_keep": 2,
    }
    first = train_and_evaluate(small_config(8, **fields), tmp_path)
    for epochs in (11, 14):
        out = train_and_evaluate(small_config(epochs, **fields), tmp_path)
    best = min(out["metrics"], key=lambda r: r["val_ppl"])
    assert (
        best["epoch"] <= 8
        and best["step"] == min(first["metrics"], key=lambda r: r["val_ppl"])["step"]
    )
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == sorted({best["step"], *(r["step"] for r in out["metrics"][-2:])})
    assert rnnjax.load(tmp_path).step == best["step"] and out["best_saved_epoch"] == best["epoch"]


def test_resume_modes(tmp_path, smoke_run):
    with pytest.raises(CheckpointError, match="--resume=must"):
        train_and_evaluate(small_config(), tmp_path / "none", resume="must")
    assert not (tmp_path / "none").exists()  # created nothing
    copy_run(smoke_run[0], tmp_path / "run")  # a finished run of small_config()
    before = snapshot(tmp_path / "run")
    with pytest.raises(CheckpointError, match="--resume=never"):
        train_and_evaluate(small_config(), tmp_path / "run", resume="never")
    assert snapshot(tmp_path / "run") == before


def _latest_step(workdir):
    return max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.parametrize(
    "damage", ["truncated_array", "missing_metadata", "empty_step_dir", "leftover_tmp_dir"]
)
def test_damaged_checkpoint_falls_back_to_the_previous_step(tmp_path, damage, caplog, smoke_run):
    reference = train_and_evaluate(small_config(4), tmp_path / "ref")
    run = copy_run(smoke_run[0], tmp_path / "run")  # small_config(3), finished
    last = run / "checkpoints" / str(_latest_step(run))
    if damage == "truncated_array":
        files = [
            p for p in last.rglob("*") if p.is_file() and "/d/" in str(p)
        ]  # array data, params/ or state/
        biggest = max(files, key=lambda p: p.stat().st_size)
        biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    elif damage == "missing_metadata":
        for p in (last / "meta").iterdir():
            p.unlink()
    elif damage == "empty_step_dir":
        (run / "checkpoints" / "9999").mkdir()
    else:
        (run / "checkpoints" / "9999.orbax-checkpoint-tmp-1700000000").mkdir()
    loaded = rnnjax.load(run, step="latest")  # read-only: falls back without touching anything
    if damage in ("truncated_array", "missing_metadata"):
        assert loaded.step < int(last.name)
    resumed = train_and_evaluate(small_config(4), run)
    assert param_bytes(resumed["params"]) == param_bytes(reference["params"])
    if damage != "leftover_tmp_dir":
        assert "damaged" in caplog.text and (run / "damaged").is_dir()  # kept, moved aside


def test_all_checkpoints_damaged_fails_naming_the_steps(tmp_path):
    cfg = small_config(1)
    train_and_evaluate(cfg, tmp_path)
    for p in (tmp_path / "checkpoints" / str(_latest_step(tmp_path)) / "meta").iterdir():
        p.unlink()
    with pytest.raises(CheckpointError, match=r"every checkpoint .* is damaged \(steps \[24\]"):
        rnnjax.load(tmp_path)


# Six CLI runs of 12 epochs: the exhaustive tier. The default run keeps the deterministic kills:
# test_sigterm_saves_the_current_step_and_resume_is_exact (bitwise), test_train's SIGKILL before
# and past a checkpoint, and its kill at a mid-epoch save (bitwise).
@pytest.mark.exhaustive
@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bitwise_exact(tmp_path):
    epochs = "--config.train.num_epochs=12"
    ref = subprocess.run(
        train_cli(tmp_path / "ref", epochs), capture_output=True, text=True, env=ENV, timeout=300
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    # Kill moments scale with this machine's speed, timed on a second run: the first one filled
    # the persistent compilation cache that every later run reads (a cold run takes ~2x as long).
    t0 = time.monotonic()
    warm = subprocess.run(
        train_cli(tmp_path / "warm", epochs), capture_output=True, text=True, env=ENV, timeout=300
    )
    assert warm.returncode == 0, warm.stderr[-2000:]
    duration = time.monotonic() - t0
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    kills = 0
    for delay in rng.uniform(0.3, 0.9, size=4) * duration:
        proc = subprocess.Popen(
            train_cli(run, epochs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV
        )
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1
    done = subprocess.run(
        train_cli(run, epochs), capture_output=True, text=True, env=ENV, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert param_bytes(rnnjax.load(run, step="latest").params) == param_bytes(
        rnnjax.load(tmp_path / "ref", step="latest").params
    )
    assert [
        json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()
    ] == list(range(1, 13))


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_resume_is_exact(tmp_path):
    epochs = "--config.train.num_epochs=400"
    proc = subprocess.Popen(
        train_cli(tmp_path / "run", epochs),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.time() + 120
    while not (tmp_path / "run" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "saved a checkpoint at step" in err
    stopped = rnnjax.load(tmp_path / "run", step="latest")
    meta_epochs = len(stopped.metrics)
    assert stopped.step > meta_epochs * 24  # the step it was at (mid-epoch), not the last epoch end
    # Resume to a short horizon and compare with an uninterrupted run of the same length.
    horizon = f"--config.train.num_epochs={meta_epochs + 2}"
    for d in ("run", "ref"):
        r = subprocess.run(
            train_cli(tmp_path / d, horizon), capture_output=True, text=True, env=ENV, timeout=300
        )
        assert r.returncode == 0, r.stderr[-2000:]
    assert param_bytes(rnnjax.load(tmp_path / "run", step="latest").params) == param_bytes(
        rnnjax.load(tmp_path / "ref", step="latest").params
    )


def test_layout_params_are_their_own_item_and_load_reads_only_them(tmp_path):
    out = train_and_evaluate(small_config(1), tmp_path)
    step_dir = tmp_path / "checkpoints" / "24"
    assert {p.name for p in step_dir.iterdir() if p.is_dir()} == {"params", "state", "meta"}
    meta = json.loads((step_dir / "meta" / "metadata").read_text())
    assert (
        meta["layout"] == 3 and "config" not in meta and "vocab" not in meta
    )  # config.json/vocab.json hold them
    assert any(k.startswith("['params']") for k in meta["checksums"])
    for f in (step_dir / "state").rglob("*"):  # the resume-only arrays gone: load never reads them
        if f.is_file() and "/d/" in str(f):
            f.unlink()
    run = rnnjax.load(tmp_path)
    assert run.step == 24 and param_bytes(run.params) == param_bytes(out["params"])
    with pytest.raises(
        CheckpointError, match="every checkpoint .* is damaged"
    ):  # resuming needs them: damage
        train_and_evaluate(small_config(2), tmp_path)


def _sums(params):
    return {
        jax.tree_util.keystr(p): float(np.asarray(x, np.float64).sum())
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def test_old_checkpoint_loads_with_the_same_params_and_samples(tmp_path):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    run_dir = tmp_path / "run_v1"
    shutil.copytree(FIXTURE, run_dir)
    run = rnnjax.load(run_dir)
    assert run.step == expected["step"]
    assert _sums(run.params) == expected["param_sums"]  # sha256-verified on restore too
    assert run.generate("time traveller", 20) == expected["greedy"]
    assert sorted(p.name for p in run_dir.rglob("*")) == sorted(
        p.name for p in FIXTURE.rglob("*")
    )  # read-only


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


@pytest.mark.parametrize("name", ["run_v2", "run_v3"])
def test_a_run_saved_by_an_earlier_layout_loads_and_resumes_bitwise(tmp_path, monkeypatch, name):
    """tests/fixtures/<name> was written by tests/fixtures/make_run.py with the code of its
    expected.json's commit (run_v2: main 4059f9e, layout 2 with per-layer sums; run_v3: layout 3,
    the sums by name); loading it gives what that code loaded, and resuming it to epoch 3 gives
    that code's records and params bit for bit (the same for both: the layout changed, not the
    numbers)."""
    fixture = pathlib.Path(__file__).parent / "fixtures" / name
    expected = json.loads((fixture / "expected.json").read_text())
    monkeypatch.chdir(tmp_path)
    shutil.copytree(fixture, name)
    run = rnnjax.load(name)
    assert run.step == expected["step"] and _sums(run.params) == expected["param_sums"]
    assert run.generate("time traveller", 20) == expected["greedy"]
    c = default_config()
    c.model.hidden_size, c.model.num_layers = 8, 2
    c.data.max_tokens, c.data.num_val, c.data.batch_size, c.data.num_steps = 400, 200, 4, 5
    c.train.num_epochs, c.train.progress, c.train.layer_stats = 3, False, True
    c.checkpoint.every_epochs, c.generate.prefixes = 1, []
    c.model.impl = "rnnjax"  # the fixture's own (config.json): its expected numbers are rnnjax's
    out = train_and_evaluate(c, name)
    resumed = expected["resumed"]
    records = [
        {k: r[k] for k in ("epoch", "step", "train_ppl", "val_ppl", "grad_norm")}
        for r in out["metrics"]
    ]
    assert out["metrics"][-1]["step"] == resumed["step"]
    if expected.get("isa") == cpu_isa():  # the fixture's own kind of host: bit for bit
        assert _sums(out["params"]) == resumed["param_sums"] and records == resumed["records"]
    else:  # XLA:CPU's matmuls sum in an order of the host's vector width (AVX2 or AVX-512)
        assert _sums(out["params"]) == pytest.approx(resumed["param_sums"], rel=1e-5)
        assert [r["epoch"] for r in records] == [r["epoch"] for r in resumed["records"]]
        for got, want in zip(records, resumed["records"]):
            assert got == pytest.approx(want, rel=1e-5)
    # on one host, bit for bit: the same resume again, from a second copy of the fixture
    shutil.copytree(fixture, f"{name}_again")
    again = train_and_evaluate(c, f"{name}_again")
    assert param_bytes(again["params"]) == param_bytes(out["params"])
    timing = ("wall_time", "tokens_per_sec")  # the clock's, not the run's
    assert [{k: v for k, v in r.items() if k not in timing} for r in again["metrics"]] == [
        {k: v for k, v in r.items() if k not in timing} for r in out["metrics"]
    ]
