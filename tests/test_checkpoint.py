"""Checkpoints: exact resume (also after SIGKILL and SIGTERM), the workdir lock, refusing
other configs and damaged steps, the non-finite guard, and read-only restore."""

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnnjax
from rnnjax.checkpoint import CheckpointError
from rnnjax.config import default_config, resolve, smoke
from rnnjax.metrics import TrainMetrics
from rnnjax.steps import init_train_state, make_train_step
from rnnjax.train import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def cfg_with(num_epochs=3, **model):
    cfg = smoke(default_config())
    cfg.train.progress = False
    cfg.train.num_epochs = num_epochs
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


def param_bytes(params):
    return [np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(params)]


def snapshot(workdir):
    return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(pathlib.Path(workdir).rglob("*")) if p.is_file()}


def cli(workdir, *flags):
    return [sys.executable, str(ROOT / "scripts" / "train.py"), f"--config={ROOT / 'configs' / 'deep_lstm.py'}:smoke",
            f"--workdir={workdir}", "--config.train.progress=False", *flags]


def test_resume_continues_exactly(tmp_path):
    full = train_and_evaluate(cfg_with(5), tmp_path / "full")
    train_and_evaluate(cfg_with(3), tmp_path / "split")
    resumed = train_and_evaluate(cfg_with(5), tmp_path / "split")  # more epochs: resumes at epoch 4
    assert param_bytes(resumed["params"]) == param_bytes(full["params"])
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4, 5]
    assert json.loads(lines[-1])["val_ppl"] == full["val_ppl"]
    again = train_and_evaluate(cfg_with(5), tmp_path / "split")  # finished: nothing to redo, nothing lost
    assert param_bytes(again["params"]) == param_bytes(full["params"])
    assert (tmp_path / "split" / "metrics.jsonl").read_text().splitlines() == lines


def test_keeps_latest_and_best(tmp_path):
    cfg = cfg_with(6)
    cfg.checkpoint.max_to_keep = 2
    out = train_and_evaluate(cfg, tmp_path)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    best = min(out["metrics"], key=lambda r: r["val_ppl"])["step"]
    assert set(steps) == {out["metrics"][-1]["step"], out["metrics"][-2]["step"], best}


def test_resume_modes(tmp_path):
    with pytest.raises(CheckpointError, match="--resume=must"):
        train_and_evaluate(cfg_with(), tmp_path / "none", resume="must")
    assert not (tmp_path / "none").exists()  # created nothing
    train_and_evaluate(cfg_with(), tmp_path / "run")
    before = snapshot(tmp_path / "run")
    with pytest.raises(CheckpointError, match="--resume=never"):
        train_and_evaluate(cfg_with(), tmp_path / "run", resume="never")
    assert snapshot(tmp_path / "run") == before


@pytest.mark.parametrize("field,value,name", [
    ("num_layers", 3, "model.num_layers"), ("hidden_size", 16, "model.hidden_size"), ("cell", "gru", "model.cell"),
])
def test_other_architecture_is_refused_naming_the_field(tmp_path, field, value, name):
    train_and_evaluate(cfg_with(), tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=f"different config.{name} \\(.* there, {value!r} here\\); use another"):
        train_and_evaluate(cfg_with(**{field: value}), tmp_path)
    cfg = cfg_with()
    cfg.train.optimizer = "adam"
    with pytest.raises(CheckpointError, match="different config.train.optimizer"):
        train_and_evaluate(cfg, tmp_path)
    assert snapshot(tmp_path) == before


