"""What a training checkpoint holds, as arrays: a run's train state, RNG, carry and metric sums <->
the ``params`` and ``state`` items of :mod:`rnnjax.rundir.checkpoint` (which owns the files). Layout
3 stores the training sums by name; layouts 1 and 2 (the arrays ``acc`` and ``acc_layers``) restore
into the same mapping (docs/implementation.md, "Checkpoint layouts").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.network.model import Carry, Params
from rnnjax.rundir.workdir import Key
from rnnjax.training.metrics import TrainSums
from rnnjax.training.steps import TrainState

Array = jax.Array
ACC = ("loss", Key.GRAD_NORM, "steps", "skipped")  # the order of layouts 1 and 2's ``acc`` array


def checkpoint_items(
    state: TrainState, rng_data: Array, carry: Carry, sums: TrainSums
) -> tuple[Params, dict]:
    """A checkpoint's ``params`` and ``state`` items (layout 3); ``rng_data`` is
    ``jax.random.key_data(key)``. ``state.average`` is not in them: it is its own item
    (``Checkpointer.save(..., average=state.average)``)."""
    train = {"step": state.step, "opt_state": state.opt_state, "nonfinite": state.nonfinite}
    return state.params, {"train": train, "rng": rng_data, "carry": carry, "metrics": dict(sums)}


def target_items(
    state: TrainState, rng_data: Array, carry: Carry, sums: TrainSums, meta: dict[str, Any], place
) -> tuple[Params, dict]:
    """The items a checkpoint with ``meta`` holds, shaped and placed like the given ones (``place``:
    a NumPy array -> a placed array): the restore target of any layout."""
    params, item = checkpoint_items(state, rng_data, carry, sums)
    if meta.get("layout", 1) >= 3:
        shapes = meta["metrics"]
        item["metrics"] = {n: place(np.zeros(shape, np.float32)) for n, shape in shapes.items()}
    else:
        del item["metrics"]
        item["acc"] = place(np.zeros((len(ACC),), np.float32))
        if meta.get("acc_layers", 0):
            item["acc_layers"] = place(np.zeros((meta["acc_layers"],), np.float32))
    return params, item


def from_checkpoint_items(
    params: Params, item: dict[str, Any], average: Params | None = None
) -> tuple[TrainState, Array, Carry, TrainSums]:
    """Inverse of :func:`checkpoint_items`, for any layout: (train state, rng_data, carry, sums).
    ``average``: the checkpoint's ``average`` item (``train.weight_average``; the state's own,
    saved beside the params by :meth:`rnnjax.rundir.checkpoint.Checkpointer.save`)."""
    train = item["train"]
    state = TrainState(train["step"], params, train["opt_state"], train["nonfinite"], average)
    if "metrics" in item:
        sums = dict(item["metrics"])
    else:
        sums = {name: item["acc"][..., i] for i, name in enumerate(ACC)}
        if "acc_layers" in item:
            sums[Key.GRAD_NORM_LAYERS] = item["acc_layers"]
    return state, item["rng"], item["carry"], sums


def fit_sums(saved: TrainSums, want: TrainSums, mid_epoch: bool, place) -> TrainSums:
    """The restored sums of the metrics this run computes (``want``): one the checkpoint lacks (or
    holds with another shape) starts at 0 at an epoch's start and is unknown (NaN) for the rest of
    an epoch begun before it; one this run no longer computes is dropped."""
    fill = np.nan if mid_epoch else 0.0
    return {
        n: saved[n]
        if n in saved and saved[n].shape == w.shape
        else place(np.full(w.shape, fill, np.float32))
        for n, w in want.items()
    }


def saved_meta(
    sums: TrainSums,
    epoch: int,
    batch: int,
    record: dict[str, Any] | None,
    budget: dict[str, Any] | None = None,
    vocab: str | None = None,
) -> dict[str, Any]:
    """A checkpoint's meta: its position, (at an epoch end) the epoch's record, so a damaged
    ``metrics.jsonl`` can get it back, the shape of each metric sum, and the time budget
    (``budget.json``'s content; None before it is measured or without one), so a missing or
    damaged ``budget.json`` can get it back; ``vocab``: the vocabulary's
    :attr:`rnnjax.dataset.vocab.Vocab.digest`, which readers check ``vocab.json`` against."""
    from rnnjax.rundir.workdir import finite

    return {
        Key.EPOCH: epoch,
        "batch": batch,
        Key.VAL_PPL: record[Key.VAL_PPL] if record else None,
        "record": finite(record) if record else None,
        "metrics": {n: list(jnp.shape(x)) for n, x in sums.items()},
        "budget": budget,
        "vocab_sha256": vocab,
    }
