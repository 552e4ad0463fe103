"""The run directory's own files (everything but ``checkpoints/``, which orbax owns).

``config.json`` and ``vocab.json`` (the run's one copy of each), ``metrics.jsonl`` (read, append,
truncate), atomic writes, and what counts as a run's history (whether a workdir may be resumed).
Paths are absolute from here on: :func:`resolve_path` is called once, where a user's path enters.
The one-trainer lock is :mod:`rnnjax.rundir.lock`.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import math
import os
import pathlib
import shutil
from collections.abc import Callable
from typing import Any, BinaryIO

from rnnjax.config import Config, ConfigError, first_difference
from rnnjax.config import resolve as resolve_config
from rnnjax.dataset.vocab import UNK, Vocab

# train_and_evaluate's ``resume``: how a run treats a workdir that already holds checkpoints.
# The files of a run directory and of a sweep's, by name: every module names them through these.
METRICS = "metrics.jsonl"  # one record per epoch (docs/training.md#files)
CONFIG = "config.json"  # the run's resolved config
VOCAB = "vocab.json"
BUDGET = "budget.json"  # train.max_minutes's measured budget (rnnjax.training.budget)
EVALUATION = "evaluation.json"  # what a finished run reports (rnnjax.training.evaluation)
CURVES = "curves.png"
SAMPLES = "samples.txt"
LOCK = ".lock"  # held while a process trains in the workdir (rnnjax.rundir.lock)
CHECKPOINTS = "checkpoints"  # orbax's directory (rnnjax.rundir.checkpoint)
DISCARDED = "discarded"  # what --resume=restart and recoveries move aside, never deleted
DAMAGED = "damaged"  # damaged checkpoint steps, moved aside by rnnjax.rundir.checkpoint
RESULT = "result.json"  # a sweep trial's row (rnnjax.sweeps.sweep)
ERROR = "error.txt"  # a failed trial's traceback
RESULTS_CSV = "results.csv"  # a sweep's summary (rnnjax.sweeps.sweep_summary)
RESULTS_MD = "results.md"
SWEEP_PLOT = "sweep.png"

RESUME_MODES = ("auto", "must", "never", "restart")


class WorkdirError(RuntimeError):
    """A run directory cannot be used as asked; the message says why and what to do."""


def resolve_path(path: str | os.PathLike) -> pathlib.Path:
    """A user's path made absolute against the current directory (``~`` expanded, symlinks
    resolved); a symbolic link loop is a one-line :class:`WorkdirError`."""
    try:
        return pathlib.Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as e:  # a symlink loop: RuntimeError before Python 3.13
        raise WorkdirError(
            f"{path} is a loop of symbolic links ({e}); give a path that leads to a "
            "file or directory"
        ) from None


def shown(path: str | os.PathLike) -> str:
    """``path`` relative to the current directory when it lies under it (as a user would type
    it)."""
    p = pathlib.Path(path)
    try:
        return str(p.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(p)


def check_writable(workdir: pathlib.Path) -> None:
    """Refuse, creating nothing, a workdir that is a file, lies under a file, or cannot be
    written."""
    for p in [workdir, *workdir.parents]:
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == workdir else f"lies under {p}, which is a file"
                raise WorkdirError(f"workdir {workdir} {what}; give a directory with --workdir")
            if not os.access(p, os.W_OK | os.X_OK):
                raise WorkdirError(
                    f"workdir {workdir}: {p} is not writable; give a writable --workdir"
                )
            return


def refuse_directory(path: pathlib.Path, where: str = "a file belongs") -> None:
    """One line (:class:`WorkdirError`) when ``path`` is a directory (not a link to one) where
    ``where`` says what belongs."""
    if path.is_dir() and not path.is_symlink():
        raise WorkdirError(f"{path} is a directory where {where}; move it aside and rerun")


def write_atomic(path: pathlib.Path, data: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``path`` whole or not at all, and never through a link: into ``NAME.tmp`` beside it
    (created afresh, ``O_EXCL | O_NOFOLLOW``; a left-over or planted one is removed first),
    fsynced, then renamed over ``path``, which replaces a link there rather than following it.
    ``data``: text (UTF-8), bytes, or a function that writes to the open binary file (a plot's
    ``savefig``). On any error the temporary file is removed and ``path`` is as it was; a
    directory where the file belongs is a one-line :class:`WorkdirError`."""
    path = pathlib.Path(path)
    refuse_directory(path)
    tmp = path.with_name(path.name + ".tmp")
    refuse_directory(tmp, f"rnnjax writes {path.name} first")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and e.filename is None:  # a failed write names no file
            e.filename = str(path)
        raise


