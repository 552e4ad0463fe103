"""Benchmark helpers behind ``scripts/benchmark.py``: interleaved, side-by-side timings.

Every variant is a zero-argument callable doing ``steps`` training steps and blocking on
the result; rounds interleave the variants so machine noise hits them alike, and each
figure is the median over rounds.

Not part of the installed package: this module lives in the repository's ``benchmarks/``
directory next to ``torch_baseline.py`` and ``notes.md``, and is imported with that directory
on ``sys.path`` (``scripts/benchmark.py`` and the tests put it there). It benchmarks whichever
``rnnjax`` is importable, and finds ``scripts/`` and ``configs/`` in the repository that holds it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import cudnn
from rnnjax.cells import CELLS
from rnnjax.config import default_config, resolve
from rnnjax.generate import sample
from rnnjax.metrics import to_host
from rnnjax.optim import make_optimizer
from rnnjax.parallel import DataParallel
from rnnjax.pipeline import plan, stages_for
from rnnjax.steps import init_train_state, make_train_step, train_sums
from rnnjax.train import build_model
from rnnjax.vectorize import stack_trials

BENCHMARKS_DIR = Path(__file__).resolve().parent  # benchmarks/: this module, torch_baseline.py, notes.md
REPO_ROOT = BENCHMARKS_DIR.parent  # the repository holding benchmarks/, scripts/ and configs/

# The reference experiment's vocabulary: the bundled Time Machine's characters under the default
# data config (26 letters, space, <unk>). A fixed workload parameter, so no benchmark reads the
# corpus; tests/test_benchmark.py checks it against len(data.load_corpus(...).vocab).
V = 28


def repo_path(*parts: str) -> Path:
    """A file of the repository holding benchmarks/ (e.g. ``repo_path("scripts", "train.py")``);
    a clear error when benchmarks/ was copied out of its repository."""
    path = REPO_ROOT.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path}: the benchmarks need the repository they live in (benchmarks/ next to "
                                "scripts/ and configs/); run them from a checkout")
    return path


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark row: the reference step with some fields changed."""

    cell: str = "lstm"
    num_layers: int = 2
    hidden: int = 256
    batch: int = 32
    seq: int = 35

    @property
    def label(self) -> str:
        return f"{self.cell.upper()} L={self.num_layers} h={self.hidden} b={self.batch} t={self.seq}"

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq

    @property
    def learning_rate(self) -> float:
        return 1.0 if self.cell == "rnn" else 2.0  # as configs/deep_rnn.py: lr 2 diverges for tanh RNNs

    def train_flops_per_token(self) -> float:
        """Analytic model FLOPs per token of one training step: 3 x the forward matmuls
        (forward + backward w.r.t. activations + backward w.r.t. weights). Layer 1's input
        is counted as the one-hot matmul X W_x (V x G*h) of the model's definition."""
        g, h = CELLS[self.cell].num_gates, self.hidden
        rec = 0 if CELLS[self.cell].sequence is not None else h  # minGRU/minLSTM: no h W_h
        fwd = sum(2 * g * h * ((V if l == 0 else h) + rec) for l in range(self.num_layers)) + 2 * h * V
        return 3.0 * fwd


@dataclasses.dataclass
class Variant:
    run: Callable[[], None]
    compile_s: float  # first call of one step (compilation + the step); torch: first step


def _config(w: Workload, impl: str = "rnnjax", pipeline_chunks: int = 0):
    """The workload's config; ``pipeline_chunks`` > 0: its layers pipelined over the CPU devices."""
    cfg = default_config()
    cfg.parallel.cpu_pipeline, cfg.parallel.pipeline_chunks = pipeline_chunks > 0, max(1, pipeline_chunks)
    cfg.model.impl, cfg.model.cell, cfg.model.num_layers, cfg.model.hidden_size = impl, w.cell, w.num_layers, w.hidden
    cfg.data.batch_size, cfg.data.num_steps, cfg.train.learning_rate = w.batch, w.seq, w.learning_rate
    return resolve(cfg)


def _data(w: Workload, steps: int, lead: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    host = np.random.default_rng(0).integers(0, V, (*lead, steps, w.batch, w.seq + 1)).astype(np.int32)
    return host[..., :-1], host[..., 1:]


def _jax_variant(w: Workload, impl: str, steps: int, dp: DataParallel | None = None, pipeline_chunks: int = 0
                 ) -> Variant:
    """impl: "rnnjax", "flax", or "rnnjax-autodiff" (config impl "autodiff": the plain lax.scan layer,
    differentiated by JAX); ``pipeline_chunks`` > 0: the layer pipeline over the CPU devices."""
    cfg = _config(w, "autodiff" if impl == "rnnjax-autodiff" else impl, pipeline_chunks)
    model = build_model(cfg, V)
    if pipeline_chunks:
        dp = DataParallel.replicated_over(stages_for(model))
    tx, _ = make_optimizer(cfg.train, 1000)
    state = init_train_state(model, tx, jax.random.key(0))
    xs, ys = _data(w, steps)
    carry, acc = model.initial_carry(w.batch), train_sums(model, state.params, False)
    if dp is not None:
        state = jax.device_put(state, dp.replicated)
        xs, ys = dp.shard(xs, 1), dp.shard(ys, 1)
        carry, acc = dp.shard_carry(carry), jax.tree_util.tree_map(lambda x: dp.replicate(np.asarray(x)), acc)
    else:
        xs, ys = jax.device_put(xs), jax.device_put(ys)
    step = make_train_step(model, tx, reset_carry=False)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    state, carry, acc = step(state, carry, acc, xs, ys, 0, key)
    jax.block_until_ready(acc)
    return Variant(_stepper(step, state, carry, acc, xs, ys, key, steps), time.perf_counter() - t0)


def _stepper(step, state, carry, acc, xs, ys, key, steps: int) -> Callable[[], None]:
    """A callable doing ``steps`` train steps (continuing from the last call) and blocking on the result."""
    box = {"state": state, "carry": carry, "acc": acc}

    def run() -> None:
        s, c, a = box["state"], box["carry"], box["acc"]
        for i in range(steps):
            s, c, a = step(s, c, a, xs, ys, i, key)
        jax.block_until_ready(a)
        box.update(state=s, carry=c, acc=a)

    return run


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))  # JAX's CPU client uses every core too
    return torch


