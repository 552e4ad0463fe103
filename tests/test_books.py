"""More books: corpus-scale splits (whole corpus, by fraction per file, a test split), compact
token arrays, bits per character, early stopping with the best checkpoint, per-file evaluation,
and scripts/evaluate.py."""

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, small_config

import rnnjax
from rnnjax.config import ConfigError, default_config, resolve
from rnnjax.dataset import data
from rnnjax.dataset.vocab import Vocab
from rnnjax.training.evaluation import perplexity

BOOK = pathlib.Path(data.bundled_path()).read_text()
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def data_config(**fields):
    cfg = default_config()
    for k, v in fields.items():
        setattr(cfg.data, k, v)
    return resolve(cfg).data


def test_max_tokens_zero_trains_on_everything_before_the_held_out_tokens():
    corpus = data.load_corpus(data_config(max_tokens=0, num_val=5_000, num_test=3_000))
    n = len(data.tokenize(data.preprocess(BOOK, "d2l"), "char"))
    assert (len(corpus.train), len(corpus.val), len(corpus.test)) == (n - 8_000, 5_000, 3_000)
    assert (
        corpus.train.dtype == np.uint8 and corpus.val.dtype == np.uint8
    )  # 28 tokens: one byte each
    ids = corpus.vocab.encode(data.tokenize(data.preprocess(BOOK, "d2l"), "char"))
    np.testing.assert_array_equal(np.concatenate([corpus.train, corpus.val, corpus.test]), ids)
    assert len(corpus.vocab) == 28


@pytest.mark.parametrize("text", [BOOK[:20_000], "naïve café — “quoted” €5\n" * 300 + BOOK[:3000]])
def test_compact_char_path_equals_the_token_list_path(text):
    """The code-point path (no Python list of characters) gives the vocabulary and ids of
    Vocab.build/encode."""
    tokens = data.Tokens(text, "char")
    vocab = Vocab.from_counts(tokens.counts(0, 5000), reserved_tokens=["<pad>"])
    assert vocab == Vocab.build(list(text[:5000]), reserved_tokens=["<pad>"])
    ids = tokens.encode(vocab)
    np.testing.assert_array_equal(ids, vocab.encode(list(text)))
    assert ids.dtype == np.uint8
    assert (ids == vocab.unk).sum() == sum(c not in text[:5000] for c in text)


def test_by_fraction_each_file_gives_its_tail_to_validation_then_test(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(BOOK[:30_000])
    b.write_text(BOOK[50_000:70_000])
    corpus = data.load_corpus(
        data_config(
            paths=[str(a), str(b)],
            preprocess="none",
            max_tokens=0,
            val_fraction=0.1,
            test_fraction=0.05,
        )
    )
    assert corpus.sources == ["a.txt", "b.txt"]
    enc = lambda text: corpus.vocab.encode(list(text))  # noqa: E731
    (na, va), (nb, vb) = corpus.val_parts
    (_, ta), (_, tb) = corpus.test_parts
    np.testing.assert_array_equal(va, enc(BOOK[25_500:28_500]))  # 10% before the last 5% of a.txt
    np.testing.assert_array_equal(ta, enc(BOOK[28_500:30_000]))
    np.testing.assert_array_equal(vb, enc(BOOK[67_000:69_000]))
    np.testing.assert_array_equal(tb, enc(BOOK[69_000:70_000]))
    np.testing.assert_array_equal(corpus.train, enc(BOOK[:25_500] + BOOK[50_000:67_000]))
    assert corpus.vocab == Vocab.build(
        BOOK[:25_500] + BOOK[50_000:67_000]
    )  # built on the training parts only
    capped = data.load_corpus(
        data_config(
            paths=[str(a), str(b)],
            preprocess="none",
            max_tokens=10_000,
            val_fraction=0.1,
            test_fraction=0.05,
        )
    )
    np.testing.assert_array_equal(capped.train, corpus.train[:10_000])
    np.testing.assert_array_equal(capped.val_parts[1][1], vb)


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"test_fraction": 0.05},
            r"config\.data\.test_fraction needs config\.data\.val_fraction > 0",
        ),
        (
            {"val_fraction": 0.6, "test_fraction": 0.4},
            r"config\.data\.val_fraction = 0\.6 is not allowed: .*10%",
        ),
        (
            {"val_fraction": 1e-4},
            r"config\.data\.val_fraction = 0\.0001 leaves timemachine\.txt 17 validation tokens, "
            r"fewer than data\.batch_size \+ 1 = 33; raise data\.val_fraction",
        ),
        (
            {"max_tokens": 0, "num_val": 100_000, "num_test": 100_000},
            r"config\.data\.num_val \+ config\.data\.num_test = "
            r"200000 leaves 0 of the corpus's \d+ char tokens",
        ),
        (
            {"num_test": 5},
            r"config\.data\.num_test = 5 is not allowed: 0 \(no test split\) or an integer >= ",
        ),
        (
            {"paths": [data.bundled_path(), data.bundled_path()], "val_fraction": 0.05},
            r"config\.data\.paths lists '.*timemachine\.txt' twice; .* give each file once",
        ),
    ],
)
def test_bad_splits_are_one_line_errors(fields, message):
    with pytest.raises(ConfigError, match=message):
        data.load_corpus(data_config(**fields))


