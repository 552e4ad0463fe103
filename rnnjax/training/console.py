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
            text = (
                f"stopped by signal {signum}: saved a checkpoint at step {step}; rerun the same "
                "command to resume"
            )
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


def start_block(
    what: str,
    where: str,
    step: int | None,
    start_epoch: int,
    start_batch: int,
    num_epochs: int,
    stopped_patience: int | None = None,
    notes: tuple[str, ...] = (),
) -> str:
    """The lines a run prints when it starts: the model (``what``), where it runs (``where``), and
    what it will do (:func:`todo_line`); then each of ``notes`` on its own line."""
    todo = todo_line(step, start_epoch, start_batch, num_epochs, stopped_patience)
    return "\n".join([what, where, todo, *notes])


def todo_line(
    step: int | None,
    start_epoch: int,
    start_batch: int,
    num_epochs: int,
    stopped_patience: int | None = None,
) -> str:
    """What a run will do: train from scratch, resume from checkpoint ``step``, or nothing (already
    trained, or stopped early with ``train.early_stopping_patience = stopped_patience``)."""
    if step is None:
        return f"training epochs 1-{num_epochs}"
    if start_epoch > num_epochs:
        return (
            f"already trained {start_epoch - 1} epochs: nothing to resume (raise "
            "--config.train.num_epochs to extend)"
        )
    if stopped_patience:
        return (
            f"stopped early at epoch {start_epoch - 1} (train.early_stopping_patience = "
            f"{stopped_patience}): "
            "nothing to resume (raise --config.train.early_stopping_patience to go on)"
        )
    return f"resuming from epoch {start_epoch}, step {step} (minibatch {start_batch})"
