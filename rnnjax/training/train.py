"""Training a run: ``train_and_evaluate(config, workdir)`` checks the workdir, loads the data and
runs the training loop (:mod:`rnnjax.training.loop`: restore -> for each epoch: train, evaluate,
record, maybe save -> finish) on a group of one trial.

Flow: config -> data -> model -> train step (:mod:`rnnjax.training.steps`) -> metrics
(:mod:`rnnjax.training.metrics`) -> checkpoint -> generate. One training step is one
``jax.jit``-compiled function; metrics are summed on the device and read back once per epoch.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from rnnjax.config import Config, ConfigError, resolve
from rnnjax.config.model_fields import Impl
from rnnjax.dataset import data
from rnnjax.host import retain_freed_memory
from rnnjax.network.build import build_model, make_placement
from rnnjax.network.impls import cudnn
from rnnjax.network.parallel import set_cpu_devices_for
from rnnjax.rundir import workdir as rundir
from rnnjax.rundir.checkpoint import CheckpointError
from rnnjax.rundir.preflight import claimed
from rnnjax.rundir.workdir import RESUME_MODES
from rnnjax.training.capacity import check_fits
from rnnjax.training.console import Preempted, StopFlag
from rnnjax.training.layout import checkpoint_items, from_checkpoint_items
from rnnjax.training.loop import Group, train_group
from rnnjax.training.optim import check_optimizer

__all__ = [
    "build_model",
    "checkpoint_items",
    "from_checkpoint_items",
    "make_placement",
    "train_and_evaluate",
]


def train_and_evaluate(
    config: ml_collections.ConfigDict | Config, workdir: str | os.PathLike, resume: str = "auto"
) -> dict[str, Any]:
    """Train the configured model in ``workdir``, resuming from its latest good checkpoint.

    ``workdir`` may be relative (to the current directory). ``resume``: "auto" (resume if
    there is a checkpoint), "must" (fail at once, creating nothing, if there is none),
    "never" (refuse a workdir holding checkpoints) or "restart" (move the workdir's files to
    ``WORKDIR/discarded/<time>/`` and start over). A workdir with history (metric records,
    damaged checkpoints) but no checkpoint is refused unless ``resume="restart"``. Writes
    config.json, vocab.json, metrics.jsonl, checkpoints/, curves.png and samples.txt.
    Returns a summary dict with the final ``params``. Raises :class:`Preempted` on
    SIGTERM/SIGINT (after saving, once training has started).
    """
    cfg = config if isinstance(config, Config) else resolve(config)
    if resume not in RESUME_MODES:
        raise ConfigError(
            f"resume = {resume!r} is not allowed: one of {', '.join(map(repr, RESUME_MODES))}"
        )
    workdir = rundir.resolve_path(workdir)
    rundir.check_writable(workdir)
    if rundir.holds_sweep(workdir):
        raise rundir.WorkdirError(
            f"workdir {workdir} holds a sweep (its trials' result.json, results.csv), not a "
            "training run; give the run a --workdir of its own"
        )
    if resume == "must" and not rundir.has_checkpoint(workdir):
        raise CheckpointError(f"--resume=must but {workdir} has no checkpoint to resume from")
    if resume == "never" and rundir.has_checkpoint(workdir):
        raise CheckpointError(
            f"--resume=never but {workdir} already holds checkpoints; use a new --workdir"
        )
    with (
        StopFlag() as stop
    ):  # from here on SIGTERM/SIGINT end the run with a message, never mid-write
        corpus = data.load_corpus(cfg.data)  # validates the data before any compute
        # XLA's per-step scratch block reuses its pages (rnnjax/host.py)
        retain_freed_memory()
        set_cpu_devices_for(cfg)  # a no-op, or an error if JAX started otherwise
        dp = make_placement(cfg)
        if cfg.model.impl == Impl.CUDNN:
            cudnn.check_available()  # one line on a machine without CUDA: never a silent fallback
        check_optimizer(cfg.train)  # arguments of the wrong kind: one line, before compute
        check_fits(cfg, len(corpus.vocab))
        primary = (
            jax.process_index() == 0
        )  # only process 0 writes files (orbax coordinates checkpoints)
        with claimed([workdir], [cfg], corpus.vocab, [resume], primary) as notes:
            if stop.signum is not None:
                raise Preempted(stop.signum, None)
            return train_group(
                Group([cfg], corpus, dp, vmapped=False), [workdir], stop, primary, notes
            )[0]
