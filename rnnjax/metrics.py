"""Named metrics: what a training or evaluation step sums on the device, and the epoch record
built from those sums on the host (one builder for single runs and vectorized trials).

A new statistic is added here: a field of :class:`TrainMetrics` (summed by
:meth:`TrainMetrics.add`) and a key of :func:`epoch_record`.
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

    @classmethod
    def zeros(cls, lead: tuple[int, ...] = ()) -> TrainMetrics:
        return cls(*(jnp.zeros(lead, jnp.float32) for _ in cls._fields))

    def add(self, loss: Array, grad_norm: Array, ok: Array) -> TrainMetrics:
        """One step: its loss and gradient norm count only if ``ok`` (finite and applied)."""
        okf = ok.astype(jnp.float32)
        return TrainMetrics(self.loss + jnp.where(ok, loss, 0.0), self.grad_norm + jnp.where(ok, grad_norm, 0.0),
                            self.steps + okf, self.skipped + 1.0 - okf)

    def to_array(self) -> Array:
        """The checkpoint layout ([..., 4] float32, as written since the first release)."""
        return jnp.stack(self, axis=-1)

    @classmethod
    def from_array(cls, a: Array) -> TrainMetrics:
        return cls(*(a[..., i] for i in range(len(cls._fields))))


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

    def perplexity(self) -> float:
        nll, n = np.asarray(self.nll, np.float64), np.asarray(self.tokens, np.float64)
        return math.exp(nll / n)


def epoch_record(
    epoch: int, step: int, train: TrainMetrics, val_ppl: float, tokens_per_sec: float, lr: float, wall_time: float
) -> dict[str, Any]:
    """One line of ``metrics.jsonl`` from an epoch's host-side sums (``train`` holds Python/NumPy scalars)."""
    loss, grad_norm, steps, skipped = (float(x) for x in train)
    return {
        "epoch": epoch,
        "step": step,
        "train_ppl": math.exp(loss / steps) if steps else float("nan"),
        "val_ppl": val_ppl,
        "tokens_per_sec": tokens_per_sec,
        "grad_norm": grad_norm / steps if steps else float("nan"),
        "lr": lr,
        "skipped_steps": int(skipped),
        "wall_time": wall_time,
    }


def best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch record with the lowest finite validation perplexity (None: there is none)."""
    finite = [r for r in records if isinstance(r.get("val_ppl"), (int, float)) and math.isfinite(r["val_ppl"])]
    return min(finite, key=lambda r: r["val_ppl"]) if finite else None
