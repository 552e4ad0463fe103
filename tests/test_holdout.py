"""Honest held-out text: data.holdout = "end" (validation then test at the corpus's far end) and
data.test_paths (whole files that only test), on the splits' exact boundaries."""

import pathlib

import numpy as np
import pytest

from rnnjax.config import ConfigError, default_config, resolve
from rnnjax.dataset import data
from rnnjax.dataset.vocab import Vocab

BOOK = pathlib.Path(data.bundled_path()).read_text()


def data_config(**fields):
    cfg = default_config()
    for k, v in fields.items():
        setattr(cfg.data, k, v)
    return resolve(cfg).data


def files(tmp_path, *texts):
    paths = []
    for i, text in enumerate(texts):
        paths.append(tmp_path / f"{'abc'[i]}.txt")
        paths[-1].write_text(text)
    return [str(p) for p in paths]


def test_end_holds_out_the_far_end_of_the_concatenated_files(tmp_path):
    a, b = BOOK[:30_000], BOOK[50_000:70_000]
    paths = files(tmp_path, a, b)
    corpus = data.load_corpus(
        data_config(
            paths=paths,
            preprocess="none",
            max_tokens=0,
            val_fraction=0.1,
            test_fraction=0.05,
            holdout="end",
        )
    )
    whole = a + "\n" + b  # 50,001 characters: 5,000 validate, then 2,500 test
    train_end, val_end = len(whole) - 5_000 - 2_500, len(whole) - 2_500
    enc = lambda text: corpus.vocab.encode(list(text))  # noqa: E731
    np.testing.assert_array_equal(corpus.train, enc(whole[:train_end]))
    np.testing.assert_array_equal(corpus.val, enc(whole[train_end:val_end]))
    np.testing.assert_array_equal(corpus.test, enc(whole[val_end:]))
    assert corpus.sources == ["all"] and [n for n, _ in corpus.test_parts] == ["all"]
    assert corpus.vocab == Vocab.build(whole[:train_end])  # nothing held out counts
    # every validation and test token comes from b.txt's end: none continues a.txt's training text
    assert train_end > len(a) and whole[val_end:] == b[-2_500:]


def test_one_file_end_and_file_splits_are_the_same(tmp_path):
    (path,) = files(tmp_path, BOOK[:40_000])
    common = dict(
        paths=[path], preprocess="none", max_tokens=0, val_fraction=0.05, test_fraction=0.05
    )
    end = data.load_corpus(data_config(**common, holdout="end"))
    per_file = data.load_corpus(data_config(**common))
    for x, y in ((end.train, per_file.train), (end.val, per_file.val), (end.test, per_file.test)):
        np.testing.assert_array_equal(x, y)
    assert len(end.val) == len(end.test) == 2_000 and len(end.train) == 36_000


def test_test_paths_are_held_out_whole_and_scored_each_on_its_own(tmp_path):
    a, b, c = files(tmp_path, BOOK[:30_000], BOOK[60_000:62_000], BOOK[90_000:93_000])
    corpus = data.load_corpus(
        data_config(
            paths=[a],
            test_paths=[b, c],
            preprocess="none",
            max_tokens=0,
            val_fraction=0.1,
            holdout="end",
        )
    )
    assert [n for n, _ in corpus.test_parts] == ["b.txt", "c.txt"]
    enc = lambda text: corpus.vocab.encode(list(text))  # noqa: E731
    np.testing.assert_array_equal(corpus.test_parts[0][1], enc(BOOK[60_000:62_000]))
    np.testing.assert_array_equal(corpus.test_parts[1][1], enc(BOOK[90_000:93_000]))
    np.testing.assert_array_equal(corpus.train, enc(BOOK[:27_000]))
    np.testing.assert_array_equal(corpus.val, enc(BOOK[27_000:30_000]))
    assert corpus.vocab == Vocab.build(BOOK[:27_000])


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"holdout": "end"}, "holdout = 'end' needs config.data.val_fraction > 0"),
        ({"test_paths": ["x.txt"]}, "test_paths needs config.data.val_fraction > 0"),
        ({"holdout": "far"}, "config.data.holdout"),
    ],
)
def test_holdout_fields_are_refused_in_one_line(fields, message):
    with pytest.raises(ConfigError, match=message) as e:
        data_config(**fields)
    assert "\n" not in str(e.value)


