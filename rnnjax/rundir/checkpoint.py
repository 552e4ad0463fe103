"""Checkpoints with orbax: save (with array checksums), and restore the best, the latest or a
given step, skipping (and setting aside in ``damaged/``) damaged ones. Orbax owns
``WORKDIR/checkpoints/``; the items and earlier layouts are described in docs/implementation.md
("Checkpoint layouts"), the arrays in :mod:`rnnjax.training.layout`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import pathlib
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from rnnjax.rundir import workdir as rundir
from rnnjax.rundir.integrity import (
    checksums,
    find_damage,
    leaves,
    no_space,
    orbax_errors_quiet,
    quiet_abandoned_reads,
    size,
    storage_damage,
    verify_checksums,
)
from rnnjax.rundir.workdir import Key

LAYOUT = 3


def _denied(error: BaseException | None) -> str | None:
    """The strerror if ``error`` (or its cause) is a write refused by the filesystem (read-only,
    permission denied)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return error.strerror
        for code in (errno.EROFS, errno.EACCES):
            if os.strerror(code) in str(error):
                return os.strerror(code)
        error = error.__cause__ or error.__context__
    return None


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (damaged, or of another configuration); the message says which
    and why."""


class _BestByMeta:
    """Orbax preservation policy: keep the step with the lowest ``val_ppl`` in its own ``meta``
    item, read from disk. Orbax's ``BestN`` knows only the metrics saved by the same process, so a
    resumed run would prune the best step of an earlier session once ``max_to_keep`` newer ones
    exist."""

    def __init__(self, directory: pathlib.Path):
        self.directory = directory
        self._val: dict[int, float | None] = {}

    def val_ppl(self, step: int) -> float | None:
        if step not in self._val:
            try:
                val = json.loads(
                    (self.directory / str(step) / "meta" / "metadata").read_text()
                ).get(Key.VAL_PPL)
            except (OSError, ValueError, AttributeError):
                val = None  # no meta (a mid-save or damaged step): not a best candidate
            self._val[step] = (
                float(val) if isinstance(val, (int, float)) and math.isfinite(val) else None
            )
        return self._val[step]

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        scored = [(v, -c.step) for c in checkpoints if (v := self.val_ppl(c.step)) is not None]
        best = -min(scored)[1] if scored else None  # ties: the latest, as Checkpointer.best_steps
        return [c.step == best for c in checkpoints]


class Checkpointer:
    """An orbax ``CheckpointManager`` over ``WORKDIR/checkpoints``: keeps the ``max_to_keep``
    latest steps and the best step by the validation perplexity in its meta (``meta["val_ppl"]``),
    whichever process saved it. Saves are synchronous."""

    def __init__(self, workdir: str | os.PathLike, max_to_keep: int = 3, read_only: bool = False):
        self.workdir = pathlib.Path(
            workdir
        ).absolute()  # orbax rejects relative paths deep inside a save
        self.directory = self.workdir / rundir.CHECKPOINTS
        if read_only and not self.directory.is_dir():
            raise CheckpointError(
                f"{self.workdir} has no checkpoints/ directory: it is not a finished or "
                "resumable run"
            )
        self.read_only = read_only
        if read_only:  # a reader may race a trainer's rotation: orbax's abandoned reads are noise
            quiet_abandoned_reads()
        policy = cm.AnyPreservationPolicy([cm.LatestN(n=max_to_keep), _BestByMeta(self.directory)])
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        if read_only:  # orbax warns that a read-only manager will not save: that is the point
            absl_logger.setLevel(logging.ERROR)
        try:
            options = ocp.CheckpointManagerOptions(
                enable_async_checkpointing=False,
                preservation_policy=policy,
                read_only=read_only,
                create=not read_only,
                cleanup_tmp_directories=not read_only,
            )
            # orbax lists the steps, then reads each one's metadata: a step the trainer rotates
            # away in between is gone (FileNotFoundError), not damage. List again.
            for attempt in range(5):
                try:
                    self._mngr = ocp.CheckpointManager(self.directory, options=options)
                    break
                except FileNotFoundError:
                    if attempt == 4 or not read_only:
                        raise
                    time.sleep(0.05)
        finally:
            absl_logger.setLevel(level)
        self._set_aside_strays()

    def _set_aside_strays(self) -> None:
        """A file (not a directory) named like a step in checkpoints/ is no checkpoint: orbax
        skips it, and a save of that step would delete it. Move it to ``damaged/`` (kept, never
        deleted) when writable; say so either way."""
        if not self.directory.is_dir():
            return
        for p in sorted(self.directory.iterdir()):
            if not p.name.isdigit() or p.is_dir():
                continue
            if self.read_only:
                logging.warning("%s is a file where a checkpoint step belongs: left out", p)
                continue
            dest = self.workdir / rundir.DAMAGED
            dest.mkdir(exist_ok=True)
            shutil.move(str(p), str(dest / f"{p.name}.{os.getpid()}"))
            logging.warning("%s is a file where a checkpoint step belongs: moved to %s", p, dest)

    def steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def save(
        self, step: int, params: Any, state: Any, meta: dict[str, Any], average: Any = None
    ) -> None:
        """Write step ``step`` as the items ``params``, ``state`` and ``meta`` (see the module
        docstring), and ``average`` (``train.weight_average``'s params, shaped as ``params``) when
        given. A step that exists is left as it is, unless it was saved mid-epoch and this save
        ends that epoch (``meta["batch"]`` 0): then this one replaces it. ``meta`` gains
        ``layout``, a sha256 of every array and, with an average, ``"average": true``."""
        if step in self._mngr.all_steps():
            try:
                was = self.read_meta(step)
            except Exception:  # noqa: BLE001 - damaged: restore() finds and reports it
                return
            if not (was.get("batch", 0) != 0 and meta.get("batch") == 0):
                return
            # the step was saved mid-epoch (a time budget's timed save, or checkpoint.every_minutes)
            # and now ends its epoch: the epoch's save (its record) replaces it
            self._mngr.delete(step)
        arrays = {"params": params, "state": state}
        if average is not None:
            arrays["average"] = average
            meta = {**meta, "average": True}
        meta = {**meta, "layout": LAYOUT, "checksums": checksums(arrays)}
        args = ocp.args.Composite(
            **{name: ocp.args.StandardSave(tree) for name, tree in arrays.items()},
            meta=ocp.args.JsonSave(meta),
        )
        with (
            orbax_errors_quiet()
        ):  # its worker threads log each failure with a traceback; ours says it once
            try:
                self._mngr.save(step, args=args, force=True)
                self._mngr.wait_until_finished()
                return
            except Exception as e:
                error = e
                for t in (
                    threading.enumerate()
                ):  # the other item's writer may still be failing (and logging)
                    if (
                        type(t).__name__ == "_SignalingThread"
                        and t is not threading.current_thread()
                    ):
                        with contextlib.suppress(
                            Exception
                        ):  # its join() re-raises what it failed with
                            t.join(timeout=60)
        why = no_space(error)
        for tmp in self.directory.glob(
            f"{step}.orbax-checkpoint-tmp*"
        ):  # the partial save: never left behind
            shutil.rmtree(tmp, ignore_errors=True)
        previous = [s for s in self.steps() if s != step]
        kept = (
            f"the previous checkpoint (step {previous[-1]}) is intact"
            if previous
            else "no checkpoint was saved yet"
        )
        if why is None and _denied(error):
            raise CheckpointError(
                f"cannot write checkpoint step {step} in {self.directory} ({_denied(error)}); "
                f"{kept}. Make it writable and rerun the same command to resume"
            ) from None
        if why is None:
            raise error
        if "ulimit" in why:  # a limit on each file's size: free space is beside the point
            raise CheckpointError(
                f"{why} while saving checkpoint step {step} in {self.directory}; {kept}. Raise "
                "the limit (ulimit -f unlimited) and rerun the same command to resume"
            ) from None
        need = (
            size(self.directory / str(previous[-1]))
            if previous
            else sum(np.asarray(x).nbytes for _, x in leaves((params, state)))
        )
        free = shutil.disk_usage(self.directory).free
        raise CheckpointError(
            f"{why} while saving checkpoint step {step} in {self.directory}: it needs about "
            f"{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free; {kept}. Free some space "
            "and rerun the same command to resume"
        ) from None

    def read_meta(self, step: int) -> dict[str, Any]:
        return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]

    def stored_shapes(self, step: int) -> dict[str, tuple[int, ...]] | None:
        """The shape of every array of step ``step``'s ``params`` item as saved, by key path (as
        :func:`rnnjax.rundir.integrity.leaves` names them); None for layout 1 (no ``params`` item)
        or when its metadata cannot be read (damage: :meth:`restore` finds and reports it)."""
        path = self.directory / str(step) / "params"
        if not path.is_dir():
            return None
        try:
            with orbax_errors_quiet():
                tree = ocp.StandardCheckpointHandler().metadata(path)
            tree = getattr(tree, "tree", tree)
            return {name: tuple(x.shape) for name, x in leaves(tree)}
        except Exception:  # noqa: BLE001 - damaged metadata: restore() reports it
            return None

    def saved_records(self) -> list[dict[str, Any]]:
        """The epoch record each step saved at an epoch's end holds in its meta (what a damaged
        ``metrics.jsonl`` gets back); a step whose meta cannot be read is left out."""
        out = []
        for s in self.steps():
            try:
                record = self.read_meta(s).get("record")
            except Exception:  # noqa: BLE001 - damage: restore() finds and reports it
                continue
            if isinstance(record, dict) and isinstance(record.get(Key.EPOCH), int):
                out.append(record)
        return out

    def best_steps(self) -> list[int]:
        """Steps saved at an epoch end, best validation perplexity first (mid-epoch saves have
        none)."""
        scored = []
        for s in self.steps():
            try:
                val = self.read_meta(s).get(Key.VAL_PPL)
            except Exception:  # noqa: BLE001 - a damaged step is found (and reported) by restore()
                continue
            if isinstance(val, (int, float)) and val == val:
                scored.append((val, -s))
        return [-s for _, s in sorted(scored)]

    def restore(
        self,
        target: Callable[[dict[str, Any]], tuple[Any, Any]],
        step: int | str | None = None,
        with_average: bool = False,
    ) -> tuple[int, Any, Any, dict[str, Any]] | None:
        """Restore ``step`` (an int), or the latest (``None``/"latest") or best-by-validation
        ("best") step that restores cleanly, falling back in that order (None: no checkpoint).

        ``target(meta)`` gives the abstract ``(params, state)`` to restore into (``jax.eval_shape``
        of fresh ones); ``state`` None restores the params alone. Returns ``(step, params, state
        or None, meta)``; ``with_average``: ``params`` is then ``(params, average)``, the
        ``average`` item read into the params' target (:class:`CheckpointError` for a step that
        holds none). Only real damage (:func:`rnnjax.rundir.integrity.find_damage`, a checksum
        mismatch, or a storage error while reading the arrays) makes a step be skipped with a
        warning; when writable, a damaged step is moved to ``WORKDIR/damaged/`` (kept, never
        deleted) so training can save that step again. Any other error (a bug, a version
        mismatch, memory) is raised as it is, and nothing is moved.
        """
        for _attempt in range(3):  # a step the running trainer rotated away: look again
            found = self._restore(target, step, with_average)
            if found != "rotated":
                return found
            self._reloaded_steps()
        raise CheckpointError(
            f"the checkpoints in {self.directory} were deleted while being read, three times "
            "(the trainer saving there rotates them away); try again"
        )

    def _restore(self, target, step, with_average):
        """:meth:`restore` over the steps there are now; "rotated" when every step it tried was
        deleted while being read (the trainer's rotation, not damage)."""
        steps = self.steps()
        order = list(reversed(steps))  # latest first
        if step == "best":
            best = self.best_steps()
            order = best + [
                s for s in order if s not in best
            ]  # then the latest, if none has a val_ppl
            step = None
        elif step == "latest":
            step = None
        elif step is not None:
            if step not in steps:
                raise CheckpointError(
                    f"no checkpoint at step {step} in {self.directory}; have {steps}"
                )
            order = [step]
        damaged, problems, rotated = [], {}, []
        for s in order:
            try:
                problem = find_damage(self.directory / str(s))
                if problem is None:
                    meta = self.read_meta(s)
                    if with_average and not meta.get("average"):
                        raise CheckpointError(
                            f"checkpoint step {s} in {self.directory} holds no averaged weights "
                            "(its run was trained with train.weight_average = '')"
                        )
                    params, state = target(meta)
                    try:
                        with orbax_errors_quiet():
                            restored, problem = self._read(s, meta, params, state, with_average)
                    except Exception as e:
                        problem = storage_damage(e)
                        if problem is None:
                            raise  # not damage: the checkpoint stays where it is
            except Exception:
                if not self._rotated(s):
                    raise
                problem = "rotated"
            if problem is None:
                self._quarantine(damaged)  # newer steps that were damaged: moved aside, kept
                return (s, *restored, meta)
            if problem == "rotated" or self._rotated(s):
                quiet_abandoned_reads()  # orbax's reads of the deleted step report later: noise
                if step is not None:
                    raise CheckpointError(
                        f"checkpoint step {s} in {self.directory} was deleted while being read "
                        f"(the trainer saving there keeps the latest and the best); have "
                        f"{self.steps()}"
                    )
                rotated.append(s)
                continue
            if step is not None:  # an explicit step never falls back: no "trying an earlier step"
                raise CheckpointError(
                    f"checkpoint step {s} in {self.directory} is damaged: {problem}"
                )
            logging.warning(
                "checkpoint step %d in %s is damaged (%s); trying an earlier step",
                s,
                self.directory,
                problem,
            )
            damaged.append(s)
            problems[s] = problem
        if rotated and (set(self._reloaded_steps()) - set(steps)):
            return "rotated"  # newer steps were saved meanwhile: try them
        if damaged:
            self._quarantine(damaged)
            where = (
                f"moved to {self.workdir / rundir.DAMAGED}"
                if not self.read_only
                else "left in place"
            )
            latest = max(damaged)
            raise CheckpointError(
                f"every checkpoint in {self.directory} is damaged (steps {sorted(damaged)}, "
                f"{where}; step {latest}: {problems[latest]}); start over with a new --workdir"
            )
        return "rotated" if rotated else None

    def _rotated(self, step: int) -> bool:
        """Whether step ``step``'s directory is gone, or goes within half a second: deleted by
        the trainer's rotation (orbax's rmtree) while it was being read, which is not damage."""
        for _ in range(10):
            if not (self.directory / str(step)).exists():
                return True
            time.sleep(0.05)
        return False

    def _reloaded_steps(self) -> list[int]:
        for _ in range(5):  # as in __init__: a step deleted while orbax lists them
            try:
                self._mngr.reload()
                break
            except FileNotFoundError:
                time.sleep(0.05)
        return self.steps()

    def _read(
        self, step: int, meta: dict[str, Any], params: Any, state: Any, with_average: bool = False
    ) -> tuple[tuple[Any, Any], str | None]:
        """The arrays of one step as ``(params, state or None)`` (``params`` as ``(params,
        average)`` ``with_average``), and the checksum problem (None: verified)."""
        if meta.get("layout", 1) >= 2:
            items = {"params": ocp.args.StandardRestore(params)}
            if with_average:
                items["average"] = ocp.args.StandardRestore(params)
            if state is not None:
                items["state"] = ocp.args.StandardRestore(state)
            arrays = self._mngr.restore(step, args=ocp.args.Composite(**items))
            arrays = {name: arrays[name] for name in items}
            weights = (arrays["params"], arrays["average"]) if with_average else arrays["params"]
            return (weights, arrays.get("state")), verify_checksums(arrays, meta.get("checksums"))
        # Layout 1: the params are state["train"]["params"].
        if state is None:  # the params alone: a partial restore of the state item
            item = {"train": {"params": params}}
            args = ocp.args.PyTreeRestore(
                item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,
            )
        else:
            item = {**state, "train": {**state["train"], "params": params}}
            args = ocp.args.StandardRestore(item)
        tree = self._mngr.restore(step, args=ocp.args.Composite(state=args))["state"]
        problem = verify_checksums(tree, meta.get("checksums"))
        params = tree["train"].pop("params")
        return (params, tree if state is not None else None), problem

    def _quarantine(self, steps: list[int]) -> None:
        if self.read_only or not steps:
            return
        dest = self.workdir / rundir.DAMAGED
        dest.mkdir(exist_ok=True)
        for s in steps:
            src = self.directory / str(s)
            if src.exists():
                shutil.move(str(src), str(dest / f"{s}.{os.getpid()}"))
        self._mngr.reload()

    def close(self) -> None:
        self._mngr.close()