def read_json(path: pathlib.Path) -> Any:
    """A JSON file of the run; a damaged one is a one-line :class:`WorkdirError`."""
    refuse_directory(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise WorkdirError(
            f"{path} is damaged ({type(e).__name__}); restore it from a copy, or use another "
            "--workdir"
        ) from None


def write_run(workdir: pathlib.Path, cfg: Config, vocab: Vocab) -> None:
    """Write the run's ``config.json`` and ``vocab.json`` (atomically)."""
    write_atomic(workdir / CONFIG, json.dumps(cfg.to_dict(), indent=2))
    write_atomic(workdir / VOCAB, vocab.to_json())


def read_config(workdir: pathlib.Path) -> dict[str, Any] | None:
    """The run's config as saved (a dict, for :func:`rnnjax.config.resolve`); None if there is none
    yet."""
    path = workdir / CONFIG
    if not path.exists():
        return None
    saved = read_json(path)
    if not isinstance(saved, dict):
        raise WorkdirError(
            f"{path} is damaged (not a JSON object); restore it from a copy, or use another "
            "--workdir"
        )
    return saved


def read_vocab(workdir: pathlib.Path) -> Vocab | None:
    """The run's vocabulary; None if there is none yet."""
    path = workdir / VOCAB
    if not path.exists():
        return None
    saved = read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("idx_to_token"), list):
        raise WorkdirError(
            f"{path} is damaged (no idx_to_token list); restore it from a copy, or use another "
            "--workdir"
        )
    tokens = saved["idx_to_token"]
    why = (
        "a token is not a string"
        if not all(isinstance(t, str) for t in tokens)
        else "no '<unk>' token"
        if UNK not in tokens
        else f"token {next(t for t in tokens if tokens.count(t) > 1)!r} twice"
        if len(set(tokens)) != len(tokens)
        else None
    )
    if why:
        raise WorkdirError(
            f"{path} is damaged ({why}); restore it from a copy, or use another --workdir"
        )
    return Vocab(tuple(tokens))


def has_checkpoint(workdir: str | os.PathLike) -> bool:
    d = pathlib.Path(workdir) / CHECKPOINTS
    return d.is_dir() and any(p.name.isdigit() and p.is_dir() for p in d.iterdir())


def holds_sweep(workdir: str | os.PathLike) -> bool:
    """Whether ``workdir`` is a sweep's folder: trial folders with a ``result.json``, or the
    sweep's ``results.csv``."""
    d = pathlib.Path(workdir)
    return (d / RESULTS_CSV).exists() or any(d.glob(f"*/{RESULT}"))