@pytest.mark.parametrize(
    "fields",
    [
        {"train.early_stopping_patience": 2},
        {"data.num_test": 100},
        {"data.val_fraction": 0.05, "data.test_fraction": 0.05},
    ],
)
def test_vectorized_sweeps_refuse_early_stopping_and_test_splits_before_anything_runs(
    tmp_path, fields
):
    from rnnjax.sweeps.sweep import run_sweep

    with pytest.raises(
        ConfigError, match=r"vectorized trials .*(early_stopping_patience = 0|test_fraction = 0)"
    ):
        run_sweep(small_config(2, **fields), {"seed": [0, 1]}, tmp_path / "sweep", vectorize=True)
    assert not (tmp_path / "sweep").exists()


def test_early_stopping_keeps_the_best_epoch_and_tests_with_it(tmp_path):
    """Adam at a high rate overfits the 2,000-token smoke corpus within a few epochs: the run stops
    `patience` epochs after its best, has that epoch's checkpoint, and its test perplexity is the
    best checkpoint's on the test split. Rerunning trains nothing; a larger patience goes on."""
    fields = {
        "train.optimizer": "adam",
        "train.learning_rate": 0.02,
        "train.early_stopping_patience": 2,
        "checkpoint.every_epochs": 5,
        "data.num_test": 400,
    }
    cfg = small_config(40, **fields)
    s = rnnjax.train_and_evaluate(cfg, tmp_path / "run")
    records = s["metrics"]
    best = min(records, key=lambda r: r["val_ppl"])
    assert s["stopped_early_at"] == records[-1]["epoch"] == best["epoch"] + 2 < 40
    assert all(r["val_ppl"] > best["val_ppl"] for r in records if r["epoch"] > best["epoch"])
    run = rnnjax.load(
        tmp_path / "run"
    )  # step="best": the best epoch itself, though it is no every_epochs multiple
    assert run.step == best["step"] and s["best_saved_epoch"] == best["epoch"]
    corpus = data.load_corpus(resolve(cfg).data)
    expected = perplexity(run.model, run.params, corpus.test, 8, 10)
    assert s["test_ppl"] == pytest.approx(expected, rel=1e-6) and s["test_bpc"] == pytest.approx(
        math.log2(expected)
    )
    saved = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert (
        saved["test_ppl"] == pytest.approx(expected, rel=1e-6)
        and saved["best_epoch"] == best["epoch"]
    )
    assert saved["stopped_early_at"] == records[-1]["epoch"]
    assert all(r["val_bpc"] == pytest.approx(math.log2(r["val_ppl"])) for r in records)
    assert s["samples"] == run.generate(
        ["time traveller", "traveller"], 20
    )  # samples from the best checkpoint

    again = rnnjax.train_and_evaluate(cfg, tmp_path / "run")
    assert len(again["metrics"]) == len(records) and again["test_ppl"] == pytest.approx(
        s["test_ppl"], rel=1e-6
    )
    more = rnnjax.train_and_evaluate(
        small_config(40, **{**fields, "train.early_stopping_patience": 4}), tmp_path / "run"
    )
    assert len(more["metrics"]) > len(records)
    assert [r["val_ppl"] for r in more["metrics"][: len(records)]] == [
        r["val_ppl"] for r in records
    ]