def test_second_trainer_on_a_workdir_exits_at_once(tmp_path):
    train_and_evaluate(cfg_with(), tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"), str(tmp_path / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(tmp_path)
        proc = subprocess.run(cli(tmp_path, "--config.train.num_epochs=5"), capture_output=True, text=True, env=ENV, timeout=120)
        assert proc.returncode != 0
        assert "is in use by another trainer" in proc.stderr.strip().splitlines()[-1]
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()


def _latest_step(workdir):
    return max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.parametrize("damage", ["truncated_array", "missing_metadata", "empty_step_dir", "leftover_tmp_dir"])
def test_damaged_checkpoint_falls_back_to_the_previous_step(tmp_path, damage, caplog):
    reference = train_and_evaluate(cfg_with(4), tmp_path / "ref")
    run = tmp_path / "run"
    train_and_evaluate(cfg_with(3), run)
    last = run / "checkpoints" / str(_latest_step(run))
    if damage == "truncated_array":
        files = [p for p in last.rglob("*") if p.is_file() and "/d/" in str(p)]  # array data, params/ or state/
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
    resumed = train_and_evaluate(cfg_with(4), run)
    assert param_bytes(resumed["params"]) == param_bytes(reference["params"])
    if damage != "leftover_tmp_dir":
        assert "damaged" in caplog.text and (run / "damaged").is_dir()  # kept, moved aside


def test_all_checkpoints_damaged_fails_naming_the_steps(tmp_path):
    cfg = cfg_with(1)
    train_and_evaluate(cfg, tmp_path)
    for p in (tmp_path / "checkpoints" / str(_latest_step(tmp_path)) / "meta").iterdir():
        p.unlink()
    with pytest.raises(CheckpointError, match=r"every checkpoint .* is damaged \(steps \[24\]"):
        rnnjax.load(tmp_path)


def test_nonfinite_step_is_skipped_and_run_aborts(tmp_path):
    cfg = resolve(cfg_with())
    model = rnnjax.build_model(cfg, 28)
    tx = optax.sgd(float("inf"))
    state = init_train_state(model, tx, jax.random.key(0))
    before = param_bytes(state.params)
    xs = jax.random.randint(jax.random.key(1), (1, 8, 10), 0, 28)
    step = make_train_step(model, tx, reset_carry=False)
    new, _, acc = step(state, model.initial_carry(8), TrainMetrics.zeros(), xs, jnp.roll(xs, -1, -1), 0, jax.random.key(0))
    assert param_bytes(new.params) == before and int(new.nonfinite) == 1 and float(acc.skipped) == 1.0
    bad = cfg_with(3)
    bad.train.learning_rate, bad.train.grad_clip = 1e38, 0.0
    with pytest.raises(FloatingPointError, match=r"consecutive non-finite training steps \(train.max_nonfinite = 10\)"):
        train_and_evaluate(bad, tmp_path)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["skipped_steps"] == 24  # every step skipped, none applied
    assert not any(p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())  # nothing non-finite saved


def test_load_is_read_only_and_generates(tmp_path):
    out = train_and_evaluate(cfg_with(3), tmp_path)
    before = snapshot(tmp_path)
    run = rnnjax.load(tmp_path, step="latest")
    assert snapshot(tmp_path) == before
    assert run.config.model.cell == "lstm" and len(run.vocab) == 27 and len(run.metrics) == 3
    assert param_bytes(run.params) == param_bytes(out["params"])
    assert run.generate("time traveller", 10, temperature=0) == out["samples"][0][:24]
    a = run.generate(["time", "the time"], 20, temperature=1.0, seed=3)
    assert a == run.generate(["time", "the time"], 20, temperature=1.0, seed=3) and len(a[1]) == 28
    assert 1.0 < run.perplexity("the time traveller Ω") < 27.0  # Ω is outside the vocabulary: <unk>
    assert rnnjax.load(tmp_path, step=24).step == 24
    with pytest.raises(CheckpointError, match="no checkpoint at step 5"):
        rnnjax.load(tmp_path, step=5)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate.py"), f"--workdir={tmp_path}",
                           "--prefix=time traveller", "--num_chars=10", "--temperature=0"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0 and proc.stdout.rstrip("\n") == out["samples"][0][:24]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bitwise_exact(tmp_path):
    epochs = "--config.train.num_epochs=12"
    t0 = time.monotonic()
    ref = subprocess.run(cli(tmp_path / "ref", epochs), capture_output=True, text=True, env=ENV, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    duration = time.monotonic() - t0  # kill moments scale with this machine's speed
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    kills = 0
    for delay in rng.uniform(0.3, 0.9, size=4) * duration:
        proc = subprocess.Popen(cli(run, epochs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1
    done = subprocess.run(cli(run, epochs), capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert param_bytes(rnnjax.load(run, step="latest").params) == param_bytes(rnnjax.load(tmp_path / "ref", step="latest").params)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 13))


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_resume_is_exact(tmp_path):
    epochs = "--config.train.num_epochs=400"
    proc = subprocess.Popen(cli(tmp_path / "run", epochs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
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
        r = subprocess.run(cli(tmp_path / d, horizon), capture_output=True, text=True, env=ENV, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    assert param_bytes(rnnjax.load(tmp_path / "run", step="latest").params) == param_bytes(
        rnnjax.load(tmp_path / "ref", step="latest").params)


def test_notebook_runs_against_a_tiny_run(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    train_and_evaluate(cfg_with(2), tmp_path / "run")
    nb = nbformat.read(ROOT / "notebooks" / "restore_and_generate.ipynb", as_version=4)
    os.environ["RNNJAX_WORKDIR"] = str(tmp_path / "run")
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        del os.environ["RNNJAX_WORKDIR"]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "2-layer lstm, hidden 32" in text and "using step " in text and "T=0.0: 'time traveller" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_layout_params_are_their_own_item_and_load_reads_only_them(tmp_path):
    out = train_and_evaluate(cfg_with(1), tmp_path)
    step_dir = tmp_path / "checkpoints" / "24"
    assert {p.name for p in step_dir.iterdir() if p.is_dir()} == {"params", "state", "meta"}
    meta = json.loads((step_dir / "meta" / "metadata").read_text())
    assert meta["layout"] == 2 and "config" not in meta and "vocab" not in meta  # config.json/vocab.json hold them
    assert any(k.startswith("['params']") for k in meta["checksums"])
    for f in (step_dir / "state").rglob("*"):  # the resume-only arrays gone: load never reads them
        if f.is_file() and "/d/" in str(f):
            f.unlink()
    run = rnnjax.load(tmp_path)
    assert run.step == 24 and param_bytes(run.params) == param_bytes(out["params"])
    with pytest.raises(CheckpointError, match="every checkpoint .* is damaged"):  # resuming needs them: damage
        train_and_evaluate(cfg_with(2), tmp_path)