def _field(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return list(d) if isinstance(d, tuple) else d


def check_resumable(workdir: pathlib.Path, cfg: Config, vocab: Vocab, resume: str) -> None:
    """Refuse a workdir that holds another run (config, vocabulary) or history without a
    checkpoint."""
    from rnnjax.rundir.checkpoint import (
        CheckpointError,
    )  # orbax is imported only where checkpoints are used

    if resume != "restart" and not has_checkpoint(workdir) and (found := history(workdir)):
        raise WorkdirError(
            f"{workdir} holds {' and '.join(found)} but no checkpoint to resume from; "
            "use a new --workdir, or --resume=restart to keep them in discarded/ and start over"
        )
    if resume == "restart":
        return  # the old run (config, vocabulary, history) is set aside whole: any config may start
    saved = read_config(workdir)
    lost = [n for n, v in ((CONFIG, saved), (VOCAB, read_vocab(workdir))) if v is None]
    if lost and has_checkpoint(workdir):  # the run's one copy: another config would pass unseen
        raise WorkdirError(
            f"{workdir} holds checkpoints but no {' or '.join(lost)}; restore it from a copy, or "
            "--resume=restart to keep the run in discarded/ and start over"
        )
    unresolved = None
    if saved is not None:
        try:  # fields added since the run was saved take their defaults (what the run trained with)
            saved = resolve_config(saved).to_dict()
        except ConfigError as e:
            unresolved = e  # compared as saved: the first difference names the field
    if saved is not None and (field := first_difference(saved, cfg.to_dict())):
        was, now = _field(saved, field), _field(cfg.to_dict(), field)
        if unresolved is not None and was is None:  # a section or field the file lacks: damage
            raise WorkdirError(
                f"{workdir / 'config.json'} has no config.{field} ({unresolved}); restore it "
                "from a copy, or --resume=restart to keep the run in discarded/ and start over"
            )
        raise CheckpointError(
            f"{workdir} holds a run with a different config.{field} ({was!r} there, {now!r} here); "
            "use another --workdir, or the run's own config"
        )
    saved_vocab = read_vocab(workdir)
    if saved_vocab is not None and saved_vocab != vocab:
        raise CheckpointError(
            f"{workdir} holds a run with a different vocabulary; use another --workdir"
        )


def _finite(value: Any) -> Any:
    if isinstance(value, list):  # per-layer values
        return [_finite(v) for v in value]
    if isinstance(value, dict):  # per-source values
        return {k: _finite(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def finite(record: dict[str, Any]) -> dict[str, Any]:
    """The record with non-finite numbers (in per-layer lists too) as ``None`` (bare ``NaN`` is not
    JSON)."""
    return {k: _finite(v) for k, v in record.items()}


class Key:
    """The keys of a run's records that code reads by name, each written once: ``metrics.jsonl``'s
    epoch records (:func:`rnnjax.training.metrics.epoch_record` writes them), the checkpoints' meta
    and ``result.json``. A training metric's own entry is named by its registry entry
    (:data:`rnnjax.training.steps.TRAIN_METRICS`); the evaluation passes write
    ``<split>_<name>``."""

    EPOCH = "epoch"
    STEP = "step"
    TRAIN_PPL = "train_ppl"
    VAL_PPL = "val_ppl"
    TEST_PPL = "test_ppl"
    TRAIN_BPC = "train_bpc"
    VAL_BPC = "val_bpc"
    TEST_BPC = "test_bpc"
    TOKENS_PER_SEC = "tokens_per_sec"
    GRAD_NORM = "grad_norm"
    GRAD_NORM_LAYERS = "grad_norm_layers"
    GRAD_NORM_OUTPUT = "grad_norm_output"
    LR = "lr"
    SKIPPED_STEPS = "skipped_steps"
    WALL_TIME = "wall_time"
    H_RMS = "h_rms"
    GATE_SATURATION = "gate_saturation"
    FORGET_GATE = "forget_gate"
    MEMORY_LENGTH = "memory_length"
    IMPL = "impl"
    BEST_EPOCH = "best_epoch"


def encode_record(record: dict[str, Any]) -> str:
    """One JSON line; non-finite numbers become ``null``."""
    return json.dumps(finite(record), allow_nan=False) + "\n"


# Record fields that hold a number (or null: not measured); the others are read as they are.
_NUMBERS = (Key.STEP, Key.TRAIN_PPL, Key.VAL_PPL, Key.TRAIN_BPC, Key.VAL_BPC, Key.LR, Key.WALL_TIME)


def _record_problem(record: Any, previous: int) -> str | None:
    """Why a ``metrics.jsonl`` record cannot be used (None: it can): it must be an object whose
    ``epoch`` is a whole number after ``previous`` and whose :data:`_NUMBERS` are numbers."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not a record"
    epoch = record.get(Key.EPOCH)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        return f"has epoch {epoch!r}, not a whole number >= 1"
    if epoch <= previous:
        return (
            f"has epoch {epoch} after epoch {previous} on the line before (epochs must "
            "increase: one of the two is wrong)"
        )
    for k in _NUMBERS:
        v = record.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"has {k} {v!r}, not a number"
        if k.endswith("_ppl") and v is not None and not v >= 1:
            return f"has {k} {v!r}, not a perplexity (>= 1)"
    return None


def read_metrics(path: pathlib.Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` ([] if absent), each an object with a whole ``epoch``,
    epochs increasing. A torn last line (a kill mid-write) is dropped with a warning; any other
    line that is not such a record is a one-line :class:`WorkdirError` naming it."""
    if not path.exists():
        return []
    refuse_directory(path)
    lines = [
        (i, x)
        for i, x in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines())
        if x.strip()
    ]
    records: list[dict[str, Any]] = []
    for k, (i, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if k == len(lines) - 1:
                logging.warning(
                    "%s: line %d, the last, is not JSON: dropped as a half-written last line (a "
                    "run killed mid-write leaves one; its record comes back from a checkpoint "
                    "that holds it)",
                    path,
                    i + 1,
                )
                break
            problem = "is not JSON"
        else:
            problem = _record_problem(record, records[-1][Key.EPOCH] if records else 0)
        if problem:
            raise WorkdirError(f"{path} line {i + 1} {problem}; fix or remove the wrong line")
        records.append(record)
    return records


def write_metrics(path: pathlib.Path, records: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(encode_record(r) for r in records))


def append_metrics(path: pathlib.Path, record: dict[str, Any]) -> None:
    """Append one record, flushed and fsynced. Never through a link: a ``metrics.jsonl`` that is
    one is rewritten (atomically) as a file of the run's own, the records kept."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        write_metrics(path, [*read_metrics(path), record])
        return
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(encode_record(record))
        f.flush()
        os.fsync(f.fileno())


def history(workdir: pathlib.Path) -> list[str]:
    """What a workdir holds that a fresh start would lose: metric records, damaged checkpoints."""
    found = []
    n = len(read_metrics(workdir / METRICS)) if (workdir / METRICS).exists() else 0
    if n:
        found.append(f"{n} epoch record(s) in metrics.jsonl")
    damaged = workdir / DAMAGED
    if damaged.is_dir() and any(damaged.iterdir()):
        found.append(f"{sum(1 for _ in damaged.iterdir())} damaged checkpoint(s) in damaged/")
    return found


def set_aside(workdir: pathlib.Path) -> pathlib.Path | None:
    """Move a workdir's files (not the lock) into ``WORKDIR/discarded/<UTC time>/``; nothing is
    deleted."""
    names = [p for p in workdir.iterdir() if p.name not in (LOCK, DISCARDED)]
    if not names:
        return None
    dest = (
        workdir
        / DISCARDED
        / datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    )
    dest.mkdir(parents=True)
    for p in names:
        shutil.move(str(p), str(dest / p.name))
    return dest