def _torch_variant(w: Workload, steps: int) -> Variant | None:
    """``nn.LSTM/GRU/RNN(num_layers=L)`` + ``nn.Linear``, SGD after ``clip_grad_norm_``, one-hot inputs.
    On CUDA (cuDNN) when JAX runs on a GPU and torch has CUDA; else on the CPU."""
    torch = _torch()
    if torch is None:
        return None
    from torch_baseline import torch_modules, train_step

    cuda = jax.default_backend() == "gpu" and torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    rnn, out = (m.to(dev) for m in torch_modules(w.cell, V, w.hidden, w.num_layers))
    params = list(rnn.parameters()) + list(out.parameters())
    opt = torch.optim.SGD(params, lr=w.learning_rate)
    xs, ys = (torch.as_tensor(a, dtype=torch.long, device=dev) for a in _data(w, steps))
    box = {"state": None}

    def one(i: int) -> None:
        _, box["state"] = train_step(rnn, out, opt, params, xs[i], ys[i], box["state"], 1.0)

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    one(0)
    sync()
    compile_s = time.perf_counter() - t0

    def run() -> None:
        for i in range(steps):
            one(i)
        sync()

    return Variant(run, compile_s)


def _interleave(variants: dict[str, Variant], repeats: int, steps: int, tokens_per_step: int) -> dict[str, dict[str, float]]:
    for v in variants.values():  # warm-up round
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
        out[name] = {"ms_per_step": ms, "tokens_per_sec": tokens_per_step / ms * 1e3, "compile_s": variants[name].compile_s,
                     "spread_ms": [min(v), max(v)]}
    return out


