"""Vectorized trials: K runs that differ only in seed or optimizer hyperparameters, trained
as one compiled program with ``jax.vmap`` over stacked train states, by the single-run loop
(:mod:`rnnjax.training.loop`).

Learning rate and weight decay live in each trial's optimizer state
(``optax.inject_hyperparams``), so one program serves every value. Each trial gets its own
run directory, locked and checked as a single run's, with the files a single run writes; it
checkpoints every ``checkpoint.every_epochs`` and an interrupted group resumes.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.config import Config, ConfigError
from rnnjax.config.model_fields import Impl
from rnnjax.dataset import data
from rnnjax.network.parallel import DataParallel
from rnnjax.rundir import workdir as rundir
from rnnjax.rundir.preflight import claimed
from rnnjax.training.console import Preempted, StopFlag
from rnnjax.training.loop import Group, train_group

# Fields that may differ between the trials of one vectorized group (they live in the optimizer
# state).
VECTORIZABLE = ("seed", "train.learning_rate", "train.weight_decay")


def shape_key(cfg: Config) -> str:
    """Trials with equal keys can share one compiled program."""
    d = cfg.to_dict()
    d.pop("seed")
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("learning_rate", "weight_decay")}
    return json.dumps(d, sort_keys=True)


def stack_trials(tree: Any, k: int) -> Any:
    """The same pytree for each of k trials: every leaf [...] -> [k, ...]."""
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (k, *x.shape)), tree)


def check_vectorizable(c: Config) -> None:
    """Refuse, in one line, a config that vectorized trials cannot train (checked by the sweep
    before anything runs)."""
    if c.parallel.cpu_pipeline:
        raise ConfigError(
            "vectorized trials run on one device; set parallel.cpu_pipeline = False or drop "
            "--vectorize"
        )
    if c.model.impl == Impl.CUDNN:
        raise ConfigError(
            "vectorized trials vmap the model and cuDNN's LSTM call cannot be vmapped; "
            "set model.impl = 'rnnjax' or drop --vectorize"
        )
    if c.train.early_stopping_patience:
        raise ConfigError(
            "vectorized trials train every epoch together; set train.early_stopping_patience = 0 "
            "or drop --vectorize"
        )
    if c.data.num_test or c.data.test_fraction or c.data.test_paths:
        raise ConfigError(
            "vectorized trials have no test evaluation; set data.num_test = 0 and "
            "data.test_fraction = 0, or drop --vectorize"
        )


def train_vectorized(
    cfgs: Sequence[Config],
    workdirs: Sequence[str | pathlib.Path],
    resume: Sequence[str] | None = None,
) -> list[dict[str, Any] | Exception]:
    """Train every config of one group together with the single-run loop
    (:func:`rnnjax.training.loop.train_group` over a leading trial axis); returns one summary per
    trial (as train_and_evaluate), or the error that ended that trial (its steps stayed non-finite).
    Each trial's workdir is locked and checked as a single run's (``resume``: each trial's mode,
    default "auto"); a busy one refuses the group in one line. Raises
    :class:`rnnjax.training.console.Preempted` on SIGTERM/SIGINT, after saving every trial."""
    if len({shape_key(c) for c in cfgs}) != 1:
        raise ConfigError(
            f"vectorized trials may differ only in {', '.join(VECTORIZABLE)}; run the others one "
            "by one"
        )
    c0 = cfgs[0]
    if c0.train.schedule != "constant":
        raise ConfigError(
            "vectorized trials need train.schedule = 'constant'; run scheduled trials one by one"
        )
    check_vectorizable(c0)
    dirs = [rundir.resolve_path(w) for w in workdirs]
    for d in dirs:
        rundir.check_writable(d)
    with StopFlag() as stop:  # SIGTERM/SIGINT: every trial saves its step, then Preempted
        corpus = data.load_corpus(c0.data)
        modes = list(resume) if resume is not None else ["auto"] * len(dirs)
        with claimed(dirs, cfgs, corpus.vocab, modes) as notes:
            if stop.signum is not None:
                raise Preempted(stop.signum, None)
            group = Group(cfgs, corpus, DataParallel.create(1, c0.data.batch_size), vmapped=True)
            return train_group(group, dirs, stop, notes=notes)
