"""Nothing lost, nothing silent: damage is told apart from other restore errors, silent
corruption is caught by checksums, a workdir's history is never thrown away, and bad
workdirs, metrics files and signals end in one clear line."""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import copy_run, param_bytes, small_config

import rnnjax
from rnnjax.rundir import checkpoint, integrity
from rnnjax.rundir.checkpoint import CheckpointError
from rnnjax.rundir.workdir import WorkdirError, read_metrics
from rnnjax.training.console import Preempted
from rnnjax.training.train import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def snapshot(workdir):
    return {
        str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(pathlib.Path(workdir).rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def biggest_array_file(step_dir):
    files = [
        p for p in step_dir.rglob("*") if p.is_file() and "/d/" in str(p)
    ]  # array data, params/ or state/
    return max(files, key=lambda p: p.stat().st_size)


@pytest.fixture
def run_copy(smoke_run, tmp_path):
    """The shared finished 3-epoch run (checkpoints at steps 24, 48, 72), copied per test."""
    src, out = smoke_run
    return copy_run(src, tmp_path / "run"), out


def test_flipped_bytes_are_caught_by_checksums_and_fall_back(run_copy, caplog):
    run, _ = run_copy
    latest = run / "checkpoints" / str(steps(run)[-1])
    target = biggest_array_file(latest)
    data = bytearray(target.read_bytes())
    for i in range(200):
        data[len(data) // 3 + i] ^= 0xFF
    target.write_bytes(bytes(data))
    loaded = rnnjax.load(run, step="latest")  # read-only: falls back, moves nothing
    assert loaded.step == 48 and (run / "checkpoints" / "72").is_dir()
    assert "damaged" in caplog.text
    with pytest.raises(CheckpointError, match="step 72 .* is damaged"):
        rnnjax.load(run, step=72)  # an explicit step never falls back
    resumed = train_and_evaluate(
        small_config(3), run
    )  # the trainer quarantines it and redoes epoch 3 exactly
    assert (run / "damaged").is_dir() and any(
        p.name.startswith("72.") for p in (run / "damaged").iterdir()
    )
    assert all(
        np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(resumed["params"])
    )
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


def test_checksums_are_recorded_for_every_array(smoke_run):
    run, _ = smoke_run
    meta = json.loads((run / "checkpoints" / "72" / "meta" / "metadata").read_text())
    assert len(meta["checksums"]) >= 10 and all(len(v) == 64 for v in meta["checksums"].values())


@pytest.mark.parametrize(
    "error",
    [
        MemoryError("out of memory"),
        TypeError("bug in a restore target"),
        ValueError("Checkpoint path should be absolute. Got runs/x"),
    ],
)
def test_an_unrelated_restore_error_moves_nothing(run_copy, monkeypatch, error):
    run, _ = run_copy
    before = snapshot(run)

    def broken(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "restore", broken)
    with pytest.raises(type(error), match=str(error).split(".")[0]):
        train_and_evaluate(small_config(3), run)
    with pytest.raises(type(error)):
        rnnjax.load(run)
    assert snapshot(run) == before and not (run / "damaged").exists()


@pytest.mark.parametrize(
    "damage",
    [
        "truncated_array",
        "deleted_array_metadata",
        "deleted_manifest",
        "garbled_meta",
        "empty_step_dir",
        "non_utf8_params_array_metadatas",
        "random_state_array_metadatas",
    ],
)
def test_each_damage_kind_is_quarantined_and_the_previous_step_used(run_copy, damage):
    run, out = run_copy
    latest = run / "checkpoints" / "72"
    if damage == "truncated_array":
        f = biggest_array_file(latest)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "deleted_array_metadata":
        (latest / "state" / "_METADATA").unlink()
    elif damage == "deleted_manifest":
        (latest / "state" / "manifest.ocdbt").unlink()
    elif damage == "garbled_meta":
        (latest / "meta" / "metadata").write_text('{"epoch": 3, "ba')
    elif damage == "non_utf8_params_array_metadatas":
        f = latest / "params" / "array_metadatas" / "process_0"
        f.write_bytes(b"\xff" * f.stat().st_size)
    elif damage == "random_state_array_metadatas":
        f = latest / "state" / "array_metadatas" / "process_0"
        f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size))
    else:
        (run / "checkpoints" / "96").mkdir()
    assert integrity.find_damage(latest) is not None or damage in (
        "truncated_array",
        "empty_step_dir",
    )
    resumed = train_and_evaluate(small_config(3), run)
    assert param_bytes(resumed["params"]) == param_bytes(
        out["params"]
    )  # epoch 3 redone from step 48, exactly
    moved = {p.name.split(".")[0] for p in (run / "damaged").iterdir()}
    assert moved == ({"96"} if damage == "empty_step_dir" else {"72"})


def test_all_quarantined_then_rerun_refuses_and_keeps_the_history(run_copy):
    run, _ = run_copy
    for s in steps(run):
        (run / "checkpoints" / str(s) / "meta" / "metadata").unlink()
    with pytest.raises(
        CheckpointError, match=r"every checkpoint .* is damaged \(steps \[24, 48, 72\]"
    ):
        train_and_evaluate(small_config(3), run)
    before = snapshot(run)
    with pytest.raises(
        WorkdirError,
        match=r"holds 3 epoch record\(s\) in metrics.jsonl and 3 damaged checkpoint\(s\) in "
        r"damaged/ but no checkpoint to resume from; use a new --workdir, or "
        r"--resume=restart",
    ):
        train_and_evaluate(small_config(3), run)
    assert snapshot(run) == before  # metrics.jsonl not truncated, nothing moved
    out = train_and_evaluate(
        small_config(1), run, resume="restart"
    )  # the explicit way on: old files kept aside
    kept = list((run / "discarded").iterdir())
    assert (
        len(kept) == 1
        and len(read_metrics(kept[0] / "metrics.jsonl")) == 3
        and (kept[0] / "damaged").is_dir()
    )
    assert [r["epoch"] for r in out["metrics"]] == [1]


def test_metrics_nan_is_null_and_a_torn_last_line_is_dropped(run_copy, caplog):
    from rnnjax.rundir.workdir import append_metrics

    run, _ = run_copy
    path = run / "metrics.jsonl"
    append_metrics(path, {"epoch": 4, "train_ppl": float("nan"), "val_ppl": float("inf")})
    assert path.read_text().splitlines()[-1] == '{"epoch": 4, "train_ppl": null, "val_ppl": null}'
    for line in path.read_text().splitlines():
        json.loads(line)  # strict JSON everywhere
    path.write_text(path.read_text() + '{"epoch": 5, "tra')  # a kill mid-write
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2, 3, 4]
    assert "half-written last line" in caplog.text
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(WorkdirError, match="line 2 is not JSON"):
        read_metrics(path)