def matmul_peak(n: int | None = None, repeats: int = 7) -> dict[str, float]:
    """Measured fp32 matmul throughput (GFLOP/s, median of repeats) of an n x n x n product in
    JAX and (if installed) torch, each at its default precision (JAX's allows TF32 on a GPU);
    ``peak`` is the larger: the denominator of MFU. n: 2048 on the CPU, 8192 on an accelerator."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    result = {"jax": 2 * n**3 / statistics.median(times) / 1e9}
    torch = _torch()
    if torch is not None:
        cuda = jax.default_backend() == "gpu" and torch.cuda.is_available()
        t = torch.randn(n, n, device="cuda" if cuda else "cpu")
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        t @ t
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            t @ t
            sync()
            times.append(time.perf_counter() - t0)
        result["torch"] = 2 * n**3 / statistics.median(times) / 1e9
    result["peak"] = max(result.values())
    result["n"] = n
    return result


ROWS = [Workload("lstm", 1), Workload("lstm", 2), Workload("lstm", 4), Workload("gru", 2), Workload("rnn", 2)]


PIPELINE_CHUNKS = 5  # config.parallel.pipeline_chunks's default


def pipeline_name() -> str | None:
    """The column for rnnjax's layer pipeline over this process's CPU devices (config.parallel.cpu_pipeline)."""
    n = len(jax.devices())
    return f"rnnjax, layer pipeline over {n} CPU devices" if jax.default_backend() == "cpu" and n > 1 else None


def cpu_mesh_name() -> str | None:
    """The column for rnnjax data-parallel over this process's CPU devices (config.parallel.cpu_devices),
    or None when there is one device or the backend is not the CPU."""
    n = len(jax.devices())
    return f"rnnjax, {n} CPU devices" if jax.default_backend() == "cpu" and n > 1 else None


def benchmark_rows(repeats: int, steps: int, peak_gflops: float, rows: list[Workload] = ROWS) -> list[dict[str, Any]]:
    """Each row: rnnjax (one device, and split over the CPU devices if several) vs
    rnnjax-autodiff vs impl="flax" vs torch, interleaved; adds MFU and the ratio to torch."""
    out = []
    mesh = cpu_mesh_name()
    for w in rows:
        variants = {impl: _jax_variant(w, impl, steps) for impl in ("rnnjax", "rnnjax-autodiff", "flax")}
        if w.cell == "lstm" and cudnn.available():  # cuDNN's fused LSTM (config model.impl = "cudnn")
            variants["cudnn"] = _jax_variant(w, "cudnn", steps)
        if mesh:
            variants[mesh] = _jax_variant(w, "rnnjax", steps, DataParallel.create(len(jax.devices()), w.batch))
            variants[pipeline_name()] = _jax_variant(w, "rnnjax", steps, pipeline_chunks=PIPELINE_CHUNKS)
        tv = _torch_variant(w, steps)
        if tv is not None:
            variants["torch"] = tv
        res = _interleave(variants, repeats, steps, w.tokens_per_step)
        for r in res.values():
            r["mfu"] = w.train_flops_per_token() * r["tokens_per_sec"] / (peak_gflops * 1e9)
            if "torch" in res:
                r["vs_torch"] = res["torch"]["ms_per_step"] / r["ms_per_step"]
        out.append({"workload": dataclasses.asdict(w), "label": w.label, "flops_per_token": w.train_flops_per_token(),
                    "results": res})
    return out


LARGE = Workload("lstm", 2, hidden=1024, batch=256, seq=256)


def benchmark_large(repeats: int, steps: int, peak_gflops: float, w: Workload = LARGE) -> dict[str, Any]:
    """The shapes where accelerators shine (2-layer LSTM, h 1024, b 256, t 256): a row of
    :func:`benchmark_rows` (every implementation, cudnn where CUDA is, and torch). Meant for a GPU:
    on 2 CPU cores a step takes a minute."""
    return benchmark_rows(repeats, steps, peak_gflops, [w])[0]


PIPELINE_CHUNK_COUNTS = (1, 5, 7, 35)


def benchmark_pipeline(repeats: int, steps: int, w: Workload = Workload()) -> dict[str, Any] | None:
    """The 2-layer LSTM step with the layer pipeline at several chunk counts (t = 35: chunks of 35, 7,
    5 and 1 steps) against the plain stack on one device, interleaved; None on one device."""
    if pipeline_name() is None:
        return None
    variants = {"rnnjax (plain stack, one device)": _jax_variant(w, "rnnjax", steps)}
    bubbles = {}
    for c in PIPELINE_CHUNK_COUNTS:
        name = f"pipeline, {c} chunk(s) of {w.seq // c} steps"
        variants[name] = _jax_variant(w, "rnnjax", steps, pipeline_chunks=c)
        pl = plan(w.num_layers, len(jax.devices()), w.seq, c)
        bubbles[name] = {"stages": pl.stages, "chunks": pl.num_chunks, "bubble": pl.bubble}
    res = _interleave(variants, repeats, steps, w.tokens_per_step)
    base = res["rnnjax (plain stack, one device)"]["ms_per_step"]
    for name, r in res.items():
        r.update(bubbles.get(name, {"stages": 1, "chunks": 1, "bubble": 0.0}), vs_plain=base / r["ms_per_step"])
    return {"label": w.label, "devices": len(jax.devices()), "results": res}


SCALING = [Workload(), Workload(seq=350), Workload(hidden=1024), Workload(batch=256)]


def benchmark_scaling(repeats: int, steps: int) -> list[dict[str, Any]]:
    """The 2-layer LSTM step as sequence length, width and batch grow: rnnjax vs torch, with the
    analytic FLOPs ratio to the base row (what the cost should grow by if efficiency held)."""
    base = SCALING[0]
    out = []
    for w in SCALING:
        variants = {"rnnjax": _jax_variant(w, "rnnjax", steps)}
        tv = _torch_variant(w, steps)
        if tv is not None:
            variants["torch"] = tv
        res = _interleave(variants, repeats, steps, w.tokens_per_step)
        flops_ratio = (w.train_flops_per_token() * w.tokens_per_step) / (base.train_flops_per_token() * base.tokens_per_step)
        out.append({"label": w.label, "workload": dataclasses.asdict(w), "flops_ratio": flops_ratio, "results": res})
    for row in out:
        for name, r in row["results"].items():
            r["cost_ratio"] = r["ms_per_step"] / out[0]["results"][name]["ms_per_step"]
    return out


SEQ_LENGTHS = (35, 256, 1024)
SEQ_CELLS = ("lstm", "gru", "mingru", "minlstm")


def benchmark_sequence(repeats: int, steps: int, lengths: tuple[int, ...] = SEQ_LENGTHS) -> list[dict[str, Any]]:
    """The 2-layer stack (h 256, b 32) of each cell as the sequence grows: rnnjax's LSTM and GRU
    (a sequential loop, fused backward), minGRU and minLSTM (a parallel scan), and torch's
    nn.LSTM/nn.GRU, interleaved per length."""
    out = []
    for t in lengths:
        variants = {f"rnnjax {c}": _jax_variant(Workload(c, 2, seq=t), "rnnjax", steps) for c in SEQ_CELLS}
        for c in ("lstm", "gru"):
            if (tv := _torch_variant(Workload(c, 2, seq=t), steps)) is not None:
                variants[f"torch {c}"] = tv
        out.append({"seq": t, "results": _interleave(variants, repeats, steps, 32 * t)})
    return out


def _log_space_scan(a_tbh, b_tbh, h0_bh):
    """The paper's form: h = exp(cumsum(log a) + logcumsumexp(log b - cumsum(log a))), plus h0's term."""
    ca = jnp.cumsum(jnp.log(a_tbh), axis=0)
    return jnp.exp(ca) * h0_bh + jnp.exp(ca + jax.lax.cumlogsumexp(jnp.log(b_tbh) - ca, axis=0))


def benchmark_scan_forms(repeats: int = 5, lengths: tuple[int, ...] = SEQ_LENGTHS) -> list[dict[str, Any]]:
    """One minGRU layer's recurrence (b 32, h 256), forward + backward: ``jax.lax.associative_scan``
    in linear space (rnnjax's) vs the log-space form with ``jax.lax.cumlogsumexp``, interleaved;
    and each one's largest relative error against a float64 loop."""
    from rnnjax.cells import linear_scan, mingru_coefficients, split_gates

    out = []
    for t in lengths:
        k1, k2 = jax.random.split(jax.random.key(t))
        xw = 2.0 * jax.random.normal(k1, (t, 32, 512))
        h0 = jax.random.uniform(k2, (32, 256))
        a, b = mingru_coefficients(split_gates(xw, 2))
        a64, b64, h = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(h0, np.float64)
        ref = []
        for i in range(t):
            h = a64[i] * h + b64[i]
            ref.append(h)
        ref = np.stack(ref)
        forms = {"associative_scan": linear_scan, "cumlogsumexp": _log_space_scan}
        row: dict[str, Any] = {"seq": t}
        fns = {}
        for name, f in forms.items():
            row[f"{name}_rel_err"] = float(np.max(np.abs(np.asarray(f(a, b, h0), np.float64) - ref) / np.abs(ref)))
            fns[name] = jax.jit(jax.grad(lambda a, b, f=f: f(a, b, h0).sum(), argnums=(0, 1)))
            jax.block_until_ready(fns[name](a, b))
        times: dict[str, list[float]] = {n: [] for n in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(a, b))
                times[name].append((time.perf_counter() - t0) * 1e3)
        row.update({f"{n}_ms": statistics.median(v) for n, v in times.items()})
        out.append(row)
    return out


def benchmark_generation(
    repeats: int = 5, num_chars: int = 200, streams: tuple[int, ...] = (1, 64)
) -> dict[str, dict[str, float]]:
    """Sampling speed (characters/s) of the reference 2-layer LSTM: rnnjax's compiled
    ``lax.scan`` sampler vs a PyTorch loop calling the same nn.LSTM one step at a time."""
    w = Workload()
    cfg = _config(w)
    model = build_model(cfg, V)
    params = model.init(jax.random.key(0))
    torch = _torch()
    out: dict[str, dict[str, float]] = {}
    for b in streams:
        prefix = jnp.zeros((b, 10), jnp.int32)

        def jax_run(b=b, prefix=prefix) -> None:
            out = sample(model, params, prefix, jax.random.key(0), jnp.float32(1.0), num_chars=num_chars, greedy=False)
            out.block_until_ready()

        fns = {"rnnjax": jax_run}
        if torch is not None:
            from torch_baseline import torch_modules

            rnn, lin = torch_modules("lstm", V, w.hidden, w.num_layers)

            def torch_run(b=b, rnn=rnn, lin=lin) -> None:
                with torch.no_grad():
                    y, state = rnn(torch.nn.functional.one_hot(torch.zeros(b, 10, dtype=torch.long), V).float())
                    tok = torch.multinomial(torch.softmax(lin(y[:, -1]), -1), 1)
                    for _ in range(num_chars - 1):
                        y, state = rnn(torch.nn.functional.one_hot(tok, V).float(), state)
                        tok = torch.multinomial(torch.softmax(lin(y[:, -1]), -1), 1)

            fns["torch"] = torch_run
        for f in fns.values():
            f()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(repeats):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        out[str(b)] = {k: b * num_chars / statistics.median(v) for k, v in times.items()}
    return out


def _vmapped_variant(k: int, steps: int) -> Variant:
    """k seeds of the reference LSTM as one vmapped train step (rnnjax.vectorize's program)."""
    w = Workload()
    cfg = _config(w)
    model = build_model(cfg, V)
    tx, _ = make_optimizer(cfg.train, 1000)
    state = jax.vmap(lambda key: init_train_state(model, tx, key))(jax.random.split(jax.random.key(0), k))
    xs, ys = (jax.device_put(a) for a in _data(w, steps, (k,)))
    step = jax.jit(jax.vmap(make_train_step(model, tx, False), in_axes=(0, 0, 0, 0, 0, None, 0)), donate_argnums=(0, 1, 2))
    carry, keys = stack_trials(model.initial_carry(w.batch), k), jax.random.split(jax.random.key(1), k)
    sums = stack_trials(train_sums(model, jax.eval_shape(model.init, jax.random.key(0)), False), k)
    return Variant(_stepper(step, state, carry, sums, xs, ys, keys, steps), float("nan"))


def benchmark_vectorized(repeats: int = 7, steps: int = 10, k: int = 8) -> dict:
    """k seeds one after another (k x the single step) vs one vmapped step over k stacked states."""
    single = _jax_variant(Workload(), "rnnjax", steps)

    def one_by_one() -> None:
        for _ in range(k):
            single.run()

    variants = {f"{k} seeds one by one": Variant(one_by_one, single.compile_s), f"{k} seeds vmapped": _vmapped_variant(k, steps)}
    return _interleave(variants, repeats, steps, Workload().tokens_per_step)


def benchmark_devices(repeats: int = 7, steps: int = 10) -> dict:
    """The plain step vs the data-parallel step on meshes of 1, 2, 4, ... of the visible devices."""
    w = Workload()
    devices = {"plain (no mesh)": _jax_variant(w, "rnnjax", steps)}
    n = 1
    while n <= len(jax.devices()):
        devices[f"mesh of {n}"] = _jax_variant(w, "rnnjax", steps, DataParallel.create(n, w.batch))
        n *= 2
    return _interleave(devices, repeats, steps, w.tokens_per_step)


def benchmark_epoch(repeats: int = 7) -> dict[str, Any]:
    """Where a reference-experiment epoch goes (2-layer LSTM, the bundled book's 10,000 tokens: 8
    training steps, validation over 5,000 tokens), interleaved rounds, ms per epoch:

    * ``train``: the 8 steps, then the one read of the metric sums;
    * ``validation``: the validation pass alone (forward over the 5,000 tokens, read);
    * ``train + validation, one after the other``: what ``rnnjax.train`` does;
    * ``train + validation, overlapped``: the alternative it was measured against (and dropped): the
      validation pass dispatched, the next epoch's steps dispatched behind it, then the pass read;
    * ``record``: building the epoch record and appending it to metrics.jsonl (fsynced).
    A checkpoint save (every 10 epochs) is the checkpoint section's figure.
    """
    from rnnjax import data as rdata
    from rnnjax.metrics import epoch_record
    from rnnjax.steps import eval_sums, make_eval_step
    from rnnjax.workdir import append_metrics

    cfg = resolve(default_config())
    corpus = rdata.load_corpus(cfg.data)
    model = build_model(cfg, len(corpus.vocab))
    tx, _ = make_optimizer(cfg.train, 1000)
    state = init_train_state(model, tx, jax.random.key(0))
    dc = cfg.data
    xs, ys = (jax.device_put(a) for a in rdata.epoch_batches(corpus.train, dc, cfg.seed, 1))
    step, eval_step, key = make_train_step(model, tx, reset_carry=False), make_eval_step(model), jax.random.key(1)
    n = rdata.batches_per_epoch(dc, len(corpus.train))
    box = {"state": state}

    def steps() -> Any:
        carry, m = model.initial_carry(dc.batch_size), train_sums(model, box["state"].params, False)
        st = box["state"]
        for i in range(n):
            st, carry, m = step(st, carry, m, xs, ys, i, key)
        box["state"] = st
        return m

    def val() -> Any:
        return eval_sums(model, box["state"].params, corpus.val, dc.batch_size, dc.num_steps, eval_step)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics.jsonl"

        def record() -> None:
            sums = {name: np.float64(1.0) for name in train_sums(model, box["state"].params, False)}
            append_metrics(path, epoch_record(1, n, sums, 5.0, 1.0, 1.0, 1.0))

        variants = {
            "train": lambda: to_host(steps()),
            "validation": lambda: val().perplexity(),
            "train + validation, one after the other": lambda: (to_host(steps()), val().perplexity()),
            "train + validation, overlapped": lambda: (lambda v: (to_host(steps()), v.perplexity()))(val()),
            "record": record,
        }
        samples: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(repeats + 1):  # the first round compiles
            for name, f in variants.items():
                t0 = time.perf_counter()
                f()
                if r:
                    samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def benchmark_checkpoint(repeats: int = 7) -> dict[str, Any]:
    """What the sha256 of every array (recorded with each save, verified on restore) costs: the
    reference run's full checkpoint tree (2-layer LSTM, hidden 256), checksums alone vs a whole
    synchronous save (which includes them) and a whole restore (which verifies them), interleaved."""
    from rnnjax.checkpoint import Checkpointer
    from rnnjax.integrity import checksums
    from rnnjax.train import checkpoint_items

    cfg = resolve(default_config())
    model = build_model(cfg, V)
    tx, _ = make_optimizer(cfg.train, 1000)
    key = jax.random.key(0)
    items = checkpoint_items(init_train_state(model, tx, key), jax.random.key_data(key),
                             model.initial_carry(cfg.data.batch_size), train_sums(model, model.init(key), False))
    abstract = jax.eval_shape(lambda: items)
    times: dict[str, list[float]] = {"checksums": [], "save": [], "restore": []}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpointer(tmp, max_to_keep=2)
        for r in range(repeats + 1):  # the first round warms up
            t0 = time.perf_counter()
            checksums(items)
            t1 = time.perf_counter()
            ckpt.save(r + 1, *items, {"epoch": r, "batch": 0, "val_ppl": None})
            t2 = time.perf_counter()
            ckpt.restore(lambda meta: abstract, step=r + 1)
            t3 = time.perf_counter()
            if r:
                for name, dt in (("checksums", t1 - t0), ("save", t2 - t1), ("restore", t3 - t2)):
                    times[name].append(dt * 1e3)
        ckpt.close()
    out = {name: statistics.median(v) for name, v in times.items()}
    out["bytes"] = int(sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(items)))
    return out


