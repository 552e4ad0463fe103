"""What every ``scripts/*.py`` shares: flag parsing with one-line errors, quiet library
logging, config-file loading and the user's paths.

Every error a user can cause on the command line ends as one line ``error: ...`` on stderr
and a non-zero exit status, before any compute and before anything is written.
"""

from __future__ import annotations

import ast
import difflib
import logging
import math
import os
import pathlib
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags
from ml_collections import config_flags

from rnnjax.config import FIELDS, GROUPS, ConfigError, allowed
from rnnjax.rundir.workdir import Key, WorkdirError, resolve_path, shown


class _ListValueError(ValueError):
    """A list flag's own message, already saying what to write."""


class _ListParser(flags.ArgumentParser):
    """``--config.data.paths=a.txt,b.txt`` (comma-separated) or a Python list literal ``"['a b',
    'c']"``."""

    def parse(self, argument: Any) -> list[Any]:
        if isinstance(argument, (list, tuple)):
            return list(argument)
        text = str(argument).strip()
        if not text:  # an unset shell variable, most likely: [] must be explicit
            raise _ListValueError("the value is empty; give a,b or write [] for an empty list")
        if text[:1] in ("[", "("):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise _ListValueError(
                    f"{text!r} is not a Python list; write a,b,c or \"['a', 'b']\""
                ) from None
            return list(value) if isinstance(value, (list, tuple)) else [value]
        return [part.strip() for part in text.split(",") if part.strip()]

    def flag_type(self) -> str:
        return "list"


# ml_collections cannot override list fields from the command line by itself (PITFALLS.md).
config_flags.register_flag_parser_for_type(list, _ListParser())


def fail(message: str) -> NoReturn:
    """Exit with status 1 and one line ``error: message`` on stderr."""
    sys.exit(f"error: {message}")


def user_path(path: str | os.PathLike) -> pathlib.Path:
    """A path from the command line made absolute (:func:`rnnjax.rundir.workdir.resolve_path`); a
    symbolic link loop ends the script with one line."""
    try:
        return resolve_path(path)
    except WorkdirError as e:
        fail(str(e))


_PARSERS = {bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser()}


def _value_problem(field: str, text: str) -> str | None:
    """Why ``--config.FIELD=text`` cannot be read as the field's type (parsed as ml_collections
    will), with the field's rule; None when it can (``resolve`` checks the rest)."""
    f = FIELDS[field]
    takes = f"; config.{field} takes {allowed(field)}"
    if isinstance(f.default, dict):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, dict):
            return f"flag --config.{field}={text}: not a Python dict{takes}"
        return None
    parser = None if f.literal else _PARSERS.get(type(f.default))
    if parser is None:
        return None
    try:
        parser.parse(text)
    except ValueError as e:
        pair = len(e.args) == 2 and isinstance(e.args[0], str)  # absl's bool parser: (text, value)
        said = f"{e.args[0]}: {e.args[1]!r}" if pair else str(e)
        return f"flag --config.{field}={text}: {said}{takes}"
    return None


def check_overrides(argv: Sequence[str], flag: str = "config") -> None:
    """Refuse, before the config file runs: ``--config`` given twice, a missing config file,
    ``--config.FIELD=...`` for a FIELD that no config has (naming the closest field), and a value
    that cannot be read as FIELD's type (naming FIELD's rule)."""
    given = []
    for i, arg in enumerate(argv[1:], 1):
        value = arg.split("=", 1)[1] if arg.startswith((f"--{flag}=", f"-{flag}=")) else None
        if arg in (f"--{flag}", f"-{flag}") and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None:
            given.append(value)
    if len(given) > 1 and flag in flags.FLAGS:
        times = "twice" if len(given) == 2 else f"{len(given)} times"
        fail(
            f"--{flag} was given {times} ({', '.join(given)}); give it once, and change fields "
            f"with --{flag}.FIELD=VALUE"
        )
    for value in given:
        path = value.partition(":")[0]
        if not os.path.isfile(path):
            fail(
                f"config file {path} does not exist; "
                f"give a file such as --{flag}=configs/deep_lstm.py"
            )
    known = list(FIELDS)
    for arg in argv[1:]:
        if not arg.startswith(f"--{flag}."):
            continue
        field, eq, text = arg[len(flag) + 3 :].partition("=")
        if field in FIELDS:
            problem = _value_problem(field, text) if eq else None
            if problem:
                fail(problem)
            continue
        if field in GROUPS:
            continue
        dicts = [f for f in FIELDS if isinstance(FIELDS[f].default, dict)]
        parent = next((f for f in dicts if field.startswith(f + ".")), None)
        if parent:
            key = field[len(parent) + 1 :]
            example = f"--{flag}.{parent}=\"{{'{key}': ...}}\""
            fail(f"--{flag}.{field}: set the whole dict, e.g. {example}")
        group, _, leaf = field.rpartition(".")
        same = {f.rpartition(".")[2]: f for f in known if f.rpartition(".")[0] == group}
        close = difflib.get_close_matches(leaf, list(same), n=1, cutoff=0.7) if same else []
        close = [same[c] for c in close] or difflib.get_close_matches(field, known, n=1, cutoff=0.8)
        hint = f"did you mean --{flag}.{close[0]}?" if close else "docs/config.md lists every field"
        fail(f"--{flag}.{field} is not a config field; {hint}")


