"""Reading text files and turning them into tokens: the bundled book, UTF-8 checks, d2l's
preprocessing, characters or words, and :class:`Tokens` (a text's tokens held compactly).
"""

from __future__ import annotations

import collections
import importlib.resources
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from rnnjax.config import ConfigError
from rnnjax.dataset.vocab import Vocab

BUNDLED = "timemachine.txt"


def bundled_path() -> str:
    """Path of the bundled copy of H.G. Wells' *The Time Machine* (public domain)."""
    return str(importlib.resources.files("rnnjax") / "corpora" / BUNDLED)


def read_files(
    paths: Sequence[str], max_file_mb: int = 1024, field: str = "paths"
) -> list[tuple[str, str]]:
    """Read UTF-8 files ([] = the bundled book) as ``(source name, text)``; a bad file raises
    ConfigError naming ``config.data.<field>``.
    Relative paths are from the current directory; only regular files up to ``max_file_mb`` MiB. A
    source's name is its file name, or the path as given where two files share a name."""
    paths = list(paths) or [bundled_path()]
    names = [pathlib.Path(p).name for p in paths]
    out = []
    for path, name in zip(paths, names):
        p = pathlib.Path(path).expanduser()
        if p.exists() and not p.is_file():
            raise ConfigError(
                f"config.data.{field}: {path!r} is not a regular file; give text files"
            )
        if p.is_file() and p.stat().st_size > max_file_mb * 2**20:
            raise ConfigError(
                f"config.data.{field}: {path!r} is {p.stat().st_size / 2**20:,.0f} MiB, above "
                "config.data.max_file_mb = "
                f"{max_file_mb}; raise that limit if this is the right file"
            )
        try:
            with open(p, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise ConfigError(
                f"config.data.{field}: cannot read {path!r} ({e.strerror}); "
                "give existing text files"
            ) from None
        try:
            text = decode(raw)
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"config.data.{field}: {path!r} is not UTF-8 (byte {e.start}); "
                "convert it, e.g. iconv -t utf-8"
            ) from None
        del raw
        if not text.strip():
            raise ConfigError(f"config.data.{field}: {path!r} is empty; give a file with text")
        out.append((name if names.count(name) == 1 else str(path), text))
    return out


def decode(raw: bytes) -> str:
    """A file's bytes as text: UTF-8, a leading byte order mark (U+FEFF, as Windows editors write
    it) dropped, never a token of the text."""
    return raw.decode("utf-8-sig")


def read_texts(paths: Sequence[str], max_file_mb: int = 1024) -> str:
    """The files of :func:`read_files`, concatenated in order with a newline between them."""
    return "\n".join(text for _, text in read_files(paths, max_file_mb))


def preprocess(text: str, mode: str) -> str:
    """ "d2l": every run of non-letters becomes one space, then lower-case. "none": unchanged."""
    return re.sub("[^A-Za-z]+", " ", text).lower() if mode == "d2l" else text


def tokenize(text: str, tokenizer: str) -> list[str]:
    """Characters, or whitespace-separated words."""
    return list(text) if tokenizer == "char" else text.split()


def detokenize(tokens: Sequence[str], tokenizer: str) -> str:
    return "".join(tokens) if tokenizer == "char" else " ".join(tokens)


def codepoints(text: str) -> np.ndarray:
    """A text's characters as Unicode code points [n]: uint8 for ASCII text, else uint32 (no
    Python list)."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), np.uint32)


class Tokens:
    """A preprocessed text's tokens, held compactly: code points for characters, a list for
    words."""

    def __init__(self, text: str, tokenizer: str):
        self.tokenizer = tokenizer
        self.items: np.ndarray | list[str] = (
            codepoints(text) if tokenizer == "char" else text.split()
        )

    def __len__(self) -> int:
        return len(self.items)

    def counts(self, start: int = 0, stop: int | None = None) -> collections.Counter:
        """Each token's count in ``[start, stop)`` (what the vocabulary is built from)."""
        part = self.items[start:stop]
        if self.tokenizer == "word":
            return collections.Counter(part)
        counts = np.bincount(part) if len(part) else np.zeros(0, np.int64)
        return collections.Counter({chr(c): int(counts[c]) for c in np.flatnonzero(counts)})

    def encode(self, vocab: Vocab, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Ids of ``[start, stop)`` in ``vocab.id_dtype``; tokens outside it become ``<unk>``."""
        part = self.items[start:stop]
        if self.tokenizer == "char":
            return vocab.encode_chars(part)
        return vocab.encode(part).astype(vocab.id_dtype)
