"""What a training checkpoint holds, as arrays: a run's train state, RNG, carry and metric sums <->
the ``params`` and ``state`` items of :mod:`rnnjax.checkpoint` (which owns the files)."""

from __future__ import annotations

from typing import Any

import jax

from rnnjax.metrics import TrainMetrics
from rnnjax.model import Carry, Params
from rnnjax.steps import TrainState

Array = jax.Array


def checkpoint_items(state: TrainState, rng_data: Array, carry: Carry, metrics: TrainMetrics) -> tuple[Params, dict]:
    """A checkpoint's ``params`` and ``state`` items; ``rng_data`` is ``jax.random.key_data(key)``. The
    metric sums are stored as the [4] array ``acc`` and the per-layer gradient norm sums, when tracked,
    as ``acc_layers`` [L + 1] (checkpoints written before it lack it)."""
    train = {"step": state.step, "opt_state": state.opt_state, "nonfinite": state.nonfinite}
    item = {"train": train, "rng": rng_data, "carry": carry, "acc": metrics.to_array()}
    return state.params, item | ({"acc_layers": metrics.layer_grad_norm} if metrics.tracks_layers else {})


def from_checkpoint_items(params: Params, item: dict[str, Any]) -> tuple[TrainState, Array, Carry, TrainMetrics]:
    """Inverse of :func:`checkpoint_items`: (train state, rng_data, carry, metric sums)."""
    train = item["train"]
    state = TrainState(train["step"], params, train["opt_state"], train["nonfinite"])
    return state, item["rng"], item["carry"], TrainMetrics.from_array(item["acc"], item.get("acc_layers"))


def saved_meta(metrics: TrainMetrics, epoch: int, batch: int, record: dict[str, Any] | None) -> dict[str, Any]:
    """A checkpoint's meta: its position and (at an epoch end) the epoch's record, so a damaged
    ``metrics.jsonl`` can get it back; ``acc_layers``: how many per-layer sums the state item holds."""
    from rnnjax.workdir import finite

    return {"epoch": epoch, "batch": batch, "val_ppl": record["val_ppl"] if record else None,
            "record": finite(record) if record else None, "acc_layers": int(metrics.layer_grad_norm.shape[-1])}
