"""Checkpoints with orbax: save (with array checksums), find the latest good step, restore.

A checkpoint step directory ``WORKDIR/checkpoints/<step>/`` holds two items:
``state`` (arrays: params, optimizer state, step, RNG key data, carried hidden state,
metric sums, non-finite counter) and ``meta`` (JSON: epoch and batch position, the
resolved config, the vocabulary, validation perplexity). Restoring never executes a
config file. Orbax owns ``checkpoints/``; nothing else is written there.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (damaged, or of another configuration); the message says which and why."""


# Storage errors (tensorstore status codes and messages) that mean the files are damaged, not the code.
_STORAGE_DAMAGE = re.compile(
    r"NOT_FOUND|DATA_LOSS|OUT_OF_RANGE|Error reading|Error opening|Error decoding|while reading array|"
    r"Unexpected end|[Cc]orrupt|[Tt]runcated|[Cc]hecksum|Failed to decode|Failed to parse|Invalid .*(header|manifest)"
)


def find_damage(step_dir: pathlib.Path) -> str | None:
    """What is missing or unreadable in a step directory, checked before orbax reads it (None: looks whole)."""
    if not step_dir.is_dir() or not any(step_dir.iterdir()):
        return "empty step directory"
    meta = step_dir / "meta" / "metadata"
    if not meta.is_file():
        return "missing metadata (meta/metadata)"
    try:
        json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable metadata ({type(e).__name__})"
    state = step_dir / "state"
    for name in ("_METADATA", "manifest.ocdbt"):
        if not (state / name).is_file():
            return f"missing array data (state/{name})"
    try:
        json.loads((state / "_METADATA").read_text())
    except (OSError, ValueError) as e:
        return f"unreadable array metadata ({type(e).__name__})"
    return None


