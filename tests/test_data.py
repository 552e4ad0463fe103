"""Reading the corpus (bad files and a corpus too short are refused), preprocessing, tokenizing, and
the two samplers."""

import dataclasses

import numpy as np
import pytest
from conftest import with_fields

from rnnjax.config import ConfigError, default_config, resolve
from rnnjax.dataset import batches, data
from rnnjax.dataset.vocab import UNK
from rnnjax.training.train import train_and_evaluate


def data_cfg(**overrides):
    return dataclasses.replace(resolve(default_config()).data, **overrides)


def test_bundled_book_matches_d2l_preprocessing():
    text = data.preprocess(data.read_texts([]), "d2l")
    assert len(text) == 173_428
    corpus = data.load_corpus(data_cfg())
    assert len(corpus.vocab) == 28  # 26 letters, space, <unk>
    assert corpus.vocab.idx_to_token[:3] == (" ", UNK, "a")  # d2l's sorted order
    assert corpus.train.shape == (10_000,) and corpus.val.shape == (5_000,)
    ids = corpus.vocab.encode(data.tokenize(text, "char"))
    np.testing.assert_array_equal(corpus.train, ids[:10_000])
    np.testing.assert_array_equal(
        corpus.val, ids[10_000:15_000]
    )  # held out: the tokens right after


