"""Training runs: bitwise determinism from the seed, learning, the files a run writes, the CLI end
to end."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import small_config

from rnnjax.config import resolve
from rnnjax.dataset import batches, data
from rnnjax.training.train import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_equal(a, b):
    return all(
        np.array_equal(x, y)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def test_training_is_deterministic_and_lowers_perplexity(tmp_path):
    cfg = small_config()
    cfg.train.num_epochs = 15
    cfg.train.optimizer, cfg.train.learning_rate = "adam", 0.01
    a = train_and_evaluate(cfg, tmp_path / "a")
    b = train_and_evaluate(cfg, tmp_path / "b")
    assert tree_equal(a["params"], b["params"])  # same config and seed: bitwise equal
    first, last = a["metrics"][0], a["metrics"][-1]
    assert last["train_ppl"] < 0.75 * first["train_ppl"]
    assert last["val_ppl"] < first["val_ppl"]
    cfg.seed = 1
    c = train_and_evaluate(cfg, tmp_path / "c")
    assert not tree_equal(a["params"], c["params"])


@pytest.mark.parametrize(
    "cell,sampler,dropout", [("rnn", "random", 0.0), ("lstm", "sequential", 0.3)]
)
def test_run_writes_its_files(tmp_path, cell, sampler, dropout):
    cfg = small_config(**{"model.cell": cell, "model.dropout": dropout, "model.num_layers": 3})
    cfg.data.sampler = sampler
    out = train_and_evaluate(cfg, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["cell"] == cell and config["data"]["sampler"] == sampler
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for key in ("step", "train_ppl", "val_ppl", "tokens_per_sec", "grad_norm", "lr"):
        assert all(np.isfinite(r[key]) for r in records)
    assert records[-1]["step"] == 3 * batches.batches_per_epoch(resolve(cfg).data, 2000)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = (tmp_path / "samples.txt").read_text().splitlines()
    assert samples[0].startswith("time traveller") and len(samples[0]) == len("time traveller") + 20
    assert json.loads((tmp_path / "vocab.json").read_text())["idx_to_token"][0] == " "
    assert out["val_ppl"] == records[-1]["val_ppl"]


# The exhaustive tier: by default the CLI trains end to end in tests/test_readme.py (the README's
# commands) and test_cells.py (a --config.model override reaching config.json, then generate.py).
@pytest.mark.exhaustive
@pytest.mark.slow
def test_cli_trains_the_smoke_config_end_to_end(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "train.py"),
            "--config=" + os.path.join(ROOT, "configs", "deep_gru.py") + ":smoke",
            f"--workdir={tmp_path}",
            "--config.model.num_layers=3",
            "--config.train.progress=False",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "validation perplexity" in proc.stdout
    assert json.loads((tmp_path / "config.json").read_text())["model"]["num_layers"] == 3
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_each_val_ppl_is_the_perplexity_of_that_epochs_params(tmp_path):
    """Records are the same whatever the checkpoint interval, and each epoch's val_ppl is the
    perplexity of that epoch's params (rnnjax.load of its checkpoint) on the validation tokens."""
    import rnnjax
    from rnnjax.training.evaluation import perplexity

    every = {
        1: train_and_evaluate(
            small_config(6, **{"checkpoint.every_epochs": 1, "checkpoint.max_to_keep": 6}),
            tmp_path / "every1",
        ),
        4: train_and_evaluate(
            small_config(6, **{"checkpoint.every_epochs": 4}), tmp_path / "every4"
        ),
    }
    timing = ("tokens_per_sec", "wall_time")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    assert [r["epoch"] for r in every[4]["metrics"]] == [1, 2, 3, 4, 5, 6]
    assert strip(every[4]["metrics"]) == strip(every[1]["metrics"])
    on_disk = [
        json.loads(x) for x in (tmp_path / "every4" / "metrics.jsonl").read_text().splitlines()
    ]
    assert strip(on_disk) == strip(every[4]["metrics"])
    cfg = resolve(small_config(6))
    val = data.load_corpus(cfg.data).val
    for epoch in (2, 5):
        run = rnnjax.load(
            tmp_path / "every1", step=epoch * batches.batches_per_epoch(cfg.data, 2000)
        )
        ppl = perplexity(run.model, run.params, val, cfg.data.batch_size, cfg.data.num_steps)
        assert ppl == pytest.approx(every[4]["metrics"][epoch - 1]["val_ppl"], rel=1e-6)


class _Killed(Exception):
    pass


@pytest.mark.parametrize("when", ["before the metrics line", "after the metrics line"])
def test_a_kill_around_the_first_record_resumes_with_every_record(
    tmp_path, monkeypatch, when, smoke_run
):
    """The first epoch's checkpoint is saved before its metrics.jsonl line: a run stopped just
    before or just after that line resumes (it is never left with records but no checkpoint, which a
    rerun would refuse), and ends with the records of an uninterrupted run."""
    from rnnjax.rundir import workdir as rundir

    ref = smoke_run[1]  # small_config(3) uninterrupted
    real = rundir.append_metrics

    def dies(path, record):
        if when == "after the metrics line":
            real(path, record)
        raise _Killed

    monkeypatch.setattr(rundir, "append_metrics", dies)
    with pytest.raises(_Killed):
        train_and_evaluate(small_config(3), tmp_path / "run")
    monkeypatch.setattr(rundir, "append_metrics", real)
    out = train_and_evaluate(small_config(3), tmp_path / "run")
    timing = ("tokens_per_sec", "wall_time")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    on_disk = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert strip(on_disk) == strip(out["metrics"]) == strip(ref["metrics"])


