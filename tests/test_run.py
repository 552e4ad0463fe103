"""``rnnjax.load``: a read-only restore that generates and scores text, as the CLI and the notebook
use it."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import param_bytes, run_notebook, snapshot

import rnnjax
from rnnjax.rundir.checkpoint import CheckpointError

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def test_load_is_read_only_and_generates(smoke_run):
    tmp_path, out = smoke_run
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
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "generate.py"),
            f"--workdir={tmp_path}",
            "--prefix=time traveller",
            "--num_chars=10",
            "--temperature=0",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.rstrip("\n") == out["samples"][0][:24]


def test_notebook_runs_against_a_tiny_run(tmp_path, smoke_run):
    pytest.importorskip("nbformat")
    text, images = run_notebook(
        "restore_and_generate.ipynb", tmp_path, RNNJAX_WORKDIR=str(smoke_run[0])
    )  # rnnjax.load is read-only: the shared run
    assert (
        "2-layer lstm, hidden 32" in text
        and "using step " in text
        and "T=0.0: 'time traveller" in text
    )
    assert images >= 1


@pytest.mark.parametrize(
    "name, variable, says",
    [
        ("restore_and_generate.ipynb", "RNNJAX_WORKDIR", "no run at runs/deep_lstm: train one"),
        ("inside_the_stack.ipynb", "RNNJAX_WORKDIRS", "no trained run found (runs/deep_lstm"),
    ],
)
def test_notebooks_without_a_run_say_how_to_make_one(tmp_path, name, variable, says):
    """Opened where no run exists, a notebook stops at its first cell with the command to train one
    and the variable to set (not a bare 'max() arg is an empty sequence')."""
    pytest.importorskip("nbformat")
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError) as e:
        run_notebook(name, tmp_path, **{variable: ""})
    assert says in str(e.value) and "python scripts/train.py --config=configs/deep_lstm.py" in str(
        e.value
    )
    assert variable in str(e.value)


def test_load_never_imports_the_trainer():
    """rnnjax.load (rnnjax/use/run.py) builds the model from rnnjax.network.build: the training loop
    is not imported."""
    code = (
        "import sys, rnnjax.use.run; "
        "print(sorted(m for m in sys.modules if m in ('rnnjax.training.train', "
        "'rnnjax.training.loop', 'rnnjax.training.vectorize', 'rnnjax.sweeps.sweep', "
        "'rnnjax.rundir.preflight')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


@pytest.mark.parametrize("records", ["none", "null val_ppl"])
def test_the_restore_notebook_without_records_or_with_null_perplexities(
    tmp_path, smoke_run, records
):
    pytest.importorskip("nbformat")
    from conftest import copy_run

    run = copy_run(smoke_run[0], tmp_path / "run")
    if records == "none":  # a run copied without its metrics.jsonl
        (run / "metrics.jsonl").unlink()
    else:  # an epoch whose validation pass gave no number
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        lines[0]["val_ppl"] = None
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    text, _ = run_notebook("restore_and_generate.ipynb", tmp_path, RNNJAX_WORKDIR=str(run))
    if records == "none":
        assert "has no epoch records (metrics.jsonl): no curves to plot" in text
    else:
        best = min(lines[1:], key=lambda r: r["val_ppl"])
        assert f"best validation perplexity {best['val_ppl']:.2f} at epoch {best['epoch']}" in text


@pytest.mark.exhaustive  # by default: the notebook's test_inside.py run covers its cells
def test_the_inside_notebook_on_a_word_run_two_folders_of_one_name_and_an_empty_entry(
    tmp_path, smoke_run
):
    pytest.importorskip("nbformat")
    from conftest import copy_run, small_config

    from rnnjax.dataset.data import load_corpus
    from rnnjax.dataset.text import Tokens, detokenize
    from rnnjax.training.train import train_and_evaluate

    words = tmp_path / "a" / "run"
    cfg = small_config(2, **{"data.tokenizer": "word", "data.max_tokens": 3000})
    train_and_evaluate(cfg, words)
    chars = copy_run(smoke_run[0], tmp_path / "b" / "run")
    entries = os.pathsep.join([str(words), "", str(chars)])
    text, _ = run_notebook("inside_the_stack.ipynb", tmp_path, RNNJAX_WORKDIRS=entries)
    assert f"{words}: 2-layer lstm" in text and f"{chars}: 2-layer lstm" in text  # both, by path
    assert str(tmp_path) + ":" not in text  # the empty entry is not the notebook's own folder
    # the notebook's held-out text, as it builds it, reads back as the same words
    run = rnnjax.load(words)
    ids = load_corpus(run.config.data).val[:2000]
    back = Tokens(detokenize(run.vocab.decode(ids), "word"), "word").encode(run.vocab)
    assert np.array_equal(back, ids)


def test_perplexity_is_evaluate_read_as_one_row(smoke_run):
    run = rnnjax.load(smoke_run[0])
    text = "the time traveller smiled round at us and then he said that is the way of it"
    assert run.perplexity(text) == run.evaluate(text, batch_size=1).perplexity
    assert run.evaluate(text).perplexity != run.perplexity(text)  # 8 rows from zero states
