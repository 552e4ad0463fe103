"""The benchmark report: targets (data), the header that names the one run and host, and the
Markdown writer. Imports no JAX, so ``scripts/benchmark.py`` checks its flags with it first.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

import tables
from workload import E2E_RUN_NAMES

from rnnjax.rundir.workdir import write_atomic

# Sections in the order they run and are written; all but "large" (for accelerators) by default.
SECTIONS = tuple(tables.TABLES)
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s != "large")

# The report's standard: targets are judged only on figures measured with at least these
# rounds, steps per round and end-to-end epochs, on the reference workload.
STANDARD_REPEATS, STANDARD_STEPS, STANDARD_E2E_EPOCHS = 7, 10, 500

PERFORMANCE_PAGE = "docs/performance.md"  # measurements from other runs and hosts, and analysis


@dataclasses.dataclass(frozen=True)
class Target:
    """A goal on one figure: ``metric`` of the rows section (or of end_to_end's ``speedup``)."""

    text: str
    metric: str  # "vs_torch", "vs_flax", "mfu", "compile_s", or "speedup" (end to end)
    op: str  # ">=" or "<"
    value: float
    every_row: bool = False  # every row that has the figure, else the reference row only
    any_variant: bool = True  # met if one rnnjax variant meets it, else the default `rnnjax` only


TARGETS = (
    Target("rnnjax >= 1.2x torch, 2-layer LSTM", "vs_torch", ">=", 1.2),
    Target("rnnjax >= 1.0x torch on every row", "vs_torch", ">=", 1.0, every_row=True),
    Target(">= 60% MFU, 2-layer LSTM", "mfu", ">=", 0.6),
    Target(
        "rnnjax >= impl=flax on every row", "vs_flax", ">=", 1.0, every_row=True, any_variant=False
    ),
    Target("compile of the default step < 5 s", "compile_s", "<", 5.0, any_variant=False),
    Target("seed experiment end to end >= 1.2x nn.LSTM script", "speedup", ">=", 1.2),
    Target("AVX2 build >= 1.2x torch held to AVX2, 2-layer LSTM", "avx2_vs_torch", ">=", 1.2),
)
UNITS = {"mfu": lambda v: f"{100 * v:.0f}%", "compile_s": lambda v: f"{v:.1f} s"}


def default_report_path(now: datetime.datetime | None = None) -> Path:
    """``runs/benchmarks/BENCHMARKS-<UTC timestamp>.md``, relative: a run never overwrites the
    committed BENCHMARKS.md unless asked to (``--out=BENCHMARKS.md``)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return Path("runs") / "benchmarks" / f"BENCHMARKS-{now.strftime('%Y%m%dT%H%M%SZ')}.md"


def not_judged(settings: dict[str, Any]) -> str | None:
    """Why the targets cannot be judged from figures measured with ``settings``, or None."""
    r, s = settings["repeats"], settings["steps_per_round"]
    if r < STANDARD_REPEATS or s < STANDARD_STEPS:
        return (
            f"not judged: {r} rounds of {s} steps, below the report's standard of "
            f"{STANDARD_REPEATS} x {STANDARD_STEPS}"
        )
    w, ref = settings["workload"], settings["reference"]
    if w != ref:
        shape = lambda x: f"h={x['hidden']} b={x['batch']} t={x['seq']}"  # noqa: E731
        return f"not judged: workload {shape(w)}, not the reference {shape(ref)}"
    return None


def shared(results: dict) -> bool:
    """More runnable threads than cores at the start or the end of the run: others ran too."""
    m = results["machine"]
    return max(m["load"], results.get("load_end", m["load"])) > m["cores"] + 0.5


def _ours(results: dict) -> list[str]:
    """The rnnjax variants of the reference row: the pure-JAX layer, the native kernels (the
    default on CPU), cuDNN, over the CPU devices."""
    ref = reference_row(results)["results"]
    return [
        k
        for k in ref
        if k in ("rnnjax", "native", "cudnn") or k.startswith(("rnnjax, ", "native, "))
    ]


def reference_row(results: dict) -> dict:
    ref = results["settings"]["reference"]
    return next(
        r
        for r in results["rows"]
        if all(r["workload"][k] == ref[k] for k in ("cell", "num_layers"))
    )


def judge(t: Target, results: dict) -> tuple[str, bool | str] | None:
    """(the measured figures as text, met) for one target; None when the run lacks its section."""
    fmt = UNITS.get(t.metric, lambda v: f"{v:.2f}x")
    ok = (lambda v: v >= t.value) if t.op == ">=" else (lambda v: v < t.value)
    variants = _ours(results) if t.any_variant else ["rnnjax"]
    if t.metric == "avx2_vs_torch":
        a = results.get("avx2") or {}
        ref = results["settings"]["reference"]
        row = next(
            (
                r
                for r in a.get("rows", [])
                if all(r["workload"][k] == ref[k] for k in ("cell", "num_layers"))
            ),
            None,
        )
        if row is None or "vs_torch" not in row["results"].get("native", {}):
            return None
        v = row["results"]["native"]["vs_torch"]
        return f"native (AVX2 build): {fmt(v)}", ok(v)
    if t.metric == "speedup":
        e2e = results.get("end_to_end") or {}
        if "speedup" not in e2e:
            return None
        sp, n = e2e["speedup"], e2e["epochs"]
        text = "; ".join(f"{k}: {fmt(v)}" for k, v in sp.items())
        if n < STANDARD_E2E_EPOCHS:
            return text, (
                f"not judged: {n} epochs, below the report's standard of {STANDARD_E2E_EPOCHS}"
            )
        return text, any(ok(v) for v in sp.values())
    rows = results["rows"] if t.every_row else [reference_row(results)]
    figures = {
        k: [r["results"][k][t.metric] for r in rows if t.metric in r["results"].get(k, {})]
        for k in variants
    }
    text = "; ".join(
        (f"{k}: " if len(variants) > 1 else "") + ", ".join(fmt(v) for v in vs)
        for k, vs in figures.items()
    )
    return text or "n/a", any(vs and all(ok(v) for v in vs) for vs in figures.values())


def targets(results: dict) -> list[str]:
    """The Targets section: a table of target, measured, verdict ("not judged" below standard)."""
    judged = [(t, j) for t in TARGETS if (j := judge(t, results)) is not None]
    note = not_judged(results["settings"])
    if note:
        note = (
            f"**{note}** (the defaults, `--repeats={STANDARD_REPEATS} "
            f"--steps={STANDARD_STEPS}` on the reference workload)."
        )
    elif shared(results):  # a starved variant (torch's threads) makes its ratios meaningless
        note = (
            "**not judged: the cores were shared with other processes during the run** "
            "(run on an otherwise idle host to judge them)."
        )
    lines = ["## Targets", ""]
    if note:  # no target is declared met or missed
        lines += [note, "", "| target | measured | verdict |", "|---|---|---|"]
        return lines + [f"| {_title(t, results)} | {v} | not judged |" for t, (v, _) in judged]
    lines += ["| target | measured | met |", "|---|---|---|"]
    verdict = lambda ok: ok if isinstance(ok, str) else "yes" if ok else "**no**"  # noqa: E731
    return lines + [f"| {_title(t, results)} | {v} | {verdict(ok)} |" for t, (v, ok) in judged]


def _title(t: Target, results: dict) -> str:
    if t.metric == "speedup":
        return f"{t.text} ({results['end_to_end']['epochs']} epochs)"
    return t.text


def command(results: dict) -> str:
    """The command line that measures what ``results`` holds: the report's Reproduce line."""
    st = results["settings"]
    workloads = [r["workload"] for r in results["rows"]]
    rows = ",".join(f"{w['cell']}:{w['num_layers']}" for w in workloads)
    flags = [f"--sections={','.join(st['sections'])}", f"--rows={rows}"]
    for flag, value, standard in (
        ("repeats", st["repeats"], STANDARD_REPEATS),
        ("steps", st["steps_per_round"], STANDARD_STEPS),
    ):
        flags += [f"--{flag}={value}"] if value != standard else []
    if "end_to_end" in st["sections"] and st["e2e_epochs"] != STANDARD_E2E_EPOCHS:
        flags.append(f"--e2e_epochs={st['e2e_epochs']}")
    chosen = st.get("e2e_runs")  # (absent from reports before the flag)
    if "end_to_end" in st["sections"] and chosen and tuple(chosen) != E2E_RUN_NAMES:
        flags.append(f"--e2e_runs={','.join(chosen)}")
    w, ref = st["workload"], st["reference"]
    flags += [f"--{k}={w[k]}" for k in ("hidden", "batch", "seq") if w[k] != ref[k]]
    return "python scripts/benchmark.py " + " ".join(flags)


def header(results: dict) -> list[str]:
    """What this file is (one run, one host), how to rerun it, the host and how loaded it was."""
    m, st, peak = results["machine"], results["settings"], results["peak"]
    ran, skipped = st["sections"], [s for s in DEFAULT_SECTIONS if s not in st["sections"]]
    start, end, cores = m["load"], results.get("load_end", m["load"]), m["cores"]
    w = st["workload"]
    lines = [
        "# Benchmarks",
        "",
        f"One run of `scripts/benchmark.py` on one host, {st['started']} "
        f"({st['minutes']:.0f} min); a rerun replaces this file whole. Measurements from other "
        f"runs and hosts, and what they show: [{PERFORMANCE_PAGE}]({PERFORMANCE_PAGE}).",
        "",
        f"Reproduce: `{command(results)}`.",
        "",
        f"Host: {m['backend']}, {m['devices']} device(s) of kind `{m['device_kind']}`, {cores} "
        f"cores, JAX {m['jax']}, torch {m['torch']}, {m['processor']}, {m['platform']}.",
        "",
        f"ISA: {m.get('isa', 'not recorded')}.",
        "",
        f"Load: 1-minute load average {start:.1f} at the start and {end:.1f} at the end, on "
        f"{cores} cores"
        + (
            ": **the cores were shared with other processes**, so absolute "
            "times are inflated and noisy"
            if shared(results)
            else ""
        )
        + ". Compare only ratios of variants "
        "measured side by side in this run (interleaved, round after round), not absolute "
        "times across runs or hosts.",
        "",
        f"Sections: {', '.join(ran)}."
        + (
            f" **A reduced run**: {', '.join(skipped)} not run (the default `--sections` runs "
            "them)."
            if skipped
            else ""
        )
        + (
            " `large` (h 1024, b 256, t 256) is for accelerators: not by default."
            if "large" not in ran
            else ""
        ),
        "",
        f"Each figure is the median over {st['repeats']} interleaved rounds of "
        f"{st['steps_per_round']} steps (min-max in the JSON) unless a section says otherwise. "
        "Training step = forward + backward + global-norm clipping + SGD update, vocabulary "
        f"{results['vocab']}, random tokens; base workload h={w['hidden']} b={w['batch']} "
        f"t={w['seq']}.",
        f"Measured fp32 matmul peak ({peak['n']}^3): JAX {peak['jax']:.0f} GFLOP/s"
        + (f", torch {peak['torch']:.0f} GFLOP/s" if "torch" in peak else "")
        + f"; MFU = analytic training FLOPs/token x tokens/s / {peak['peak']:.0f} GFLOP/s.",
        "",
    ]
    return lines


def write_report(results: dict, path: str | Path, json_path: str | Path | None = None) -> None:
    """The Markdown report of ``results`` (scripts/benchmark.py's dict) at ``path``; the
    results as JSON at ``json_path`` if given."""
    lines = header(results) + targets(results)
    for name in _ours(results):
        if note := tables.variant_note(name):
            lines += ["", note]
    for section in SECTIONS:
        if results.get(section):
            lines += ["", *tables.TABLES[section](results)]
    for section, error in results.get("failed", {}).items():
        lines += ["", f"## {section}: failed", "", f"This section raised `{error}`."]
    write_atomic(Path(path), "\n".join(lines) + "\n")  # a failed write leaves the old report
    if json_path:
        write_atomic(Path(json_path), json.dumps(results, indent=2))
