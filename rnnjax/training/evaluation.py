"""Evaluation: the jitted evaluation step and its metrics by name, a token stream's sums and
perplexity, and ``evaluation.json``, what a finished run reports beside its curves -- the best
epoch's validation figures and, with a test split, the test metrics of the best saved checkpoint.

Shape suffixes as in :mod:`rnnjax.network.model` (b = batch, t = time, V = vocabulary).
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.config import DataConfig
from rnnjax.dataset import batches
from rnnjax.network.model import Carry, DeepRNN, Impl, Params
from rnnjax.network.parallel import DataParallel
from rnnjax.rundir import workdir as rundir
from rnnjax.rundir.workdir import Key, finite, write_atomic
from rnnjax.training.metrics import (
    EvalSums,
    LayerStats,
    add_sums,
    add_window,
    best_record,
    bpc,
    by_source,
    eval_entries,
    eval_means,
    eval_zeros,
    sums_perplexity,
)
from rnnjax.training.steps import cross_entropy
from rnnjax.training.trace import layer_stats, trace

Array = jax.Array


class Window(NamedTuple):
    """What one evaluation window's metrics are computed from."""

    logits: Array  # [b, t, V]
    targets: Array  # [b, t] int32
    nll: Array  # [b, t]: next-token cross-entropy


# Every evaluation metric, by name, where it is computed: its per-token values [b, t] (summed over
# the pass on the device; the record holds the mean per token as val_<name>, and "nll" as val_ppl).
# A new one is one entry here.
EVAL_METRICS: dict[str, Callable[[Window], Array]] = {
    "nll": lambda w: w.nll,
}


def eval_window(metrics: EvalSums, logits_btv: Array, y_bt: Array) -> EvalSums:
    """``metrics`` plus one window's sum of every metric it holds (:data:`EVAL_METRICS`)."""
    w = Window(logits_btv, y_bt, cross_entropy(logits_btv, y_bt))
    return add_window(metrics, {n: EVAL_METRICS[n](w) for n in metrics if n != "tokens"})


def make_eval_step(model: DeepRNN):
    """Returns ``eval_step(params, carry, metrics, x_bt, y_bt) -> (carry, metrics)`` (sums of
    :data:`EVAL_METRICS`, from :func:`eval_zeros`)."""

    @jax.jit
    def eval_step(params, carry, metrics, x_bt, y_bt):
        x_bt, y_bt = x_bt.astype(jnp.int32), y_bt.astype(jnp.int32)
        logits_btv, carry = model.apply(params, x_bt, carry)
        return carry, eval_window(metrics, logits_btv, y_bt)

    return eval_step


def make_stats_eval_step(model: DeepRNN):
    """Returns ``eval_step(params, carry, metrics, stats, x_bt, y_bt) -> (carry, metrics, stats)``:
    as :func:`make_eval_step`, also summing each layer's :class:`LayerStats` on the device. The
    logits come from :func:`rnnjax.training.trace.trace` (the same equations); under ``impl="flax"``
    and ``"cudnn"`` from the implementation's own apply, the statistics from the trace (two forwards
    there)."""

    @jax.jit
    def eval_step(params, carry, metrics, stats, x_bt, y_bt):
        x_bt, y_bt = x_bt.astype(jnp.int32), y_bt.astype(jnp.int32)
        logits_btv, new_carry, traces = trace(model, params, x_bt, carry)
        if model.impl in (Impl.FLAX, Impl.CUDNN):  # the loss from the implementation itself
            logits_btv, new_carry = model.apply(params, x_bt, carry)
        return (
            new_carry,
            eval_window(metrics, logits_btv, y_bt),
            stats + layer_stats(model, traces),
        )

    return eval_step