@pytest.mark.exhaustive  # by default: test_early_stopping_keeps_the_best_epoch_and_tests_with_it
def test_several_files_are_validated_and_tested_one_by_one(tmp_path):
    for name, text in (("a.txt", BOOK[:40_000]), ("b.txt", BOOK[100_000:130_000])):
        (tmp_path / name).write_text(text)
    cfg = small_config(
        2,
        **{
            "data.paths": [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")],
            "data.preprocess": "none",
            "data.val_fraction": 0.05,
            "data.test_fraction": 0.05,
        },
    )
    s = rnnjax.train_and_evaluate(cfg, tmp_path / "run")
    last = s["metrics"][-1]
    corpus = data.load_corpus(resolve(cfg).data)
    counts = [
        (len(ids) - 1) // 8 * 8 for _, ids in corpus.val_parts
    ]  # tokens scored per part (8 rows)
    by = last["val_ppl_by_source"]
    assert list(by) == ["a.txt", "b.txt"] and by["a.txt"] != by["b.txt"]
    pooled = math.exp(sum(n * math.log(by[k]) for n, k in zip(counts, by)) / sum(counts))
    assert last["val_ppl"] == pytest.approx(pooled, rel=1e-5)
    assert set(s["test_ppl_by_source"]) == {"a.txt", "b.txt"} and set(
        last["val_bpc_by_source"]
    ) == {"a.txt", "b.txt"}
    run = rnnjax.load(tmp_path / "run")
    for name, ids in corpus.test_parts:
        assert s["test_ppl_by_source"][name] == pytest.approx(
            perplexity(run.model, run.params, ids, 8, 10), rel=1e-6
        )


@pytest.mark.exhaustive
@pytest.mark.slow
def test_evaluate_cli_scores_any_text_and_counts_unknown_characters(tmp_path):
    (tmp_path / "book.txt").write_text(BOOK[:3000])
    rnnjax.train_and_evaluate(
        small_config(
            1,
            **{
                "data.paths": [str(tmp_path / "book.txt")],
                "data.preprocess": "none",
                "data.num_val": 900,
            },
        ),
        tmp_path / "run",
    )
    run = rnnjax.load(tmp_path / "run")
    val_text = BOOK[2000:2900]
    (tmp_path / "val.txt").write_text(val_text)
    (tmp_path / "known.txt").write_text("".join(c for c in val_text if c in run.vocab.token_to_idx))
    (tmp_path / "other.txt").write_text("Café au lait, naïve. Café!" + BOOK[5000:6000])
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    evaluate = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--workdir=run"]

    def cli(*flags):
        return subprocess.run(
            [*evaluate, *flags], cwd=tmp_path, env=ENV, capture_output=True, text=True
        )

    own = cli("--text=val.txt")  # the run's own validation text scores its val_ppl
    assert own.returncode == 0, own.stderr
    ppl = float(own.stdout.split("perplexity ")[1].split(",")[0])
    assert ppl == pytest.approx(run.metrics[-1]["val_ppl"], rel=1e-3)
    outside = [
        c for c in val_text if c not in run.vocab.token_to_idx
    ]  # characters the first 2,000 lack
    assert (
        "bits per character" in own.stdout
        and f"{len(outside)} characters outside the vocabulary" in own.stdout
    )
    assert "every character is in the run's vocabulary" in cli("--text=known.txt").stdout
    other = cli("--text=other.txt", "--step=latest")
    text = (tmp_path / "other.txt").read_text()
    read = (
        len(text) - 1
    ) // 8 * 8 + 1  # 8 rows of equal length: the tail that does not fit is not read
    expect = sum(c not in run.vocab.token_to_idx for c in text[:read])
    assert (
        other.returncode == 0
        and f"{expect:,} characters outside the vocabulary, scored as <unk>: " in other.stdout
    )
    assert "'é' x2" in other.stdout and "'ï' x1" in other.stdout
    assert (
        f"({read - 1:,} characters scored, read as 8 rows; the last {len(text) - read} not read)"
        in other.stdout
    )
    ev = run.evaluate(text)
    assert (
        ev.unknown["é"] == 2
        and ev.num_unknown == expect
        and (ev.tokens, ev.unread) == (read - 1, len(text) - read)
    )
    tail = run.evaluate("the time machine" * 3 + "aé")  # 50 characters: 8 rows read the first 49
    assert (tail.unknown, tail.unread, tail.tokens) == (
        {},
        1,
        48,
    )  # the unread é is not reported as scored
    with pytest.raises(
        ValueError, match=r"batch_size = 5000 is more rows than the text has predictions \(\d+\)"
    ):
        run.evaluate(text, batch_size=5000)
    for flags, message in [
        (("--text=missing.txt",), "error: --text=missing.txt: does not exist; give a text file"),
        (("--text=latin1.txt",), "error: --text=latin1.txt is not UTF-8 (byte 3)"),
        (
            ("--text=val.txt", "--step=soon"),
            "error: --step=soon: give best, latest or a step number",
        ),
    ]:
        proc = cli(*flags)
        assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
            proc.stderr.strip().splitlines()[0]
        ]
        assert proc.stderr.startswith(message), proc.stderr
