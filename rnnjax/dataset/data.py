"""The corpus and its splits (train, validation, test); the minibatches cut from them are in
:mod:`rnnjax.dataset.batches`.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib

import numpy as np

from rnnjax.config import ConfigError, DataConfig
from rnnjax.dataset.batches import batches_per_epoch
from rnnjax.dataset.text import (  # noqa: F401  (re-exported: rnnjax.dataset.data is where callers find them)
    BUNDLED,
    Tokens,
    bundled_path,
    codepoints,
    detokenize,
    preprocess,
    read_files,
    read_texts,
    tokenize,
)
from rnnjax.dataset.vocab import UNK, Vocab


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Vocabulary and token ids ([n] each, in ``vocab.id_dtype``): ``train``, ``val`` and ``test``
    (empty without a test split). ``val_parts`` and ``test_parts`` are the held-out streams per
    source, as ``(name, ids)``: one part (named "all") unless several files are split by fraction
    per file (or ``data.test_paths`` names files); ``val`` and ``test`` are their concatenation.
    Evaluation reads each part on its own, so no window crosses files."""

    vocab: Vocab
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))
    val_parts: tuple[tuple[str, np.ndarray], ...] = ()
    test_parts: tuple[tuple[str, np.ndarray], ...] = ()

    def __post_init__(self) -> None:
        if not self.val_parts:
            object.__setattr__(self, "val_parts", (("all", self.val),))
        if not self.test_parts and len(self.test):
            object.__setattr__(self, "test_parts", (("all", self.test),))

    @property
    def sources(self) -> list[str]:
        """The names of the held-out parts (["all"] for one stream)."""
        return [name for name, _ in self.val_parts]


def load_corpus(cfg: DataConfig, vocab: Vocab | None = None) -> Corpus:
    """Read, preprocess, tokenize and split; the vocabulary is built on the training split
    unless given (e.g. restored from a checkpoint). Raises ConfigError when the corpus is too short.

    By count (``data.val_fraction`` = 0): the files are concatenated, then the first
    ``max_tokens`` tokens train (0: all but the held-out ones), the next ``num_val`` validate, the
    next ``num_test`` test. By fraction: each file is split on its own (``data.holdout =
    "file"``: train, then validation, then test at its end) or the concatenated files are
    (``"end"``: validation, then test at the corpus's far end); the training text is capped at
    ``max_tokens`` (0: no cap). ``data.test_paths``: whole files that only test, each scored on
    its own."""
    if cfg.by_fraction:
        return _load_by_fraction(cfg, vocab)
    raw = read_texts(cfg.paths, cfg.max_file_mb)
    text = preprocess(raw, cfg.preprocess)
    emptied = _emptied_by_preprocessing(cfg, raw, text)
    del raw
    tokens = Tokens(text, cfg.tokenizer)
    del text
    held_out = cfg.num_val + cfg.num_test
    train_len = cfg.max_tokens or len(tokens) - held_out
    need = train_len + held_out
    test = " + config.data.num_test" if cfg.num_test else ""
    if cfg.max_tokens and len(tokens) < need:
        raise ConfigError(
            f"config.data.max_tokens + config.data.num_val{test} = {need} but the corpus has "
            f"{len(tokens)} "
            f"{cfg.tokenizer} tokens{emptied}; lower them or add text"
        )
    if train_len < 2:
        raise ConfigError(
            f"config.data.num_val{test} = {held_out} leaves {max(train_len, 0)} of the corpus's "
            f"{len(tokens)} "
            f"{cfg.tokenizer} tokens to train{emptied}; lower them or add text"
        )
    if vocab is None:
        vocab = _build_vocab(cfg, tokens.counts(0, train_len))
    ids = tokens.encode(vocab, 0, need)
    del tokens
    _check_trainable(cfg, train_len)
    return Corpus(
        vocab=vocab,
        train=ids[:train_len],
        val=ids[train_len : train_len + cfg.num_val],
        test=ids[train_len + cfg.num_val : need],
    )


def _resolve(path: str) -> pathlib.Path:
    try:
        return pathlib.Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as e:  # a symlink loop: RuntimeError before Python 3.13
        raise ConfigError(
            f"config.data.paths: {path!r} is a loop of symbolic links ({e}); give text files"
        ) from None


