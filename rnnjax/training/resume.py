"""Where a group of trials starts: the latest checkpoint every trial has (:func:`restore`), or a
fresh state from each trial's seed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rnnjax.rundir.checkpoint import Checkpointer
from rnnjax.rundir.workdir import Key
from rnnjax.training.layout import fit_sums, from_checkpoint_items, target_items

if TYPE_CHECKING:  # the loop's Group, which imports this module
    from rnnjax.training.loop import Group


def restore(group: Group, ckpts: list[Checkpointer]):
    """The trials' latest common good checkpoint, or a fresh state: (state, rng_data, carry,
    metrics, epoch, batch, step or None, each trial's saved record or None)."""
    state, rng_data = group.init()
    carry, metrics = group.fresh()
    k = len(ckpts)

    def target(j: int):
        def of(
            meta,
        ):  # the metric sums as saved (their names and shapes, or an earlier layout's arrays)
            one = (group.take(x, j) for x in (state, rng_data, carry, metrics))
            return group.dp.abstract(target_items(*one, meta, group.dp.replicate))

        return of

    averaged = bool(group.cfgs[0].train.weight_average)  # the average: its own item
    found = [ckpt.restore(target(j), with_average=averaged) for j, ckpt in enumerate(ckpts)]
    steps = {f[0] if f else None for f in found}
    if (
        len(steps) > 1
    ):  # a kill between the trials' saves (or damage): go on from a step every trial has
        common = None if None in steps else min(steps)
        found = [
            f
            if f is None or f[0] == common
            else ckpt.restore(target(j), common, averaged)
            if common in ckpt.steps()
            else None
            for j, (f, ckpt) in enumerate(zip(found, ckpts))
        ]
        if any(f is None for f in found):
            found = [None] * k
    if found[0] is None:
        return state, rng_data, carry, metrics, 1, 0, None, [None] * k
    trials = []
    for j, (_, params, item, meta) in enumerate(found):
        params, average = params if averaged else (params, None)
        s, r, c, sums = from_checkpoint_items(params, item, average)
        # metrics added since (or layer_stats changed): 0 from an epoch's start, unknown mid-epoch
        trials.append(
            (
                s,
                r,
                c,
                fit_sums(sums, group.take(metrics, j), meta["batch"] != 0, group.dp.replicate),
            )
        )
    state, rng_data, carry, metrics = (group.stack([t[i] for t in trials]) for i in range(4))
    meta = found[0][3]
    return (
        state,
        rng_data,
        carry,
        metrics,
        meta[Key.EPOCH] + 1,
        meta["batch"],
        found[0][0],
        [f[3].get("record") for f in found],
    )
