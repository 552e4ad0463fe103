"""Will a run fit: an estimate of a training step's memory against what the device can give,
checked before any compute so a model or batch that is too large is one clear error."""

from __future__ import annotations

import jax

from rnnjax.cells import CELLS
from rnnjax.config import Config, ConfigError


def estimate_memory(cfg: Config, vocab_size: int) -> int:
    """Bytes a training step needs, roughly: parameters, gradients and optimizer state, plus the
    activations kept for the backward (float32)."""
    m, d = cfg.model, cfg.data
    g, h = CELLS[m.cell].num_gates, m.hidden_size
    input_weights = vocab_size * g * h + (m.num_layers - 1) * h * g * h
    recurrent = 0 if CELLS[m.cell].recurrence is None else h * g * h + g * h  # an upper bound
    params = input_weights + m.num_layers * (recurrent + g * h) + h * vocab_size + vocab_size
    copies = 2 + (2 if cfg.train.optimizer in ("adam", "adamw") else 0)  # params, grads (+ two moments)
    tokens = d.batch_size * d.num_steps
    activations = tokens * m.num_layers * h * (2 * g + 4) + 3 * tokens * vocab_size
    return 4 * (copies * params + activations)


def available_memory() -> int | None:
    """Bytes the accelerator (its ``bytes_limit``) or, on CPU, the host (``MemAvailable``) can still give; None: unknown."""
    if jax.default_backend() != "cpu":
        stats = jax.local_devices()[0].memory_stats() or {}
        return stats.get("bytes_limit")
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_fits(cfg: Config, vocab_size: int) -> None:
    """Refuse, before any compute, a model or batch whose estimated memory exceeds what is available."""
    need, have = estimate_memory(cfg, vocab_size), available_memory()
    if have is not None and need > have:
        gib = lambda b: f"{b / 2**30:,.1f} GiB"  # noqa: E731
        raise ConfigError(
            f"config.model.hidden_size = {cfg.model.hidden_size}, num_layers = {cfg.model.num_layers}, "
            f"data.batch_size = {cfg.data.batch_size}, num_steps = {cfg.data.num_steps} need about {gib(need)} "
            f"(parameters, gradients, optimizer state, activations) but {gib(have)} is available; make them smaller"
        )
