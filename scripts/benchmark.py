r"""Side-by-side benchmarks; writes a Markdown report and optionally JSON.

    python scripts/benchmark.py [--repeats=7] [--steps=10] [--e2e_epochs=500] [--fake_devices=4]
                                [--sections=rows,pipeline,epoch,scaling,sequence,generation,end_to_end,vectorized,devices,checkpoint]
    scripts/gpu_check.sh OUTDIR    # on a CUDA GPU: the cuDNN tests, then rows,large,end_to_end (cudnn and torch CUDA columns)
                                [--rows=lstm:1,lstm:2,lstm:4,gru:2,rnn:2]
                                [--json=FILE] [--out=FILE]

The report goes to runs/benchmarks/BENCHMARKS-<UTC timestamp>.md (under the current directory)
unless --out says otherwise; the committed BENCHMARKS.md is written only when asked:
--out=BENCHMARKS.md. The defaults (--repeats=7 rounds of --steps=10, --e2e_epochs=500) are the
report's standard: with fewer, the targets are "not judged" rather than met or missed.

Sections (all but large by default):
  * rows: the training step (vocab 28, batch 32, 35 steps, hidden 256, SGD + clipping) for
    LSTM L=1,2,4, GRU L=2 and RNN L=2: rnnjax vs rnnjax-autodiff vs impl="flax" vs PyTorch
    (if installed; on CUDA when JAX runs on a GPU), and on a CUDA GPU impl="cudnn" for the LSTM
    rows, with compile time and MFU against the measured fp32 matmul peak; on a
    multi-core CPU also rnnjax data-parallel over one CPU device per core
    (config.parallel.cpu_devices=0) and the layer pipeline over them (config.parallel.cpu_pipeline);
  * pipeline: the 2-layer LSTM's layer pipeline at 1, 5, 7 and 35 time chunks (bubble vs speed);
  * epoch: where a reference-experiment epoch's time goes outside the training steps (validation,
    overlapped with the next epoch's steps or not; the record);
  * scaling: the 2-layer LSTM with sequence 350, hidden 1024, batch 256;
  * sequence: the 2-layer LSTM, GRU, minGRU and minLSTM (and torch nn.LSTM/GRU) at t = 35, 256
    and 1024, and minGRU's recurrence as an associative scan vs in log space;
  * large: the 2-layer LSTM at h 1024, b 256, t 256, every implementation and torch (for a GPU);
  * generation: characters/s with 1 and 64 streams;
  * end_to_end: the whole seed experiment (scripts/train.py, as is, with --config.model.impl=cudnn
    on a CUDA GPU, and on a multi-core CPU with
    --config.parallel.cpu_devices=0 and with --config.parallel.cpu_pipeline=True) vs
    python benchmarks/torch_baseline.py;
  * vectorized: 8 seeds one by one vs one vmapped program;
  * devices: the data-parallel step on 1, 2, 4 (fake) devices vs the plain step.
Variants run interleaved, round after round, and each figure is the median over rounds.

The measuring code is the repository's benchmarks/ directory (benchmarking.py, torch_baseline.py,
notes.md), not part of the installed package: this script puts that directory on sys.path, so it
runs from a checkout whichever way rnnjax is installed (editable or not).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from absl import app, flags

# benchmarks/ of this repository (scripts/../benchmarks): importable as top-level modules
# (benchmarking, torch_baseline). Only that directory, not the repository root, so `rnnjax` stays
# whichever one is installed.
BENCHMARKS_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS_DIR))

ALL = ["rows", "pipeline", "epoch", "scaling", "sequence", "large", "generation", "end_to_end", "vectorized", "devices",
       "checkpoint"]
_FAKE = flags.DEFINE_integer("fake_devices", 4, "Fake CPU devices for the devices section (0 = real devices only).")
# The defaults of --repeats, --steps and --e2e_epochs are the report's standard (benchmarks/benchmarking.py STANDARD_*).
_REPEATS = flags.DEFINE_integer("repeats", 7, "Interleaved rounds; figures are medians over rounds. Targets judged from 7.")
_STEPS = flags.DEFINE_integer("steps", 10, "Train steps per variant per round. Targets judged from 10.")
_E2E = flags.DEFINE_integer("e2e_epochs", 500, "Epochs of the end-to-end seed experiment (500 = the full one, judged).")
_SECTIONS = flags.DEFINE_list("sections", [x for x in ALL if x != "large"],
                              f"Sections to run, from {ALL}; the default is all but large (h 1024, b 256, t 256: for a GPU).")
_ROWS = flags.DEFINE_list("rows", ["lstm:1", "lstm:2", "lstm:4", "gru:2", "rnn:2"], "Rows of the rows section, as cell:layers.")
_JSON = flags.DEFINE_string("json", None, "Also write the results as JSON here.")
_OUT = flags.DEFINE_string("out", None, "Markdown report path (default: runs/benchmarks/BENCHMARKS-<UTC timestamp>.md); "
                           "--out=BENCHMARKS.md updates the committed report.")
_DEVICES_ONLY = flags.DEFINE_bool("devices_only", False, "Internal: run only the devices section and print JSON.")


def main(argv):
    del argv
    unknown = sorted(set(_SECTIONS.value) - set(ALL))
    if unknown or "rows" not in _SECTIONS.value and not _DEVICES_ONLY.value:
        sys.exit(f"--sections: unknown {unknown} or 'rows' missing; choose from {ALL} and include rows")
    rows = [r.partition(":") for r in _ROWS.value]
    if not rows or any(c not in ("rnn", "gru", "lstm") or not n.isdigit() or int(n) < 1 for c, _, n in rows):
        sys.exit(f"--rows={','.join(_ROWS.value)}: give cell:layers items, e.g. --rows=lstm:2,gru:2")
    if ("lstm", ":", "2") not in rows:
        sys.exit(f"--rows={','.join(_ROWS.value)}: include lstm:2, the reference row the targets are checked on")
    from rnnjax.host import retain_freed_memory

    retain_freed_memory()  # for every implementation in this process, torch included (rnnjax/host.py)
    if not _DEVICES_ONLY.value:  # before JAX starts: one CPU device per core for the "rnnjax, N CPU devices" column
        from rnnjax.parallel import set_cpu_devices

        set_cpu_devices(0, 32)
    import benchmarking as bm  # benchmarks/benchmarking.py (BENCHMARKS_DIR is on sys.path)

    r, s = _REPEATS.value, _STEPS.value
    if _DEVICES_ONLY.value:
        import jax

        print("RESULT " + json.dumps({"devices": bm.benchmark_devices(r, s), "devices_visible": len(jax.devices())}))
        return
    # output paths: resolved from the current directory once, before the (long) measurements
    out = os.path.abspath(_OUT.value or bm.default_report_path())
    json_path = os.path.abspath(_JSON.value) if _JSON.value else None
    for p in filter(None, (out, json_path)):
        os.makedirs(os.path.dirname(p), exist_ok=True)
    sections = _SECTIONS.value
    results = bm.machine(r, s)
    results["peak"] = bm.matmul_peak()
    workloads = [bm.Workload(c, int(n)) for c, _, n in rows]
    results["rows"] = bm.benchmark_rows(r, s, results["peak"]["peak"], workloads)
    if "pipeline" in sections:
        results["pipeline"] = bm.benchmark_pipeline(r, s)
    if "epoch" in sections:
        results["epoch"] = bm.benchmark_epoch(r)
    if "scaling" in sections:
        results["scaling"] = bm.benchmark_scaling(max(3, r // 2), max(2, s // 4))
    if "sequence" in sections:
        results["sequence"] = bm.benchmark_sequence(max(3, r // 2), max(2, s // 5))
        results["scan_forms"] = bm.benchmark_scan_forms(max(3, r // 2))
    if "large" in sections:  # h 1024, b 256, t 256: for accelerators (a minute a step on 2 CPU cores)
        results["large"] = bm.benchmark_large(max(3, r // 2), max(2, s // 2), results["peak"]["peak"])
    if "generation" in sections:
        results["generation"] = bm.benchmark_generation()
    if "checkpoint" in sections:
        results["checkpoint"] = bm.benchmark_checkpoint(r)
    if "vectorized" in sections:
        results["vectorized"] = bm.benchmark_vectorized(max(3, r // 2), s)
    if "devices" in sections:
        env = dict(os.environ)
        if _FAKE.value:  # the device count is fixed when JAX starts: measure it in a child process
            env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_FAKE.value}"
        child = subprocess.run([sys.executable, __file__, "--devices_only", f"--repeats={r}", f"--steps={s}"],
                               capture_output=True, text=True, env=env, check=True)
        results.update(json.loads([x for x in child.stdout.splitlines() if x.startswith("RESULT ")][-1][7:]))
    if "end_to_end" in sections and _E2E.value > 0:
        results["end_to_end"] = bm.benchmark_end_to_end(_E2E.value)
    figure_flags = [a for a in sys.argv if not a.startswith(("--json", "--out"))]  # output paths are not part of it
    bm.write_report(results, out, json_path, command=" ".join(["python", *figure_flags]))
    print(open(out).read())  # says once, under Targets, when the figures are below the standard
    print(f"wrote {out}" + (f" and {json_path}" if json_path else ""))


if __name__ == "__main__":
    app.run(main)
