"""The sections of the benchmark report measured in a child process, because what they vary is
fixed when JAX (or torch) starts: the device count (``devices``) and the ISA of the native kernels
and of torch (``avx2``). Each section function starts its child (``scripts/benchmark.py
--devices_only`` / ``--avx2_only``), which runs the ``*_here`` function and prints its figures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

import jax
from harness import build, interleave, isa_line, jax_variant, repo_path, torch_variant
from workload import Settings

from rnnjax.network.impls import native
from rnnjax.network.parallel import DataParallel


def devices_here(s: Settings) -> dict[str, Any]:
    """The plain step vs the data-parallel step on meshes of 1, 2, 4, ... of this process's
    devices (the devices section's child process runs this)."""
    w = s.base
    variants = {"plain (no mesh)": jax_variant(w, "rnnjax", s.steps)}
    n = 1
    while n <= len(jax.devices()):
        dp = DataParallel.create(n, w.batch)
        variants[f"mesh of {n}"] = jax_variant(w, "rnnjax", s.steps, dp)
        n *= 2
    return {
        "visible": len(jax.devices()),
        "results": interleave(variants, s.repeats, s.steps, w.tokens_per_step),
    }


# The AVX2 section's child: the native kernels' AVX2 build, and torch held to AVX2 (oneDNN, MKL).
AVX2_ENV = {
    "RNNJAX_NATIVE_ISA": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}


def avx2_here(s: Settings) -> dict[str, Any]:
    """Each row's native step (one device) beside torch's, interleaved, in this process (the child
    of :func:`avx2`, which sets :data:`AVX2_ENV`)."""
    out = []
    for cell, layers in s.rows:
        w = dataclasses.replace(s.base, cell=cell, num_layers=layers)
        builders = {"native": lambda w=w: jax_variant(w, "native", s.steps)}
        builders["torch"] = lambda w=w: torch_variant(w, s.steps)
        variants, skipped = build(builders)
        res = interleave(variants, s.repeats, s.steps, w.tokens_per_step)
        if "torch" in res:
            for r in res.values():
                r["vs_torch"] = res["torch"]["ms_per_step"] / r["ms_per_step"]
        out.append(
            {
                "workload": dataclasses.asdict(w),
                "label": w.label,
                "results": res,
                "skipped": skipped,
            }
        )
    return {"isa": isa_line(), "rows": out}


def avx2(s: Settings) -> dict[str, Any]:
    """The AVX2 build of the native kernels against torch held to AVX2, on this (AVX-512) host: what
    an AVX2 host runs, each side at that ISA. A child process (the ISA is chosen at import)."""
    if native.cpu_isa() != "AVX-512":
        return {"skipped": f"this host's widest ISA is {native.cpu_isa()}: the rows are that"}
    cmd = [sys.executable, str(repo_path("scripts", "benchmark.py")), "--avx2_only"]
    cmd += [f"--repeats={s.repeats}", f"--steps={s.steps}", f"--hidden={s.base.hidden}"]
    cmd += [f"--batch={s.base.batch}", f"--seq={s.base.seq}"]
    cmd += ["--rows=" + ",".join(f"{c}:{n}" for c, n in s.rows)]
    env = dict(os.environ, **AVX2_ENV)
    child = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads([x for x in child.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])


def devices(s: Settings) -> dict[str, Any]:
    """:func:`devices_here` in a child process with ``fake_devices`` CPU devices (the device count
    is fixed when JAX starts)."""
    env = dict(os.environ)
    if s.fake_devices:
        flag = f" --xla_force_host_platform_device_count={s.fake_devices}"
        env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + flag
    b = s.base
    cmd = [
        sys.executable,
        str(repo_path("scripts", "benchmark.py")),
        "--devices_only",
        f"--repeats={s.repeats}",
        f"--steps={s.steps}",
        f"--hidden={b.hidden}",
        f"--batch={b.batch}",
        f"--seq={b.seq}",
    ]
    child = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads([x for x in child.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])


def avx2_table(results: dict) -> list[str]:
    from tables import _skipped  # (tables.py imports this module for its TABLES)

    a = results["avx2"]
    if "skipped" in a:
        return ["## The AVX2 build against torch held to AVX2", "", f"Not run: {a['skipped']}."]
    lines = [
        "## The AVX2 build against torch held to AVX2",
        "",
        "What an AVX2 host runs, measured on this AVX-512 host, in a child process: the native "
        "kernels' AVX2 build (`RNNJAX_NATIVE_ISA=avx2`, 8-lane code) beside torch with "
        "`ONEDNN_MAX_CPU_ISA=AVX2` and `MKL_ENABLE_INSTRUCTIONS=AVX2`, interleaved. "
        f"ISA: {a['isa']}.",
        "",
        "| workload | implementation | ms/step | tokens/s | vs torch |",
        "|---|---|---|---|---|",
    ]
    for row in a["rows"]:
        lines += [
            f"| {row['label']} | {name} | {r['ms_per_step']:.1f} | {r['tokens_per_sec']:.0f} | "
            f"{r.get('vs_torch', float('nan')):.2f}x |"
            for name, r in row["results"].items()
        ]
    return lines + _skipped(a["rows"])


def devices_table(results: dict) -> list[str]:
    dev = results["devices"]
    plain = dev["results"]["plain (no mesh)"]["ms_per_step"]
    return [
        "## Data parallelism (device count)",
        "",
        f"Run in a child process with {dev['visible']} device(s) visible. On fake CPU devices "
        "(`--xla_force_host_platform_device_count`) all 'devices' share the same cores: this "
        "shows that the sharded step works and what it costs, not a speed-up. 'mesh of 1' vs "
        "'plain' is the single-device cost of the data-parallel path.",
        "",
        "| variant | ms/step | tokens/s | throughput vs plain |",
        "|---|---|---|---|",
    ] + [
        f"| {name} | {r['ms_per_step']:.1f} | {r['tokens_per_sec']:.0f} | "
        f"{plain / r['ms_per_step']:.2f}x |"
        for name, r in dev["results"].items()
    ]
