"""``train.profile_steps = N``: a ``jax.profiler`` trace of N training steps, taken after the
first (compiled) step, into ``WORKDIR/profile/`` (``plugins/profile/<time>/*.xplane.pb``), which
TensorBoard's profile plugin shows (``pip install tensorboard-plugin-profile``)."""

from __future__ import annotations

import logging
import pathlib

import jax


class Profiler:
    """Call :meth:`after_step` after every training step (with its output) and :meth:`stop` at the
    end."""

    def __init__(self, directory: pathlib.Path, num_steps: int):
        self.directory, self.num_steps = directory, num_steps
        self.seen = 0  # steps this process has run
        self.active = False

    def after_step(self, out) -> None:
        if not self.num_steps:
            return
        self.seen += 1
        if self.seen == 1:  # compiled, and run once: start tracing the next ones
            jax.block_until_ready(out)
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory))
            self.active = True
        elif self.active and self.seen == 1 + self.num_steps:
            jax.block_until_ready(out)
            self.stop()

    def stop(self) -> None:
        """End the trace (early if the run ended first), and never trace again in this run."""
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            self.num_steps = 0
            logging.info("profile of %d steps written to %s", self.seen - 1, self.directory)
