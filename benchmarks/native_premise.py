"""The premise of native recurrent layers (issue #27, item 1), in numbers.

    python benchmarks/native_premise.py [--rounds=5] [--reps=10]

Builds ``benchmarks/native_premise.cc`` with the machine's g++ (and OpenBLAS from the
scipy-openblas32 wheel, if installed, for the GEMM comparison), then interleaves ``--rounds`` rounds
of: the native binary (median of ``--reps`` runs of each variant) and XLA's fused layer
(:mod:`rnnjax.network.impls.fused` under ``jax.jit``, median of ``--reps`` runs) on the same shapes:
an LSTM, T 35, b 32, h 256, forward with saves plus backward. Prints the medians over the rounds
(ms) and the ratios the go/no-go reads (docs/performance.md#native-recurrent-layers-the-premise).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from rnnjax.network.impls.fused import scan_layer

T, B, H = 35, 32, 256
HERE = Path(__file__).resolve().parent


def mkl_prefix() -> Path | None:
    """The prefix where pip put MKL's library and headers (the ``mkl`` and ``mkl-include`` wheels
    install lib/libmkl_rt.so.3 and include/mkl.h under it), or None. ``RNNJAX_MKL_PREFIX`` names
    another prefix (``pip install --prefix=DIR mkl mkl-include``)."""
    candidates = [os.environ.get("RNNJAX_MKL_PREFIX", ""), sys.prefix, sys.base_prefix]
    for c in filter(None, candidates):
        p = Path(c)
        if (p / "lib" / "libmkl_rt.so.3").is_file() and (p / "include" / "mkl.h").is_file():
            return p
    return None


def build(out: Path) -> list[str]:
    """Compile the native benchmark; returns the command that runs it."""
    cmd = ["g++", "-O3", "-march=native", "-std=c++17", "-pthread", str(HERE / "native_premise.cc")]
    try:
        import scipy_openblas32 as sob

        lib = sob.get_lib_dir()
        cmd += ["-DWITH_OPENBLAS", f"-I{sob.get_include_dir()}", f"-L{lib}"]
        cmd += [f"-l{sob.get_library()}", f"-Wl,-rpath,{lib}"]
    except ImportError:
        print("scipy-openblas32 is not installed: the OpenBLAS rows are left out", file=sys.stderr)
    mkl = mkl_prefix()
    if mkl is not None:  # pip install mkl mkl-include (about 1 GB with its dependencies)
        lib = mkl / "lib"
        cmd += ["-DWITH_MKL", f"-I{mkl / 'include'}", f"-L{lib}", "-l:libmkl_rt.so.3"]
        cmd += [f"-Wl,-rpath,{lib}"]
    else:
        print("mkl and mkl-include are not installed: the MKL rows are left out", file=sys.stderr)
    subprocess.run([*cmd, "-o", str(out)], check=True)
    return [str(out)]


def median_ms(fn, reps: int) -> float:
    jax.block_until_ready(fn())  # compile, warm
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(ts)


def xla_variants() -> dict:
    """XLA's fused layer (fwd+bwd), its two layers in turn, and XLA's share of a native layer."""
    k = jax.random.split(jax.random.key(0), 8)
    u = lambda key, shape, s: jax.random.uniform(key, shape, jnp.float32, -s, s)  # noqa: E731
    p1 = {"w_h": u(k[0], (H, 4 * H), 1 / 16), "b_h": u(k[1], (4 * H,), 1 / 16)}
    p2 = {**p1, "w_x": u(k[2], (H, 4 * H), 1 / 16), "b_x": u(k[3], (4 * H,), 1 / 16)}
    xw = u(k[4], (T, B, 4 * H), 1.0)
    dtop = u(k[5], (T, B, H), 1.0)
    c0 = (jnp.zeros((B, H)), jnp.zeros((B, H)))

    def one(p, xw):
        return jnp.vdot(scan_layer("lstm", "tanh", p, xw, c0)[0], dtop)

    def two(p1, p2, xw):
        h1 = scan_layer("lstm", "tanh", p1, xw, c0)[0]
        h2 = scan_layer("lstm", "tanh", p2, h1 @ p2["w_x"] + p2["b_x"], c0)[0]
        return jnp.vdot(h2, dtop)

    def share(h_prev, dg):  # what XLA still does around a native layer: dW_h, db_h
        return jnp.einsum("tbh,tbg->hg", h_prev, dg), dg.sum(axis=(0, 1))

    one_j = jax.jit(jax.grad(one, argnums=(0, 1)))
    two_j = jax.jit(jax.grad(two, argnums=(0, 1, 2)))
    fwd_j = jax.jit(lambda p, xw: scan_layer("lstm", "tanh", p, xw, c0)[0])
    share_j = jax.jit(share)
    hp, dg = dtop, xw
    return {
        "xla_layer_fwd_ms": lambda: fwd_j(p1, xw),
        "xla_layer_fwd_bwd_ms": lambda: one_j(p1, xw),
        "xla_two_layers_ms": lambda: two_j(p1, p2, xw),
        "xla_weight_grads_ms": lambda: share_j(hp, dg),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=10)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        binary = build(Path(d) / "native_premise")
        xla = xla_variants()
        rows: dict[str, list[float]] = {}
        for _ in range(a.rounds):
            native = json.loads(
                subprocess.run(
                    [*binary, str(a.reps)], check=True, capture_output=True, text=True
                ).stdout
            )
            for name, v in native.items():
                rows.setdefault(name, []).append(v)
            for name, fn in xla.items():
                rows.setdefault(name, []).append(median_ms(fn, a.reps))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"host: {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; jax {jax.__version__}")
    print("| variant | median ms | runs (ms) |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {', '.join(f'{x:.1f}' for x in rows[k])} |")
    m = med
    native_one = m["layer_fwd_bwd_ms"] + m["xla_weight_grads_ms"]
    native_two = m["two_wavefront_ms"] + 3 * m["xla_weight_grads_ms"]
    native_turn = m["two_in_turn_ms"] + 3 * m["xla_weight_grads_ms"]
    xla1, xla2 = m["xla_layer_fwd_bwd_ms"], m["xla_two_layers_ms"]
    print(
        f"\none layer, fwd+bwd: XLA / native loop = {xla1 / m['layer_fwd_bwd_ms']:.2f}x; "
        f"with XLA's weight gradients added to native: {xla1 / native_one:.2f}x"
    )
    print(
        f"one layer, forward only: XLA / native = {m['xla_layer_fwd_ms'] / m['layer_fwd_ms']:.2f}x"
    )
    print(
        f"two layers: XLA / native in turn = {xla2 / native_turn:.2f}x; "
        f"XLA / native wavefront = {xla2 / native_two:.2f}x "
        "(native: + 3 weight-gradient matmuls in XLA)"
    )


if __name__ == "__main__":
    main()
