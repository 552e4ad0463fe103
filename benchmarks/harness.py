"""The measuring harness behind ``scripts/benchmark.py``: workloads, variants, interleaving, peak.

A variant is a zero-argument callable doing ``steps`` training steps and blocking on the result;
:func:`interleave` runs the variants round after round so that machine noise hits them alike, and
each figure is the median over rounds. Lives in the repository's ``benchmarks/`` (not installed).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from workload import V, Workload

from rnnjax.config import ConfigError, default_config, resolve
from rnnjax.network.build import build_model, make_placement
from rnnjax.network.parallel import DataParallel
from rnnjax.training.optim import make_optimizer
from rnnjax.training.steps import init_train_state, make_train_step, train_sums

BENCHMARKS_DIR = Path(__file__).resolve().parent  # benchmarks/: the harness, sections, report
REPO_ROOT = BENCHMARKS_DIR.parent  # the repository holding benchmarks/, scripts/ and configs/

PIPELINE_CHUNKS = 5  # config.parallel.pipeline_chunks's default


def repo_path(*parts: str) -> Path:
    """A file of the repository holding benchmarks/ (e.g. ``repo_path("scripts", "train.py")``);
    a clear error when benchmarks/ was copied out of its repository."""
    path = REPO_ROOT.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: the benchmarks need the repository they live in (benchmarks/ next to "
            "scripts/ and configs/); run them from a checkout"
        )
    return path


@dataclasses.dataclass
class Variant:
    run: Callable[[], None]
    compile_s: float  # first call of one step (compilation + the step); torch: first step


class Unsupported(Exception):
    """A variant cannot run a workload (e.g. torch has no minGRU); the message says why."""


def config(w: Workload, impl: str = "rnnjax", pipeline_chunks: int = 0, devices: int = 1) -> Any:
    """The workload's resolved config on ``devices`` data-parallel devices (``pipeline_chunks`` >
    0: layers pipelined over the CPU devices); :class:`Unsupported` with the config's own message
    when it rejects the pair."""
    cfg = default_config()
    cfg.parallel.num_devices = devices
    cfg.parallel.cpu_pipeline = pipeline_chunks > 0
    cfg.parallel.pipeline_chunks = max(1, pipeline_chunks)
    cfg.model.impl, cfg.model.cell = impl, w.cell
    cfg.model.num_layers, cfg.model.hidden_size = w.num_layers, w.hidden
    cfg.data.batch_size, cfg.data.num_steps = w.batch, w.seq
    try:
        return resolve(cfg)
    except ConfigError as e:
        raise Unsupported(str(e)) from None


def data(w: Workload, steps: int, lead: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids (xs, ys), each [*lead, steps, batch, seq]."""
    host = np.random.default_rng(0).integers(0, V, (*lead, steps, w.batch, w.seq + 1))
    host = host.astype(np.int32)
    return host[..., :-1], host[..., 1:]


def jax_variant(
    w: Workload, impl: str, steps: int, dp: DataParallel | None = None, pipeline_chunks: int = 0
) -> Variant:
    """impl: a ``config.model.impl`` ("rnnjax", "autodiff", "flax", "cudnn"); ``dp``: data
    parallel over a mesh; ``pipeline_chunks`` > 0: the layer pipeline over the CPU devices."""
    cfg = config(w, impl, pipeline_chunks, dp.num_devices if dp is not None else 1)
    model = build_model(cfg, V)
    if pipeline_chunks:
        dp = make_placement(cfg)
    tx, _ = make_optimizer(cfg.train, 1000)
    state = init_train_state(model, tx, jax.random.key(0))
    xs, ys = data(w, steps)
    carry, acc = model.initial_carry(w.batch), train_sums(model, state.params, False)
    if dp is not None:
        state = jax.device_put(state, dp.replicated)
        xs, ys = dp.shard(xs, 1), dp.shard(ys, 1)
        carry = dp.shard_carry(carry)
        acc = jax.tree_util.tree_map(lambda x: dp.replicate(np.asarray(x)), acc)
    else:
        xs, ys = jax.device_put(xs), jax.device_put(ys)
    step = make_train_step(model, tx, reset_carry=False)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    state, carry, acc = step(state, carry, acc, xs, ys, 0, key)
    jax.block_until_ready(acc)
    return Variant(stepper(step, state, carry, acc, xs, ys, key, steps), time.perf_counter() - t0)


def stepper(step, state, carry, acc, xs, ys, key, steps: int) -> Callable[[], None]:
    """A callable doing ``steps`` train steps (continuing from its last call), then blocking."""
    box = {"state": state, "carry": carry, "acc": acc}

    def run() -> None:
        s, c, a = box["state"], box["carry"], box["acc"]
        for i in range(steps):
            s, c, a = step(s, c, a, xs, ys, i, key)
        jax.block_until_ready(a)
        box.update(state=s, carry=c, acc=a)

    return run


