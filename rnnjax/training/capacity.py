"""Will a run fit: an estimate of a training step's memory against what the device can give,
checked before any compute so a model or batch that is too large is one clear error."""

from __future__ import annotations

import jax

from rnnjax.config import Config, ConfigError


def _bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def estimate_memory(cfg: Config, vocab_size: int) -> int:
    """Bytes a training step needs, roughly: parameters and gradients, the optimizer's state, plus
    the activations kept for the backward (float32). Parameters and optimizer state are the shapes
    of the real model's and the real optimizer's init (``jax.eval_shape``: nothing is allocated)."""
    from rnnjax.network.model import DeepRNN
    from rnnjax.training.optim import make_optimizer

    m, d = cfg.model, cfg.data
    model = DeepRNN(vocab_size, m.hidden_size, m.num_layers, m.cell, tuple(m.activation), m.dropout)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0)))
    opt_state = jax.eval_shape(make_optimizer(cfg.train, 1)[0].init, params)
    # Per layer the step keeps its gate pre-activations (the widest parameter, [G * h]) twice and a
    # few [h] vectors; the output layer keeps [V] logits, softmax and gradient.
    leaves = jax.tree_util.tree_leaves
    widths = [max(x.shape[-1] for x in leaves(layer)) for layer in params["layers"]]
    tokens = d.batch_size * d.num_steps
    activations = 4 * tokens * (sum(2 * w + 4 * m.hidden_size for w in widths) + 3 * vocab_size)
    return 2 * _bytes(params) + _bytes(opt_state) + activations


def available_memory() -> int | None:
    """Bytes the accelerator (its ``bytes_limit``) or, on CPU, the host (``MemAvailable``) can still
    give; None: unknown."""
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
    """Refuse, before any compute, a model or batch whose estimated memory exceeds what is
    available."""
    need, have = estimate_memory(cfg, vocab_size), available_memory()
    if have is not None and need > have:
        gib = lambda b: f"{b / 2**30:,.1f} GiB"  # noqa: E731
        raise ConfigError(
            f"config.model.hidden_size = {cfg.model.hidden_size}, num_layers = "
            f"{cfg.model.num_layers}, data.batch_size = {cfg.data.batch_size}, num_steps = "
            f"{cfg.data.num_steps} need about {gib(need)} (parameters, gradients, optimizer state, "
            f"activations) but {gib(have)} is available; make them smaller"
        )
