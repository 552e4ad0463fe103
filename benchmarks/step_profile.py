"""Where one training step's time goes, part by part, for rnnjax's default (``native``) and for
PyTorch's ``nn.LSTM`` (issue #34's premise: docs/performance.md#the-lstm-step-part-by-part).

    python benchmarks/step_profile.py [--rounds=5] [--reps=20] [--cell=lstm] [--layers=2]

JAX: each part of the reference step (h 256, b 32, t 35, vocabulary 28) is jitted alone at the
step's shapes and timed (median of ``--reps`` calls), the parts and the whole step interleaved
round after round; "the rest" is the whole step less the parts (hand-offs between XLA's thunks and
the FFI calls, the loss's small ops, copies). PyTorch: ``torch.profiler`` over ``--reps`` steps,
each op's self CPU time grouped into the same parts. Prints one Markdown table (ms per step) and
the host's ISA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from harness import Variant, isa_line, jax_variant, median_ms, torch_variant  # noqa: E402
from workload import V, Workload  # noqa: E402

from rnnjax import host
from rnnjax.cells import CELLS  # noqa: E402
from rnnjax.network.impls import fused, native

PARTS = [  # (part, what it is), in the order of a step
    ("input projections", "layer 1: W_x's rows by token; layers 2..L: [t*b, h] @ [h, G]"),
    ("recurrent forward", "the layers' time loops (native: one FFI call a layer)"),
    ("output layer + loss", "logits [t*b, V], log-softmax, cross-entropy, and their gradients"),
    ("recurrent backward", "the layers' backward loops (dGates, dh; native: one FFI call a layer)"),
    ("weight gradients", "dW_h, db per layer and dW_x for layers 2..L: [h, t*b] @ [t*b, G]"),
    ("input gradients", "dX of layers 2..L: [t*b, G] @ [G, h]; layer 1's scatter into W_x"),
    ("clipping + update", "global norm over all params, scale, SGD"),
]


def timed(fn: Callable[[], object], reps: int) -> float:
    """Median ms of ``reps`` calls (after one warm call), each waited for."""
    return median_ms({"part": lambda: jax.block_until_ready(fn())}, reps)["part"]


def jax_parts(w: Workload) -> dict[str, Callable[[], object]]:
    """Each part of the native step as a jitted zero-argument callable (its inputs made once)."""
    cell = CELLS[w.cell]
    t, b, h, L = w.seq, w.batch, w.hidden, w.num_layers
    g = cell.num_gates * h
    k = iter(jax.random.split(jax.random.key(0), 64))
    u = lambda shape, s=0.06: jax.random.uniform(next(k), shape, jnp.float32, -s, s)  # noqa: E731
    per = lambda shape, s=0.06: [u(shape, s) for _ in range(L)]  # noqa: E731
    # one input per layer: XLA would merge identical calls into one
    tokens = jax.random.randint(next(k), (t, b), 0, V)
    targets = jax.random.randint(next(k), (t, b), 0, V)
    w_x1, w_xs, b_xs = u((V, g)), per((h, g)), per((g,))
    rps = [{"w_h": w_h, "b_h": b_h} for w_h, b_h in zip(per((h, g)), per((g,)))]
    xs, xws, dgs, dhs = per((t, b, h), 1.0), per((t, b, g), 1.0), per((t, b, g)), per((t, b, h))
    w_out, b_out = u((h, V)), u((V,))
    carry = cell.initial_carry(b, h)
    layers = [{"w_x": w_x1 if l == 0 else w_xs[l], "b_x": b_xs[l], **rps[l]} for l in range(L)]
    params = {"layers": layers, "w_out": w_out, "b_out": b_out}
    threads = native.default_threads()

    @jax.jit
    def proj(xs):
        return [w_x1[tokens] + b_xs[0]] + [xs[l] @ w_xs[l] + b_xs[l] for l in range(1, L)]

    fwd = jax.jit(lambda rp, xw: native._forward(w.cell, "tanh", threads, rp, xw, carry))

    @jax.jit
    def rec_fwd(xws):
        return [fwd(rps[l], xws[l])[0] for l in range(L)]

    @jax.jit
    def out_loss(x_tbh, w_out, b_out):
        def loss(x, wo, bo):
            logits = x @ wo + bo
            return -jnp.mean(
                jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)
            )

        return jax.grad(loss, argnums=(0, 1, 2))(x_tbh, w_out, b_out)

    # the backward loops alone: native._layer_bwd's FFI call, without XLA's dW_h matmul
    saved = [fwd(rps[l], xws[l]) for l in range(L)]
    name, ns, _, sep = native._kernel(w.cell)
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731

    @jax.jit
    def rec_bwd(saved, dhs):
        leaves = jnp.stack(jax.tree_util.tree_leaves(carry))
        call = jax.ffi.ffi_call(
            f"rnnjax_{name}_bwd", (f32(t, b, g), f32(t, b, g if sep else 0), f32(ns, b, h))
        )
        return [
            call(
                rps[l]["w_h"],
                saved[l][2],
                saved[l][0],
                leaves,
                dhs[l],
                jnp.zeros((ns, b, h), jnp.float32),
                act=np.int64(0),
                threads=np.int64(threads),
            )
            for l in range(L)
        ]

    @jax.jit
    def wgrads(xs, dgs):
        hp = [fused._shift(jnp.zeros((b, h)), x) for x in xs]
        out = [jnp.einsum("tbh,tbg->hg", hp[l], dgs[l]) for l in range(L)]
        out += [dg.sum((0, 1)) for dg in dgs]
        return out + [jnp.einsum("tbh,tbg->hg", xs[l - 1], dgs[l]) for l in range(1, L)]

    @jax.jit
    def igrads(dgs):
        out = [jnp.einsum("tbg,hg->tbh", dgs[l], w_xs[l]) for l in range(1, L)]
        return out + [jnp.zeros_like(w_x1).at[tokens].add(dgs[0])]

    import optax

    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(2.0))
    opt = tx.init(params)

    @jax.jit
    def update(grads, opt, params):
        upd, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, upd), opt

    return {
        "input projections": lambda: proj(xs),
        "recurrent forward": lambda: rec_fwd(xws),
        "output layer + loss": lambda: out_loss(xs[-1], w_out, b_out),
        "recurrent backward": lambda: rec_bwd(saved, dhs),
        "weight gradients": lambda: wgrads(xs, dgs),
        "input gradients": lambda: igrads(dgs),
        "clipping + update": lambda: update(params, opt, params),
    }


TORCH_GROUPS = [  # (part, substrings of torch.profiler op names), first match wins
    ("recurrent backward", ("rnn_layer_backward", "lstm_backward", "rnn_backward")),
    ("recurrent forward", ("mkldnn_rnn_layer", "lstm", "rnn_tanh", "gru", "_rnn")),
    ("clipping + update", ("norm", "clip", "foreach", "sgd", "add_", "mul_", "stack", "linalg")),
    ("output layer + loss", ("softmax", "nll_loss", "cross_entropy", "addmm", "linear", "mm")),
    ("input projections", ("one_hot", "embedding", "scatter")),
]


def torch_parts(w: Workload, reps: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """torch.profiler self CPU time per part, ms per step (parts as in :data:`PARTS`), and the
    ten costliest ops."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    v: Variant = torch_variant(w, reps)
    v.run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        v.run()
    out: dict[str, float] = {}
    ops = []
    for ev in prof.key_averages():
        name = ev.key.lower()
        part = next((p for p, keys in TORCH_GROUPS if any(s in name for s in keys)), "the rest")
        ms = ev.self_cpu_time_total / 1e3 / reps
        out[part] = out.get(part, 0.0) + ms
        ops.append((f"{ev.key} ({part})", ms))
    del torch
    return out, sorted(ops, key=lambda o: -o[1])[:12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--layers", type=int, default=2)
    a = ap.parse_args()
    host.retain_freed_memory()
    w = Workload(cell=a.cell, num_layers=a.layers)
    parts = jax_parts(w)
    step = jax_variant(w, "auto", 1)
    tv = torch_variant(w, 1)
    samples: dict[str, list[float]] = {p: [] for p in [*parts, "step", "torch step"]}
    for _ in range(a.rounds):
        for p, fn in parts.items():
            samples[p].append(timed(fn, a.reps))
        samples["step"].append(timed(lambda: step.run(), a.reps))
        samples["torch step"].append(timed(lambda: tv.run(), a.reps))
    med = {p: statistics.median(s) for p, s in samples.items()}
    tp, top = torch_parts(w, a.reps)
    tsum = sum(tp.values())
    print(f"{isa_line()}; {a.rounds} rounds x {a.reps} calls, {w.label}")
    print("\n| part | rnnjax (native) ms | torch ms (profiler self CPU, scaled) |")
    print("|---|---|---|")
    scale = med["torch step"] / tsum if tsum else 1.0
    for p, _ in PARTS:
        print(f"| {p} | {med[p]:.2f} | {tp.get(p, 0.0) * scale:.2f} |")
    rest = med["step"] - sum(med[p] for p, _ in PARTS)
    print(f"| the rest | {rest:.2f} | {tp.get('the rest', 0.0) * scale:.2f} |")
    print(f"| **whole step** | **{med['step']:.2f}** | **{med['torch step']:.2f}** |")
    print(f"\ntorch's costliest ops (self CPU ms/step, unscaled; profiled sum {tsum:.2f}):")
    for name, ms in top:
        print(f"- {name}: {ms:.2f}")


if __name__ == "__main__":
    main()
