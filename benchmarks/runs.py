"""The whole-run sections of the benchmark report: generation, an epoch's overhead, checkpoints,
and the seed experiment end to end. One function per section, as in ``sections.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from harness import REPO_ROOT, config, median_ms, repo_path, torch
from workload import E2E_RUN_NAMES, Settings, V

from rnnjax.config import default_config, resolve
from rnnjax.dataset import batches
from rnnjax.dataset import data as rdata
from rnnjax.network.build import build_model
from rnnjax.network.impls import cudnn, native
from rnnjax.network.sampling import sample
from rnnjax.rundir.checkpoint import Checkpointer
from rnnjax.rundir.integrity import checksums
from rnnjax.rundir.workdir import append_metrics
from rnnjax.training.evaluation import eval_sums, make_eval_step, make_stats_eval_step
from rnnjax.training.layout import checkpoint_items
from rnnjax.training.metrics import epoch_record, sums_perplexity, to_host
from rnnjax.training.optim import make_optimizer
from rnnjax.training.steps import init_train_state, make_train_step, train_sums


def generation(
    s: Settings, num_chars: int = 200, streams: tuple[int, ...] = (1, 64)
) -> dict[str, dict[str, float]]:
    """Characters/s of the base 2-layer LSTM sampling at temperature 1: rnnjax's compiled
    ``lax.scan`` sampler vs a PyTorch loop calling the same-shaped nn.LSTM one step at a time."""
    w = s.base
    model = build_model(config(w), V)
    params = model.init(jax.random.key(0))
    t = torch()
    out: dict[str, dict[str, float]] = {}
    for b in streams:
        prefix = jnp.zeros((b, 10), jnp.int32)

        def jax_run(prefix=prefix) -> None:
            sample(
                model,
                params,
                prefix,
                jax.random.key(0),
                jnp.float32(1.0),
                num_chars=num_chars,
                greedy=False,
            ).block_until_ready()

        fns = {"rnnjax": jax_run}
        if t is not None:
            from torch_baseline import torch_modules

            rnn, lin = torch_modules(w.cell, V, w.hidden, w.num_layers)
            one_hot = t.nn.functional.one_hot

            def torch_run(b=b, rnn=rnn, lin=lin) -> None:
                with t.no_grad():
                    y, state = rnn(one_hot(t.zeros(b, 10, dtype=t.long), V).float())
                    tok = t.multinomial(t.softmax(lin(y[:, -1]), -1), 1)
                    for _ in range(num_chars - 1):
                        y, state = rnn(one_hot(tok, V).float(), state)
                        tok = t.multinomial(t.softmax(lin(y[:, -1]), -1), 1)

            fns["torch"] = torch_run
        ms = median_ms(fns, max(3, s.repeats // 2))
        out[str(b)] = {k: b * num_chars / v * 1e3 for k, v in ms.items()}
    return out


def epoch(s: Settings) -> dict[str, float]:
    """Where a reference-experiment epoch goes (the bundled book: 8 training steps, validation over
    5,000 tokens), ms per epoch, interleaved: the steps then one read of the metric sums; the
    validation pass alone; both one after the other (what ``rnnjax.training.train`` does); both
    overlapped (the validation read after the next epoch's steps are dispatched: measured, dropped);
    and building and appending the epoch record (fsynced)."""
    cfg = default_config()
    cfg.model.hidden_size = s.base.hidden
    cfg.parallel.num_devices = 1  # what the README's command runs: one device (auto: native)
    cfg = resolve(cfg)
    corpus = rdata.load_corpus(cfg.data)
    model = build_model(cfg, len(corpus.vocab))
    tx, _ = make_optimizer(cfg.train, 1000)
    dc = cfg.data
    xs, ys = (jax.device_put(a) for a in batches.epoch_batches(corpus.train, dc, cfg.seed, 1))
    stats = cfg.train.layer_stats  # the default validation pass sums the layer statistics too
    step = make_train_step(model, tx, reset_carry=False)
    eval_step = make_stats_eval_step(model) if stats else make_eval_step(model)
    key, n = jax.random.key(1), batches.batches_per_epoch(dc, len(corpus.train))
    box = {"state": init_train_state(model, tx, jax.random.key(0))}

    def steps() -> Any:
        st = box["state"]
        carry, m = model.initial_carry(dc.batch_size), train_sums(model, st.params, False)
        for i in range(n):
            st, carry, m = step(st, carry, m, xs, ys, i, key)
        box["state"] = st
        return m

    def val() -> Any:
        sums = eval_sums(
            model,
            box["state"].params,
            corpus.val,
            dc.batch_size,
            dc.num_steps,
            eval_step,
            with_stats=stats,
        )
        return sums[0] if stats else sums

    def overlapped() -> None:
        v = val()
        to_host(steps())
        sums_perplexity(v)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics.jsonl"

        def record() -> None:
            sums = {
                "loss": np.float64(1.0),
                "grad_norm": np.float64(1.0),
                "steps": np.float64(1.0),
                "skipped": np.float64(0.0),
            }
            append_metrics(path, epoch_record(1, n, sums, {"nll": 1.6}, 1.0, 1.0, 1.0))

        return median_ms(
            {
                "train": lambda: to_host(steps()),
                "validation": lambda: sums_perplexity(val()),
                "train + validation, one after the other": lambda: (
                    to_host(steps()),
                    sums_perplexity(val()),
                ),
                "train + validation, overlapped": overlapped,
                "record": record,
            },
            s.repeats,
        )


def checkpoint(s: Settings) -> dict[str, float]:
    """What the sha256 of every array (recorded with each save, verified on restore) costs on the
    reference run's full checkpoint tree: checksums alone vs a whole synchronous save (which
    includes them) and a whole restore (which verifies them), interleaved, ms."""
    cfg = config(s.base)
    model = build_model(cfg, V)
    tx, _ = make_optimizer(cfg.train, 1000)
    key = jax.random.key(0)
    state = init_train_state(model, tx, key)
    items = checkpoint_items(
        state,
        jax.random.key_data(key),
        model.initial_carry(cfg.data.batch_size),
        train_sums(model, state.params, False),
    )
    abstract = jax.eval_shape(lambda: items)
    times: dict[str, list[float]] = {"checksums": [], "save": [], "restore": []}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpointer(tmp, max_to_keep=2)
        for r in range(s.repeats + 1):  # the first round warms up
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
    out = {name: float(np.median(v)) for name, v in times.items()}
    out["bytes"] = int(sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(items)))
    return out


def _train_command(tmp: str, name: str, s: Settings, *extra: str) -> list[str]:
    train, cfg = repo_path("scripts", "train.py"), repo_path("configs", "deep_lstm.py")
    return [
        sys.executable,
        str(train),
        f"--config={cfg}",
        f"--workdir={tmp}/{name}",
        f"--config.train.num_epochs={s.e2e_epochs}",
        "--config.train.progress=False",
        f"--config.model.hidden_size={s.base.hidden}",
        *extra,
    ]


def _cpus() -> bool:
    return jax.default_backend() == "cpu" and len(jax.devices()) > 1


# The end-to-end runs: --e2e_runs name -> (row label, flags of scripts/train.py, where it runs).
# The rnnjax rows ask for impl=rnnjax (not the default auto) so that they stay the pure-JAX layer.
E2E_RUNS: dict[str, tuple[str, tuple[str, ...], Any]] = {
    "default": ("the README's command (impl auto)", (), lambda: True),
    "rnnjax": ("rnnjax", ("--config.model.impl=rnnjax",), lambda: True),
    "cudnn": ("rnnjax, impl=cudnn", ("--config.model.impl=cudnn",), cudnn.available),
    "native": ("rnnjax, impl=native", ("--config.model.impl=native",), native.available),
    "cpu_devices": (
        "rnnjax, cpu_devices=0",
        ("--config.parallel.cpu_devices=0", "--config.model.impl=rnnjax"),
        _cpus,
    ),
    "native_cpu_devices": (
        "rnnjax, impl=native, cpu_devices=0",
        ("--config.parallel.cpu_devices=0", "--config.model.impl=native"),
        lambda: _cpus() and native.available(),
    ),
    "cpu_pipeline": (
        "rnnjax, cpu_pipeline",
        ("--config.parallel.cpu_pipeline=True", "--config.model.impl=rnnjax"),
        _cpus,
    ),
}


assert tuple(E2E_RUNS) == E2E_RUN_NAMES  # the names scripts/benchmark.py checks


def end_to_end(s: Settings) -> dict[str, Any] | None:
    """Wall time of the whole seed experiment, process start to exit: ``scripts/train.py
    --config=configs/deep_lstm.py`` for each of ``s.e2e_runs`` that can run here (:data:`E2E_RUNS`)
    vs ``benchmarks/torch_baseline.py`` (same data, epochs, optimizer, per-epoch validation), one
    after the other; None when ``e2e_epochs`` is 0."""
    if s.e2e_epochs <= 0:
        return None
    out: dict[str, Any] = {"epochs": s.e2e_epochs}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            label: _train_command(tmp, name, s, *flags)
            for name, (label, flags, here) in E2E_RUNS.items()
            if name in s.e2e_runs and here()
        }
        for name, cmd in runs.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            workdir = cmd[3].split("=", 1)[1]
            last = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")][-1]
            out[name] = {
                "seconds": seconds,
                "train_ppl": last["train_ppl"],
                "val_ppl": last["val_ppl"],
            }
        if torch() is not None:
            cmd = [
                sys.executable,
                str(repo_path("benchmarks", "torch_baseline.py")),
                f"--epochs={s.e2e_epochs}",
                f"--hidden_size={s.base.hidden}",
                f"--json={tmp}/torch.json",
            ]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO_ROOT)
            seconds = time.perf_counter() - t0
            res = json.load(open(f"{tmp}/torch.json"))
            out["torch"] = {
                "seconds": seconds,
                "train_ppl": res["train_ppl"],
                "val_ppl": res["val_ppl"],
            }
            out["speedup"] = {k: out["torch"]["seconds"] / out[k]["seconds"] for k in runs}
    return out
