"""The benchmark's bookkeeping (FLOP counts, report, baselines) — never its timings.

The benchmark code is the repository's benchmarks/ directory, not part of the package: its
modules are imported as top-level modules with that directory on sys.path, as scripts/benchmark.py does."""

import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import benchmarking as bm  # noqa: E402  (benchmarks/benchmarking.py)
from benchmarking import Workload  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))


def test_analytic_training_flops_per_token():
    # 2-layer LSTM, h=256, V=28: layer 1 (28+256) x 1024, layer 2 (256+256) x 1024, output 256 x 28; x2 (mul+add) x3 (fwd+bwd)
    fwd = 2 * 1024 * (28 + 256) + 2 * 1024 * 512 + 2 * 256 * 28
    assert Workload().train_flops_per_token() == 3 * fwd
    assert Workload("gru", 2).train_flops_per_token() == 3 * (2 * 768 * (28 + 256) + 2 * 768 * 512 + 2 * 256 * 28)
    assert Workload("rnn", 1, hidden=8).train_flops_per_token() == 3 * (2 * 8 * (28 + 8) + 2 * 8 * 28)
    assert Workload(seq=350).tokens_per_step == 32 * 350


def test_vocabulary_is_the_bundled_corpus_vocabulary():
    from rnnjax import data
    from rnnjax.config import default_config, resolve

    assert bm.V == len(data.load_corpus(resolve(default_config()).data).vocab) == 28


def test_benchmarks_live_outside_the_package_and_find_the_repository():
    import rnnjax

    assert Path(bm.__file__).resolve() == ROOT / "benchmarks" / "benchmarking.py" and bm.REPO_ROOT == ROOT
    assert not (Path(rnnjax.__file__).parent / "benchmarking.py").exists()
    assert bm.repo_path("scripts", "train.py").is_file() and bm.repo_path("configs", "deep_lstm.py").is_file()
    with pytest.raises(FileNotFoundError, match="run them from a checkout"):
        bm.repo_path("scripts", "no_such_script.py")


def test_torch_baseline_learns_the_same_data():
    pytest.importorskip("torch")
    from torch_baseline import run  # benchmarks/torch_baseline.py

    result = run(epochs=2)
    # after two epochs on the Time Machine a 2-layer LSTM sits near the unigram plateau (~17), far below uniform (28)
    assert 12.0 < result["train_ppl"] < 24.0 and 12.0 < result["val_ppl"] < 24.0
    assert result["seconds"] > 0


def test_torch_baseline_runs_as_a_script_from_benchmarks():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "torch_baseline.py"), "--help"],
                          capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--epochs" in proc.stdout and "--num_layers" in proc.stdout


@pytest.mark.slow
def test_benchmark_script_writes_every_row_and_the_targets(tmp_path):
    committed = hashlib.sha256((ROOT / "BENCHMARKS.md").read_bytes()).hexdigest()
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--repeats=1", "--steps=1",
           "--sections=rows,generation,end_to_end", "--rows=lstm:2,gru:1", "--e2e_epochs=1", "--json=j/b.json"]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp_path, env=ENV)  # default --out
    assert hashlib.sha256((ROOT / "BENCHMARKS.md").read_bytes()).hexdigest() == committed  # the committed report: untouched
    reports = list(tmp_path.rglob("*.md"))
    assert len(reports) == 1 and reports[0].parent == tmp_path / "runs" / "benchmarks"
    out, js = reports[0], tmp_path / "j" / "b.json"  # relative paths: from the working directory
    assert re.fullmatch(r"BENCHMARKS-\d{8}T\d{6}Z\.md", out.name)
    assert proc.stdout.count("not judged: 1 rounds of 1 steps, below the report's standard of 7 x 10") == 1
    assert proc.stdout.rstrip().endswith(f"wrote {out} and {js}")
    results = json.loads(js.read_text())
    assert [r["label"] for r in results["rows"]] == [Workload("lstm", 2).label, Workload("gru", 1).label]
    impls = {"rnnjax", "rnnjax-autodiff", "flax"}
    try:
        import torch  # noqa: F401

        impls.add("torch")
    except ImportError:
        pass
    mesh = {k for k in results["rows"][0]["results"] if k.startswith("rnnjax, ")}  # one CPU device per core
    n = results["machine"]["devices"]  # data parallel, and the layer pipeline, over them
    assert mesh == ({f"rnnjax, {n} CPU devices", f"rnnjax, layer pipeline over {n} CPU devices"} if n > 1 else set())
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
    assert set(verdicts(text)) == {"not judged"}