def benchmark_end_to_end(epochs: int) -> dict[str, Any]:
    """Wall time of the whole seed experiment, process start to exit: ``scripts/train.py
    --config=configs/deep_lstm.py`` (as is, and with ``parallel.cpu_devices=0``: one CPU device
    per core) vs ``python benchmarks/torch_baseline.py`` (same data, epochs, optimizer, per-epoch
    validation). Each runs ``epochs`` epochs, one after the other; the scripts and the config are
    this repository's (``REPO_ROOT``)."""
    train, config, baseline = repo_path("scripts", "train.py"), repo_path("configs", "deep_lstm.py"), repo_path(
        "benchmarks", "torch_baseline.py")
    out: dict[str, Any] = {"epochs": epochs}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(train), f"--config={config}", f"--workdir={tmp}/run",
               f"--config.train.num_epochs={epochs}", "--config.train.progress=False"]
        runs = {"rnnjax": cmd}
        if cudnn.available():
            runs["rnnjax, impl=cudnn"] = [*cmd[:3], f"--workdir={tmp}/run_cudnn", *cmd[4:], "--config.model.impl=cudnn"]
        if jax.default_backend() == "cpu" and len(os.sched_getaffinity(0)) > 1:
            runs["rnnjax, cpu_devices=0"] = [*cmd[:3], f"--workdir={tmp}/run_cpu", *cmd[4:], "--config.parallel.cpu_devices=0"]
            runs["rnnjax, cpu_pipeline"] = [*cmd[:3], f"--workdir={tmp}/run_pipe", *cmd[4:],
                                            "--config.parallel.cpu_pipeline=True"]
        for name, c in runs.items():
            t0 = time.perf_counter()
            subprocess.run(c, check=True, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            last = [json.loads(line) for line in open(c[3].split("=", 1)[1] + "/metrics.jsonl")][-1]
            out[name] = {"seconds": seconds, "train_ppl": last["train_ppl"], "val_ppl": last["val_ppl"]}
        if _torch() is not None:
            cmd = [sys.executable, str(baseline), f"--epochs={epochs}", f"--json={tmp}/torch.json"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO_ROOT)
            seconds = time.perf_counter() - t0
            res = json.load(open(f"{tmp}/torch.json"))
            out["torch"] = {"seconds": seconds, "train_ppl": res["train_ppl"], "val_ppl": res["val_ppl"]}
            out["speedup"] = {k: out["torch"]["seconds"] / out[k]["seconds"] for k in runs}
    return out


def machine(repeats: int, steps: int) -> dict:
    torch = _torch()
    return {"machine": {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)), "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": len(jax.devices()), "device_kind": jax.devices()[0].device_kind,
        "torch": torch.__version__ if torch is not None else None,
    }, "settings": {"repeats": repeats, "steps_per_round": steps}}


