"""Benchmark helpers behind ``scripts/benchmark.py``: interleaved timing of train steps.

Every variant is a zero-argument callable doing ``steps`` training steps and blocking on
the result; rounds interleave the variants so machine noise hits them alike.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.config import default_config, resolve
from rnnjax.optim import make_optimizer
from rnnjax.parallel import DataParallel
from rnnjax.train import build_model, init_state, make_train_step
from rnnjax.vectorize import stack_trials

V, B, T = 28, 32, 35


def _jax_variant(impl: str, steps: int, dp: DataParallel | None) -> Callable[[], None]:
    cfg = default_config()
    cfg.model.impl = impl
    cfg = resolve(cfg)
    model = build_model(cfg, V)
    tx, _ = make_optimizer(cfg.train, 1000)
    state = init_state(model, tx, jax.random.key(0))
    host = np.random.default_rng(0).integers(0, V, (steps, B, T + 1)).astype(np.int32)
    xs, ys = host[..., :-1], host[..., 1:]
    carry, acc = model.initial_state(B), jnp.zeros(4)
    if dp is not None:
        state = jax.device_put(state, dp.replicated)
        xs, ys = dp.shard(xs, 1), dp.shard(ys, 1)
        carry, acc = dp.shard_state(carry), dp.replicate(np.zeros(4, np.float32))
    else:
        xs, ys = jax.device_put(xs), jax.device_put(ys)
    return _stepper(make_train_step(model, tx, reset_state=False), state, carry, acc, xs, ys, jax.random.key(1), steps)


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


def _torch_variant(steps: int) -> Callable[[], None] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
    torch.manual_seed(0)
    rnn, out = torch.nn.LSTM(V, 256, num_layers=2, batch_first=True), torch.nn.Linear(256, V)
    params = list(rnn.parameters()) + list(out.parameters())
    opt = torch.optim.SGD(params, lr=2.0)
    data = torch.as_tensor(np.random.default_rng(0).integers(0, V, (steps, B, T + 1)))

    def run() -> None:
        for i in range(steps):
            x = torch.nn.functional.one_hot(data[i, :, :-1], V).float()
            y, _ = rnn(x)
            loss = torch.nn.functional.cross_entropy(out(y).reshape(-1, V), data[i, :, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

    return run


def _interleave(variants: dict[str, Callable[[], None]], repeats: int, steps: int) -> dict[str, dict[str, float]]:
    compile_s = {}
    for name, fn in variants.items():  # warm-up: compile (jax) or allocate (torch)
        t0 = time.perf_counter()
        fn()
        compile_s[name] = time.perf_counter() - t0
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) / steps * 1e3)
    return {
        name: {"ms_per_step": statistics.median(v), "tokens_per_sec": B * T / statistics.median(v) * 1e3,
               "first_call_s": compile_s[name]}
        for name, v in samples.items()
    }


def benchmark_implementations(repeats: int = 7, steps: int = 10) -> dict:
    impls = {"rnnjax": _jax_variant("rnnjax", steps, None), "flax": _jax_variant("flax", steps, None)}
    torch_fn = _torch_variant(steps)
    if torch_fn is not None:
        impls["torch"] = torch_fn
    return _interleave(impls, repeats, steps)


def _vmapped_variant(k: int, steps: int) -> Callable[[], None]:
    """k seeds of the reference LSTM as one vmapped train step (rnnjax.vectorize's program)."""
    cfg = resolve(default_config())
    model = build_model(cfg, V)
    tx, _ = make_optimizer(cfg.train, 1000)
    state = jax.vmap(lambda key: init_state(model, tx, key))(jax.random.split(jax.random.key(0), k))
    host = np.random.default_rng(0).integers(0, V, (k, steps, B, T + 1)).astype(np.int32)
    xs, ys = jax.device_put(host[..., :-1]), jax.device_put(host[..., 1:])
    step = jax.jit(jax.vmap(make_train_step(model, tx, False), in_axes=(0, 0, 0, 0, 0, None, 0)), donate_argnums=(0, 1, 2))
    carry, keys = stack_trials(model.initial_state(B), k), jax.random.split(jax.random.key(1), k)
    return _stepper(step, state, carry, jnp.zeros((k, 4)), xs, ys, keys, steps)


def benchmark_vectorized(repeats: int = 7, steps: int = 10, k: int = 8) -> dict:
    """k seeds one after another (k x the single step) vs one vmapped step over k stacked states."""
    single = _jax_variant("rnnjax", steps, None)

    def one_by_one() -> None:
        for _ in range(k):
            single()

    return _interleave({f"{k} seeds one by one": one_by_one, f"{k} seeds vmapped": _vmapped_variant(k, steps)}, repeats, steps)


def benchmark_devices(repeats: int = 7, steps: int = 10) -> dict:
    """The plain step vs the data-parallel step on meshes of 1, 2, 4, ... of the visible devices."""
    devices = {"plain (no mesh)": _jax_variant("rnnjax", steps, None)}
    n = 1
    while n <= len(jax.devices()):
        devices[f"mesh of {n}"] = _jax_variant("rnnjax", steps, DataParallel.create(n, B))
        n *= 2
    return _interleave(devices, repeats, steps)


def machine(repeats: int, steps: int) -> dict:
    return {"machine": {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__, "backend": jax.default_backend(), "devices": len(jax.devices()),
        "device_kind": jax.devices()[0].device_kind,
    }, "settings": {"repeats": repeats, "steps_per_round": steps, "workload": f"LSTM L=2 h=256 b={B} t={T} V={V}"}}


def write_report(results: dict, path: str, json_path: str | None, command: str) -> None:
    m = results["machine"]
    lines = [
        "# Benchmarks", "",
        f"Reproduce: `{command}` (results below: {m['backend']}, {m['devices']} device(s) of kind "
        f"`{m['device_kind']}`, JAX {m['jax']}, {m['processor']}, {m['platform']}).",
        f"Workload: {results['settings']['workload']}, SGD + clipping, forward + backward + update. "
        f"Median over {results['settings']['repeats']} interleaved rounds of {results['settings']['steps_per_round']} steps.", "",
    ]
    impl = results["implementations"]
    base = impl.get("torch")
    lines += ["## Implementations", "", "| implementation | ms/step | tokens/s | first call (s) | throughput vs torch |",
              "|---|---|---|---|---|"]
    for name, r in impl.items():
        ratio = f"{base['ms_per_step'] / r['ms_per_step']:.2f}x" if base else "n/a (torch not installed)"
        lines.append(f"| {name} | {r['ms_per_step']:.1f} | {r['tokens_per_sec']:.0f} | {r['first_call_s']:.1f} | {ratio} |")
    dev = results["devices"]
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
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
