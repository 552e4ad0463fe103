"""The vocabulary: min frequency, reserved tokens, the unknown token, and its JSON round trip."""

import numpy as np

from rnnjax.dataset.vocab import UNK, Vocab


def test_vocab_min_freq_reserved_unknown_and_json_roundtrip():
    vocab = Vocab.build(list("aaabbc"), min_freq=2, reserved_tokens=["<pad>"])
    assert vocab.idx_to_token == ("<pad>", UNK, "a", "b")
    np.testing.assert_array_equal(vocab.encode("abcz"), [2, 3, vocab.unk, vocab.unk])
    assert Vocab.from_json(vocab.to_json()) == vocab  # vocab.json: rnnjax.rundir.workdir.write_run
    assert vocab.decode([2, 3, 1]) == ["a", "b", UNK]
