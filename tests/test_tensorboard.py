"""TensorBoard event files, read back with TensorBoard's own reader (EventAccumulator, no
TensorFlow): every scalar equals its ``metrics.jsonl`` value, a SIGKILLed and resumed run holds each
epoch once, sweeps write one run per trial; and the profiler hook writes a trace."""

import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import small_config, train_cli

from rnnjax.config import ConfigError, resolve
from rnnjax.rundir.workdir import read_metrics
from rnnjax.training.train import train_and_evaluate

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def read_events(workdir):
    acc = event_accumulator.EventAccumulator(
        str(workdir), size_guidance={"scalars": 0, "tensors": 0}
    )
    acc.Reload()
    return acc


def scalar(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def expected(records, key, f=lambda x: x):
    return [(r["epoch"], np.float32(f(r[key]))) for r in records]


def assert_equal_to_metrics(acc, records, num_layers):
    assert scalar(acc, "perplexity/val") == expected(records, "val_ppl")
    assert scalar(acc, "perplexity/train") == expected(records, "train_ppl")
    assert scalar(acc, "loss/val") == expected(records, "val_ppl", math.log)
    assert scalar(acc, "bpc/train") == expected(records, "train_ppl", math.log2)
    for tag, key in [
        ("lr", "lr"),
        ("tokens_per_sec", "tokens_per_sec"),
        ("grad_norm/global", "grad_norm"),
        ("skipped_steps", "skipped_steps"),
        ("grad_norm/output", "grad_norm_output"),
    ]:
        assert scalar(acc, tag) == expected(records, key), tag
    for l in range(num_layers):
        for key in ("h_rms", "gate_saturation", "forget_gate", "memory_length"):
            assert scalar(acc, f"{key}/layer_{l + 1}") == expected(
                records, key, lambda v, l=l: v[l]
            ), key
        assert scalar(acc, f"grad_norm/layer_{l + 1}") == expected(
            records, "grad_norm_layers", lambda v, l=l: v[l]
        )


def test_a_run_writes_event_files_equal_to_metrics_jsonl(tmp_path):
    cfg = small_config(4, **{"model.num_layers": 3, "checkpoint.every_epochs": 2})
    out = train_and_evaluate(cfg, tmp_path)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    acc = read_events(tmp_path)
    assert_equal_to_metrics(acc, records, num_layers=3)
    assert all(len(r["grad_norm_layers"]) == 3 and r["grad_norm_layers"][0] > 0 for r in records)
    # Greedy samples as text at each checkpoint epoch; the last equals samples.txt.
    texts = acc.Tensors("samples/text_summary")
    assert [t.step for t in texts] == [2, 4]
    last = texts[-1].tensor_proto.string_val[0].decode()
    assert all(f"`{s}`" in last for s in out["samples"])
    # The resolved config as hparams, with the final and best validation perplexity.
    assert "_hparams_/session_start_info" in acc.summary_metadata
    plugin = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data
    assert plugin.plugin_name == "hparams" and b"model.num_layers" in plugin.content
    best = min(r["val_ppl"] for r in records)
    assert scalar(acc, "hparams/best_val_ppl") == [(4, np.float32(best))]
    assert scalar(acc, "hparams/final_val_ppl") == [(4, np.float32(records[-1]["val_ppl"]))]


def test_sigkill_then_resume_keeps_each_epoch_once(tmp_path):
    """A SIGKILL after epoch 4 (checkpoint at 3) leaves events past the checkpoint; the resumed
    run's purge step makes TensorBoard drop them, so epochs 1..6 appear exactly once, equal to
    metrics.jsonl."""
    run = tmp_path / "run"
    flags = [
        "--config.train.num_epochs=6",
        "--config.checkpoint.every_epochs=3",
        "--config.data.max_tokens=8000",
    ]
    proc = subprocess.Popen(
        train_cli(run, *flags), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and len(read_metrics(run / "metrics.jsonl")) >= 4:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = read_events(run)
    steps_before = [s for s, _ in scalar(killed, "perplexity/val")]
    assert steps_before[-1] >= 4 and steps_before[-1] < 6, (
        steps_before
    )  # events past the checkpoint at epoch 3
    done = subprocess.run(
        train_cli(run, *flags), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = read_metrics(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    acc = read_events(run)
    assert [s for s, _ in scalar(acc, "perplexity/val")] == [1, 2, 3, 4, 5, 6]
    assert_equal_to_metrics(acc, records, num_layers=2)
    assert [t.step for t in acc.Tensors("samples/text_summary")] == [3, 6]


@pytest.mark.exhaustive  # by default: test_sweep.py::test_sweep_runs_records_failures_and_resumes
def test_sweeps_write_one_tensorboard_run_per_trial(tmp_path):
    from rnnjax.sweeps.sweep import run_sweep

    run_sweep(small_config(2), {"seed": [0, 1]}, tmp_path / "vec", vectorize=True)
    run_sweep(small_config(2), {"model.cell": ["gru"]}, tmp_path / "one")
    for trial in [
        tmp_path / "vec" / "seed=0",
        tmp_path / "vec" / "seed=1",
        tmp_path / "one" / "cell=gru",
    ]:
        records = read_metrics(trial / "metrics.jsonl")
        assert_equal_to_metrics(read_events(trial), records, num_layers=2)
    seeds = [
        read_metrics(tmp_path / "vec" / f"seed={s}" / "metrics.jsonl")[-1]["val_ppl"]
        for s in (0, 1)
    ]
    assert seeds[0] != seeds[1]  # each trial's own numbers
    assert (
        "_hparams_/session_start_info" in read_events(tmp_path / "vec" / "seed=1").summary_metadata
    )


def test_profile_steps_writes_a_trace_after_compilation(tmp_path):
    train_and_evaluate(small_config(1, **{"train.profile_steps": 3}), tmp_path)
    traces = list((tmp_path / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    train_and_evaluate(small_config(1), tmp_path / "off")
    assert not (tmp_path / "off" / "profile").exists()


def test_bad_profile_steps_and_layer_stats_are_one_line_errors():
    with pytest.raises(
        ConfigError,
        match=r"^config.train.profile_steps = -1 is not allowed: an integer >= 0 \(0 = no ",
    ):
        resolve(small_config(1, **{"train.profile_steps": -1}))
    cfg = small_config(1).to_dict()
    cfg["train"]["layer_stats"] = (
        1  # a dict (as config.json is read back): ml_collections' types are not checked
    )
    with pytest.raises(
        ConfigError, match=r"^config.train.layer_stats = 1 is not allowed: True or False$"
    ):
        resolve(cfg)


def test_the_reader_needs_no_tensorflow():
    code = (
        "import sys; "
        "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator; "
        "import tensorboardX; print('tensorflow' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]
    assert pathlib.Path(tensorboardX_file()).exists()


def tensorboardX_file():
    import tensorboardX

    return tensorboardX.__file__


def test_a_metric_added_in_one_line_reaches_metrics_jsonl_tensorboard_and_checkpoints(
    tmp_path, monkeypatch
):
    """Issue 24.5: a new training metric is one entry where it is computed."""
    import optax

    import rnnjax
    from rnnjax.training.steps import TRAIN_METRICS, Metric

    monkeypatch.setitem(TRAIN_METRICS, "param_norm", Metric(lambda s: optax.tree.norm(s.params)))
    train_and_evaluate(small_config(2, **{"train.layer_stats": False}), tmp_path)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert (
        all(r["param_norm"] > 0 for r in records)
        and records[0]["param_norm"] != records[1]["param_norm"]
    )
    assert scalar(read_events(tmp_path), "param_norm") == expected(records, "param_norm")
    meta = rnnjax.load(tmp_path, step="latest")  # its sums are saved by name beside the others
    import json

    saved = json.loads(
        (tmp_path / "checkpoints" / str(meta.step) / "meta" / "metadata").read_text()
    )
    assert (
        saved["layout"] == 3
        and saved["metrics"]["param_norm"] == []
        and "grad_norm_layers" not in saved["metrics"]
    )
    monkeypatch.delitem(TRAIN_METRICS, "param_norm")  # a run resumed without it drops it
    out = train_and_evaluate(small_config(3, **{"train.layer_stats": False}), tmp_path)
    assert "param_norm" not in out["metrics"][-1] and [r["epoch"] for r in out["metrics"]] == [
        1,
        2,
        3,
    ]


def test_an_eval_metric_added_in_one_line_reaches_every_record(tmp_path, monkeypatch):
    """Issue 24.5: a new evaluation metric is one entry where it is computed; its mean per token
    reaches metrics.jsonl, TensorBoard, evaluation.json and the sweep's table."""
    import csv
    import json

    import jax.numpy as jnp

    import rnnjax
    from rnnjax.dataset import batches, data
    from rnnjax.sweeps.sweep_summary import summarize
    from rnnjax.training.evaluation import EVAL_METRICS

    monkeypatch.setitem(EVAL_METRICS, "accuracy", lambda w: w.logits.argmax(-1) == w.targets)
    cfg = small_config(2, **{"train.layer_stats": False, "data.num_test": 200})
    train_and_evaluate(cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    # The same fraction counted here, from the last epoch's params over the validation windows.
    run = rnnjax.load(tmp_path / "run", step="latest")
    corpus = data.load_corpus(resolve(cfg).data)
    carry, right, n = run.model.initial_carry(cfg.data.batch_size), 0, 0
    for x_bt, y_bt in batches.eval_windows(corpus.val, cfg.data.batch_size, cfg.data.num_steps):
        logits, carry = run.model.apply(run.params, jnp.asarray(x_bt, jnp.int32), carry)
        right, n = right + int((np.asarray(logits).argmax(-1) == y_bt).sum()), n + y_bt.size
    assert records[-1]["val_accuracy"] == pytest.approx(right / n, abs=1e-6)
    assert 0 < right < n
    assert scalar(read_events(tmp_path / "run"), "val_accuracy") == expected(
        records, "val_accuracy"
    )
    ev = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    best = min(records, key=lambda r: r["val_ppl"])
    assert ev["best_val_accuracy"] == best["val_accuracy"] and 0 < ev["test_accuracy"] < 1
    assert ev["best_val_ppl"] == best["val_ppl"] and "test_ppl" in ev  # the others as before
    # The sweep's table takes both from the trial's result.json, with no list to extend.
    from rnnjax.sweeps.sweep import _row

    summary = train_and_evaluate(cfg, tmp_path / "run")  # finished: only read back
    _row(tmp_path / "run", {"seed": cfg.seed}, resolve(cfg), summary, None)
    summarize(tmp_path)
    with open(tmp_path / "results.csv") as f:
        (row,) = csv.DictReader(f)
    assert float(row["best_epoch.val_accuracy"]) == best["val_accuracy"]
    assert float(row["test_accuracy"]) == ev["test_accuracy"]


def test_a_full_disk_stops_the_events_with_one_warning_and_no_traceback(tmp_path, caplog):
    import errno
    import threading

    from rnnjax.rundir.tensorboard_log import TensorBoardLog

    tb = TensorBoardLog(tmp_path, 1)
    recordio = tb.writer.file_writer.event_writer._ev_writer._py_recordio_writer

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    recordio.write = recordio.flush = full
    raised = []
    old_hook, threading.excepthook = threading.excepthook, raised.append
    try:
        tb.record({"epoch": 1, "train_ppl": 5.0, "val_ppl": 6.0})
        tb.samples(1, ["the"], ["the time"])
        tb.finish({"model": {"cell": "lstm"}}, [{"epoch": 1, "val_ppl": 6.0}], 6.0)
        tb.close()
    finally:
        threading.excepthook = old_hook
    assert tb.stopped and raised == []
    assert caplog.text.count("TensorBoard events stopped (disk full)") == 1


def test_a_finished_run_whose_hparams_were_lost_gets_them_on_the_rerun(tmp_path, monkeypatch):
    from rnnjax.rundir import tensorboard_log

    with monkeypatch.context() as m:  # the end of the run met a full disk: no hparams written
        m.setattr(tensorboard_log.TensorBoardLog, "finish", lambda self, *a: None)
        out = train_and_evaluate(small_config(2), tmp_path)
    assert not tensorboard_log.has_hparams(tmp_path)
    again = train_and_evaluate(small_config(2), tmp_path)  # the same command: nothing to train
    assert [r["epoch"] for r in again["metrics"]] == [1, 2] and tensorboard_log.has_hparams(
        tmp_path
    )
    acc = read_events(tmp_path)
    assert "_hparams_/session_start_info" in acc.summary_metadata
    assert scalar(acc, "hparams/best_val_ppl") == [(2, np.float32(out["best_val_ppl"]))]
    assert scalar(acc, "perplexity/val") == expected(out["metrics"], "val_ppl")
