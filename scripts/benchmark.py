r"""Side-by-side benchmarks of rnnjax; writes one Markdown report (and optionally JSON).

    python scripts/benchmark.py [--sections=rows,epoch,...] [--rows=lstm:2,mingru:2,...]
        [--repeats=7] [--steps=10] [--e2e_epochs=500] [--e2e_runs=rnnjax,native]
        [--out=FILE] [--json=FILE]
        [--hidden=8 --batch=4 --seq=8]   # a smoke run on a small workload (targets not judged)

The report goes to runs/benchmarks/BENCHMARKS-<UTC timestamp>.md unless --out says otherwise;
the committed BENCHMARKS.md is one run of this script (--out=BENCHMARKS.md), replaced whole.
The measuring code is benchmarks/ (harness.py, sections.py, runs.py, report.py, tables.py),
outside the installed package: this script puts that directory on sys.path.
"""

import _startup  # noqa: F401, I001  (first: Ctrl-C while JAX imports is one line)
import json
import os
import pathlib
import signal
import sys
import time

from absl import flags

# benchmarks/ of this repository: its modules import as top-level modules (harness, report, ...)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import report  # noqa: E402  (no JAX: flags are checked before JAX imports)

from rnnjax import cli  # noqa: E402
from rnnjax.cli import user_path  # noqa: E402
from rnnjax.rundir.workdir import WorkdirError, shown  # noqa: E402

_SECTIONS = flags.DEFINE_list(
    "sections",
    list(report.DEFAULT_SECTIONS),
    f"Sections to run, from {list(report.SECTIONS)}; rows is required.",
)
_ROWS = flags.DEFINE_list(
    "rows",
    None,
    "Rows of the rows section as cell:layers (cells of "
    "rnnjax.cells.CELLS); default: lstm at 1 and 4 layers, every cell at 2.",
)
_REPEATS = flags.DEFINE_integer(
    "repeats", report.STANDARD_REPEATS, "Interleaved rounds; figures are medians over rounds."
)
_STEPS = flags.DEFINE_integer("steps", report.STANDARD_STEPS, "Train steps per variant per round.")
_E2E = flags.DEFINE_integer(
    "e2e_epochs",
    report.STANDARD_E2E_EPOCHS,
    "Epochs of the end-to-end seed experiment (0: skip it).",
)
_E2E_RUNS = flags.DEFINE_list(
    "e2e_runs",
    None,
    "End-to-end runs of scripts/train.py beside the PyTorch baseline, from rnnjax, cudnn, native, "
    "cpu_devices, cpu_pipeline (default: every one this host can run).",
)
_HIDDEN = flags.DEFINE_integer("hidden", None, "Hidden size of every workload (default: 256).")
_BATCH = flags.DEFINE_integer("batch", None, "Batch of every workload (default: 32).")
_SEQ = flags.DEFINE_integer("seq", None, "Sequence length of every workload (default: 35).")
_FAKE = flags.DEFINE_integer("fake_devices", 4, "Devices of the devices section (0: real).")
_JSON = flags.DEFINE_string("json", None, "Also write the results as JSON here.")
_OUT = flags.DEFINE_string(
    "out", None, "Markdown report path (default: runs/benchmarks/BENCHMARKS-<UTC timestamp>.md)."
)
_FROM_JSON = flags.DEFINE_string(
    "from_json",
    None,
    "Measure nothing: write the report of the results a previous run saved with --json.",
)
_DEVICES_ONLY = flags.DEFINE_bool("devices_only", False, "Internal: the devices section's child.")
_AVX2_ONLY = flags.DEFINE_bool("avx2_only", False, "Internal: the avx2 section's child.")


