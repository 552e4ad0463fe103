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
    """Returns (optimizer, learning-rate schedule). Clipping (when grad_clip > 0) comes first.

    The learning rate (a constant, or the schedule's value at each step) and weight decay sit
    in the optimizer state (``optax.inject_hyperparams``): trials that differ only in them
    share one compiled program and one state layout (``rnnjax.vectorize``).
    """
    schedule = make_schedule(cfg, total_steps)
    factory = {"sgd": optax.sgd, "adam": optax.adam, "adamw": optax.adamw}[cfg.optimizer]
    kwargs = {"learning_rate": cfg.learning_rate if cfg.schedule == "constant" else schedule}
    if cfg.optimizer == "adamw":
        kwargs["weight_decay"] = cfg.weight_decay
    opt = optax.inject_hyperparams(factory)(**kwargs)
    if cfg.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt, schedule