# ---- the report -------------------------------------------------------------------------------

# The report's standard: the targets are judged only on figures measured with at least the
# defaults of scripts/benchmark.py (--repeats rounds of --steps steps; --e2e_epochs).
STANDARD_REPEATS, STANDARD_STEPS, STANDARD_E2E_EPOCHS = 7, 10, 500


def default_report_path(now: datetime.datetime | None = None) -> Path:
    """``runs/benchmarks/BENCHMARKS-<UTC timestamp>.md``, relative (to the current directory): a
    run never overwrites the committed BENCHMARKS.md unless asked to (``--out=BENCHMARKS.md``)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return Path("runs") / "benchmarks" / f"BENCHMARKS-{now.strftime('%Y%m%dT%H%M%SZ')}.md"


def not_judged(settings: dict[str, int]) -> str | None:
    """Why the targets cannot be judged from figures measured with ``settings``, or None."""
    r, s = settings["repeats"], settings["steps_per_round"]
    if r < STANDARD_REPEATS or s < STANDARD_STEPS:
        return f"not judged: {r} rounds of {s} steps, below the report's standard of {STANDARD_REPEATS} x {STANDARD_STEPS}"
    return None


def _fmt_ratio(r: dict, key: str) -> str:
    return f"{r[key]:.2f}x" if key in r else "n/a"


def write_report(results: dict, path: str, json_path: str | None, command: str) -> None:
    m, peak = results["machine"], results["peak"]
    lines = [
        "# Benchmarks", "",
        f"Reproduce: `{command}`. Results below: {m['backend']}, {m['devices']} device(s) of kind `{m['device_kind']}`, "
        f"{m['cores']} cores, JAX {m['jax']}, torch {m['torch']}, {m['processor']}, {m['platform']}.",
        f"Each figure is the median over {results['settings']['repeats']} interleaved rounds of "
        f"{results['settings']['steps_per_round']} steps (min-max in the JSON). Training step = forward + backward + "
        f"global-norm clipping + SGD update, vocabulary {V}, random tokens.",
        f"Measured fp32 matmul peak ({peak['n']}^3): JAX {peak['jax']:.0f} GFLOP/s"
        + (f", torch {peak['torch']:.0f} GFLOP/s" if "torch" in peak else "")
        + f"; MFU = analytic training FLOPs/token x tokens/s / {peak['peak']:.0f} GFLOP/s.", "",
    ]
    rows = results["rows"]
    ref = next(r for r in rows if r["workload"]["cell"] == "lstm" and r["workload"]["num_layers"] == 2)["results"]
    ours = [k for k in ref if k in ("rnnjax", "cudnn") or k.startswith("rnnjax, ")]  # the default, CPU devices, cuDNN

    def each(fmt, ok) -> tuple[str, bool]:  # the measured value per rnnjax variant; met if one variant meets it
        return "; ".join(f"{k}: {fmt(k)}" for k in ours), any(ok(k) for k in ours)

    vs = lambda k, r: r["results"][k].get("vs_torch", 0)  # noqa: E731
    targets = [
        ("rnnjax >= 1.2x torch, 2-layer LSTM",
         *each(lambda k: _fmt_ratio(ref[k], "vs_torch"), lambda k: ref[k].get("vs_torch", 0) >= 1.2)),
        ("rnnjax >= 1.0x torch on every row", *each(lambda k: ", ".join(f"{vs(k, r):.2f}x" for r in rows),
                                                    lambda k: all(vs(k, r) >= 1.0 for r in rows))),
        (">= 60% MFU, 2-layer LSTM", *each(lambda k: f"{100 * ref[k]['mfu']:.0f}%", lambda k: ref[k]["mfu"] >= 0.6)),
        ("rnnjax >= impl=flax on every row",
         ", ".join(f"{r['results']['flax']['ms_per_step'] / r['results']['rnnjax']['ms_per_step']:.2f}x" for r in rows),
         all(r["results"]["rnnjax"]["ms_per_step"] <= r["results"]["flax"]["ms_per_step"] for r in rows)),
        ("compile of the default step < 5 s", f"{ref['rnnjax']['compile_s']:.1f} s", ref["rnnjax"]["compile_s"] < 5),
    ]
    e2e = results.get("end_to_end")
    if e2e and "speedup" in e2e:
        sp, n = e2e["speedup"], e2e["epochs"]
        short = f"not judged: {n} epochs, below the report's standard of {STANDARD_E2E_EPOCHS}"
        targets.append((f"seed experiment end to end >= 1.2x nn.LSTM script ({n} epochs)",
                        "; ".join(f"{k}: {v:.2f}x" for k, v in sp.items()),
                        short if n < STANDARD_E2E_EPOCHS else any(v >= 1.2 for v in sp.values())))
    note = not_judged(results["settings"])
    lines += ["## Targets", ""]
    if note:  # too few rounds or steps: the figures are a smoke check; no target is declared met or missed
        lines += [f"**{note}** (the defaults, `--repeats={STANDARD_REPEATS} --steps={STANDARD_STEPS}`).", "",
                  "| target | measured | verdict |", "|---|---|---|"]
        lines += [f"| {t} | {v} | not judged |" for t, v, _ in targets]
    else:
        lines += ["| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t} | {v} | {ok if isinstance(ok, str) else 'yes' if ok else '**no**'} |" for t, v, ok in targets]
    if len(ours) > 1:
        lines += ["", f"`{ours[1]}` is the same program data-parallel over {results['machine']['devices']} "
                  "CPU devices made of this host's cores (`config.parallel.cpu_devices`; opt-in, see README); `rnnjax` is "
                  "the default single-device run."]
    if len(ours) > 2:
        lines += ["", f"`{ours[2]}` runs each layer block on its own CPU device at the full batch, the sequence in "
                  f"{PIPELINE_CHUNKS} time chunks (`config.parallel.cpu_pipeline`, rnnjax/pipeline.py; L = 1 has one "
                  "stage: the plain stack)."]
    lines += ["", "## Training step: rnnjax vs impl=\"flax\" vs PyTorch", "",
              "`rnnjax` is the default model (`rnnjax/fused.py` layers); `rnnjax-autodiff` is the same model with "
              "`impl=\"autodiff\"`: `lax.scan` over the cell, differentiated by JAX. Compile = first call of one step "
              "(compilation + the step; torch: its first step).", "",
              "| workload | implementation | ms/step | tokens/s | compile (s) | MFU | throughput vs torch |",
              "|---|---|---|---|---|---|---|"]
    for row in rows:
        for name, r in row["results"].items():
            lines.append(f"| {row['label']} | {name} | {r['ms_per_step']:.1f} | {r['tokens_per_sec']:.0f} | "
                         f"{r['compile_s']:.1f} | {100 * r['mfu']:.0f}% | {_fmt_ratio(r, 'vs_torch')} |")
    sq = results.get("sequence")
    if sq:
        names = list(sq[0]["results"])
        lines += ["", "## Sequence length: parallel-scan cells vs the sequential loop", "",
                  "The 2-layer stack, h = 256, b = 32, one training step at each sequence length t; minGRU/minLSTM "
                  "run their parallel scan (`jax.lax.associative_scan`), LSTM/GRU the sequential loop. "
                  "Each cell: tokens/s (ms per step; compile = the first step). Tokens/s flat in t means the "
                  "sequence adds no cost per token.", "",
                  "| t | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for row in sq:
            r = row["results"]
            lines.append(f"| {row['seq']} | " + " | ".join(
                f"{r[n]['tokens_per_sec']:,.0f} ({r[n]['ms_per_step']:.0f} ms; compile {r[n]['compile_s']:.1f} s)"
                for n in names) + " |")
    sf = results.get("scan_forms")
    if sf:
        lines += ["", "### minGRU's recurrence: associative scan vs log space", "",
                  "One layer's h_t = a_t h_{t-1} + b_t (b 32, h 256), forward + backward; error = largest relative "
                  "difference of h from a float64 loop.", "",
                  "| t | associative_scan ms | cumlogsumexp ms | associative_scan error | cumlogsumexp error |",
                  "|---|---|---|---|---|"]
        for row in sf:
            lines.append(f"| {row['seq']} | {row['associative_scan_ms']:.1f} | {row['cumlogsumexp_ms']:.1f} | "
                         f"{row['associative_scan_rel_err']:.1e} | {row['cumlogsumexp_rel_err']:.1e} |")
    pp = results.get("pipeline")
    if pp:
        lines += ["", f"## Layer pipeline: chunk size, bubble and speed ({pp['label']}, {pp['devices']} CPU devices)", "",
                  "`config.parallel.cpu_pipeline`: layer l's block on its own CPU device, the sequence in chunks; "
                  "bubble = the share of ticks a stage idles, (S - 1) / (C + S - 1). Interleaved with the plain "
                  "stack on one device.", "",
                  "| variant | stages | chunks | bubble | ms/step | vs plain stack |", "|---|---|---|---|---|---|"]
        for name, r in pp["results"].items():
            lines.append(f"| {name} | {r['stages']} | {r['chunks']} | {100 * r['bubble']:.0f}% | {r['ms_per_step']:.1f} | "
                         f"{r['vs_plain']:.2f}x |")
    lg = results.get("large")
    if lg:
        lines += ["", f"## Large shapes: {lg['label']}", "",
                  "Where accelerators shine. `cudnn` is `config.model.impl = \"cudnn\"` (rnnjax/cudnn.py: cuDNN's fused "
                  "LSTM per layer, rnnjax's dropout between layers); torch runs `nn.LSTM` (cuDNN) on the same device.", "",
                  "| implementation | ms/step | tokens/s | compile (s) | MFU | throughput vs torch |",
                  "|---|---|---|---|---|---|"]
        for name, r in lg["results"].items():
            lines.append(f"| {name} | {r['ms_per_step']:.1f} | {r['tokens_per_sec']:.0f} | {r['compile_s']:.1f} | "
                         f"{100 * r['mfu']:.0f}% | {_fmt_ratio(r, 'vs_torch')} |")
    sc = results.get("scaling")
    if sc:
        lines += ["", "## Scaling (2-layer LSTM)", "",
                  "Cost relative to the base row, next to the analytic FLOPs ratio: a cost ratio below the FLOPs ratio "
                  "means larger shapes run more efficiently.", "",
                  "| workload | implementation | ms/step | tokens/s | cost vs base | FLOPs vs base |",
                  "|---|---|---|---|---|---|"]
        for row in sc:
            for name, r in row["results"].items():
                lines.append(f"| {row['label']} | {name} | {r['ms_per_step']:.1f} | {r['tokens_per_sec']:.0f} | "
                             f"{r['cost_ratio']:.2f}x | {row['flops_ratio']:.2f}x |")
    gen = results.get("generation")
    if gen:
        lines += ["", "## Generation (2-layer LSTM, sampling at temperature 1)", "",
                  "rnnjax: `rnnjax.generate.sample` (one compiled `lax.scan`); torch: a Python loop over `nn.LSTM` steps.", "",
                  "| streams | implementation | characters/s |", "|---|---|---|"]
        for b, r in gen.items():
            lines += [f"| {b} | {name} | {v:.0f} |" for name, v in r.items()]
    if e2e:
        lines += ["", f"## Seed experiment end to end ({e2e['epochs']} epochs, process start to exit)", "",
                  "`python scripts/train.py --config=configs/deep_lstm.py` (with per-epoch validation, checkpoints, plot, "
                  "samples) vs `python benchmarks/torch_baseline.py` (the same minibatches, optimizer and per-epoch "
                  "validation with `nn.LSTM`). One run each, one after the other.", "",
                  "| run | seconds | final train ppl | final val ppl |", "|---|---|---|---|"]
        for name, r in e2e.items():
            if isinstance(r, dict) and "seconds" in r:
                lines.append(f"| {name} | {r['seconds']:.0f} | {r['train_ppl']:.3f} | {r['val_ppl']:.2f} |")
    ep = results.get("epoch")
    if ep:
        tr, va = ep["train"], ep["validation"]
        seq, ovl = ep["train + validation, one after the other"], ep["train + validation, overlapped"]
        lines += ["", "## Per-epoch overhead (reference experiment: 8 training steps, validation over 5,000 tokens)", "",
                  "Medians of interleaved rounds, ms per epoch. `rnnjax.train` runs an epoch's steps, then its validation "
                  "pass; `overlapped` is the alternative measured against it: the validation pass read only after the "
                  "next epoch's steps are dispatched behind it.", "",
                  "| part | ms per epoch | share of the training steps |", "|---|---|---|"]
        lines += [f"| {name} | {v:.1f} | {v / tr:.0%} |" for name, v in ep.items()]
        lines += ["", f"Overlapped, the epoch costs {ovl:.0f} ms against {seq:.0f} ms one after the other "
                  f"({ovl - seq:+.0f} ms, {(ovl - seq) / seq:+.0%}); train and validation measured apart sum to "
                  f"{tr + va:.0f} ms. What is left outside the training steps is {max(0.0, seq - tr):.0f} ms "
                  f"({max(0.0, seq - tr) / seq:.0%} of the epoch)."]
    ck = results.get("checkpoint")
    if ck:
        lines += ["", "## Checkpoint integrity (sha256 of every array)", "",
                  f"The reference run's full checkpoint tree ({ck['bytes'] / 2**20:.1f} MiB: params, optimizer state, "
                  "carry, RNG, metric sums). Every save records a sha256 of each array in its metadata and every "
                  "restore verifies them (silent corruption is then damage: quarantined, previous step used). Medians "
                  "of interleaved rounds; a save happens every `checkpoint.every_epochs` = 10 epochs.", "",
                  "| what | ms | share |", "|---|---|---|",
                  f"| checksums alone | {ck['checksums']:.1f} | {ck['checksums'] / ck['save']:.0%} of a save |",
                  f"| synchronous save (checksums included) | {ck['save']:.1f} | |",
                  f"| restore (checksums verified) | {ck['restore']:.1f} | |"]
    dev = results.get("devices")
    if dev:
        plain = dev["plain (no mesh)"]
        lines += ["", "## Data parallelism (device count)", "",
                  f"Run in a child process with {results['devices_visible']} device(s) visible. On fake CPU devices "
                  "(`--xla_force_host_platform_device_count`) all 'devices' share the same cores: this shows that the "
                  "sharded step works and what it costs, not a speed-up. 'mesh of 1' vs 'plain' is the single-device "
                  "cost of the data-parallel path.", "",
                  "| variant | ms/step | tokens/s | throughput vs plain |", "|---|---|---|---|"]
        for name, r in dev.items():
            speed = plain["ms_per_step"] / r["ms_per_step"]
            lines.append(f"| {name} | {r['ms_per_step']:.1f} | {r['tokens_per_sec']:.0f} | {speed:.2f}x |")
    vec = results.get("vectorized")
    if vec:
        (seq_name, seq), (vec_name, v) = vec.items()
        lines += ["", "## Vectorized trials (`scripts/sweep.py --vectorize`)", "",
                  "Time for one training step of every trial (2-layer LSTM, reference workload).", "",
                  "| variant | ms per step of all trials | speed-up |", "|---|---|---|",
                  f"| {seq_name} | {seq['ms_per_step']:.1f} | 1.00x |",
                  f"| {vec_name} | {v['ms_per_step']:.1f} | {seq['ms_per_step'] / v['ms_per_step']:.2f}x |"]
    lines += ["", (BENCHMARKS_DIR / "notes.md").read_text()]  # what was tried: benchmarks/notes.md
    with open(path, "w") as f:
        f.write("\n".join(lines))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
