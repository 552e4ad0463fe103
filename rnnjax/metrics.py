"""Named metrics: what a training or evaluation step sums on the device, and the epoch record
built from those sums on the host (one builder for single runs and vectorized trials).

A new training metric is one entry of :data:`rnnjax.steps.TRAIN_METRICS` (where it is computed):
its sums travel as a mapping name -> array (:data:`TrainSums`), and the epoch record, ``metrics.jsonl``,
TensorBoard, checkpoints and the sweep's CSV take every name. :class:`LayerStats` are the
per-layer sums of the validation pass (hidden-state RMS, gate saturation, forget gate).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# The training sums of an epoch: a mapping name -> on-device sum over the applied steps (float32,
# scalars or vectors; [k, ...] when vmapped), one entry per metric the train step computes
# (rnnjax.steps.TRAIN_METRICS), plus the two counters below.
TrainSums = dict[str, Array]
COUNTERS = ("steps", "skipped")  # applied steps; non-finite steps (not applied)


def train_zeros(shapes: dict[str, tuple[int, ...]], lead: tuple[int, ...] = ()) -> TrainSums:
    """Zero sums for metrics of these shapes (name -> per-step shape), and the counters."""
    shapes = {**shapes, **dict.fromkeys(COUNTERS, ())}
    return {name: jnp.zeros((*lead, *shape), jnp.float32) for name, shape in shapes.items()}


def add_step(sums: TrainSums, values: dict[str, Array], ok: Array) -> TrainSums:
    """One step: its metric ``values`` count only if ``ok`` (finite and applied)."""
    okf = ok.astype(jnp.float32)
    out = {
        name: sums[name] + jnp.where(ok, values[name], 0.0) for name in sums if name not in COUNTERS
    }
    return out | {"steps": sums["steps"] + okf, "skipped": sums["skipped"] + 1.0 - okf}


def to_host(sums: TrainSums) -> dict[str, np.ndarray]:
    """The sums as float64 NumPy arrays (one device-to-host transfer each): what :func:`epoch_record` reads."""
    return {name: np.asarray(x, np.float64) for name, x in sums.items()}


# How a training metric's mean over the epoch's applied steps appears in the epoch record; any other
# metric is recorded under its own name (a number, or a list for a vector).
RECORD_FORMS: dict[str, Any] = {
    "loss": lambda mean: {"train_ppl": perplexity_of(float(mean))},
    "grad_norm_layers": lambda mean: {
        "grad_norm_layers": [float(x) for x in mean[:-1]],
        "grad_norm_output": float(mean[-1]),
    },
}


def train_record(sums: dict[str, np.ndarray]) -> dict[str, Any]:
    """Each training metric's mean over the applied steps (NaN when none was applied), as :data:`RECORD_FORMS`
    says, and ``skipped_steps``."""
    steps = float(sums["steps"])
    out: dict[str, Any] = {}
    for name, total in sums.items():
        if name in COUNTERS:
            continue
        mean = (
            np.asarray(total, np.float64) / steps if steps else np.full(np.shape(total), math.nan)
        )
        form = RECORD_FORMS.get(name)
        out |= (
            form(mean)
            if form
            else {name: float(mean) if mean.ndim == 0 else [float(x) for x in mean]}
        )
    return out | {"skipped_steps": int(sums["skipped"])}


class LayerStats(NamedTuple):
    """Per-layer sums over every position (batch x time) of an evaluation pass, each [..., L]
    (:func:`rnnjax.trace.layer_stats` computes one window's on the device)."""

    h2: Array  # sum over positions and units of h^2
    saturated: Array  # saturated gate activations: sigmoid < 0.01 or > 0.99, tanh beyond +-0.99
    gates: Array  # gate activations looked at (the denominator of the saturated fraction)
    forget: Array  # sum of the forget (retain) coefficient over positions and units; 0 for the vanilla RNN
    positions: Array  # batch x time positions, times hidden units

    @classmethod
    def zeros(cls, lead: tuple[int, ...] = (), num_layers: int = 1) -> LayerStats:
        return cls(*(jnp.zeros((*lead, num_layers), jnp.float32) for _ in cls._fields))

    def __add__(self, other: LayerStats) -> LayerStats:  # type: ignore[override]
        return LayerStats(*(a + b for a, b in zip(self, other)))

    def summary(self, has_forget: bool) -> dict[str, list[float]]:
        """Per-layer values for the epoch record: RMS of h, saturated gate fraction, and (``has_forget``)
        the mean forget gate f and its memory length 1 / (1 - f) in steps."""
        h2, sat, gates, forget, n = (np.asarray(x, np.float64) for x in self)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = {"h_rms": np.sqrt(h2 / n), "gate_saturation": sat / gates}
            if has_forget:
                f = forget / n
                out |= {"forget_gate": f, "memory_length": 1.0 / (1.0 - f)}
        return {k: [float(x) for x in v] for k, v in out.items()}


class EvalMetrics(NamedTuple):
    """Sums over evaluation windows: next-token negative log-likelihood and token count."""

    nll: Array
    tokens: Array

    @classmethod
    def zeros(cls, lead: tuple[int, ...] = ()) -> EvalMetrics:
        return cls(jnp.zeros(lead, jnp.float32), jnp.zeros(lead, jnp.float32))

    def add(self, nll: Array) -> EvalMetrics:
        """``nll`` [..., b, t] per-token values of one window (the leading axes are vmapped trials)."""
        return EvalMetrics(
            self.nll + nll.sum(axis=(-2, -1)),
            self.tokens + jnp.float32(nll.shape[-2] * nll.shape[-1]),
        )

    def __add__(self, other: EvalMetrics) -> EvalMetrics:  # type: ignore[override]
        """The sums of two passes (e.g. the held-out parts of several files)."""
        return EvalMetrics(self.nll + other.nll, self.tokens + other.tokens)

    def perplexity(self) -> float:
        nll, n = np.asarray(self.nll, np.float64), np.asarray(self.tokens, np.float64)
        return perplexity_of(float(nll / n))


def perplexity_of(mean_nll: float) -> float:
    """exp(mean next-token negative log-likelihood); ``inf`` where that overflows (a diverged run)."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


def bpc(ppl: float) -> float:
    """Bits per character (per token) of a perplexity: log2(ppl)."""
    return math.log2(ppl) if isinstance(ppl, (int, float)) and ppl > 0 else float("nan")


def epoch_record(
    epoch: int,
    step: int,
    train: dict[str, np.ndarray],
    val_ppl: float,
    tokens_per_sec: float,
    lr: float,
    wall_time: float,
    layers: dict[str, list[float]] | None = None,
    char_level: bool = True,
    val_by_source: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One line of ``metrics.jsonl`` from an epoch's host-side training sums (``train``: :func:`to_host`,
    every metric recorded by :func:`train_record`); ``layers``: :meth:`LayerStats.summary` of the validation
    pass, None when not computed. ``char_level`` adds bits per character (``train_bpc``, ``val_bpc``);
    ``val_by_source``: each file's validation perplexity."""
    metrics = train_record(train)
    train_ppl = metrics.pop("train_ppl", math.nan)
    record = {
        "epoch": epoch,
        "step": step,
        "train_ppl": train_ppl,
        "val_ppl": val_ppl,
        **({"train_bpc": bpc(train_ppl), "val_bpc": bpc(val_ppl)} if char_level else {}),
        "tokens_per_sec": tokens_per_sec,
        "grad_norm": metrics.pop("grad_norm", math.nan),
        "lr": lr,
        "skipped_steps": metrics.pop("skipped_steps"),
        "wall_time": wall_time,
    }
    if val_by_source:
        record["val_ppl_by_source"] = dict(val_by_source)
        if char_level:
            record["val_bpc_by_source"] = {k: bpc(v) for k, v in val_by_source.items()}
    return record | metrics | (layers or {})


def best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch record with the lowest finite validation perplexity (None: there is none)."""
    finite = [
        r
        for r in records
        if isinstance(r.get("val_ppl"), (int, float)) and math.isfinite(r["val_ppl"])
    ]
    return min(finite, key=lambda r: r["val_ppl"]) if finite else None
