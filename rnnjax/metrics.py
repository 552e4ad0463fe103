"""Named metrics: what a training or evaluation step sums on the device, and the epoch record
built from those sums on the host (one builder for single runs and vectorized trials).

A new statistic is added here: a field of :class:`TrainMetrics` (summed by
:meth:`TrainMetrics.add`) and a key of :func:`epoch_record`. :class:`LayerStats` are the
per-layer sums of the validation pass (hidden-state RMS, gate saturation, forget gate).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class TrainMetrics(NamedTuple):
    """Sums over an epoch's training steps, kept on the device (float32 scalars, or [k] when vmapped)."""

    loss: Array  # mean minibatch loss, summed over applied steps
    grad_norm: Array  # pre-clip global gradient norm, summed over applied steps
    steps: Array  # applied steps
    skipped: Array  # non-finite steps (not applied)
    # Pre-clip gradient norm of each layer's params, then of the output layer's, summed over applied
    # steps: [..., L + 1]; [..., 0] when not tracked (then the train step does not compute them).
    layer_grad_norm: Array = np.zeros((0,), np.float32)  # NumPy: no JAX backend at import

    @classmethod
    def zeros(cls, lead: tuple[int, ...] = (), num_layers: int = 0) -> TrainMetrics:
        """Zero sums; ``num_layers`` > 0 tracks per-layer gradient norms (L + 1 of them: the output layer last)."""
        scalars = (jnp.zeros(lead, jnp.float32) for _ in range(4))
        return cls(*scalars, jnp.zeros((*lead, num_layers + 1 if num_layers else 0), jnp.float32))

    def add(self, loss: Array, grad_norm: Array, ok: Array, layer_grad_norm: Array | None = None) -> TrainMetrics:
        """One step: its loss and gradient norms count only if ``ok`` (finite and applied)."""
        okf = ok.astype(jnp.float32)
        layers = self.layer_grad_norm
        if layer_grad_norm is not None and layers.shape[-1]:
            layers = layers + jnp.where(ok, layer_grad_norm, 0.0)
        return TrainMetrics(self.loss + jnp.where(ok, loss, 0.0), self.grad_norm + jnp.where(ok, grad_norm, 0.0),
                            self.steps + okf, self.skipped + 1.0 - okf, layers)

    @property
    def tracks_layers(self) -> bool:
        return self.layer_grad_norm.shape[-1] > 0

    def to_array(self) -> Array:
        """The checkpoint layout of the four scalar sums ([..., 4] float32, as written since the first
        release); ``layer_grad_norm`` is stored beside it (``acc_layers``)."""
        return jnp.stack(self[:4], axis=-1)

    @classmethod
    def from_array(cls, a: Array, layer_grad_norm: Array | None = None) -> TrainMetrics:
        layers = jnp.zeros((*a.shape[:-1], 0), jnp.float32) if layer_grad_norm is None else layer_grad_norm
        return cls(*(a[..., i] for i in range(4)), layers)

    def to_host(self) -> TrainMetrics:
        """The sums as float64 NumPy arrays (one device-to-host transfer each): what :func:`epoch_record` reads."""
        return TrainMetrics(*(np.asarray(x, np.float64) for x in self))


class LayerStats(NamedTuple):
    """Per-layer sums over every position (batch x time) of an evaluation pass, each [..., L]
    (:func:`rnnjax.inside.layer_stats` computes one window's on the device)."""

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
        return EvalMetrics(self.nll + nll.sum(axis=(-2, -1)), self.tokens + jnp.float32(nll.shape[-2] * nll.shape[-1]))

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
    epoch: int, step: int, train: TrainMetrics, val_ppl: float, tokens_per_sec: float, lr: float, wall_time: float,
    layers: dict[str, list[float]] | None = None, char_level: bool = True,
    val_by_source: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One line of ``metrics.jsonl`` from an epoch's host-side sums (``train`` holds Python/NumPy scalars;
    ``layers``: :meth:`LayerStats.summary` of the validation pass, None when not computed). ``char_level``
    adds bits per character (``train_bpc``, ``val_bpc``); ``val_by_source``: each file's validation perplexity."""
    loss, grad_norm, steps, skipped = (float(x) for x in train[:4])
    train_ppl = perplexity_of(loss / steps) if steps else float("nan")
    record = {
        "epoch": epoch,
        "step": step,
        "train_ppl": train_ppl,
        "val_ppl": val_ppl,
        **({"train_bpc": bpc(train_ppl), "val_bpc": bpc(val_ppl)} if char_level else {}),
        "tokens_per_sec": tokens_per_sec,
        "grad_norm": grad_norm / steps if steps else float("nan"),
        "lr": lr,
        "skipped_steps": int(skipped),
        "wall_time": wall_time,
    }
    if val_by_source:
        record["val_ppl_by_source"] = dict(val_by_source)
        if char_level:
            record["val_bpc_by_source"] = {k: bpc(v) for k, v in val_by_source.items()}
    per_layer = np.asarray(train.layer_grad_norm, np.float64).reshape(-1)
    if per_layer.size:
        means = [float(x) / steps if steps else float("nan") for x in per_layer]
        record |= {"grad_norm_layers": means[:-1], "grad_norm_output": means[-1]}
    return record | (layers or {})


def best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch record with the lowest finite validation perplexity (None: there is none)."""
    finite = [r for r in records if isinstance(r.get("val_ppl"), (int, float)) and math.isfinite(r["val_ppl"])]
    return min(finite, key=lambda r: r["val_ppl"]) if finite else None