@pytest.mark.parametrize("name", ["config.json", "vocab.json"])
def test_damaged_run_json_is_one_line(run_copy, name):
    run, _ = run_copy
    (run / name).write_text('{"seed": ')
    before = snapshot(run)
    with pytest.raises(WorkdirError, match=rf"{name} is damaged \(JSONDecodeError\)"):
        train_and_evaluate(small_config(3), run)
    assert snapshot(run) == before


def test_bad_workdirs_are_refused_creating_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkdirError, match="is a file"):
        train_and_evaluate(small_config(1), tmp_path / "file")
    with pytest.raises(WorkdirError, match="which is a file"):
        train_and_evaluate(small_config(1), tmp_path / "file" / "run")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def _in_own_mount_namespace(script, cwd):
    """Run a shell script with a private mount namespace (a tmpfs mounted there vanishes with
    it)."""
    import shutil

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs util-linux unshare for a private tmpfs")
    flags = ["-m"] if os.geteuid() == 0 else ["-rm"]
    probe = subprocess.run(
        [unshare, *flags, "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs here: {probe.stderr.decode().strip()}")
    return subprocess.run(
        [unshare, *flags, "sh", "-ec", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )


TRAIN_SMOKE = (
    f"{sys.executable} {ROOT / 'scripts' / 'train.py'} "
    f"--config={ROOT / 'configs' / 'deep_lstm.py'}:smoke"
)


@pytest.mark.slow
def test_read_only_workdir_is_one_line(tmp_path):
    (tmp_path / "ro").mkdir()
    proc = _in_own_mount_namespace(
        f"mount -t tmpfs -o ro tmpfs ro; {TRAIN_SMOKE} --workdir=ro/run", tmp_path
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: workdir {tmp_path / 'ro' / 'run'}: {tmp_path / 'ro'} is not writable; "
        "give a writable --workdir"
    ]


@pytest.mark.slow
def test_disk_full_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    (tmp_path / "d").mkdir()
    fill = (
        "import os; s = os.statvfs('d'); "
        "open('d/fill', 'wb').write(bytes(s.f_bavail * s.f_frsize - 16384))"
    )
    script = (
        f"mount -t tmpfs -o size=2m tmpfs d; {TRAIN_SMOKE} --workdir=d/run "
        "--config.train.num_epochs=1 "
        f'--config.train.progress=False >/dev/null; {sys.executable} -c "{fill}"; '
        f"{TRAIN_SMOKE} --workdir=d/run --config.train.num_epochs=2 --config.train.progress=False "
        "|| echo rc=$?; "
        "ls -a d/run/checkpoints; cat d/run/metrics.jsonl | wc -l"
    )
    proc = _in_own_mount_namespace(script, tmp_path)
    assert proc.stderr.strip().splitlines() == [
        "error: disk full while saving checkpoint step 48 in "
        f"{tmp_path / 'd' / 'run' / 'checkpoints'}: it needs about "
        "0.2 MiB, 0.0 MiB are free; the previous checkpoint (step 24) is intact. "
        "Free some space and rerun the same "
        "command to resume"
    ], proc.stderr[-3000:]
    listing = proc.stdout.split()
    assert "rc=1" in listing and "24" in listing  # the previous checkpoint is there
    assert not [x for x in listing if "tmp" in x]  # no partial save left behind
    assert listing[-1] == "2"  # both epochs' records kept


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_and_leaves_no_partial_save(tmp_path):
    script = (
        f"{TRAIN_SMOKE} --workdir=run --config.train.num_epochs=1 --config.train.progress=False "
        f">/dev/null; ulimit -f 40; {TRAIN_SMOKE} --workdir=run --config.train.num_epochs=2 "
        "--config.train.progress=False || echo rc=$?; ls -a run/checkpoints"
    )
    proc = subprocess.run(
        ["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=600
    )
    assert proc.stderr.strip().splitlines() == [
        "error: file size limit reached (ulimit -f) while saving checkpoint step 48 in "
        f"{tmp_path / 'run' / 'checkpoints'}; the previous checkpoint (step 24) is intact. Raise "
        "the limit (ulimit -f unlimited) and rerun the same command to resume"
    ], proc.stderr[-3000:]
    listing = proc.stdout.split()
    assert "rc=1" in listing and "24" in listing and not [x for x in listing if "tmp" in x]


@pytest.mark.slow
def test_a_file_size_limit_while_writing_a_run_file_names_it(tmp_path):
    proc = subprocess.run(
        ["sh", "-c", f"ulimit -f 1; {TRAIN_SMOKE} --workdir=run --config.train.progress=False"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: file size limit reached (ulimit -f) while writing "
        f"{tmp_path / 'run' / 'config.json'}: raise the limit (ulimit -f unlimited) and rerun the "
        "same command to resume"
    ], proc.stderr[-3000:]


@pytest.mark.slow
def test_checkpoints_made_read_only_is_one_line(tmp_path):
    script = (
        f"{TRAIN_SMOKE} --workdir=run --config.train.num_epochs=1 --config.train.progress=False "
        ">/dev/null; mount --bind run/checkpoints run/checkpoints; "
        "mount -o remount,ro,bind run/checkpoints; "
        f"{TRAIN_SMOKE} --workdir=run --config.train.num_epochs=2 --config.train.progress=False "
        "|| echo rc=$?; wc -l < run/metrics.jsonl"
    )
    proc = _in_own_mount_namespace(script, tmp_path)
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot write checkpoint step 48 in {tmp_path / 'run' / 'checkpoints'} "
        "(Read-only file system); the previous checkpoint (step 24) is intact. Make it writable "
        "and rerun the same command to resume"
    ], proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [  # where it resumed; epoch 2's record is kept
        "resuming from epoch 2, step 24 (minibatch 0)",
        "rc=1",
        "2",
    ]


# by default: test_train.py::test_a_learning_rate_that_overflows_the_loss_aborts_in_one_line
@pytest.mark.exhaustive
def test_nonfinite_abort_names_the_part_and_the_settings(tmp_path):
    bad = small_config(2)
    bad.train.learning_rate, bad.train.grad_clip = 1e38, 1.0
    with pytest.raises(
        FloatingPointError,
        match=r"the (gradient|update|loss) was not finite with train.optimizer = 'sgd', "
        r"train.learning_rate = 1e\+38, train.grad_clip = 1.0; lower "
        r"train.learning_rate$",
    ):
        train_and_evaluate(bad, tmp_path / "a")
    bad.train.grad_clip = 0.0
    with pytest.raises(
        FloatingPointError,
        match=r"train.grad_clip = 0.0 \(off\); lower train.learning_rate or set "
        r"train.grad_clip",
    ):
        train_and_evaluate(bad, tmp_path / "b")


def test_sigterm_before_training_starts_saves_nothing_and_says_so(tmp_path, monkeypatch):
    from rnnjax.dataset import data

    real = data.load_corpus

    def signalled_while_loading(
        cfg,
    ):  # the signal arrives while the corpus is read: before any training step
        os.kill(os.getpid(), signal.SIGTERM)
        return real(cfg)

    monkeypatch.setattr(data, "load_corpus", signalled_while_loading)
    with pytest.raises(
        Preempted, match="^stopped by signal 15 before training started: nothing was saved yet$"
    ) as e:
        train_and_evaluate(small_config(1), tmp_path / "run")
    assert e.value.step is None and not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir()
    )


def test_a_torn_last_record_covered_by_a_checkpoint_comes_back_from_it(run_copy, caplog):
    run, out = run_copy
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(
        "\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2]
    )  # epoch 3's line torn
    again = train_and_evaluate(
        small_config(3), run
    )  # finished: nothing to train, epoch 3's record is restored
    assert "restored from the checkpoint" in caplog.text
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2, 3]
    assert read_metrics(path)[-1]["val_ppl"] == out["metrics"][-1]["val_ppl"] == again["val_ppl"]


def test_a_sweep_dir_that_is_a_file_is_refused(tmp_path):
    from rnnjax.sweeps.sweep import run_sweep

    (tmp_path / "afile").write_text("x")
    with pytest.raises(WorkdirError, match="is a file"):
        run_sweep(small_config(1), {"model.cell": ["gru"]}, tmp_path / "afile")
    with pytest.raises(WorkdirError, match="which is a file"):
        run_sweep(small_config(1), {"model.cell": ["gru"]}, tmp_path / "afile" / "s")


def test_generate_names_the_damaged_file_when_it_cannot_fall_back(run_copy):
    """An explicit --step never falls back; with every step damaged there is nothing to fall back
    to: either way the one line names the file."""
    run, _ = run_copy
    for s in steps(run):
        f = run / "checkpoints" / str(s) / "params" / "array_metadatas" / "process_0"
        f.write_bytes(b"\xff" + f.read_bytes()[1:])
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "generate.py"),
        f"--workdir={run}",
        "--num_chars=5",
    ]
    bad = "params/array_metadatas/process_0 is not UTF-8 text (byte 0)"
    explicit = subprocess.run(
        [*cmd, "--step=48"], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert explicit.returncode == 1 and explicit.stderr.strip().splitlines() == [
        f"error: checkpoint step 48 in {run / 'checkpoints'} is damaged: {bad}"
    ], explicit.stderr[-3000:]
    every = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert every.returncode == 1 and every.stderr.strip().splitlines()[-1] == (
        f"error: every checkpoint in {run / 'checkpoints'} is damaged (steps [24, 48, 72], left "
        f"in place; step 72: {bad}); start over with a new --workdir"
    ), every.stderr[-3000:]
    assert steps(run) == [24, 48, 72] and not (run / "damaged").exists()  # read-only: nothing moved


@pytest.mark.parametrize("step", ["latest", "best"])
def test_a_reader_racing_the_trainers_rotation_never_calls_the_run_damaged(
    run_copy, monkeypatch, caplog, step
):
    """The trainer deletes a step (its rotation) while ``rnnjax.load`` reads it: the reader goes
    on to another step, warns of no damage and moves nothing."""
    run, _ = run_copy
    real_read = checkpoint.Checkpointer._read
    deleted = []

    def rotated_while_read(self, s, *args, **kwargs):
        if not deleted:
            deleted.append(s)
            shutil.rmtree(self.directory / str(s))  # mid-read: the arrays go
        return real_read(self, s, *args, **kwargs)

    monkeypatch.setattr(checkpoint.Checkpointer, "_read", rotated_while_read)
    loaded = rnnjax.load(run, step=step)
    assert deleted and loaded.step != deleted[0] and loaded.step in steps(run)
    assert "damaged" not in caplog.text and not (run / "damaged").exists()


def test_a_reader_whose_every_step_is_rotated_away_tries_the_new_ones(run_copy, monkeypatch):
    run, _ = run_copy
    real_read = checkpoint.Checkpointer._read
    moved = {}

    def all_rotated(self, s, *args, **kwargs):
        if not moved:  # the trainer saved a new step and rotated every old one away
            for old in steps(run):
                shutil.move(run / "checkpoints" / str(old), run / f"kept{old}")
            shutil.copytree(run / "kept72", run / "checkpoints" / "96")
            moved["done"] = True
        return real_read(self, s, *args, **kwargs)

    monkeypatch.setattr(checkpoint.Checkpointer, "_read", all_rotated)
    assert rnnjax.load(run).step == 96


def test_a_step_deleted_while_orbax_lists_them_is_listed_again(run_copy, monkeypatch):
    """orbax's manager lists the steps, then stats each: one the trainer rotated away in between
    raises FileNotFoundError there. A reader lists again; it never surfaces."""
    run, _ = run_copy
    real = checkpoint.ocp.CheckpointManager
    calls = []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            shutil.rmtree(run / "checkpoints" / "24")  # rotated away mid-listing
            raise FileNotFoundError(2, "No such file or directory", str(run / "checkpoints/24"))
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", racing)
    assert rnnjax.load(run, step="latest").step == 72 and len(calls) == 2


def test_a_file_where_a_checkpoint_step_belongs_is_set_aside_not_overwritten(run_copy, caplog):
    """A file named like a step in checkpoints/ is no checkpoint: a reader leaves it out saying
    so, and a resumed run moves it to damaged/ (kept) before a save of that step could delete it."""
    run, _ = run_copy
    *earlier, latest = steps(run)
    last = run / "checkpoints" / str(latest)
    shutil.rmtree(last)
    last.write_text("USERDATA")
    with caplog.at_level("WARNING"):
        loaded = rnnjax.load(run, step="latest")
    assert loaded.step == earlier[-1] and last.read_text() == "USERDATA"
    assert f"{last} is a file where a checkpoint step belongs: left out" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        train_and_evaluate(small_config(4), run)  # resumes from the step before, saves over
    kept = list((run / "damaged").glob(f"{last.name}.*"))
    assert len(kept) == 1 and kept[0].read_text() == "USERDATA"
    assert "is a file where a checkpoint step belongs: moved to" in caplog.text
    assert last.is_dir()  # the resumed run's own step now


def test_after_a_rotation_race_orbax_s_abandoned_reads_are_quiet(monkeypatch):
    """A read that raced the trainer's rotation leaves orbax's asyncio reads of the deleted step
    to finish later, in tensorstore's threads: their unraisable "Event loop is closed" and unread
    read errors are dropped (a real race: 170 loads against a max_to_keep=1 trainer, no traceback
    on stderr); any other unraisable exception still reaches the hook before."""
    import sys
    import types

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    monkeypatch.setattr(integrity, "_abandoned_reads_quiet", False)
    integrity.quiet_abandoned_reads()
    integrity.quiet_abandoned_reads()  # once: the hook is not wrapped twice
    for e in (
        RuntimeError("Event loop is closed"),
        Exception("Encountered error while reading array index: (slice(0, 27, 1),)."),
        ValueError("something else"),
    ):
        unraisable = types.SimpleNamespace(
            exc_type=type(e), exc_value=e, exc_traceback=None, err_msg=None, object=None
        )  # the fields CPython's UnraisableHookArgs has
        sys.unraisablehook(unraisable)
    assert seen == ["something else"]
    import logging

    def record(text):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, text, None, None)

    dropped = (
        "Task exception was never retrieved\nfuture: <Task finished exception=ValueError("
        "'NOT_FOUND: "
        'Error opening "zarr" driver: Metadata at ... in OCDBT database at local file ...\')>'
    )
    assert not integrity._not_an_abandoned_read(record(dropped))
    assert integrity._not_an_abandoned_read(record("Task exception was never retrieved\nmine"))
