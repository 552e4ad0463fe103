"""Checkpoints with orbax: save, find the latest good step, restore, and the workdir lock.

A checkpoint step directory ``WORKDIR/checkpoints/<step>/`` holds two items:
``state`` (arrays: params, optimizer state, step, RNG key data, carried hidden state,
metric sums, non-finite counter) and ``meta`` (JSON: epoch and batch position, the
resolved config, the vocabulary, validation perplexity). Restoring never executes a
config file. Orbax owns ``checkpoints/``; nothing else is written there.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (damaged, or of another configuration); the message says which and why."""


class WorkdirLock:
    """An exclusive, non-blocking ``flock`` on ``WORKDIR/.lock``: one trainer per workdir.

    The lock is released by the kernel when the process dies, even on SIGKILL.
    """

    def __init__(self, workdir: pathlib.Path):
        self.path = workdir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointError(
                f"{self.path.parent} is in use by another trainer (locked {self.path}); wait for it or use another --workdir"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Checkpointer:
    """An orbax ``CheckpointManager`` over ``WORKDIR/checkpoints``: keeps the ``max_to_keep``
    latest steps and the best step by validation perplexity. Saves are synchronous."""

    def __init__(self, workdir: str | os.PathLike, max_to_keep: int = 3, read_only: bool = False):
        self.workdir = pathlib.Path(workdir)
        self.directory = self.workdir / "checkpoints"
        policy = cm.AnyPreservationPolicy(
            [
                cm.LatestN(n=max_to_keep),
                cm.BestN(get_metric_fn=lambda m: -m["val_ppl"], n=1, keep_checkpoints_without_metrics=False),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False,
            preservation_policy=policy,
            read_only=read_only,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
        )
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"{self.workdir} has no checkpoints/ directory: it is not a finished or resumable run")
        self.read_only = read_only
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        if read_only:  # orbax warns that a read-only manager will not save: that is the point
            absl_logger.setLevel(logging.ERROR)
        try:
            self._mngr = ocp.CheckpointManager(self.directory, options=options)
        finally:
            absl_logger.setLevel(level)

    def steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any], val_ppl: float | None = None) -> None:
        """Write step ``step`` (overwrites nothing: a step that exists is left as it is)."""
        if step in self._mngr.all_steps():
            return
        metrics = {"val_ppl": val_ppl} if val_ppl is not None else None
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._mngr.save(step, args=args, metrics=metrics, force=True)
        self._mngr.wait_until_finished()

    def read_meta(self, step: int) -> dict[str, Any]:
        return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(
        self, abstract_state: Callable[[dict[str, Any]], Any], step: int | None = None
    ) -> tuple[int, Any, dict[str, Any]] | None:
        """Restore ``step``, or the latest step that restores cleanly (None: no checkpoint).

        ``abstract_state(meta)`` gives the target tree (``jax.eval_shape`` of a fresh state).
        A damaged latest step is skipped with a warning; when writable, it is moved to
        ``WORKDIR/damaged/`` (kept, never deleted) so training can save that step again.
        """
        steps = self.steps()
        if step is not None:
            if step not in steps:
                raise CheckpointError(f"no checkpoint at step {step} in {self.directory}; have {steps}")
            steps = [step]
        damaged = []
        for s in reversed(steps):
            try:
                meta = self.read_meta(s)
                args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state(meta)), meta=ocp.args.JsonRestore())
                restored = self._mngr.restore(s, args=args)
                self._quarantine(damaged)  # newer steps that failed: moved aside, kept
                return s, restored["state"], restored["meta"]
            except CheckpointError:
                raise
            except Exception as e:  # damaged: missing files, truncated arrays, bad metadata
                first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                logging.warning("checkpoint step %d in %s is damaged (%s); trying an earlier step", s, self.directory, first_line)
                damaged.append(s)
                if step is not None:
                    raise CheckpointError(f"checkpoint step {s} in {self.directory} is damaged: {first_line}") from None
        if damaged:
            self._quarantine(damaged)
            where = f"moved to {self.workdir / 'damaged'}" if not self.read_only else "left in place"
            raise CheckpointError(
                f"every checkpoint in {self.directory} is damaged (steps {sorted(damaged)}, {where}); "
                "start over with a new --workdir"
            )
        return None

    def _quarantine(self, steps: list[int]) -> None:
        if self.read_only or not steps:
            return
        dest = self.workdir / "damaged"
        dest.mkdir(exist_ok=True)
        for s in steps:
            src = self.directory / str(s)
            if src.exists():
                shutil.move(str(src), str(dest / f"{s}.{os.getpid()}"))
        self._mngr.reload()

    def close(self) -> None:
        self._mngr.close()
