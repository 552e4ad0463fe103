"""Minibatches of a token stream: the two training samplers and the held-out windows.

Notation: n = number of minibatches, b = batch, t = num_steps. Samplers are pure functions of
(tokens, seed, epoch), so any epoch's batches can be rebuilt exactly (what checkpoint resume relies
on).
"""

from __future__ import annotations

import numpy as np

from rnnjax.config import DataConfig


def batches_per_epoch(cfg: DataConfig, num_tokens: int) -> int:
    """Minibatches per epoch, the same for every random offset (so shapes stay static)."""
    b, t = cfg.batch_size, cfg.num_steps
    if cfg.sampler == "sequential":  # worst-case offset t: rows of (N - t - 1) // b tokens
        return ((num_tokens - t - 1) // b) // t
    return ((num_tokens - t) // t) // b  # worst-case offset t - 1


def epoch_batches(
    tokens: np.ndarray, cfg: DataConfig, seed: int, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    """All minibatches of one epoch: inputs X [n, b, t] and next-token targets Y [n, b, t].

    sequential (d2l's ``seq_data_iter_sequential``): a random offset in [0, t], the
    stream cut into b contiguous rows; batch i+1 row r continues batch i row r.
    random (d2l's ``seq_data_iter_random``): a random offset in [0, t-1], then
    non-overlapping length-t subsequences in random order.
    """
    rng = np.random.default_rng([seed, epoch])
    b, t = cfg.batch_size, cfg.num_steps
    n = batches_per_epoch(cfg, len(tokens))
    if cfg.sampler == "sequential":
        offset = int(rng.integers(0, t + 1))
        row = (len(tokens) - offset - 1) // b
        xs = tokens[offset : offset + b * row].reshape(b, row)[:, : n * t]
        ys = tokens[offset + 1 : offset + 1 + b * row].reshape(b, row)[:, : n * t]
        return (xs.reshape(b, n, t).transpose(1, 0, 2), ys.reshape(b, n, t).transpose(1, 0, 2))
    offset = int(rng.integers(0, t))
    starts = offset + t * rng.permutation((len(tokens) - offset - 1) // t)[: n * b]
    idx = starts[:, None] + np.arange(t)
    return tokens[idx].reshape(n, b, t), tokens[idx + 1].reshape(n, b, t)


# Tokens of one evaluation window, all rows together: a held-out pass reads windows of
# max(t, EVAL_WINDOW_TOKENS // b) steps, so a split of up to this size is one call over its whole
# length (the native kernel's one loop), and the memory of a window (logits, the kernel's saves)
# stays bounded on a large split. The carry goes on between windows: the same numbers as t-step
# windows, up to the order of the sums.
EVAL_WINDOW_TOKENS = 8192


def eval_steps(batch_size: int, num_steps: int) -> int:
    """Steps per evaluation window (:data:`EVAL_WINDOW_TOKENS`), never fewer than training's t."""
    return max(num_steps, EVAL_WINDOW_TOKENS // batch_size)


def eval_windows(
    tokens: np.ndarray, batch_size: int, num_steps: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The held-out stream as b contiguous rows, cut into windows of at most
    :func:`eval_steps` steps (the last may be shorter) to be read in order with the state carried:
    [(X [b, <=w], Y)]."""
    row = (len(tokens) - 1) // batch_size
    xs = tokens[: batch_size * row].reshape(batch_size, row)
    ys = tokens[1 : 1 + batch_size * row].reshape(batch_size, row)
    w = eval_steps(batch_size, num_steps)
    return [(xs[:, i : i + w], ys[:, i : i + w]) for i in range(0, row, w)]