def torch() -> Any:
    """The torch module (its CPU threads = this process's cores), or None if not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))  # JAX's CPU client uses them all
    return torch


def torch_device(t: Any) -> tuple[Any, Callable[[], None]]:
    """(device, synchronize): CUDA when JAX runs on a GPU and torch has CUDA, else the CPU."""
    if jax.default_backend() == "gpu" and t.cuda.is_available():
        return t.device("cuda"), t.cuda.synchronize
    return t.device("cpu"), lambda: None


def torch_variant(w: Workload, steps: int) -> Variant:
    """torch.nn's module of the cell (num_layers=L) + ``nn.Linear``, SGD after
    ``clip_grad_norm_``, one-hot inputs; :class:`Unsupported` when torch cannot run it."""
    t = torch()
    if t is None:
        raise Unsupported("torch is not installed (the optional [bench] extra)")
    from torch_baseline import no_torch_module, torch_class, torch_modules, train_step

    if torch_class(w.cell) is None:
        raise Unsupported(no_torch_module(w.cell))
    dev, sync = torch_device(t)
    t.manual_seed(0)
    rnn, out = (m.to(dev) for m in torch_modules(w.cell, V, w.hidden, w.num_layers))
    params = list(rnn.parameters()) + list(out.parameters())
    opt = t.optim.SGD(params, lr=config(w).train.learning_rate)
    xs, ys = (t.as_tensor(a, dtype=t.long, device=dev) for a in data(w, steps))
    box = {"state": None}

    def one(i: int) -> None:
        _, box["state"] = train_step(rnn, out, opt, params, xs[i], ys[i], box["state"], 1.0)

    t0 = time.perf_counter()
    one(0)
    sync()
    compile_s = time.perf_counter() - t0

    def run() -> None:
        for i in range(steps):
            one(i)
        sync()

    return Variant(run, compile_s)


def build(builders: dict[str, Callable[[], Variant]]) -> tuple[dict[str, Variant], dict[str, str]]:
    """(the variants built, {name: why not} for those that raised :class:`Unsupported`)."""
    variants, skipped = {}, {}
    for name, make in builders.items():
        try:
            variants[name] = make()
        except Unsupported as e:
            skipped[name] = str(e)
    return variants, skipped


def interleave(
    variants: dict[str, Variant], repeats: int, steps: int, tokens_per_step: int
) -> dict[str, dict[str, float]]:
    """One warm-up round, then ``repeats`` rounds of every variant in turn; per variant the median
    ms per step, tokens/s, compile time and the spread (min, max) over rounds."""
    for v in variants.values():
        v.run()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, v in variants.items():
            t0 = time.perf_counter()
            v.run()
            samples[name].append((time.perf_counter() - t0) / steps * 1e3)
    out = {}
    for name, v in samples.items():
        ms = statistics.median(v)
        out[name] = {
            "ms_per_step": ms,
            "tokens_per_sec": tokens_per_step / ms * 1e3,
            "compile_s": variants[name].compile_s,
            "spread_ms": [min(v), max(v)],
        }
    return out


def median_ms(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """One warm-up call each, then ``repeats`` interleaved rounds: the median ms per call."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_peak(n: int | None = None, repeats: int = 7) -> dict[str, float]:
    """Measured fp32 matmul GFLOP/s (median) of an n x n x n product in JAX and (if installed)
    torch, each at its default precision; ``peak`` is the larger: the denominator of MFU.
    n: 2048 on the CPU, 8192 on an accelerator."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    fns = {"jax": lambda: mm(a).block_until_ready()}
    t = torch()
    if t is not None:
        dev, sync = torch_device(t)
        b = t.randn(n, n, device=dev)
        fns["torch"] = lambda: (b @ b, sync())
    result: dict[str, float] = {k: 2 * n**3 / ms / 1e6 for k, ms in median_ms(fns, repeats).items()}
    result["peak"] = max(result.values())
    result["n"] = n
    return result


def cpu_mesh_name(impl: str = "rnnjax") -> str | None:
    """The column for ``impl`` data-parallel over this process's CPU devices
    (config.parallel.cpu_devices), or None on one device or off the CPU."""
    n = len(jax.devices())
    return f"{impl}, {n} CPU devices" if jax.default_backend() == "cpu" and n > 1 else None


def pipeline_name() -> str | None:
    """The column for rnnjax's layer pipeline over this process's CPU devices, or None."""
    n = len(jax.devices())
    if jax.default_backend() == "cpu" and n > 1:
        return f"rnnjax, layer pipeline over {n} CPU devices"
    return None


# What holds torch's CPU code to an older ISA (oneDNN's LSTM, MKL's GEMM): set for a run that
# judges the AVX2 build against torch on an AVX-512 host (docs/performance.md).
TORCH_ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def isa_line() -> str:
    """The ISA of the host and of each side: the native kernels' build
    (rnnjax.network.impls.native.isa()) and the limits torch was held to (TORCH_ISA_ENV): "host
    AVX-512, native kernels avx512, torch as built"."""
    from rnnjax.network.impls import native

    held = [f"{k}={os.environ[k]}" for k in TORCH_ISA_ENV if os.environ.get(k)]
    torch_isa = ("held to " + ", ".join(held)) if held else "as built"
    return f"host {native.cpu_isa()}, native kernels {native.isa()}, torch {torch_isa}"


def machine() -> dict[str, Any]:
    """The host: platform, cores, ISA, JAX/torch versions, devices, and the load average (1 min)."""
    t = torch()
    return {
        "isa": isa_line(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": len(jax.devices()),
        "device_kind": jax.devices()[0].device_kind,
        "torch": t.__version__ if t is not None else None,
        "load": os.getloadavg()[0],
    }