def storage_damage(error: BaseException) -> str | None:
    """A one-line reason if ``error`` (raised while reading arrays) means damaged files; None otherwise."""
    while error is not None:
        text = str(error)
        if isinstance(error, (FileNotFoundError, EOFError, json.JSONDecodeError)) or _STORAGE_DAMAGE.search(text):
            first = (text.strip().splitlines() or [type(error).__name__])[0]
            return first.split(" See full TensorStore details")[0][:200]
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def _orbax_errors_quiet():
    """Orbax logs an error (with a traceback) from each worker thread before raising; the caller
    reports the one exception that comes out, so those logs are held back while it runs."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def disk_full(error: BaseException | None) -> bool:
    """True if ``error`` (or what caused it) is "no space left on device", as OSError or as a tensorstore message."""
    while error is not None:
        if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _size(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _leaves(tree: Any) -> list[tuple[str, Any]]:
    import jax

    return [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def checksums(tree: Any) -> dict[str, str]:
    """sha256 of every fully addressable array in ``tree`` (bytes, dtype and shape), by key path."""
    out = {}
    for name, leaf in _leaves(tree):
        if getattr(leaf, "is_fully_addressable", True):
            a = np.ascontiguousarray(np.asarray(leaf))
            out[name] = hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()
    return out


def verify_checksums(tree: Any, expected: dict[str, str] | None) -> str | None:
    """None if every recorded checksum matches (or none were recorded), else a one-line reason."""
    if not expected:
        return None  # a checkpoint written before checksums were recorded
    actual = checksums(tree)
    bad = sorted(k for k, v in expected.items() if k in actual and actual[k] != v)
    return f"checksum mismatch in {len(bad)} array(s), first {bad[0]}" if bad else None


class Checkpointer:
    """An orbax ``CheckpointManager`` over ``WORKDIR/checkpoints``: keeps the ``max_to_keep``
    latest steps and the best step by validation perplexity. Saves are synchronous."""

    def __init__(self, workdir: str | os.PathLike, max_to_keep: int = 3, read_only: bool = False):
        self.workdir = pathlib.Path(workdir).absolute()  # orbax rejects relative paths deep inside a save
        self.directory = self.workdir / "checkpoints"
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"{self.workdir} has no checkpoints/ directory: it is not a finished or resumable run")
        self.read_only = read_only
        policy = cm.AnyPreservationPolicy(
            [
                cm.LatestN(n=max_to_keep),
                cm.BestN(get_metric_fn=lambda m: -m["val_ppl"], n=1, keep_checkpoints_without_metrics=False),
            ]
        )
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
            self._mngr = ocp.CheckpointManager(self.directory, options=options)
        finally:
            absl_logger.setLevel(level)

    def steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any], val_ppl: float | None = None) -> None:
        """Write step ``step`` (overwrites nothing: a step that exists is left as it is).

        The meta JSON also records a sha256 of every array, verified on restore."""
        if step in self._mngr.all_steps():
            return
        metrics = {"val_ppl": val_ppl} if val_ppl is not None else None
        meta = {**meta, "checksums": checksums(state)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        try:
            with _orbax_errors_quiet():  # its worker threads log each failure with a traceback; ours says it once
                self._mngr.save(step, args=args, metrics=metrics, force=True)
                self._mngr.wait_until_finished()
        except Exception as e:
            if not disk_full(e):
                raise
            for tmp in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):  # the partial save: never left behind
                shutil.rmtree(tmp, ignore_errors=True)
            previous = [s for s in self.steps() if s != step]
            need = _size(self.directory / str(previous[-1])) if previous else sum(
                np.asarray(x).nbytes for _, x in _leaves(state))
            free = shutil.disk_usage(self.directory).free
            kept = f"the previous checkpoint (step {previous[-1]}) is intact" if previous else "no checkpoint was saved yet"
            raise CheckpointError(
                f"disk full while saving checkpoint step {step} in {self.directory}: it needs about {need / 2**20:.1f} MiB, "
                f"{free / 2**20:.1f} MiB are free; {kept}. Free some space and rerun the same command to resume"
            ) from None

    def read_meta(self, step: int) -> dict[str, Any]:
        return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def best_steps(self) -> list[int]:
        """Steps saved at an epoch end, best validation perplexity first (mid-epoch saves have none)."""
        scored = []
        for s in self.steps():
            try:
                val = self.read_meta(s).get("val_ppl")
            except Exception:  # noqa: BLE001 - a damaged step is found (and reported) by restore()
                continue
            if isinstance(val, (int, float)) and val == val:
                scored.append((val, -s))
        return [-s for _, s in sorted(scored)]

    def restore(
        self, abstract_state: Callable[[dict[str, Any]], Any], step: int | str | None = None
    ) -> tuple[int, Any, dict[str, Any]] | None:
        """Restore ``step`` (an int), or the latest (``None``/"latest") or best-by-validation
        ("best") step that restores cleanly, falling back in that order (None: no checkpoint).

        ``abstract_state(meta)`` gives the target tree (``jax.eval_shape`` of a fresh state).
        Only real damage (see :func:`find_damage`, a checksum mismatch, or a storage error
        while reading the arrays) makes a step be skipped with a warning; when writable, a
        damaged step is moved to ``WORKDIR/damaged/`` (kept, never deleted) so training can
        save that step again. Any other error (a bug, a version mismatch, memory) is raised as
        it is, and nothing is moved.
        """
        steps = self.steps()
        order = list(reversed(steps))  # latest first
        if step == "best":
            best = self.best_steps()
            order = best + [s for s in order if s not in best]  # then the latest, if none has a val_ppl
            step = None
        elif step == "latest":
            step = None
        elif step is not None:
            if step not in steps:
                raise CheckpointError(f"no checkpoint at step {step} in {self.directory}; have {steps}")
            order = [step]
        damaged = []
        for s in order:
            problem = find_damage(self.directory / str(s))
            if problem is None:
                meta = self.read_meta(s)
                args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state(meta)), meta=ocp.args.JsonRestore())
                try:
                    with _orbax_errors_quiet():
                        restored = self._mngr.restore(s, args=args)
                except Exception as e:
                    problem = storage_damage(e)
                    if problem is None:
                        raise  # not damage: the checkpoint stays where it is
                else:
                    problem = verify_checksums(restored["state"], restored["meta"].get("checksums"))
                    if problem is None:
                        self._quarantine(damaged)  # newer steps that were damaged: moved aside, kept
                        return s, restored["state"], restored["meta"]
            logging.warning("checkpoint step %d in %s is damaged (%s); trying an earlier step", s, self.directory, problem)
            damaged.append(s)
            if step is not None:
                raise CheckpointError(f"checkpoint step {s} in {self.directory} is damaged: {problem}")
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
