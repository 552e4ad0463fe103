"""Corpus loading, preprocessing, tokenization and the two minibatch samplers.

Notation: n = number of minibatches, b = batch, t = num_steps.
Samplers are pure functions of (tokens, seed, epoch), so any epoch's batches can be
rebuilt exactly (what checkpoint resume relies on).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from rnnjax.config import ConfigError, DataConfig
from rnnjax.vocab import Vocab

BUNDLED = "timemachine.txt"


def bundled_path() -> str:
    """Path of the bundled copy of H.G. Wells' *The Time Machine* (public domain)."""
    return str(importlib.resources.files("rnnjax") / "corpora" / BUNDLED)


def read_texts(paths: Sequence[str], max_file_mb: int = 1024) -> str:
    """Read and concatenate UTF-8 files ([] = the bundled book); bad files raise ConfigError.
    Relative paths are from the current directory; only regular files up to ``max_file_mb`` MiB."""
    texts = []
    for path in paths or [bundled_path()]:
        p = pathlib.Path(path).expanduser()
        if p.exists() and not p.is_file():
            raise ConfigError(f"config.data.paths: {path!r} is not a regular file; give text files")
        if p.is_file() and p.stat().st_size > max_file_mb * 2**20:
            raise ConfigError(
                f"config.data.paths: {path!r} is {p.stat().st_size / 2**20:,.0f} MiB, above config.data.max_file_mb = "
                f"{max_file_mb}; raise that limit if this is the right file"
            )
        try:
            with open(p, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise ConfigError(f"config.data.paths: cannot read {path!r} ({e.strerror}); give existing text files") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"config.data.paths: {path!r} is not UTF-8 (byte {e.start}); convert it, e.g. iconv -t utf-8"
            ) from None
        if not text.strip():
            raise ConfigError(f"config.data.paths: {path!r} is empty; give a file with text")
        texts.append(text)
    return "\n".join(texts)


def preprocess(text: str, mode: str) -> str:
    """"d2l": every run of non-letters becomes one space, then lower-case. "none": unchanged."""
    return re.sub("[^A-Za-z]+", " ", text).lower() if mode == "d2l" else text


def tokenize(text: str, tokenizer: str) -> list[str]:
    """Characters, or whitespace-separated words."""
    return list(text) if tokenizer == "char" else text.split()


def detokenize(tokens: Sequence[str], tokenizer: str) -> str:
    return "".join(tokens) if tokenizer == "char" else " ".join(tokens)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Vocabulary and token ids: ``train`` [max_tokens], ``val`` [num_val] (the tokens after train)."""

    vocab: Vocab
    train: np.ndarray
    val: np.ndarray


def load_corpus(cfg: DataConfig, vocab: Vocab | None = None) -> Corpus:
    """Read, preprocess, tokenize and split; the vocabulary is built on the training split
    unless given (e.g. restored from a checkpoint). Raises ConfigError when the corpus is too short."""
    tokens = tokenize(preprocess(read_texts(cfg.paths, cfg.max_file_mb), cfg.preprocess), cfg.tokenizer)
    need = cfg.max_tokens + cfg.num_val
    if len(tokens) < need:
        raise ConfigError(
            f"config.data.max_tokens + config.data.num_val = {need} but the corpus has {len(tokens)} "
            f"{cfg.tokenizer} tokens; lower them or add text"
        )
    train_tokens = tokens[: cfg.max_tokens]
    if vocab is None:
        vocab = Vocab.build(train_tokens, cfg.min_freq, cfg.reserved_tokens)
    ids = vocab.encode(tokens[:need])
    n = batches_per_epoch(cfg, len(train_tokens))
    if n < 1:
        raise ConfigError(
            f"config.data.num_steps = {cfg.num_steps} with batch_size {cfg.batch_size} needs at least "
            f"{cfg.batch_size * (cfg.num_steps + 1) + 1} training tokens, have {cfg.max_tokens}; "
            "lower num_steps or batch_size, or raise data.max_tokens"
        )
    return Corpus(vocab=vocab, train=ids[: cfg.max_tokens], val=ids[cfg.max_tokens :])


def batches_per_epoch(cfg: DataConfig, num_tokens: int) -> int:
    """Minibatches per epoch, the same for every random offset (so shapes stay static)."""
    b, t = cfg.batch_size, cfg.num_steps
    if cfg.sampler == "sequential":  # worst-case offset t: rows of (N - t - 1) // b tokens
        return ((num_tokens - t - 1) // b) // t
    return ((num_tokens - t) // t) // b  # worst-case offset t - 1


def epoch_batches(tokens: np.ndarray, cfg: DataConfig, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
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


def eval_windows(tokens: np.ndarray, batch_size: int, num_steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The held-out stream as b contiguous rows, cut into windows of at most t steps
    (the last may be shorter) to be read in order with the state carried: [(X [b, <=t], Y)]."""
    row = (len(tokens) - 1) // batch_size
    xs = tokens[: batch_size * row].reshape(batch_size, row)
    ys = tokens[1 : 1 + batch_size * row].reshape(batch_size, row)
    return [(xs[:, i : i + num_steps], ys[:, i : i + num_steps]) for i in range(0, row, num_steps)]
