"""Token vocabulary: token <-> id, with ``<unk>``, reserved tokens and a min frequency."""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

UNK = "<unk>"


@dataclasses.dataclass(frozen=True)
class Vocab:
    """An ordered token list. As d2l's ``Vocab``: ids are the sorted order of
    ``{<unk>} | reserved | {tokens with count >= min_freq}``; unknown tokens map to ``<unk>``.
    """

    idx_to_token: tuple[str, ...]
    token_to_idx: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if UNK not in self.idx_to_token or len(set(self.idx_to_token)) != len(self.idx_to_token):
            raise ValueError(f"a vocabulary needs {UNK!r} and unique tokens")
        object.__setattr__(self, "token_to_idx", {t: i for i, t in enumerate(self.idx_to_token)})

    @classmethod
    def build(
        cls, tokens: Iterable[str], min_freq: int = 0, reserved_tokens: Sequence[str] = ()
    ) -> Vocab:
        return cls.from_counts(collections.Counter(tokens), min_freq, reserved_tokens)

    @classmethod
    def from_counts(
        cls, counts: Mapping[str, int], min_freq: int = 0, reserved_tokens: Sequence[str] = ()
    ) -> Vocab:
        """As :meth:`build`, from each token's count (tokens with count 0 are absent)."""
        kept = {t for t, n in counts.items() if n >= max(min_freq, 1)}
        return cls(tuple(sorted(kept | set(reserved_tokens) | {UNK})))

    @property
    def id_dtype(self) -> np.dtype:
        """The smallest unsigned integer dtype that holds every id (uint8 up to 256 tokens)."""
        return np.min_scalar_type(max(len(self) - 1, 0))

    def __len__(self) -> int:
        return len(self.idx_to_token)

    @property
    def unk(self) -> int:
        return self.token_to_idx[UNK]

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Tokens -> int32 ids [n]; tokens outside the vocabulary become ``<unk>``."""
        unk = self.unk
        return np.fromiter((self.token_to_idx.get(t, unk) for t in tokens), dtype=np.int32)

    def encode_chars(self, codepoints: np.ndarray) -> np.ndarray:
        """Characters given as Unicode code points [n] -> ids [n] in :attr:`id_dtype`, by one table
        lookup (a 100M-character corpus in about a second); characters outside the vocabulary become
        ``<unk>``."""
        top = int(codepoints.max()) if codepoints.size else 0
        lut = np.full(top + 1, self.unk, self.id_dtype)
        for t, i in self.token_to_idx.items():
            if len(t) == 1 and ord(t) <= top:
                lut[ord(t)] = i
        return lut[codepoints]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.idx_to_token[int(i)] for i in ids]

    def to_json(self) -> str:
        return json.dumps({"idx_to_token": list(self.idx_to_token)}, ensure_ascii=False)

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the tokens in order (computed once): what a checkpoint records of the
        vocabulary it was trained with (a reader compares vocab.json against it)."""
        return hashlib.sha256(json.dumps(list(self.idx_to_token)).encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        return cls(tuple(json.loads(text)["idx_to_token"]))
