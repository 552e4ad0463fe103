"""The optimizer: optax ``chain(clip_by_global_norm(grad_clip), sgd|adam|adamw(schedule))``."""

from __future__ import annotations

import optax

from rnnjax.config import TrainConfig


def make_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """Learning rate per step: constant, or linear warm-up then cosine decay to 0."""
    if cfg.schedule == "constant":
        return optax.constant_schedule(cfg.learning_rate)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(total_steps, cfg.warmup_steps + 1),
    )


def make_optimizer(cfg: TrainConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns (optimizer, learning-rate schedule). Clipping (when grad_clip > 0) comes first."""
    schedule = make_schedule(cfg, total_steps)
    if cfg.optimizer == "sgd":
        opt = optax.sgd(schedule)
    elif cfg.optimizer == "adam":
        opt = optax.adam(schedule)
    else:
        opt = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    if cfg.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt, schedule
