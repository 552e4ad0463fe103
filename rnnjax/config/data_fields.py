"""The ``data`` group's fields: the corpus, its splits and the minibatches."""

from __future__ import annotations

from typing import Any

from rnnjax.config.fields import Field, Rule, at_least, fraction, is_int, one_of, strings


def _num_val_rule(c: Any) -> str:
    return f"an integer >= data.batch_size + 1 = {c.data.batch_size + 1}"


def _num_test_rule(c: Any) -> str:
    return f"0 (no test split) or an integer >= data.batch_size + 1 = {c.data.batch_size + 1}"


def _num_test_ok(v: Any, c: Any) -> bool:
    return is_int(v) and (v == 0 or v >= c.data.batch_size + 1 or c.data.val_fraction > 0)


def _test_needs_val(c: Any) -> str | None:
    if c.data.test_fraction > 0 and c.data.val_fraction == 0:
        return (
            "config.data.test_fraction needs config.data.val_fraction > 0 too (splits by "
            "fraction always validate); set both, e.g. 0.05 and 0.05"
        )
    return None


def _needs_fraction(c: Any) -> str | None:
    dt = c.data
    if dt.val_fraction > 0:
        return None
    if dt.holdout != "file":
        return (
            f"config.data.holdout = {dt.holdout!r} needs config.data.val_fraction > 0 (it places "
            "the split by fraction); e.g. val_fraction 0.05 and test_fraction 0.05"
        )
    if dt.test_paths:
        return (
            "config.data.test_paths needs config.data.val_fraction > 0 (a split by fraction); "
            "e.g. --config.data.val_fraction=0.05"
        )
    if dt.max_holdout:
        return (
            "config.data.max_holdout caps the parts a split by fraction holds out: set "
            "config.data.val_fraction > 0 too (e.g. 0.05), or leave max_holdout at 0"
        )
    return None


def _max_holdout_rule(c: Any) -> str:
    return f"0 (no cap) or an integer >= data.batch_size + 1 = {c.data.batch_size + 1}"


def _max_holdout_ok(v: Any, c: Any) -> bool:
    return is_int(v) and (v == 0 or v >= c.data.batch_size + 1)


def _fractions_leave_training(c: Any) -> str | None:
    dt = c.data
    if dt.val_fraction + dt.test_fraction < 0.9:
        return None
    return (
        f"config.data.val_fraction = {dt.val_fraction!r} is not allowed: with "
        f"data.test_fraction = {dt.test_fraction}, they must leave at least 10% of each file "
        "to train"
    )


# Each group: its one-line doc, then its fields and cross-field rules, checked in this order.
GROUPS: dict[str, tuple[str, list[Field | Rule]]] = {
    "data": (
        "The corpus, its splits and the minibatches (rnnjax/dataset/data.py).",
        [
            Field(
                "paths",
                [],
                "UTF-8 text files, concatenated in order; [] = the bundled Time Machine.",
                "a list of file paths",
                lambda v, c: strings()["ok"](v, c) and all(v),
            ),
            Field(
                "preprocess",
                "d2l",
                "'d2l': every run of non-letters -> one space, then lower-case; 'none': raw text.",
                **one_of("d2l", "none"),
            ),
            Field(
                "tokenizer",
                "char",
                "'char' or 'word' (whitespace-separated) tokens.",
                **one_of("char", "word"),
            ),
            Field(
                "min_freq",
                0,
                "Tokens seen fewer times than this in the training split map to <unk>.",
                **at_least(0),
            ),
            Field(
                "reserved_tokens",
                [],
                "Extra tokens always in the vocabulary (e.g. ['<pad>']).",
                **strings(),
            ),
            Field("batch_size", 32, "Streams per minibatch: [batch, time] rows.", **at_least(1)),
            Field(
                "num_steps", 35, "Time steps per minibatch: [batch, time] columns.", **at_least(1)
            ),
            Field(
                "max_tokens",
                10_000,
                "Splits by count (d2l's): the first max_tokens tokens train "
                "(0: every token before the held-out ones).",
                "an integer >= 2, or 0 for every training token",
                lambda v, c: is_int(v) and (v >= 2 or v == 0),
            ),
            Field(
                "num_val",
                5_000,
                "The next num_val tokens validate (ignored when val_fraction > 0).",
                _num_val_rule,
                lambda v, c: is_int(v) and v >= c.data.batch_size + 1,
            ),
            Field(
                "num_test",
                0,
                "The next num_test tokens test; 0 = no test split (ignored when val_fraction > 0).",
                _num_test_rule,
                _num_test_ok,
                added=True,
            ),
            Field(
                "val_fraction",
                0.0,
                "Splits by fraction when > 0: the val_fraction of each file before its test "
                "part validates, the rest trains (capped at max_tokens unless 0); several files "
                "are then also evaluated per file.",
                **fraction(),
                added=True,
            ),
            Field(
                "test_fraction",
                0.0,
                "With val_fraction > 0: the last test_fraction of each file tests.",
                **fraction(),
                added=True,
            ),
            Field(
                "holdout",
                "file",
                "Where splits by fraction hold text out: 'file' (each file's validation then "
                "test part at its own end, right after its training text) or 'end' (the files "
                "concatenated, validation then test at the far end of the corpus: text that "
                "does not continue the training text).",
                **one_of("file", "end"),
                added=True,
            ),
            Field(
                "max_holdout",
                0,
                "With val_fraction > 0: at most this many tokens in each held-out part (a "
                "file's validation part and its test part; with holdout='end', the corpus's), "
                "still at the far end; the text the cap frees trains. 0 = no cap.",
                _max_holdout_rule,
                _max_holdout_ok,
                added=True,
            ),
            Field(
                "test_paths",
                [],
                "Files held out whole as the test split, never trained on, each scored on its "
                "own (with val_fraction > 0; test_fraction then adds the corpus's own part).",
                "a list of file paths",
                lambda v, c: strings()["ok"](v, c) and all(v),
                added=True,
            ),
            Rule("test_paths, holdout and max_holdout split by fraction.", _needs_fraction),
            Rule("test_fraction needs val_fraction > 0.", _test_needs_val),
            Rule(
                "val_fraction + test_fraction leave at least 10% of each file to train.",
                _fractions_leave_training,
            ),
            Field(
                "sampler",
                "sequential",
                "'sequential' (carry kept across minibatches) or 'random' (carry reset each "
                "minibatch).",
                **one_of("sequential", "random"),
            ),
            Field(
                "max_file_mb",
                1024,
                "Refuse a text file larger than this many MiB (a guard against a wrong path); "
                "raise it for big corpora.",
                "an integer >= 1 (MiB)",
                lambda v, c: is_int(v) and v >= 1,
                resumable=True,
                added=True,
            ),
        ],
    ),
}
