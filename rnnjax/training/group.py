"""K >= 1 trials trained together: their model, optimizers, jitted steps, batches and validation
(:class:`Group`).

A single run is a :class:`Group` of one trial without a trial axis, placed over its devices
(:class:`rnnjax.network.parallel.DataParallel`); a vectorized group
(:mod:`rnnjax.training.vectorize`) stacks K trials on a leading [K] axis and runs the same jitted
step under ``jax.vmap`` on one device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.config import Config
from rnnjax.dataset import batches, data
from rnnjax.network.build import build_model
from rnnjax.network.parallel import DataParallel
from rnnjax.training import budget
from rnnjax.training.evaluation import EVAL_METRICS, eval_sums, make_eval_step, make_stats_eval_step
from rnnjax.training.metrics import EvalSums, LayerStats, TrainSums, add_sums, eval_zeros
from rnnjax.training.optim import make_optimizer
from rnnjax.training.steps import (
    Average,
    init_train_state,
    loss_weights,
    make_train_step,
    train_sums,
)


class Group:
    """K >= 1 trials of one model shape (they may differ in seed and optimizer hyperparameters) and
    the jitted steps that train them together. ``vmapped``: every array has a leading [K] trial
    axis."""

    def __init__(
        self, cfgs: Sequence[Config], corpus: data.Corpus, dp: DataParallel, vmapped: bool
    ):
        self.cfgs, self.corpus, self.dp, self.vmapped = tuple(cfgs), corpus, dp, vmapped
        dc, tc = cfgs[0].data, cfgs[0].train
        self.model = build_model(cfgs[0], len(corpus.vocab))
        self.n = batches.batches_per_epoch(dc, len(corpus.train))
        self.set_total(budget.planned_steps(tc, self.n))
        self.plain_eval_step = make_eval_step(self.model)
        evaluate = make_stats_eval_step(self.model) if tc.layer_stats else self.plain_eval_step
        if vmapped:
            evaluate = jax.jit(
                jax.vmap(evaluate, in_axes=(0, 0, 0, *([0] if tc.layer_stats else []), None, None))
            )
        self.eval_step = evaluate
        self.zero_sums = train_sums(
            self.model,
            jax.eval_shape(self.model.init, jax.random.key(0)),
            tc.layer_stats,
            loss_weights(tc),
        )

    def set_total(self, total: int) -> None:
        """Make every schedule run over ``total`` steps (:mod:`rnnjax.training.budget`): the
        optimizers and the training step (compiled at its next call)."""
        self.total = total
        optimizers = [make_optimizer(c.train, total_steps=total) for c in self.cfgs]
        self.txs, self.schedules = [o[0] for o in optimizers], [o[1] for o in optimizers]
        # The update reads each trial's hyperparameters from its own optimizer state.
        reset = self.cfgs[0].data.sampler == "random"
        tc = self.cfgs[0].train
        step = make_train_step(self.model, self.txs[0], reset, loss_weights(tc), Average.of(tc))
        if self.vmapped:
            step = jax.jit(
                jax.vmap(step, in_axes=(0, 0, 0, 0, 0, None, 0)), donate_argnums=(0, 1, 2)
            )
        self.train_step = step

    @property
    def last_epoch(self) -> int:
        """The epoch in which the run's last step falls."""
        return budget.last_epoch(self.total, self.n)

    def stop_batch(self, epoch: int) -> int:
        """The minibatches ``epoch`` trains: n, or fewer in the run's last epoch."""
        return budget.stop_batch(self.total, self.n, epoch)

    def take(self, tree: Any, j: int) -> Any:
        """Trial j's part of a group's pytree."""
        return jax.tree_util.tree_map(lambda x: x[j], tree) if self.vmapped else tree

    def stack(self, trees: Sequence[Any]) -> Any:
        """One pytree per trial -> the group's pytree (inverse of :meth:`take`)."""
        return (
            jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees) if self.vmapped else trees[0]
        )

    def init(self) -> tuple[Any, Any]:
        """Each trial's step-0 train state and RNG key data, from its own seed (as a single run of
        it)."""
        states, rngs = [], []
        for c, tx in zip(self.cfgs, self.txs):
            init_key, rng = jax.random.split(jax.random.key(c.seed))
            init = jax.jit(
                lambda k, tx=tx, c=c: init_train_state(self.model, tx, k, Average.of(c.train)),
                out_shardings=self.dp.replicated,
            )
            states.append(init(init_key))
            rngs.append(self.dp.replicate(np.asarray(jax.random.key_data(rng))))
        return self.stack(states), self.stack(rngs)

    def fresh(self) -> tuple[Any, TrainSums]:
        """A zero carry and zero metric sums for the start of an epoch, placed on the mesh."""
        carry = self.dp.shard_carry(self.model.initial_carry(self.cfgs[0].data.batch_size))
        metrics = jax.tree_util.tree_map(lambda x: self.dp.replicate(np.asarray(x)), self.zero_sums)
        return self.stack([carry] * len(self.cfgs)), self.stack([metrics] * len(self.cfgs))

    def batches(self, epoch: int) -> tuple[jax.Array, jax.Array]:
        """Each trial's minibatches of ``epoch`` (its own seed's order): [n, b, t], or [K, n, b,
        t]."""
        xs, ys = zip(
            *(batches.epoch_batches(self.corpus.train, c.data, c.seed, epoch) for c in self.cfgs)
        )
        if not self.vmapped:
            return self.dp.shard(xs[0], 1), self.dp.shard(ys[0], 1)
        return jnp.asarray(np.stack(xs)), jnp.asarray(np.stack(ys))

    def evaluate(self, params) -> tuple[EvalSums, LayerStats | None, tuple[EvalSums, ...]]:
        """Dispatch the validation pass over each held-out part, each from a zero carry (with
        ``train.layer_stats`` also the per-layer statistics of the same pass): (all parts' sums,
        statistics, each part's sums when there are several), on the device, read with the
        record."""
        dc, with_stats = self.cfgs[0].data, self.cfgs[0].train.layer_stats
        k, parts, stats = len(self.cfgs), [], None
        for _, ids in self.corpus.val_parts:
            if not self.vmapped:
                sums = eval_sums(
                    self.model,
                    params,
                    ids,
                    dc.batch_size,
                    dc.num_steps,
                    self.eval_step,
                    self.dp,
                    with_stats=with_stats,
                )
                sums = sums if with_stats else (sums,)
            else:
                carry = self.stack([self.model.initial_carry(dc.batch_size)] * k)
                zeros = (
                    eval_zeros(EVAL_METRICS),
                    LayerStats.zeros(num_layers=self.model.num_layers),
                )
                sums = self.stack([zeros if with_stats else zeros[:1]] * k)
                for x_bt, y_bt in batches.eval_windows(ids, dc.batch_size, dc.num_steps):
                    carry, *sums = self.eval_step(params, carry, *sums, x_bt, y_bt)
            parts.append(sums[0])
            if with_stats:
                stats = sums[1] if stats is None else stats + sums[1]
        total = parts[0]
        for more in parts[1:]:
            total = add_sums(total, more)
        return total, stats, tuple(parts) if len(parts) > 1 else ()
