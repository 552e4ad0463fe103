"""Named metrics: what a training or evaluation step sums on the device, and the epoch record
built from those sums on the host (one builder for single runs and vectorized trials).

A metric is one entry where it is computed (:data:`rnnjax.training.steps.TRAIN_METRICS`,
:data:`rnnjax.training.evaluation.EVAL_METRICS`); its sums travel as a mapping name -> array, and
the record, ``metrics.jsonl``, TensorBoard and the sweep's table take every name.
:class:`LayerStats` are the per-layer sums of the validation pass (hidden-state RMS, gate
saturation, forget gate).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.rundir.workdir import Key

Array = jax.Array


# The training sums of an epoch: a mapping name -> on-device sum over the applied steps (float32,
# scalars or vectors; [k, ...] when vmapped), one entry per metric the train step computes
# (rnnjax.training.steps.TRAIN_METRICS), plus the two counters below.
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
    """The sums as float64 NumPy arrays (one device-to-host transfer each): what
    :func:`epoch_record` reads."""
    return {name: np.asarray(x, np.float64) for name, x in sums.items()}


# How a training metric's mean over the epoch's applied steps appears in the epoch record; any other
# metric is recorded under its own name (a number, or a list for a vector).
RECORD_FORMS: dict[str, Any] = {
    "loss": lambda mean: {Key.TRAIN_PPL: perplexity_of(float(mean))},
    Key.GRAD_NORM_LAYERS: lambda mean: {
        Key.GRAD_NORM_LAYERS: [float(x) for x in mean[:-1]],
        Key.GRAD_NORM_OUTPUT: float(mean[-1]),
    },
}


def train_record(sums: dict[str, np.ndarray]) -> dict[str, Any]:
    """Each training metric's mean over the applied steps (NaN when none was applied), as
    :data:`RECORD_FORMS` says, and ``skipped_steps``."""
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
    return out | {Key.SKIPPED_STEPS: int(sums["skipped"])}


class LayerStats(NamedTuple):
    """Per-layer sums over every position (batch x time) of an evaluation pass, each [..., L]
    (:func:`rnnjax.training.trace.layer_stats` computes one window's on the device)."""

    h2: Array  # sum over positions and units of h^2
    saturated: Array  # saturated gate activations: sigmoid < 0.01 or > 0.99, tanh beyond +-0.99
    gates: Array  # gate activations looked at (the denominator of the saturated fraction)
    # sum of the forget (retain) coefficient over positions and units; 0 for the vanilla RNN
    forget: Array
    positions: Array  # batch x time positions, times hidden units

    @classmethod
    def zeros(cls, lead: tuple[int, ...] = (), num_layers: int = 1) -> LayerStats:
        return cls(*(jnp.zeros((*lead, num_layers), jnp.float32) for _ in cls._fields))

    def __add__(self, other: LayerStats) -> LayerStats:  # type: ignore[override]
        return LayerStats(*(a + b for a, b in zip(self, other)))

    def summary(self, has_forget: bool) -> dict[str, list[float]]:
        """Per-layer values for the epoch record: RMS of h, saturated gate fraction, and
        (``has_forget``) the mean forget gate f and its memory length 1 / (1 - f) in steps."""
        h2, sat, gates, forget, n = (np.asarray(x, np.float64) for x in self)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = {Key.H_RMS: np.sqrt(h2 / n), Key.GATE_SATURATION: sat / gates}
            if has_forget:
                f = forget / n
                out |= {Key.FORGET_GATE: f, Key.MEMORY_LENGTH: 1.0 / (1.0 - f)}
        return {k: [float(x) for x in v] for k, v in out.items()}


# The evaluation sums of a pass: a mapping name -> on-device sum over its tokens (float32; [k] when
# vmapped), one entry per metric the evaluation step computes
# (rnnjax.training.evaluation.EVAL_METRICS), and the token count "tokens". The record holds each
# metric's mean per token.
EvalSums = dict[str, Array]


def eval_zeros(names: Iterable[str], lead: tuple[int, ...] = ()) -> EvalSums:
    """Zero sums of these metrics, and the token count."""
    return {name: jnp.zeros(lead, jnp.float32) for name in (*names, "tokens")}


def add_window(sums: EvalSums, values: dict[str, Array]) -> EvalSums:
    """One window: ``values`` maps each metric to its per-token values [..., b, t] (the leading
    axes are vmapped trials)."""
    b, t = next(iter(values.values())).shape[-2:]
    out = {
        name: sums[name] + x.astype(jnp.float32).sum(axis=(-2, -1)) for name, x in values.items()
    }
    return out | {"tokens": sums["tokens"] + jnp.float32(b * t)}


def add_sums(a: EvalSums, b: EvalSums) -> EvalSums:
    """The sums of two passes (e.g. the held-out parts of several files)."""
    return {name: a[name] + b[name] for name in a}


def eval_means(sums: EvalSums) -> dict[str, float]:
    """Each metric's mean per token, read back from the device (float64)."""
    n = np.asarray(sums["tokens"], np.float64)
    return {
        name: float(np.asarray(total, np.float64) / n)
        for name, total in sums.items()
        if name != "tokens"
    }


def eval_entries(means: dict[str, float], split: str) -> dict[str, float]:
    """A pass's record entries: ``<split>_ppl`` from the mean next-token negative log-likelihood
    (``nll``), ``<split>_<name>`` for every other metric's mean."""
    ppl = {f"{split}_ppl": perplexity_of(means["nll"])} if "nll" in means else {}
    return ppl | {f"{split}_{name}": m for name, m in means.items() if name != "nll"}


def by_source(parts: dict[str, dict[str, float]], split: str) -> dict[str, dict[str, float]]:
    """Each file's record entries (:func:`eval_entries`), regrouped by entry:
    ``{"<split>_ppl_by_source": {file: ppl}, ...}``."""
    entries = {source: eval_entries(means, split) for source, means in parts.items()}
    keys = next(iter(entries.values()), {})
    return {f"{k}_by_source": {source: e[k] for source, e in entries.items()} for k in keys}


def sums_perplexity(sums: EvalSums) -> float:
    """exp(mean next-token negative log-likelihood) of a pass's sums."""
    n = np.asarray(sums["tokens"], np.float64)
    return perplexity_of(float(np.asarray(sums["nll"], np.float64) / n))


def perplexity_of(mean_nll: float) -> float:
    """exp(mean next-token negative log-likelihood); ``inf`` where that overflows (a diverged
    run)."""
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
    val: dict[str, float],
    tokens_per_sec: float,
    lr: float,
    wall_time: float,
    layers: dict[str, list[float]] | None = None,
    char_level: bool = True,
    val_by_source: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """One line of ``metrics.jsonl``.

    ``train``: an epoch's host-side training sums (:func:`to_host`; every metric recorded by
    :func:`train_record`). ``val``: the validation pass's means by name (:func:`eval_means`; every
    metric recorded by :func:`eval_entries`), ``val_by_source``: each file's. ``layers``:
    :meth:`LayerStats.summary` of the validation pass, None when not computed. ``char_level``
    adds bits per character (``train_bpc``, ``val_bpc``).
    """
    metrics = train_record(train)
    train_ppl = metrics.pop(Key.TRAIN_PPL, math.nan)
    evals = eval_entries(val, "val")
    val_ppl = evals.pop(Key.VAL_PPL)
    record = {
        Key.EPOCH: epoch,
        Key.STEP: step,
        Key.TRAIN_PPL: train_ppl,
        Key.VAL_PPL: val_ppl,
        **({Key.TRAIN_BPC: bpc(train_ppl), Key.VAL_BPC: bpc(val_ppl)} if char_level else {}),
        Key.TOKENS_PER_SEC: tokens_per_sec,
        Key.GRAD_NORM: metrics.pop(Key.GRAD_NORM, math.nan),
        Key.LR: lr,
        Key.SKIPPED_STEPS: metrics.pop(Key.SKIPPED_STEPS),
        Key.WALL_TIME: wall_time,
    }
    sources = by_source(val_by_source or {}, "val")
    if sources:
        ppl = record["val_ppl_by_source"] = sources.pop("val_ppl_by_source")
        if char_level:
            record["val_bpc_by_source"] = {k: bpc(v) for k, v in ppl.items()}
    return record | metrics | evals | sources | (layers or {})


def best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch record with the lowest finite validation perplexity (None: there is none)."""
    finite = [
        r
        for r in records
        if isinstance(r.get(Key.VAL_PPL), (int, float)) and math.isfinite(r[Key.VAL_PPL])
    ]
    return min(finite, key=lambda r: r[Key.VAL_PPL]) if finite else None