@pytest.mark.parametrize("args,message", [
    (["--sections=rows,bogus"], "unknown ['bogus']"),
    (["--rows=lstm:x"], "give cell:layers items"),
    (["--rows=gru:2"], "include lstm:2"),
])
def test_benchmark_rejects_bad_flags(tmp_path, args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path, env=ENV)
    assert proc.returncode != 0 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "BENCHMARKS.md").exists() and not (tmp_path / "runs").exists()


def test_benchmark_report_lists_every_variant_with_ratios(tmp_path):
    """The report's shape from synthetic figures (no timing is asserted: speed lives in BENCHMARKS.md)."""
    calls = []
    variants = {"rnnjax": bm.Variant(lambda: calls.append("a"), 1.0), "torch": bm.Variant(lambda: None, 0.1)}
    fig = bm._interleave(variants, 2, 3, 1120)
    assert len(calls) == 3  # one warm-up + 2 interleaved rounds
    assert set(fig) == {"rnnjax", "torch"} and fig["rnnjax"]["compile_s"] == 1.0

    def row(w, ms):
        res = {k: {"ms_per_step": v, "tokens_per_sec": w.tokens_per_step / v * 1e3, "compile_s": 2.0, "mfu": 0.5,
                   "vs_torch": ms["torch"] / v} for k, v in ms.items()}
        return {"workload": bm.dataclasses.asdict(w), "label": w.label, "results": res}

    results = bm.machine(bm.STANDARD_REPEATS, bm.STANDARD_STEPS)  # at the report's standard: targets judged
    results["peak"] = {"jax": 150.0, "peak": 150.0, "n": 2048}
    results["rows"] = [row(w, {"rnnjax": 50.0, "rnnjax, 2 CPU devices": 40.0, "flax": 60.0, "torch": 55.0}) for w in bm.ROWS]
    results["end_to_end"] = {"epochs": 500, "rnnjax": {"seconds": 250, "train_ppl": 1.03, "val_ppl": 40.0},
                             "torch": {"seconds": 300, "train_ppl": 1.03, "val_ppl": 41.0}, "speedup": {"rnnjax": 1.2}}
    results["devices"] = {"plain (no mesh)": fig["rnnjax"], "mesh of 1": fig["torch"]}
    results["devices_visible"] = 1
    bm.write_report(results, tmp_path / "B.md", tmp_path / "b.json", command="python scripts/benchmark.py")
    text = (tmp_path / "B.md").read_text()
    assert "| rnnjax >= 1.2x torch, 2-layer LSTM | rnnjax: 1.10x; rnnjax, 2 CPU devices: 1.38x | yes |" in text
    assert "| compile of the default step < 5 s | 2.0 s | yes |" in text
    assert "| seed experiment end to end >= 1.2x nn.LSTM script (500 epochs) | rnnjax: 1.20x | yes |" in text
    for line in ("| mesh of 1 |", "| rnnjax | 250 | 1.030 | 40.00 |", "## What was tried"):
        assert line in text
    assert json.loads((tmp_path / "b.json").read_text())["settings"]["repeats"] == bm.STANDARD_REPEATS


def synthetic(repeats: int, steps: int, e2e_epochs: int | None = None) -> dict:
    """Results shaped as scripts/benchmark.py makes them, with made-up figures: rnnjax beats every
    target (1.5x torch, 70% MFU, faster than flax, compiles in 1 s)."""
    def res(ms, **extra):
        return {"ms_per_step": ms, "tokens_per_sec": 1120 / ms * 1e3, "compile_s": 1.0, "spread_ms": [ms, ms], **extra}

    rows = [{"workload": dataclasses.asdict(w), "label": w.label, "flops_per_token": w.train_flops_per_token(),
             "results": {"rnnjax": res(10.0, mfu=0.7, vs_torch=1.5), "rnnjax-autodiff": res(12.0, mfu=0.6, vs_torch=1.25),
                         "flax": res(20.0, mfu=0.35, vs_torch=0.75), "torch": res(15.0, mfu=0.45, vs_torch=1.0)}}
            for w in (Workload("lstm", 2), Workload("gru", 1))]
    out = {"machine": {"platform": "test", "processor": "test", "cores": 2, "jax": "0", "backend": "cpu", "devices": 1,
                       "device_kind": "cpu", "torch": "0"},
           "settings": {"repeats": repeats, "steps_per_round": steps},
           "peak": {"jax": 100.0, "torch": 90.0, "peak": 100.0, "n": 2048}, "rows": rows}
    if e2e_epochs:
        out["end_to_end"] = {"epochs": e2e_epochs, "rnnjax": {"seconds": 10.0, "train_ppl": 5.0, "val_ppl": 6.0},
                             "torch": {"seconds": 20.0, "train_ppl": 5.0, "val_ppl": 6.0}, "speedup": {"rnnjax": 2.0}}
    return out