def eval_sums(
    model: DeepRNN,
    params: Params,
    tokens: np.ndarray,
    batch_size: int,
    num_steps: int,
    eval_step=None,
    dp: DataParallel | None = None,
    with_stats: bool = False,
) -> EvalSums | tuple[EvalSums, LayerStats]:
    """Dispatch the evaluation of a token stream read as ``batch_size`` rows (the carry carried
    over) and return the sums of every metric of :data:`EVAL_METRICS` on the device, not yet read:
    the host goes on while they compute (JAX's asynchronous dispatch). ``with_stats``: also each
    layer's :class:`LayerStats` sums (``eval_step`` then from :func:`make_stats_eval_step`). With
    ``dp``, the rows are split over its devices."""
    eval_step = eval_step or (make_stats_eval_step(model) if with_stats else make_eval_step(model))
    carry: Carry = model.initial_carry(batch_size)
    sums = (
        (eval_zeros(EVAL_METRICS), LayerStats.zeros(num_layers=model.num_layers))
        if with_stats
        else (eval_zeros(EVAL_METRICS),)
    )
    if dp is not None:
        carry = dp.shard_carry(carry)
        sums = jax.tree_util.tree_map(lambda x: dp.replicate(np.asarray(x)), sums)
    for x_bt, y_bt in batches.eval_windows(tokens, batch_size, num_steps):
        if dp is not None:
            x_bt, y_bt = dp.shard(x_bt, 0), dp.shard(y_bt, 0)
        carry, *sums = eval_step(params, carry, *sums, x_bt, y_bt)
    return tuple(sums) if with_stats else sums[0]


def perplexity(
    model: DeepRNN,
    params: Params,
    tokens: np.ndarray,
    batch_size: int,
    num_steps: int,
    eval_step=None,
    dp: DataParallel | None = None,
) -> float:
    """exp(mean next-token cross-entropy) over a token stream read as ``batch_size`` rows, the carry
    carried over. With ``dp``, the rows are split over its devices."""
    return sums_perplexity(eval_sums(model, params, tokens, batch_size, num_steps, eval_step, dp))


def part_metrics(
    model: DeepRNN,
    params: Params,
    parts: tuple[tuple[str, np.ndarray], ...],
    dc: DataConfig,
    eval_step=None,
    dp: DataParallel | None = None,
) -> dict[str, dict[str, float]]:
    """Each evaluation metric's mean (:func:`rnnjax.training.metrics.eval_means`) over all held-out
    parts together (key "all") and, when there are several, over each part; read back now."""
    sums = {
        name: eval_sums(model, params, ids, dc.batch_size, dc.num_steps, eval_step, dp)
        for name, ids in parts
    }
    total = functools.reduce(add_sums, sums.values())
    return {"all": eval_means(total)} | (
        {k: eval_means(m) for k, m in sums.items()} if len(sums) > 1 else {}
    )


def evaluation(
    records: list[dict[str, Any]],
    best_saved: int | None,
    stopped: int | None,
    char_level: bool,
    test: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """The content of ``evaluation.json``: ``test`` is :func:`part_metrics` of the test split (None:
    there is none); ``char_level`` adds bits per character beside every perplexity. Every other
    evaluation metric follows: the best epoch's ``best_val_<name>`` and ``test_<name>``."""
    best = best_record(records)
    out: dict[str, Any] = {
        Key.BEST_EPOCH: best[Key.EPOCH] if best else None,
        "best_saved_epoch": best_saved,
        "stopped_early_at": stopped,
        "best_val_ppl": best[Key.VAL_PPL] if best else None,
    }
    if best and "val_ppl_by_source" in best:
        out["best_val_ppl_by_source"] = best["val_ppl_by_source"]
    tests: dict[str, Any] = {}
    if test:
        test = dict(test)
        tests = eval_entries(test.pop("all"), "test") | by_source(test, "test")
        out[Key.TEST_PPL] = tests.pop(Key.TEST_PPL)
        if "test_ppl_by_source" in tests:
            out["test_ppl_by_source"] = tests.pop("test_ppl_by_source")
    if char_level:
        for key in [k for k in out if "_ppl" in k]:
            v = out[key]
            out[key.replace("_ppl", "_bpc")] = (
                {k: bpc(x) for k, x in v.items()}
                if isinstance(v, dict)
                else (bpc(v) if v is not None else None)
            )
    for name in (n for n in EVAL_METRICS if n != "nll"):
        for key in (f"val_{name}", f"val_{name}_by_source"):
            if best and key in best:
                out[f"best_{key}"] = best[key]
    return out | tests


def write_evaluation(workdir: pathlib.Path, out: dict[str, Any]) -> None:
    write_atomic(workdir / rundir.EVALUATION, json.dumps(finite(out), indent=1) + "\n")
