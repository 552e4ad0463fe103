"""Tokens/s of ``configs/books.py``'s training step on this machine, and what limits it.

    python benchmarks/recipe_throughput.py [--repeats=5] [--steps=5]

The recipe's shape (2 layers, hidden 256, 64 steps) at batch 16, 32, 64 and 128, and at batch 16
the GRU and minGRU, interleaved round after round (medians). Prints a Markdown table: tokens/s, ms
per step and per time step, and MFU against the measured fp32 matmul peak. Results:
docs/performance.md.
"""

import argparse

import harness  # benchmarks/ is this script's directory: on sys.path

ROWS = [("lstm", 16), ("lstm", 32), ("lstm", 64), ("lstm", 128), ("gru", 16), ("mingru", 16)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args()
    peak = harness.matmul_peak()["peak"]
    work = {f"{c} b={b}": harness.Workload(c, 2, hidden=256, batch=b, seq=64) for c, b in ROWS}
    variants = {name: harness.jax_variant(w, "rnnjax", a.steps) for name, w in work.items()}
    res = harness.interleave(variants, a.repeats, a.steps, tokens_per_step=1)  # tokens/s: below
    print(f"fp32 matmul peak {peak:.0f} GFLOP/s; {a.repeats} rounds of {a.steps} steps")
    print("| cell, batch | tokens/s | ms/step | ms per time step | MFU |")
    print("|---|---|---|---|---|")
    for name, w in work.items():
        ms = res[name]["ms_per_step"]
        tps = w.tokens_per_step / ms * 1e3
        mfu = w.train_flops_per_token() * tps / (peak * 1e9)
        print(f"| {name} | {tps:,.0f} | {ms:.1f} | {ms / w.seq:.2f} | {100 * mfu:.0f}% |")


if __name__ == "__main__":
    main()