def test_preprocess_none_keeps_raw_characters_and_word_tokens(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("Hello, World!\nHello again.\n" * 50, encoding="utf-8")
    cfg = data_cfg(
        paths=(str(f),), preprocess="none", max_tokens=1000, num_val=100, batch_size=2, num_steps=5
    )
    corpus = data.load_corpus(cfg)
    assert {"H", ",", "\n", "!"} <= set(corpus.vocab.idx_to_token)
    words = data.load_corpus(dataclasses.replace(cfg, tokenizer="word", max_tokens=150, num_val=50))
    assert "Hello," in words.vocab.idx_to_token and "again." in words.vocab.idx_to_token


def test_a_byte_order_mark_is_not_a_token(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes(b"\xef\xbb\xbf" + b"Hello, World!\n" * 100)  # as Windows editors save
    cfg = data_cfg(
        paths=(str(f),), preprocess="none", max_tokens=1000, num_val=100, batch_size=2, num_steps=5
    )
    corpus = data.load_corpus(cfg)
    assert "\ufeff" not in corpus.vocab.idx_to_token
    assert corpus.vocab.decode(corpus.train[:5]) == list("Hello")  # the text starts at its text


def test_sequential_batches_continue_each_row_exactly():
    cfg = data_cfg(batch_size=4, num_steps=5)
    tokens = np.arange(300, dtype=np.int32)
    xs, ys = batches.epoch_batches(tokens, cfg, seed=0, epoch=1)
    n = batches.batches_per_epoch(cfg, len(tokens))
    assert xs.shape == ys.shape == (n, 4, 5)
    np.testing.assert_array_equal(ys, xs + 1)  # targets are the next tokens
    for i in range(n - 1):  # row r of batch i+1 starts where row r of batch i ended
        np.testing.assert_array_equal(xs[i + 1, :, 0], xs[i, :, -1] + 1)
    # Offsets differ between epochs, shapes never do; the same (seed, epoch) repeats exactly.
    offsets = {int(batches.epoch_batches(tokens, cfg, 0, e)[0][0, 0, 0]) for e in range(1, 30)}
    assert len(offsets) > 1 and max(offsets) <= 5
    np.testing.assert_array_equal(
        batches.epoch_batches(tokens, cfg, 0, 7)[0], batches.epoch_batches(tokens, cfg, 0, 7)[0]
    )


def test_random_batches_are_disjoint_subsequences():
    cfg = data_cfg(batch_size=4, num_steps=5, sampler="random")
    tokens = np.arange(300, dtype=np.int32)
    xs, ys = batches.epoch_batches(tokens, cfg, seed=0, epoch=1)
    assert xs.shape == (batches.batches_per_epoch(cfg, 300), 4, 5)
    np.testing.assert_array_equal(ys, xs + 1)
    np.testing.assert_array_equal(np.diff(xs, axis=-1), 1)  # each row is contiguous
    starts = xs[:, :, 0].ravel()
    assert len(set(starts.tolist())) == starts.size and len(set((starts % 5).tolist())) == 1


def test_eval_windows_cover_the_stream_in_order():
    """Windows of max(t, EVAL_WINDOW_TOKENS // b) steps: a small split is one window, a long one
    several (the last shorter), read in order."""
    for n, t, widths in [(101, 7, [25]), (4 * 5000 + 1, 7, [2048, 2048, 904])]:
        tokens = np.arange(n, dtype=np.int32)
        windows = batches.eval_windows(tokens, batch_size=4, num_steps=t)
        xs = np.concatenate([x for x, _ in windows], axis=1)
        ys = np.concatenate([y for _, y in windows], axis=1)
        np.testing.assert_array_equal(xs.ravel(), np.arange(n - 1))
        np.testing.assert_array_equal(ys, xs + 1)
        assert [x.shape[1] for x, _ in windows] == widths
    assert batches.eval_steps(batch_size=4, num_steps=4096) == 4096  # never shorter than t


@pytest.mark.parametrize("tokenizer", ["char", "word"])
def test_detokenize_inverts_tokenize(tokenizer):
    text = "the time machine"
    assert data.detokenize(data.tokenize(text, tokenizer), tokenizer) == text


@pytest.mark.parametrize("kind", ["missing", "empty", "binary"])
def test_bad_corpus_files_are_refused(kind, tmp_path):
    path = tmp_path / "corpus.txt"
    if kind == "empty":
        path.write_text("   \n")
    elif kind == "binary":
        path.write_bytes(b"caf\xe9 au lait" * 100)
    with pytest.raises(ConfigError, match=r"config\.data\.paths: .*(cannot read|empty|not UTF-8)"):
        train_and_evaluate(
            with_fields(default_config(), **{"data.paths": [str(path)]}), tmp_path / "run"
        )
    assert not (tmp_path / "run").exists()


def test_window_longer_than_corpus_is_refused(tmp_path):
    cfg = with_fields(
        default_config(), **{"data.num_steps": 400}
    )  # 32 rows x 401 tokens > 10,000 training tokens
    with pytest.raises(ConfigError, match=r"config\.data\.num_steps = 400"):
        train_and_evaluate(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"config\.data\.max_tokens \+ config\.data\.num_val"):
        train_and_evaluate(
            with_fields(default_config(), **{"data.max_tokens": 10_000_000}), tmp_path / "run"
        )


def test_a_vocabulary_of_only_unk_is_refused_naming_min_freq():
    """Every id would be <unk>: "validation perplexity 1.000" that means nothing."""
    with pytest.raises(ConfigError) as e:
        data.load_corpus(data_cfg(tokenizer="word", min_freq=100_000))
    assert str(e.value) == (
        "config.data.min_freq = 100000 leaves no word token in the vocabulary: 0 of the 2,187 "
        "distinct training tokens occur that often (the most frequent, 'the', occurs 679 times); "
        "lower config.data.min_freq"
    )
    kept = data.load_corpus(data_cfg(tokenizer="word", min_freq=679)).vocab
    assert len(kept) == 2  # 'the' and <unk>


@pytest.mark.parametrize("by_fraction", [False, True])
def test_a_corpus_that_d2l_preprocessing_empties_points_to_preprocess_none(tmp_path, by_fraction):
    path = tmp_path / "cjk.txt"
    path.write_text("时间旅行者" * 4_000, encoding="utf-8")  # 20,000 characters, no ASCII
    cfg = data_cfg(paths=(str(path),), val_fraction=0.1 if by_fraction else 0.0)
    with pytest.raises(
        ConfigError,
        match=r"\(d2l preprocessing keeps only the ASCII letters a-z, "
        r"A-Z: 20,000 characters became 0; for text in other "
        r"scripts use --config.data.preprocess=none\)",
    ):
        data.load_corpus(cfg)
    raw = dataclasses.replace(cfg, preprocess="none", max_tokens=2000, num_val=500)
    corpus = data.load_corpus(raw)
    assert len(corpus.vocab) == 6  # the five characters and <unk>


def test_a_data_path_that_is_a_symlink_loop_is_one_line(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for by_fraction in (0.0, 0.1):
        with pytest.raises(
            ConfigError, match=r"^config.data.paths: .*a'.* (symbolic links|Too many levels)"
        ):
            data.load_corpus(data_cfg(paths=(str(tmp_path / "a"),), val_fraction=by_fraction))