def test_a_loss_too_large_for_exp_has_perplexity_inf():
    from rnnjax.training.metrics import epoch_record, perplexity_of, sums_perplexity

    assert perplexity_of(1e6) == float("inf") and perplexity_of(1.0) == pytest.approx(np.e)
    assert sums_perplexity({"nll": np.float32(1e9), "tokens": np.float32(10.0)}) == float("inf")
    sums = {
        "loss": np.float64(1e7),
        "grad_norm": np.float64(1.0),
        "steps": np.float64(2.0),
        "skipped": np.float64(0.0),
    }
    record = epoch_record(1, 2, sums, {"nll": 1e8}, 1.0, 1.0, 1.0)
    assert record["train_ppl"] == record["val_ppl"] == float("inf") and record[
        "train_bpc"
    ] == float("inf")


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_a_learning_rate_that_overflows_the_loss_aborts_in_one_line(tmp_path, grad_clip):
    """Issue 25.5: --config.train.learning_rate=1e6 made math.exp overflow; now the run stops after
    the epoch with the one-line abort naming the perplexity, its record written with null."""
    cmd = [
        sys.executable,
        os.path.join(ROOT, "scripts", "train.py"),
        f"--config={os.path.join(ROOT, 'configs', 'deep_lstm.py')}:smoke",
        f"--workdir={tmp_path}",
        "--config.train.progress=False",
        "--config.train.learning_rate=1e6",
        f"--config.train.grad_clip={grad_clip}",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu")
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: aborting at epoch 1") and "perplexity" in last and "are inf" in last
    ), last
    assert "lower train.learning_rate" in last
    (record,) = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert (
        record["train_ppl"] is None and record["val_ppl"] is None and record["skipped_steps"] == 0
    )


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_the_same_command_after_sigkill_restarts_or_resumes_by_itself(tmp_path):
    """Issue 25.11: killed before its first checkpoint, then past one; the same command each time
    goes on by itself, sets aside (never deletes) the records no checkpoint covers and says so."""
    import time

    from conftest import train_cli

    run = tmp_path / "run"
    cmd = train_cli(
        run,
        "--config.train.num_epochs=4",
        "--config.checkpoint.every_epochs=2",
        "--config.train.progress=True",
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    outs = []
    for records in (
        1,
        3,
    ):  # SIGKILL after epoch 1 (no checkpoint yet), then after epoch 3 (past epoch 2's)
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        deadline = time.time() + 300
        while _lines(run / "metrics.jsonl") < records:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        proc.kill()
        outs.append(proc.communicate(timeout=60)[0])
    assert (
        "no checkpoint covers the records there: set aside in" in outs[1]
        and "training from scratch" in outs[1]
    )
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (
        "resuming from epoch 3" in p.stdout
        and "no checkpoint covers the record(s) of epoch 3" in p.stdout
    )
    assert len(p.stdout.splitlines()) <= 10  # still a short console
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
    ]
    kept = sorted((run / "discarded").glob("*/metrics.jsonl"))
    assert [[json.loads(x)["epoch"] for x in p.read_text().splitlines()] for p in kept] == [
        [1],
        [3],
    ]


def test_every_minutes_saves_mid_epoch_and_a_kill_there_resumes_bitwise(tmp_path):
    """checkpoint.every_minutes: a save once that long has passed, mid-epoch too; a run cut back
    to such a save (as a kill there leaves it) resumes to the uninterrupted run's params, bit for
    bit."""
    import shutil

    cfg = small_config(
        2,
        **{
            "checkpoint.every_minutes": 1e-9,
            "checkpoint.max_to_keep": 1000,
            "checkpoint.every_epochs": 100,
        },
    )
    run = tmp_path / "run"
    straight = train_and_evaluate(cfg, run)
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) >= 10 and steps == list(range(1, steps[-1] + 1))  # every step saved
    cut = steps[len(steps) // 2 + 3]  # inside epoch 2
    meta = json.loads((run / "checkpoints" / str(cut) / "meta" / "metadata").read_text())
    assert meta["epoch"] == 1 and meta["batch"] > 0, meta  # a mid-epoch position
    for s in steps:
        if s > cut:
            shutil.rmtree(run / "checkpoints" / str(s))
    resumed = train_and_evaluate(cfg, run)
    assert tree_equal(resumed["params"], straight["params"])
    assert [r["epoch"] for r in resumed["metrics"]] == [1, 2]


def test_without_the_progress_bar_the_start_block_s_notes_still_reach_stderr(
    tmp_path, monkeypatch, capsys
):
    """train.progress = False drops the bar and the start block, not what the block warns about:
    auto falling back to the pure-JAX layer, and the time budget, one line each on stderr."""
    from rnnjax.network.impls import native

    monkeypatch.setattr(native, "_EXT", None)
    monkeypatch.setattr(native, "WHY_NOT", "the native extension is not built here (test)")
    cfg = small_config(1, **{"train.max_steps": 3})
    train_and_evaluate(cfg, tmp_path / "run")
    err = capsys.readouterr().err.splitlines()
    assert (
        "rnnjax: model.impl = 'auto' runs the pure-JAX layer (rnnjax), not the native kernels: the "
        "native extension is not built here (test); reinstall with a C++ compiler (pip install -e "
        ".) to build them"
    ) in err
    assert any(line.startswith("rnnjax: budget: 3 steps") for line in err), err
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["impl"] == "rnnjax"
    assert not any("resuming" in line for line in err)  # a fresh run: no resume line
    monkeypatch.undo()  # the kernels back: a plain run, then its resume
    train_and_evaluate(small_config(1), tmp_path / "again")
    assert capsys.readouterr().err == ""  # nothing to say
    train_and_evaluate(small_config(2), tmp_path / "again")
    said = capsys.readouterr()
    assert said.err == "" and said.out.splitlines()[0] == (
        "resuming from epoch 2, step 24 (minibatch 0)"
    ), said