def _writable(flag: str, value: str) -> pathlib.Path:
    """``value`` resolved against the current directory; one line when it cannot be written
    (checked before the measurements: a long run never ends without its report). Its folder is
    resolved, not its name: a link there is replaced by the report, never written through."""
    given = pathlib.Path(value).expanduser()
    path = user_path(given.parent) / given.name
    if path.is_dir():
        cli.fail(f"--{flag}={value} is a directory; give a file path")
    parent = path.parent
    while not parent.exists():  # the directories still to be made
        parent = parent.parent
    if (
        not parent.is_dir()
        or not os.access(parent, os.W_OK)
        or (path.exists() and not os.access(path, os.W_OK))
    ):
        cli.fail(
            f"--{flag}={value}: cannot write there ({parent} is not a writable directory); "
            "give another path"
        )
    try:  # permissions can pass where a write fails (root, /proc, a read-only mount): try one
        import tempfile

        with tempfile.NamedTemporaryFile(dir=parent, prefix=".benchmark-probe-"):
            pass
    except OSError as e:
        cli.fail(f"--{flag}={value}: cannot write there ({e.strerror}); give another path")
    return path


def check_flags() -> list[tuple[str, int]]:
    """Every flag checked before any measurement; returns the rows as (cell, layers)."""
    for flag, least in (
        (_REPEATS, 1),
        (_STEPS, 1),
        (_E2E, 0),
        (_FAKE, 0),
        (_HIDDEN, 1),
        (_BATCH, 1),
        (_SEQ, 1),
    ):
        if flag.value is not None and flag.value < least:
            cli.fail(f"--{flag.name}={flag.value}: must be >= {least}")
    unknown = [s for s in _SECTIONS.value if s not in report.SECTIONS]
    if unknown or "rows" not in _SECTIONS.value:
        cli.fail(
            f"--sections={','.join(_SECTIONS.value)}: "
            + (f"unknown {unknown}" if unknown else "'rows' missing")
            + f"; choose from {list(report.SECTIONS)} and include rows"
        )
    from workload import E2E_RUN_NAMES, REFERENCE

    if _E2E_RUNS.value is not None and (
        not _E2E_RUNS.value or set(_E2E_RUNS.value) - set(E2E_RUN_NAMES)
    ):
        cli.fail(
            f"--e2e_runs={','.join(_E2E_RUNS.value)}: choose one or more of "
            f"{','.join(E2E_RUN_NAMES)}"
        )
    from rnnjax.cells import CELLS  # imports JAX (does not start it)

    items = (
        _ROWS.value
        if _ROWS.value is not None
        else ([f"{REFERENCE.cell}:1"] + [f"{c}:2" for c in CELLS] + [f"{REFERENCE.cell}:4"])
    )
    rows = []
    for item in items:
        cell, _, layers = item.partition(":")
        if cell not in CELLS or not layers.isdigit() or int(layers) < 1:
            cli.fail(
                f"--rows={','.join(items)}: {item!r} is not cell:layers; give cell:layers "
                f"items with a cell from {list(CELLS)}, e.g. --rows=lstm:2,gru:2"
            )
        rows.append((cell, int(layers)))
    if (REFERENCE.cell, REFERENCE.num_layers) not in rows:
        cli.fail(
            f"--rows={','.join(items)}: include {REFERENCE.cell}:{REFERENCE.num_layers}, "
            "the reference row the targets are checked on"
        )
    return rows


def _read(value: str) -> str:
    try:
        return user_path(value).read_text()
    except OSError as e:
        cli.fail(f"--from_json={value}: {e.strerror}; give the file a run wrote with --json")


