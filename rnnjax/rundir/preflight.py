"""The run-directory checks before any training: every trial's workdir is locked (one trainer per
workdir), holds this run or nothing (:func:`rnnjax.rundir.workdir.check_resumable`), and with
``resume="restart"`` its old files are set aside in ``discarded/`` (never deleted). With
``resume="auto"``, a workdir holding this run's records but no checkpoint (a kill before the first
save) is set aside too, and the run starts over by itself."""

from __future__ import annotations

import contextlib
import datetime
import logging
import pathlib
from collections.abc import Iterator, Sequence

from rnnjax.config import Config
from rnnjax.dataset.vocab import Vocab
from rnnjax.rundir import workdir as rundir
from rnnjax.rundir.lock import WorkdirLock


@contextlib.contextmanager
def claimed(
    workdirs: Sequence[pathlib.Path],
    cfgs: Sequence[Config],
    vocab: Vocab,
    modes: Sequence[str],
    primary: bool = True,
) -> Iterator[list[list[str]]]:
    """Hold every workdir's lock while the block runs; a busy or foreign workdir refuses all of them
    in one line, before any is changed. ``modes``: each workdir's ``resume``
    (:data:`rnnjax.rundir.workdir.RESUME_MODES`). Yields each workdir's notes for the start block
    (what was set aside)."""
    locks: list[WorkdirLock] = []
    try:
        for d in workdirs:
            d.mkdir(parents=True, exist_ok=True)
            if primary:  # only process 0 writes files
                lock = WorkdirLock(d)
                lock.acquire()
                locks.append(lock)
        modes = [_own_history(d, mode) for d, mode in zip(workdirs, modes)]
        for d, c, mode in zip(workdirs, cfgs, modes):
            rundir.check_resumable(d, c, vocab, "restart" if mode == "auto-restart" else mode)
        notes: list[list[str]] = [[] for _ in workdirs]
        for d, mode, note in zip(workdirs, modes, notes):
            if mode in ("restart", "auto-restart") and primary and (moved := rundir.set_aside(d)):
                if mode == "restart":
                    logging.warning("--resume=restart: moved the old run to %s", moved)
                else:
                    note.append(
                        "no checkpoint covers the records there: set aside in "
                        f"{rundir.shown(moved)}, training from scratch"
                    )
        yield notes
    finally:
        for lock in locks:
            lock.release()


def set_aside_records(workdir: pathlib.Path, records: list[dict]) -> pathlib.Path:
    """Keep ``records`` in ``WORKDIR/discarded/<UTC time>/metrics.jsonl`` (never deleted); returns
    that folder."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    dest = workdir / rundir.DISCARDED / stamp
    dest.mkdir(parents=True)
    rundir.write_metrics(dest / rundir.METRICS, records)
    return dest


def _own_history(workdir: pathlib.Path, mode: str) -> str:
    """ "auto-restart" for a workdir that ``resume="auto"`` finds holding its own run's records
    (beside a config.json, compared by :func:`rnnjax.rundir.workdir.check_resumable`) but no
    checkpoint, nor damaged ones: a run killed before its first save. Else ``mode``."""
    killed_early = (
        (workdir / rundir.CONFIG).exists()
        and not rundir.has_checkpoint(workdir)
        and not (workdir / rundir.DAMAGED).is_dir()
        and rundir.history(workdir)
    )
    return "auto-restart" if mode == "auto" and killed_early else mode
