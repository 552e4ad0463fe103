"""The workdir lock: one trainer per workdir, held for the trainer's lifetime."""

from __future__ import annotations

import fcntl
import os
import pathlib

from rnnjax.rundir import workdir as rundir
from rnnjax.rundir.workdir import WorkdirError, refuse_directory


class WorkdirInUse(WorkdirError):
    """Another process holds the workdir's lock (a sweep skips such a trial: it is not failed)."""


class WorkdirLock:
    """One trainer per workdir: an exclusive, non-blocking ``flock`` held on the workdir directory
    itself for the trainer's lifetime, and (for trainers of earlier versions, which lock only that
    file) on ``WORKDIR/.lock``.

    The lock belongs to the open directory, not to a path: deleting or replacing ``.lock`` does not
    release it, and the kernel releases it when the process ends, even on SIGKILL. Each
    ``WorkdirLock`` is its own open file, so two in one process exclude each other too (a sweep
    locking its trials). What it does not cover: a workdir deleted and created again (a new
    directory), and filesystems without ``flock`` (see docs/reliability.md).
    """

    def __init__(self, workdir: pathlib.Path):
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / rundir.LOCK
        self._fds: list[int] = []

    def _lock(self, path: pathlib.Path, flags: int) -> None:
        fd = os.open(path, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self.release()
            raise WorkdirInUse(
                f"{self.workdir} is in use by another trainer (it holds the workdir's lock); "
                "wait for it or use another --workdir"
            ) from None
        except OSError as e:  # e.g. ENOLCK, EOPNOTSUPP: a filesystem that cannot lock
            os.close(fd)
            self.release()
            raise WorkdirError(
                f"cannot lock {path} ({e.strerror}): this filesystem does not support flock, so a "
                "second trainer could not be kept out; use a --workdir on a local disk"
            ) from None
        self._fds.append(fd)

    def acquire(self) -> None:
        """Take the lock, or raise :class:`WorkdirError` (one line) if another process holds it."""
        if self._fds:
            return
        self._lock(self.workdir, os.O_RDONLY | os.O_DIRECTORY)
        if self.path.is_symlink():  # never created or opened through a link: the dir lock holds
            self.path.unlink()
        try:
            refuse_directory(self.path, "the workdir's lock file belongs")
        except WorkdirError:
            self.release()
            raise
        self._lock(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW)

    def release(self) -> None:
        """Let go of the lock (a no-op if not held); ``.lock`` stays, as an earlier version
        expects."""
        while self._fds:
            fd = self._fds.pop()
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