def write(results: dict, out: pathlib.Path, json_path: pathlib.Path | None) -> None:
    """The report (and JSON) of ``results``; prints the report and where it went."""
    for p in filter(None, (out, json_path)):
        p.parent.mkdir(parents=True, exist_ok=True)
    try:
        report.write_report(results, out, json_path)
    except (KeyError, TypeError, StopIteration) as e:
        cli.fail(f"--from_json={_FROM_JSON.value}: not the results of a run ({e!r} missing)")
    except (OSError, WorkdirError) as e:  # written atomically: the old report is intact
        why = e.strerror if isinstance(e, OSError) else str(e)
        cli.fail(
            f"writing the report failed ({why}); {out} is as it was: free some space or "
            "give --out another file"
        )
    print(out.read_text())
    print(f"wrote {out}" + (f" and {json_path}" if json_path else ""))


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --sections=rows,epoch")
    child = _DEVICES_ONLY.value or _AVX2_ONLY.value  # a section's child: prints RESULT, no report
    if not child:
        out = _writable("out", _OUT.value or str(report.default_report_path()))
        json_path = _writable("json", _JSON.value) if _JSON.value else None
    if _FROM_JSON.value:
        try:
            results = json.loads(_read(_FROM_JSON.value))
        except ValueError as e:
            cli.fail(f"--from_json={_FROM_JSON.value}: not the results of a run (not JSON: {e})")
        write(results, out, json_path)
        return
    rows = check_flags()
    import dataclasses

    from workload import REFERENCE, V

    from rnnjax.host import retain_freed_memory
    from rnnjax.network.parallel import set_cpu_devices

    retain_freed_memory()  # for every implementation in this process, torch included
    base = dataclasses.replace(
        REFERENCE,
        **{
            k: f.value
            for k, f in (("hidden", _HIDDEN), ("batch", _BATCH), ("seq", _SEQ))
            if f.value is not None
        },
    )
    if not child:  # before JAX starts: one CPU device per core (dividing the batch)
        set_cpu_devices(0, base.batch)
    import harness
    import runs
    import sections

    s = sections.Settings(_REPEATS.value, _STEPS.value, _E2E.value, base, tuple(rows), _FAKE.value)
    if _E2E_RUNS.value is not None:
        s = dataclasses.replace(s, e2e_runs=tuple(_E2E_RUNS.value))
    if child:
        here = sections.devices_here if _DEVICES_ONLY.value else sections.avx2_here
        print("RESULT " + json.dumps(here(s)))
        return
    t0, started = time.time(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = {"machine": harness.machine(), "vocab": V, "peak": harness.matmul_peak()}
    s = dataclasses.replace(s, peak_gflops=results["peak"]["peak"])
    failed = results["failed"] = {}
    done: list[str] = []

    def settle() -> None:
        results["load_end"] = os.getloadavg()[0]
        results["settings"] = {
            "repeats": s.repeats,
            "steps_per_round": s.steps,
            "e2e_epochs": s.e2e_epochs,
            "e2e_runs": list(s.e2e_runs),
            "workload": dataclasses.asdict(base),
            "reference": dataclasses.asdict(REFERENCE),
            "sections": list(done),
            "fake_devices": s.fake_devices,
            "started": started,
            "minutes": (time.time() - t0) / 60,
        }

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # subprocess.run kills a section's child on the way out

    signal.signal(signal.SIGTERM, stop)
    for name in (x for x in report.SECTIONS if x in _SECTIONS.value):
        try:  # a section that fails is named in the report; the others' figures are kept
            results[name] = (getattr(sections, name, None) or getattr(runs, name))(s)
        except KeyboardInterrupt:
            kept = f"{shown(out)} has the sections before it ({', '.join(done)})"
            kept = kept if done else "nothing was written"
            cli.fail(f"stopped during the {name} section: {kept}; rerun to measure the rest")
        except Exception as e:  # noqa: BLE001 - reported, and the exit status says so
            if name == "rows":
                raise
            said = (getattr(e, "stderr", None) or str(e)).strip().splitlines()  # a child's too
            failed[name] = f"{type(e).__name__}: {said[-1] if said else ''}"
        done.append(name)
        settle()  # the sections so far, on disk: a run stopped later keeps them
        for path in filter(None, (out, json_path)):
            path.parent.mkdir(parents=True, exist_ok=True)
        report.write_report(results, out, json_path)
    write(results, out, json_path)
    if failed:
        cli.fail(f"sections {', '.join(failed)} failed (named in the report); the others are in it")


if __name__ == "__main__":
    cli.run(main)