def test_a_missing_or_short_test_file_names_test_paths(tmp_path):
    (a,) = files(tmp_path, BOOK[:30_000])
    with pytest.raises(ConfigError, match="config.data.test_paths: .*nope.txt"):
        data.load_corpus(
            data_config(
                paths=[a],
                test_paths=[str(tmp_path / "nope.txt")],
                preprocess="none",
                max_tokens=0,
                val_fraction=0.1,
            )
        )
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(ConfigError, match="test_paths: 'short.txt' has 4 char tokens"):
        data.load_corpus(
            data_config(
                paths=[a],
                test_paths=[str(short)],
                preprocess="none",
                max_tokens=0,
                val_fraction=0.1,
            )
        )


def test_max_holdout_caps_each_far_end_part_and_the_text_it_frees_trains(tmp_path):
    """data.max_holdout: the far end holds out at most that many tokens a part (validation, then
    test, still at the far end); the rest of the fractions trains; never trained on: the parts."""
    a, b = BOOK[:30_000], BOOK[50_000:70_000]
    common = dict(
        paths=files(tmp_path, a, b),
        preprocess="none",
        max_tokens=0,
        val_fraction=0.1,
        test_fraction=0.05,
        holdout="end",
    )
    corpus = data.load_corpus(data_config(**common, max_holdout=3_000))
    whole = a + "\n" + b  # 50,001 characters: 5,000 would validate, capped at 3,000; 2,500 test
    train_end, val_end = len(whole) - 3_000 - 2_500, len(whole) - 2_500
    enc = lambda text: corpus.vocab.encode(list(text))  # noqa: E731
    np.testing.assert_array_equal(corpus.train, enc(whole[:train_end]))
    np.testing.assert_array_equal(corpus.val, enc(whole[train_end:val_end]))
    np.testing.assert_array_equal(corpus.test, enc(whole[val_end:]))
    assert corpus.vocab == Vocab.build(whole[:train_end])
    # a cap above both parts changes nothing
    uncapped = data.load_corpus(data_config(**common))
    loose = data.load_corpus(data_config(**common, max_holdout=6_000))
    np.testing.assert_array_equal(loose.train, uncapped.train)
    np.testing.assert_array_equal(loose.val, uncapped.val)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"max_holdout": 1_000}, "max_holdout caps the parts a split by fraction holds out"),
        ({"max_holdout": 5, "val_fraction": 0.1}, "max_holdout .* data.batch_size \\+ 1 = 33"),
        ({"max_holdout": -1, "val_fraction": 0.1}, "max_holdout"),
        ({"max_holdout": 2**31, "val_fraction": 0.1}, "below 2\\*\\*31"),
    ],
)
def test_max_holdout_is_refused_in_one_line(fields, message):
    with pytest.raises(ConfigError, match=message) as e:
        data_config(**fields)
    assert "\n" not in str(e.value)


def test_a_capped_far_end_run_resumes_bitwise(tmp_path):
    """Training with data.max_holdout, killed after epoch 2 of 3 and resumed, ends with the same
    parameters as the run straight through."""
    from conftest import param_bytes, small_config

    from rnnjax.training.train import train_and_evaluate

    (path,) = files(tmp_path, BOOK[:12_000])
    cfg = small_config(
        3,
        **{
            "data.paths": [path],
            "data.preprocess": "none",
            "data.max_tokens": 0,
            "data.val_fraction": 0.2,
            "data.test_fraction": 0.1,
            "data.holdout": "end",
            "data.max_holdout": 600,
            "checkpoint.every_epochs": 1,
            "checkpoint.max_to_keep": 10,
        },
    )
    run = tmp_path / "run"
    straight = train_and_evaluate(cfg, run)
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    import shutil

    shutil.rmtree(run / "checkpoints" / str(steps[-1]))  # killed before epoch 3's save
    resumed = train_and_evaluate(cfg, run)
    assert param_bytes(resumed["params"]) == param_bytes(straight["params"])
    assert [r["epoch"] for r in resumed["metrics"]] == [1, 2, 3]
    corpus = data.load_corpus(resolve(cfg).data)
    assert len(corpus.val) == 600 and len(corpus.test) == 600  # 2,400 and 1,200 capped
