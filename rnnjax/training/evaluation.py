"""``evaluation.json``: what a finished run reports beside its curves -- the best epoch's validation
figures and, with a test split, the test metrics of the best saved checkpoint."""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any

import numpy as np

from rnnjax.config import DataConfig
from rnnjax.network.model import DeepRNN, Params
from rnnjax.network.parallel import DataParallel
from rnnjax.rundir import workdir as rundir
from rnnjax.rundir.workdir import Key, finite, write_atomic
from rnnjax.training.metrics import add_sums, best_record, bpc, by_source, eval_entries, eval_means
from rnnjax.training.steps import EVAL_METRICS, eval_sums


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
