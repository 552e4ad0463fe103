"""Is a checkpoint whole? Damage found before reading (missing or unreadable files), in storage
errors while reading, as "disk full" while writing, and by a sha256 of every array.

Only what this module calls damage makes :class:`rnnjax.rundir.checkpoint.Checkpointer` skip a step;
any other error is a bug or a mismatch and is raised as it is.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pathlib
import re
import sys
import warnings
from typing import Any

import numpy as np

# Storage errors (tensorstore status codes and messages) that mean damaged files, not a bug.
_STORAGE_DAMAGE = re.compile(
    r"NOT_FOUND|DATA_LOSS|OUT_OF_RANGE|Error reading|Error opening|Error decoding|"
    r"while reading array|Unexpected end|[Cc]orrupt|[Tt]runcated|[Cc]hecksum|Failed to decode|"
    r"Failed to parse|Invalid .*(header|manifest)"
)


def _is_array_data(rel: pathlib.PurePath) -> bool:
    """Tensorstore's binary files (OCDBT: ``manifest.ocdbt``, data under ``d/``)."""
    return rel.name == "manifest.ocdbt" or "d" in rel.parts[:-1]


def damaged_text_file(step_dir: pathlib.Path) -> str | None:
    """The first file of a step that is empty (orbax writes none), or that orbax wrote as text (JSON
    metadata, sharding, commit notes: every file but tensorstore's binary array data) and cannot be
    read, is not UTF-8, or starts as JSON and does not parse; None if there is none. Every file is
    checked, whatever orbax names it; array data is checked by tensorstore and the checksums."""
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(step_dir)
        try:
            if path.stat().st_size == 0:
                return f"{rel} is empty"
            if _is_array_data(rel):
                continue
            text = path.read_bytes().decode("utf-8")
            if text.lstrip()[:1] in ("{", "["):
                json.loads(text)
        except OSError as e:
            return f"{rel} cannot be read ({e.strerror})"
        except UnicodeDecodeError as e:
            return f"{rel} is not UTF-8 text (byte {e.start})"
        except ValueError as e:
            return f"{rel} is not valid JSON ({type(e).__name__})"
    return None


def find_damage(step_dir: pathlib.Path) -> str | None:
    """What is missing or unreadable in a step directory, checked before orbax reads it (None: looks
    whole)."""
    if not step_dir.is_dir() or not any(step_dir.iterdir()):
        return "empty step directory"
    meta = step_dir / "meta" / "metadata"
    if not meta.is_file():
        return "missing metadata (meta/metadata)"
    try:
        meta = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable metadata ({type(e).__name__})"
    if not isinstance(meta, dict):
        return "unreadable metadata (not a JSON object)"
    items = (
        ("params", "state") if meta.get("layout", 1) >= 2 else ("state",)
    )  # layout 1: params inside state
    if meta.get("average"):  # train.weight_average's params
        items += ("average",)
    for item in items:
        for name in ("_METADATA", "manifest.ocdbt"):
            if not (step_dir / item / name).is_file():
                return f"missing array data ({item}/{name})"
        try:
            json.loads((step_dir / item / "_METADATA").read_text())
        except (OSError, ValueError) as e:
            return f"unreadable array metadata ({item}/_METADATA, {type(e).__name__})"
    return damaged_text_file(step_dir)


def storage_damage(error: BaseException) -> str | None:
    """A one-line reason if ``error`` (raised while reading arrays) means damaged files; None
    otherwise."""
    while error is not None:
        text = str(error)
        damage = (FileNotFoundError, EOFError, json.JSONDecodeError, UnicodeDecodeError)
        if isinstance(error, damage) or _STORAGE_DAMAGE.search(text):  # decoding orbax's files
            first = (text.strip().splitlines() or [type(error).__name__])[0]
            return first.split(" See full TensorStore details")[0][:200]
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def orbax_errors_quiet():
    """Orbax logs an error (with a traceback) from each worker thread before raising; the caller
    reports the one exception that comes out, so those logs are held back while it runs."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


_abandoned_reads_quiet = False


def quiet_abandoned_reads() -> None:
    """For a process that reads checkpoints a trainer may be rotating (a read-only
    :class:`rnnjax.rundir.checkpoint.Checkpointer`, or a read that raced a rotation). When a step is
    deleted while orbax reads it (the reader then reads another step), orbax's abandoned asyncio
    reads still finish later in tensorstore's threads, each reporting ``RuntimeError: Event loop
    is closed`` as an unraisable exception; a read coroutine of the deleted step is collected
    unawaited (a RuntimeWarning) or with its "Encountered error while reading array index", and
    asyncio logs a failed read task as "exception was never retrieved". Those reports are noise,
    not damage: from the first call on, this process drops exactly them."""
    global _abandoned_reads_quiet
    if _abandoned_reads_quiet:
        return
    _abandoned_reads_quiet = True
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
            return
        if str(e).startswith("Encountered error while reading array index"):
            return  # an orbax read coroutine of the deleted step, collected unawaited
        previous(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_not_an_abandoned_read)
    warnings.filterwarnings(  # a read coroutine of the deleted step never awaited
        "ignore",
        message="coroutine '_read_array_index_and_device_put' was never awaited",
        category=RuntimeWarning,
    )


def _not_an_abandoned_read(record: logging.LogRecord) -> bool:
    """False for asyncio's "exception was never retrieved" report of an orbax/tensorstore read."""
    text = record.getMessage()
    return not (
        "exception was never retrieved" in text
        and any(k in text for k in ("while reading array index", "OCDBT", "TensorStore"))
    )


# What a full disk looks like to a writer, and how a message names it: errno, strerror.
_NO_SPACE = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit reached (ulimit -f)",
}


def no_space(error: BaseException | None) -> str | None:
    """What ran out if ``error`` (or what caused it) is a writer out of room: "disk full", "disk
    quota exceeded" or "file size limit reached (ulimit -f)", as an OSError or in a tensorstore
    message; None for any other error."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return _NO_SPACE[error.errno]
        for code, what in _NO_SPACE.items():
            if os.strerror(code) in str(error):
                return what
        error = error.__cause__ or error.__context__
    return None


def disk_full(error: BaseException | None) -> bool:
    """True if ``error`` (or what caused it) is a writer out of room (:func:`no_space`)."""
    return no_space(error) is not None


def size(path: pathlib.Path) -> int:
    """The disk space the files under ``path`` take (allocated blocks, not their lengths: a
    checkpoint's dozens of small files each fill at least one block)."""
    return sum(
        max(p.stat().st_blocks * 512, p.stat().st_size) for p in path.rglob("*") if p.is_file()
    )


def leaves(tree: Any) -> list[tuple[str, Any]]:
    import jax

    return [
        (jax.tree_util.keystr(path), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def checksums(tree: Any) -> dict[str, str]:
    """sha256 of every fully addressable array in ``tree`` (bytes, dtype and shape), by key path."""
    out = {}
    for name, leaf in leaves(tree):
        if getattr(leaf, "is_fully_addressable", True):
            a = np.ascontiguousarray(np.asarray(leaf))
            out[name] = hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()
    return out


def verify_checksums(tree: Any, expected: dict[str, str] | None) -> str | None:
    """None if every recorded checksum matches (or none were recorded), else a one-line reason."""
    if not expected:
        return None  # a checkpoint written before checksums were recorded
    actual = checksums(tree)
    bad = sorted(k for k, v in expected.items() if k in actual and actual[k] != v)
    return f"checksum mismatch in {len(bad)} array(s), first {bad[0]}" if bad else None