def _explain(e: Exception) -> str:
    """One line for an exception raised while parsing flags (loading the config file, overrides)."""
    chain, x = [], e
    while x is not None and len(chain) < 10:
        chain.append(x)
        x = x.__cause__ or x.__context__
    raised = [x for x in chain if isinstance(x, ConfigError)]
    if (
        raised
    ):  # the deepest: ml_collections re-raises get_config()'s error with a traceback as its text
        return str(raised[-1])
    if "Error whilst parsing config file" in str(e):  # that re-raise, of a TypeError or ValueError
        inner = chain[-1]
        first = (str(inner).strip().splitlines() or [""])[0]
        return f"the config file raised {type(inner).__name__}: {first}"
    if isinstance(e, flags.Error):
        text = str(e).splitlines()[0]
        cause = e.__cause__ or e.__context__
        if cause is not None and str(cause):
            args = cause.args  # absl's bool parser raises ValueError(message, value)
            said = (
                f"{args[0]}: {args[1]!r}"
                if len(args) == 2 and isinstance(args[0], str)
                else str(cause)
            )
            text = text.split(": ", 1)[0] + ": " + said.splitlines()[0]
        return text
    inner = chain[-1]
    first = (str(inner).strip().splitlines() or [""])[0]
    return f"the config file raised {type(inner).__name__}: {first}"


def parse_flags(argv: list[str]) -> list[str]:
    """``app.run``'s flags parser: like absl's, but every failure is one ``error:`` line."""
    check_overrides(argv)
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - the config file is user code: anything can come out of it
        fail(_explain(e))


def quiet_libraries() -> None:
    """Show only warnings and errors from libraries (orbax, jax, absl) unless ``--verbosity`` was
    given."""
    if not flags.FLAGS["verbosity"].present:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("asyncio").setLevel(
            logging.CRITICAL
        )  # orbax's event loops after a failed save or restore
        default_hook = sys.unraisablehook

        def hook(
            unraisable,
        ):  # "Event loop is closed" / "sys.meta_path is None" from orbax's coroutines
            where = (
                "".join(traceback.format_tb(unraisable.exc_traceback))
                if unraisable.exc_traceback
                else ""
            )
            if "orbax" not in where and "asyncio" not in where:
                default_hook(unraisable)

        sys.unraisablehook = hook
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def run(main: Callable[[list[str]], Any]) -> None:
    """``absl.app.run(main)`` with one-line flag errors and quiet library logging."""

    def wrapped(argv: list[str]) -> Any:
        quiet_libraries()
        try:
            return main(argv)
        except (
            BrokenPipeError
        ):  # the reader went away (`| head`): everything is saved, say nothing more
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.dup2(devnull, sys.stderr.fileno())
            return 0

    app.run(wrapped, flags_parser=parse_flags)


def define_weights_flag() -> Any:
    """``--weights`` of the scripts that restore a run (generate, evaluate): the one definition."""
    return flags.DEFINE_enum(
        "weights",
        None,
        ["average", "raw"],
        "For a run trained with train.weight_average: its averaged weights (the default) or the "
        "raw ones.",
    )


def checkpoint_step(text: str) -> int | str:
    """A ``--step`` flag's value for :func:`rnnjax.load`: "best", "latest" or a step number (else
    one error line)."""
    if text in ("best", "latest"):
        return text
    if text.isdigit():
        return int(text)
    fail(f"--step={text}: give best, latest or a step number")


def default_workdir(config_flag: str = "config") -> pathlib.Path:
    """``runs/<config file name>``, or ``runs/<name>-<variant>`` for
    ``--config=file.py:variant``."""
    path, _, arg = flags.FLAGS[config_flag].config_filename.partition(":")
    name = pathlib.Path(path).stem
    return user_path(pathlib.Path("runs") / (f"{name}-{arg}" if arg else name))


def end_block(summary: dict[str, Any]) -> str:
    """The few lines a finished training run prints: perplexities, where its files are, the
    samples."""
    w = shown(summary["workdir"])
    char = "best_val_bpc" in summary  # bits per character: char-level runs

    def ppl(key: str) -> str:
        value = summary.get(key)
        value = float("nan") if value is None else value
        return f"{value:.3f}" + (f" ({math.log2(value):.3f} bpc)" if char and value > 0 else "")

    lines = [
        f"train perplexity {ppl('train_ppl')}, validation perplexity {ppl('val_ppl')}, "
        f"best {ppl('best_val_ppl')} at epoch {summary[Key.BEST_EPOCH]}; "
        f"{summary[Key.WALL_TIME]:.0f} s on {summary['num_devices']} device(s)",
    ]
    if summary.get("stopped_early_at"):
        lines.append(
            f"stopped early at epoch {summary['stopped_early_at']}: no new best validation "
            f"perplexity for {summary['stopped_early_at'] - summary[Key.BEST_EPOCH]} epochs"
        )
    if Key.TEST_PPL in summary:
        by = summary.get("test_ppl_by_source") or {}
        lines.append(
            f"test perplexity {ppl('test_ppl')} with the best saved checkpoint (epoch "
            f"{summary['best_saved_epoch']})" + ("; by file:" if by else "")
        )
        lines += [
            f"  {name}: {v:.3f}" + (f" ({math.log2(v):.3f} bpc)" if char else "")
            for name, v in by.items()
        ]
    lines.append(
        f"curves: {w}/curves.png  checkpoints: {w}/checkpoints/  "
        f"(rnnjax.load({w!r}) restores the best saved one, epoch {summary['best_saved_epoch']})"
    )
    if summary["samples"]:
        lines.append(
            f"samples (greedy, {'best' if summary.get('samples_from') == 'best' else 'final'} "
            "epoch):"
        )
        lines += [f"  {s}" for s in summary["samples"]]
    return "\n".join(lines)