def targets_section(text: str) -> str:
    return text.split("## Targets", 1)[1].split("\n## ", 1)[0]


def verdicts(text: str) -> list[str]:
    rows = [line for line in targets_section(text).splitlines() if line.startswith("| ") and not line.startswith("| target")]
    return [line.rstrip(" |").rsplit(" | ", 1)[1] for line in rows]


@pytest.mark.parametrize("repeats,steps", [(1, 1), (6, 10), (7, 9)])
def test_targets_are_not_judged_below_the_standard(tmp_path, repeats, steps):
    bm.write_report(synthetic(repeats, steps, e2e_epochs=500), tmp_path / "B.md", None, command="python x")
    text = (tmp_path / "B.md").read_text()
    note = f"not judged: {repeats} rounds of {steps} steps, below the report's standard of 7 x 10"
    assert text.count(note) == 1 and note in targets_section(text)
    assert verdicts(text) == ["not judged"] * 6  # every target, although every figure would meet it
    assert not re.search(r"\b(met|missed|yes)\b|\*\*no\*\*", targets_section(text))


def test_targets_are_judged_at_the_standard(tmp_path):
    bm.write_report(synthetic(7, 10, e2e_epochs=500), tmp_path / "B.md", None, command="python x")
    text = (tmp_path / "B.md").read_text()
    assert "not judged" not in text and "| target | measured | met |" in text
    assert verdicts(text) == ["yes"] * 6
    bm.write_report(synthetic(9, 20, e2e_epochs=1), tmp_path / "B.md", None, command="python x")  # above: judged
    assert verdicts((tmp_path / "B.md").read_text()) == ["yes"] * 5 + [
        "not judged: 1 epochs, below the report's standard of 500"]  # a 1-epoch seed experiment says nothing


def test_default_report_path_is_a_new_file_under_runs():
    now = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    path = bm.default_report_path(now)
    assert path == Path("runs/benchmarks/BENCHMARKS-20250102T030405Z.md") and not path.is_absolute()
    assert path.name != "BENCHMARKS.md" and bm.default_report_path().parts[:2] == ("runs", "benchmarks")


def test_checkpoint_section_reports_the_checksum_share(tmp_path):
    results = synthetic(7, 10)
    results["checkpoint"] = {"checksums": 8.0, "save": 200.0, "restore": 150.0, "bytes": 3 * 2**20}
    bm.write_report(results, tmp_path / "B.md", None, command="python x")
    text = (tmp_path / "B.md").read_text()
    assert "## Checkpoint integrity (sha256 of every array)" in text and "(3.0 MiB:" in text
    assert "| checksums alone | 8.0 | 4% of a save |" in text and "| restore (checksums verified) | 150.0 | |" in text


def test_checkpoint_benchmark_measures_a_real_save_and_restore():
    ck = bm.benchmark_checkpoint(repeats=1)
    assert ck["bytes"] > 3_000_000  # the reference model's params (826,396 floats) and more
    assert 0 < ck["checksums"] < ck["save"] and ck["restore"] > 0


def test_min_cells_count_no_recurrent_matmul():
    # minGRU: 2 gates of the input only; minLSTM: 3
    assert Workload("mingru", 1, hidden=8).train_flops_per_token() == 3 * (2 * 16 * 28 + 2 * 8 * 28)
    assert Workload("minlstm", 2, hidden=8).train_flops_per_token() == 3 * (2 * 24 * 28 + 2 * 24 * 8 + 2 * 8 * 28)


def test_sequence_section_measures_every_cell_and_both_scan_forms(tmp_path):
    seq = bm.benchmark_sequence(repeats=1, steps=1, lengths=(4,))
    assert {"rnnjax lstm", "rnnjax gru", "rnnjax mingru", "rnnjax minlstm"} <= set(seq[0]["results"])
    assert all(r["ms_per_step"] > 0 for r in seq[0]["results"].values())
    forms = bm.benchmark_scan_forms(repeats=1, lengths=(16,))
    assert forms[0]["associative_scan_rel_err"] < 1e-5 and forms[0]["cumlogsumexp_ms"] > 0
    results = synthetic(7, 10)
    results["sequence"], results["scan_forms"] = seq, forms
    bm.write_report(results, tmp_path / "B.md", None, command="python x")
    text = (tmp_path / "B.md").read_text()
    assert "## Sequence length: parallel-scan cells vs the sequential loop" in text
    assert re.search(r"^\| 4 \| [0-9,]+ \(", text, re.M) and re.search(r"^\| 16 \| [0-9.]+ \| [0-9.]+ \| ", text, re.M)
