"""The training-step sections of the benchmark report, one function per section.

Each takes the run's :class:`Settings` and returns JSON-able figures that ``report.py`` renders.
Only rnnjax's public functions are used; variants a workload cannot run are listed with why.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from harness import (
    PIPELINE_CHUNKS,
    Variant,
    build,
    config,
    cpu_mesh_name,
    data,
    interleave,
    jax_variant,
    median_ms,
    pipeline_name,
    stepper,
    torch_variant,
)
from workload import Settings, V, Workload

from rnnjax.cells import CELLS
from rnnjax.cells.base import split_gates
from rnnjax.cells.linear import linear_scan
from rnnjax.cells.mingru import coefficients as mingru_coefficients
from rnnjax.network.build import build_model
from rnnjax.network.impls import cudnn, native
from rnnjax.network.impls.pipeline import plan
from rnnjax.network.parallel import DataParallel
from rnnjax.training.optim import make_optimizer
from rnnjax.training.steps import init_train_state, make_train_step, train_sums
from rnnjax.training.vectorize import stack_trials

JAX_IMPLS = {"rnnjax": "rnnjax", "rnnjax-autodiff": "autodiff", "flax": "flax"}  # column -> impl
PIPELINE_CHUNK_COUNTS = (1, 5, 7, 35)  # at t = 35: chunks of 35, 7, 5 and 1 steps
SEQ_FACTORS = (35, 256, 1024)  # the sequence section's lengths at the reference t = 35


def workload(s: Settings, **changes: Any) -> Workload:
    return dataclasses.replace(s.base, **changes)


def _row(s: Settings, w: Workload, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every implementation on one workload, interleaved, with MFU and ratios to torch and flax."""
    builders = {
        name: (lambda i=impl: jax_variant(w, i, s.steps)) for name, impl in JAX_IMPLS.items()
    }
    for impl, module in {"cudnn": cudnn, "native": native}.items():  # where they run here
        if module.available():  # (the config refuses the cells without one: listed as skipped)
            builders[impl] = lambda i=impl: jax_variant(w, i, s.steps)
    if mesh := cpu_mesh_name():
        n = len(jax.devices())
        builders[mesh] = lambda: jax_variant(w, "rnnjax", s.steps, DataParallel.create(n, w.batch))
        if (
            native.available()
        ):  # the kernel per device, one worker each (rnnjax.network.impls.native)
            builders[cpu_mesh_name("native")] = lambda: jax_variant(
                w, "native", s.steps, DataParallel.create(n, w.batch)
            )
        builders[pipeline_name()] = lambda: jax_variant(
            w, "rnnjax", s.steps, pipeline_chunks=PIPELINE_CHUNKS
        )
    builders.update(extra or {})
    builders["torch"] = lambda: torch_variant(w, s.steps)
    variants, skipped = build(builders)
    res = interleave(variants, s.repeats, s.steps, w.tokens_per_step)
    for r in res.values():
        r["mfu"] = w.train_flops_per_token() * r["tokens_per_sec"] / (s.peak_gflops * 1e9)
        for other in ("torch", "flax"):
            if other in res:
                r[f"vs_{other}"] = res[other]["ms_per_step"] / r["ms_per_step"]
    return {
        "workload": dataclasses.asdict(w),
        "label": w.label,
        "flops_per_token": w.train_flops_per_token(),
        "results": res,
        "skipped": skipped,
    }


def rows(s: Settings) -> list[dict[str, Any]]:
    """The training step of each (cell, layers) row: rnnjax (one device; data parallel and the
    layer pipeline over the CPU devices if several) vs autodiff vs impl=flax vs torch."""
    return [_row(s, workload(s, cell=c, num_layers=n)) for c, n in s.rows]


