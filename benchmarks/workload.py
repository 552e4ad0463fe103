"""A benchmark workload (the reference training step with some fields changed), its FLOPs, and
the :class:`Settings` of one benchmark run.

No JAX at import: ``scripts/benchmark.py`` checks its flags against the reference with it.
"""

from __future__ import annotations

import dataclasses

# The reference experiment's vocabulary: the bundled Time Machine's characters under the default
# data config (26 letters, space, <unk>). A fixed workload parameter, so no benchmark reads the
# corpus; tests/test_benchmark.py checks it against len(data.load_corpus(...).vocab).
V = 28


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark row: the reference training step with some fields changed."""

    cell: str = "lstm"
    num_layers: int = 2
    hidden: int = 256
    batch: int = 32
    seq: int = 35

    @property
    def label(self) -> str:
        w = self
        return f"{w.cell.upper()} L={w.num_layers} h={w.hidden} b={w.batch} t={w.seq}"

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq

    def train_flops_per_token(self) -> float:
        """Analytic model FLOPs per token of one training step: 3 x the forward matmuls
        (forward + backward w.r.t. activations + backward w.r.t. weights). Layer 1's input
        is counted as the one-hot matmul X W_x (V x G*h) of the model's definition."""
        from rnnjax.cells import CELLS  # imports JAX: not before the script has checked its flags

        g, h = CELLS[self.cell].num_gates, self.hidden
        rec = 0 if CELLS[self.cell].sequence is not None else h  # minGRU/minLSTM: no h W_h
        layers = sum(2 * g * h * ((V if i == 0 else h) + rec) for i in range(self.num_layers))
        return 3.0 * (layers + 2 * h * V)


REFERENCE = Workload()  # the 2-layer LSTM of the reference experiment: the targets are judged on it


# runs.E2E_RUNS' names (scripts/benchmark.py --e2e_runs; checked before JAX starts)
E2E_RUN_NAMES = (
    "default",
    "rnnjax",
    "cudnn",
    "native",
    "cpu_devices",
    "native_cpu_devices",
    "cpu_pipeline",
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one run measures: rounds, steps per round, its base workload and rows."""

    repeats: int = 7
    steps: int = 10
    e2e_epochs: int = 500
    base: Workload = REFERENCE  # the reference shape (h, b, t); smaller for smoke runs
    rows: tuple[tuple[str, int], ...] = ()  # (cell, layers) of the rows section
    fake_devices: int = 4  # CPU devices of the devices section's child process (0: real ones)
    peak_gflops: float = 1.0  # the measured matmul peak: MFU's denominator
    e2e_runs: tuple[str, ...] = E2E_RUN_NAMES  # runs.E2E_RUNS' names that the run measures
