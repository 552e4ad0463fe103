"""The run's console and its stop signals: output that survives a reader going away, and
SIGTERM/SIGINT turned into a flag the training loop checks after every step.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class Preempted(Exception):
    """Raised after SIGTERM/SIGINT once a checkpoint of the current step is saved (``step``),
    or before training started (``step`` None: nothing new was saved)."""

    def __init__(self, signum: int, step: int | None):
        if step is None:
            text = f"stopped by signal {signum} before training started: nothing was saved yet"
        else:
            text = f"stopped by signal {signum}: saved a checkpoint at step {step}; rerun the same command to resume"
        super().__init__(text)
        self.signum, self.step = signum, step


class PipeSafe:
    """A console stream whose reader may go away (``train.py ... | head``): writes to a closed pipe
    are dropped instead of raising, so the run trains on and saves as usual."""

    def __init__(self, stream):
        self.stream, self.closed = stream, False

    def write(self, text: str) -> None:
        if not self.closed:
            try:
                self.stream.write(text)
                self.stream.flush()
            except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
                self.closed = True

    def flush(self) -> None:
        self.write("")


class StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked after every step (main thread only)."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
