"""The benchmark's bookkeeping (FLOP counts, report, baselines) — never its timings."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from rnnjax.benchmarking import Workload

ROOT = Path(__file__).resolve().parents[1]


def test_analytic_training_flops_per_token():
    # 2-layer LSTM, h=256, V=28: layer 1 (28+256) x 1024, layer 2 (256+256) x 1024, output 256 x 28; x2 (mul+add) x3 (fwd+bwd)
    fwd = 2 * 1024 * (28 + 256) + 2 * 1024 * 512 + 2 * 256 * 28
    assert Workload().train_flops_per_token() == 3 * fwd
    assert Workload("gru", 2).train_flops_per_token() == 3 * (2 * 768 * (28 + 256) + 2 * 768 * 512 + 2 * 256 * 28)
    assert Workload("rnn", 1, hidden=8).train_flops_per_token() == 3 * (2 * 8 * (28 + 8) + 2 * 8 * 28)
    assert Workload(seq=350).tokens_per_step == 32 * 350


def test_torch_baseline_learns_the_same_data():
    pytest.importorskip("torch")
    from rnnjax.torch_baseline import run

    result = run(epochs=2)
    # after two epochs on the Time Machine a 2-layer LSTM sits near the unigram plateau (~17), far below uniform (28)
    assert 12.0 < result["train_ppl"] < 24.0 and 12.0 < result["val_ppl"] < 24.0
    assert result["seconds"] > 0


@pytest.mark.slow
def test_benchmark_script_writes_every_row_and_the_targets(tmp_path):
    out, js = tmp_path / "B.md", tmp_path / "b.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--repeats=1", "--steps=1",
           "--sections=rows,generation,end_to_end", "--rows=lstm:2,gru:1", "--e2e_epochs=1", f"--out={out}", f"--json={js}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp_path)
    results = json.loads(js.read_text())
    assert [r["label"] for r in results["rows"]] == [Workload("lstm", 2).label, Workload("gru", 1).label]
    impls = {"rnnjax", "rnnjax-autodiff", "flax"}
    try:
        import torch  # noqa: F401

        impls.add("torch")
    except ImportError:
        pass
    mesh = {k for k in results["rows"][0]["results"] if k.startswith("rnnjax, ")}  # one CPU device per core
    assert mesh == ({f"rnnjax, {results['machine']['devices']} CPU devices"} if results["machine"]["devices"] > 1 else set())
    for row in results["rows"]:
        assert set(row["results"]) == impls | mesh
        for r in row["results"].values():
            assert r["ms_per_step"] > 0 and 0 < r["mfu"] < 1.5 and r["compile_s"] > 0
            assert math.isclose(r["tokens_per_sec"], 32 * 35 / r["ms_per_step"] * 1e3)
    assert results["peak"]["peak"] >= results["peak"]["jax"] > 1.0
    assert set(results["generation"]) == {"1", "64"}
    assert results["end_to_end"]["rnnjax"]["train_ppl"] < 28
    if "torch" in impls:
        assert set(results["end_to_end"]["speedup"]) == {k for k in results["end_to_end"] if k.startswith("rnnjax")}
    text = out.read_text()
    assert "## Targets" in text and "## Seed experiment end to end (1 epochs" in text
    assert Workload("gru", 1).label in text


@pytest.mark.parametrize("args,message", [
    (["--sections=rows,bogus"], "unknown ['bogus']"),
    (["--rows=lstm:x"], "give cell:layers items"),
    (["--rows=gru:2"], "include lstm:2"),
])
def test_benchmark_rejects_bad_flags(tmp_path, args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "BENCHMARKS.md").exists()