def _load_by_fraction(cfg: DataConfig, vocab: Vocab | None) -> Corpus:
    resolved = [_resolve(p) for p in cfg.paths]
    if len(set(resolved)) < len(resolved):
        twice = next(p for p, r in zip(cfg.paths, resolved) if resolved.count(r) > 1)
        raise ConfigError(
            f"config.data.paths lists {twice!r} twice; with data.val_fraction each file is split "
            "and "
            "scored on its own: give each file once"
        )
    parts = []  # (name, tokens, train end, val end)
    sources = read_files(cfg.paths, cfg.max_file_mb)
    if cfg.holdout == "end":  # one stream, held out at its far end
        sources = [("all", "\n".join(text for _, text in sources))]
    for name, raw in sources:
        text = preprocess(raw, cfg.preprocess)
        emptied = _emptied_by_preprocessing(cfg, raw, text)
        tokens = Tokens(text, cfg.tokenizer)
        del raw, text
        n = len(tokens)
        num_test, num_val = round(n * cfg.test_fraction), round(n * cfg.val_fraction)
        if cfg.max_holdout:  # the far end's parts capped: the text they free trains
            num_test, num_val = min(num_test, cfg.max_holdout), min(num_val, cfg.max_holdout)
        for split, count, field in (
            ("validation", num_val, "val_fraction"),
            ("test", num_test, "test_fraction"),
        ):
            if count and count < cfg.batch_size + 1 or (split == "validation" and not count):
                raise ConfigError(
                    f"config.data.{field} = {getattr(cfg, field)} leaves "
                    f"{name if name != 'all' else 'the corpus'} {count} {split} tokens, fewer "
                    f"than data.batch_size + 1 = {cfg.batch_size + 1}{emptied}; raise "
                    f"data.{field} or give a longer file"
                )
        parts.append((name, tokens, n - num_val - num_test, n - num_test))
    if vocab is None:
        counts: collections.Counter = collections.Counter()
        for _, tokens, train_end, _ in parts:
            counts.update(tokens.counts(0, train_end))
        vocab = _build_vocab(cfg, counts)
    train = np.concatenate(
        [tokens.encode(vocab, 0, train_end) for _, tokens, train_end, _ in parts]
    )
    if cfg.max_tokens:
        train = train[: cfg.max_tokens].copy()
    val_parts = tuple((name, tokens.encode(vocab, a, b)) for name, tokens, a, b in parts)
    test_parts = tuple(
        (name, tokens.encode(vocab, b, None)) for name, tokens, _, b in parts if len(tokens) > b
    )
    del parts
    test_parts += _test_files(cfg, vocab)
    _check_trainable(cfg, len(train))

    def concat(ps: tuple[tuple[str, np.ndarray], ...]) -> np.ndarray:
        return np.concatenate([ids for _, ids in ps]) if ps else np.zeros(0, vocab.id_dtype)

    return Corpus(
        vocab=vocab,
        train=train,
        val=concat(val_parts),
        test=concat(test_parts),
        val_parts=val_parts,
        test_parts=test_parts,
    )


def _test_files(cfg: DataConfig, vocab: Vocab) -> tuple[tuple[str, np.ndarray], ...]:
    """``data.test_paths``, each file's ids (name, [n]): held out whole, never trained on."""
    parts: list[tuple[str, np.ndarray]] = []
    for name, raw in (
        read_files(cfg.test_paths, cfg.max_file_mb, "test_paths") if cfg.test_paths else []
    ):
        ids = Tokens(preprocess(raw, cfg.preprocess), cfg.tokenizer).encode(vocab)
        if len(ids) < cfg.batch_size + 1:
            raise ConfigError(
                f"config.data.test_paths: {name!r} has {len(ids)} {cfg.tokenizer} tokens, fewer "
                f"than data.batch_size + 1 = {cfg.batch_size + 1}; give a longer file"
            )
        parts.append((name, ids))
    return tuple(parts)


def _emptied_by_preprocessing(cfg: DataConfig, raw: str, text: str) -> str:
    """A note for a too-short corpus when d2l preprocessing removed most of it ("" otherwise)."""
    if cfg.preprocess != "d2l" or len(text.strip()) * 2 >= len(raw.strip()):
        return ""
    return (
        f" (d2l preprocessing keeps only the ASCII letters a-z, A-Z: {len(raw):,} characters "
        f"became {len(text.strip()):,}; for text in other scripts use "
        "--config.data.preprocess=none)"
    )


def _build_vocab(cfg: DataConfig, counts: collections.Counter) -> Vocab:
    """The vocabulary of the training tokens' ``counts``; one that would hold no token but ``<unk>``
    (and the reserved ones) is refused: every id would be ``<unk>``, a perplexity of 1."""
    vocab = Vocab.from_counts(counts, cfg.min_freq, cfg.reserved_tokens)
    if len(vocab) > len(set(cfg.reserved_tokens) | {UNK}):
        return vocab
    top, n = counts.most_common(1)[0] if counts else ("", 0)
    raise ConfigError(
        f"config.data.min_freq = {cfg.min_freq} leaves no {cfg.tokenizer} token in the vocabulary: "
        f"0 of the {len(counts):,} distinct training tokens occur that often (the most frequent, "
        f"{top!r}, occurs {n:,} times); lower config.data.min_freq"
    )


def _check_trainable(cfg: DataConfig, num_train: int) -> None:
    if batches_per_epoch(cfg, num_train) < 1:
        raise ConfigError(
            f"config.data.num_steps = {cfg.num_steps} with batch_size {cfg.batch_size} needs at "
            "least "
            f"{cfg.batch_size * (cfg.num_steps + 1) + 1} training tokens, have {num_train}; "
            "lower num_steps or batch_size, or raise data.max_tokens"
        )