def large(s: Settings) -> dict[str, Any]:
    """The shapes where accelerators shine: the 2-layer LSTM at h x4, b x8, t x7.3 (h 1024, b 256,
    t 256 for the reference); every implementation. Meant for a GPU (a minute a step on 2 cores)."""
    b = s.base
    w = workload(s, hidden=4 * b.hidden, batch=8 * b.batch, seq=b.seq * 256 // 35)
    fewer = dataclasses.replace(s, repeats=max(3, s.repeats // 2), steps=max(2, s.steps // 2))
    return _row(fewer, w)


def pipeline(s: Settings) -> dict[str, Any] | None:
    """The 2-layer LSTM with the layer pipeline at several chunk counts against the plain stack on
    one device, interleaved; None on one device."""
    if pipeline_name() is None:
        return None
    w = s.base
    variants = {"rnnjax (plain stack, one device)": jax_variant(w, "rnnjax", s.steps)}
    bubbles = {}
    for c in (c for c in PIPELINE_CHUNK_COUNTS if c <= w.seq):
        name = f"pipeline, {c} chunk(s) of {w.seq // c} steps"
        variants[name] = jax_variant(w, "rnnjax", s.steps, pipeline_chunks=c)
        pl = plan(w.num_layers, len(jax.devices()), w.seq, c)
        bubbles[name] = {"stages": pl.stages, "chunks": pl.num_chunks, "bubble": pl.bubble}
    res = interleave(variants, s.repeats, s.steps, w.tokens_per_step)
    base = res["rnnjax (plain stack, one device)"]["ms_per_step"]
    for name, r in res.items():
        r.update(bubbles.get(name, {"stages": 1, "chunks": 1, "bubble": 0.0}))
        r["vs_plain"] = base / r["ms_per_step"]
    return {"label": w.label, "devices": len(jax.devices()), "results": res}


def scaling(s: Settings) -> list[dict[str, Any]]:
    """The 2-layer LSTM step as sequence (x10), width (x4) and batch (x8) grow: rnnjax vs torch,
    with the analytic FLOPs ratio to the base row (the cost's growth if efficiency held)."""
    b = s.base
    shapes = [
        b,
        workload(s, seq=10 * b.seq),
        workload(s, hidden=4 * b.hidden),
        workload(s, batch=8 * b.batch),
    ]
    reps, steps = max(3, s.repeats // 2), max(2, s.steps // 4)
    out = []
    for w in shapes:
        variants, skipped = build(
            {
                "rnnjax": lambda w=w: jax_variant(w, "rnnjax", steps),
                "torch": lambda w=w: torch_variant(w, steps),
            }
        )
        flops = w.train_flops_per_token() * w.tokens_per_step
        out.append(
            {
                "label": w.label,
                "workload": dataclasses.asdict(w),
                "skipped": skipped,
                "flops_ratio": flops / (b.train_flops_per_token() * b.tokens_per_step),
                "results": interleave(variants, reps, steps, w.tokens_per_step),
            }
        )
    for row in out:
        for name, r in row["results"].items():
            r["cost_ratio"] = r["ms_per_step"] / out[0]["results"][name]["ms_per_step"]
    return out


def seq_lengths(base: Workload) -> tuple[int, ...]:
    """The sequence section's lengths: 35, 256 and 1024 scaled to the base workload's t."""
    return tuple(base.seq * f // SEQ_FACTORS[0] for f in SEQ_FACTORS)


def sequence(s: Settings, lengths: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Every registered cell's 2-layer stack (rnnjax and torch) as the sequence grows
    (:func:`seq_lengths`), interleaved per length; and minGRU's scan forms at those lengths."""
    lengths = lengths or seq_lengths(s.base)
    reps, steps = max(3, s.repeats // 2), max(2, s.steps // 5)
    out = []
    for t in lengths:
        builders = {}
        for c in CELLS:
            w = workload(s, cell=c, num_layers=2, seq=t)
            builders[f"rnnjax {c}"] = lambda w=w: jax_variant(w, "rnnjax", steps)
            builders[f"torch {c}"] = lambda w=w: torch_variant(w, steps)
        variants, skipped = build(builders)
        out.append(
            {
                "seq": t,
                "skipped": skipped,
                "results": interleave(variants, reps, steps, s.base.batch * t),
            }
        )
    return {"lengths": out, "scan_forms": scan_forms(reps, lengths, s.base.batch, s.base.hidden)}


def _log_space_scan(a_tbh, b_tbh, h0_bh):
    """The paper's form: exp(cumsum(log a) + logcumsumexp(log b - cumsum(log a))) + h0's term."""
    ca = jnp.cumsum(jnp.log(a_tbh), axis=0)
    return jnp.exp(ca) * h0_bh + jnp.exp(ca + jax.lax.cumlogsumexp(jnp.log(b_tbh) - ca, axis=0))


def scan_forms(
    repeats: int, lengths: tuple[int, ...], batch: int = 32, hidden: int = 256
) -> list[dict[str, Any]]:
    """One minGRU layer's recurrence h_t = a_t h_{t-1} + b_t, forward + backward: rnnjax's
    ``linear_scan`` (associative scan) vs the log-space form, interleaved; each one's largest
    relative error against a float64 loop."""
    out = []
    forms = {"associative_scan": linear_scan, "cumlogsumexp": _log_space_scan}
    for t in lengths:
        k1, k2 = jax.random.split(jax.random.key(t))
        xw = 2.0 * jax.random.normal(k1, (t, batch, 2 * hidden))
        h0 = jax.random.uniform(k2, (batch, hidden))
        a, b = mingru_coefficients(split_gates(xw, 2))
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        h = np.asarray(h0, np.float64)
        ref = []
        for i in range(t):
            h = a64[i] * h + b64[i]
            ref.append(h)
        ref = np.stack(ref)
        row: dict[str, Any] = {"seq": t}
        fns = {}
        for name, f in forms.items():
            err = np.abs(np.asarray(f(a, b, h0), np.float64) - ref) / np.abs(ref)
            row[f"{name}_rel_err"] = float(np.max(err))
            grad = jax.jit(jax.grad(lambda a, b, f=f: f(a, b, h0).sum(), argnums=(0, 1)))
            fns[name] = lambda g=grad: jax.block_until_ready(g(a, b))
        row.update({f"{n}_ms": ms for n, ms in median_ms(fns, repeats).items()})
        out.append(row)
    return out


def _vmapped_variant(w: Workload, k: int, steps: int) -> Variant:
    """k seeds of the workload as one vmapped train step (rnnjax.training.vectorize's program)."""
    cfg = config(w)
    model = build_model(cfg, V)
    tx, _ = make_optimizer(cfg.train, 1000)
    keys = jax.random.split(jax.random.key(0), k)
    state = jax.vmap(lambda key: init_train_state(model, tx, key))(keys)
    xs, ys = (jax.device_put(a) for a in data(w, steps, (k,)))
    step = jax.jit(
        jax.vmap(make_train_step(model, tx, False), in_axes=(0, 0, 0, 0, 0, None, 0)),
        donate_argnums=(0, 1, 2),
    )
    carry = stack_trials(model.initial_carry(w.batch), k)
    keys = jax.random.split(jax.random.key(1), k)
    acc = stack_trials(train_sums(model, model.init(jax.random.key(0)), False), k)
    return Variant(stepper(step, state, carry, acc, xs, ys, keys, steps), float("nan"))


def vectorized(s: Settings, k: int = 8) -> dict[str, Any]:
    """k seeds one after another (k x the single step) vs one vmapped step over k stacked states."""
    single = jax_variant(s.base, "rnnjax", s.steps)

    def one_by_one() -> None:
        for _ in range(k):
            single.run()

    variants = {
        f"{k} seeds one by one": Variant(one_by_one, single.compile_s),
        f"{k} seeds vmapped": _vmapped_variant(s.base, k, s.steps),
    }
    return interleave(variants, max(3, s.repeats // 2), s.steps, s.base.tokens_per_step)


# Sections measured in a child process (child_sections.py), re-exported as sections.
from child_sections import avx2, avx2_here, devices, devices_here  # noqa: E402, F401
