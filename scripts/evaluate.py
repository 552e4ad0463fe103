r"""Score any text with a trained run: perplexity and bits per character.

    python scripts/evaluate.py --workdir=runs/deep_lstm --text=other_book.txt \
        [--step=best|latest|N] [--batch_size=32] [--weights=average|raw]

The text is preprocessed as the run's training text was and read as ``--batch_size`` rows (default:
the run's ``data.batch_size``, as its validation pass), the recurrent state carried across windows.
Characters (tokens) outside the run's vocabulary are scored as ``<unk>`` and reported with their
counts, never dropped. Uses the best checkpoint unless ``--step`` says otherwise. A bad flag or
argument exits non-zero with one line, ``error: <message>``.
"""

import _startup  # noqa: F401, I001  (first: Ctrl-C while JAX imports is one line)
import os
import pathlib
import stat
import sys

from absl import flags

from rnnjax import (
    cli,
)  # light modules only up to main(): flag mistakes are answered before JAX imports
from rnnjax.dataset.text import decode
from rnnjax.rundir.workdir import WorkdirError, resolve_path
from rnnjax.config import SAME_PARAMS_IMPLS

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory written by scripts/train.py.", required=True
)
_TEXT = flags.DEFINE_string("text", None, "UTF-8 text file to score; - reads stdin.", required=True)
_STEP = flags.DEFINE_string(
    "step", "best", "Checkpoint: best (lowest validation perplexity), latest, or a step number."
)
_IMPL = flags.DEFINE_enum(
    "impl",
    None,
    list(SAME_PARAMS_IMPLS),
    "Run the params with this model.impl instead of the run's own (e.g. rnnjax for a cudnn run "
    "on a CPU).",
)
_WEIGHTS = cli.define_weights_flag()
_BATCH = flags.DEFINE_integer(
    "batch_size",
    None,
    "Rows the text is read as (default: the run's data.batch_size).",
    lower_bound=1,
)


_MAX_MB = flags.DEFINE_integer(
    "max_mb",
    1024,
    "The most --text may hold, in MiB (a stream is read up to it), like data.max_file_mb.",
    lower_bound=1,
)


def read_text(path: str) -> str:
    """``--text``: a file, or ``-`` (or a pipe, e.g. ``/dev/stdin``) read to its end, up to
    ``--max_mb`` MiB."""
    limit = _MAX_MB.value * 2**20
    if path == "-":
        raw = sys.stdin.buffer.read(limit + 1)
    else:
        try:
            resolve_path(path)
        except WorkdirError as e:  # a symbolic link loop
            cli.fail(f"--text={e}")
        name = os.path.expanduser(path)  # /dev/stdin's link leads to a pipe: open the name
        try:
            kind = os.stat(name).st_mode
        except OSError:
            cli.fail(f"--text={path}: does not exist; give a text file, or - for stdin")
        if not (stat.S_ISREG(kind) or stat.S_ISFIFO(kind) or stat.S_ISCHR(kind)):
            cli.fail(f"--text={path}: is not a regular file; give a text file")
        try:
            with open(name, "rb") as f:
                raw = f.read(limit + 1)
        except OSError as e:
            cli.fail(f"--text={path}: cannot read it ({e.strerror})")
    if len(raw) > limit:
        cli.fail(
            f"--text={path}: more than --max_mb={_MAX_MB.value} MiB; give a smaller text, or "
            "raise --max_mb"
        )
    try:
        return decode(raw)
    except UnicodeDecodeError as e:
        cli.fail(f"--text={path} is not UTF-8 (byte {e.start}); convert it, e.g. iconv -t utf-8")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; give the file as --text=FILE")
    text = read_text(_TEXT.value)
    from rnnjax.rundir.checkpoint import CheckpointError
    from rnnjax.use.run import load

    try:
        run = load(
            cli.user_path(_WORKDIR.value),
            cli.checkpoint_step(_STEP.value),
            _IMPL.value,
            _WEIGHTS.value,
        )
        ev = run.evaluate(text, _BATCH.value)
    except (ValueError, CheckpointError, WorkdirError) as e:
        cli.fail(str(e))
    unit = "character" if run.config.data.tokenizer == "char" else "word"
    print(f"# {run.describe_step()}", file=sys.stderr)
    unread = f"; the last {ev.unread:,} not read" if ev.unread else ""
    print(
        f"{pathlib.Path(_TEXT.value).name}: perplexity {ev.perplexity:.4f}, "
        f"{ev.bits_per_token:.4f} bits per {unit} "
        f"({ev.tokens:,} {unit}s scored, read as {ev.batch_size} rows{unread})"
    )
    if ev.unknown:
        shown = ", ".join(f"{t!r} x{n}" for t, n in list(ev.unknown.items())[:10])
        more = f" and {len(ev.unknown) - 10} more" if len(ev.unknown) > 10 else ""
        plural = unit if ev.num_unknown == 1 else unit + "s"
        print(f"{ev.num_unknown:,} {plural} outside the vocabulary, scored as <unk>: {shown}{more}")
    else:
        print(f"every {unit} is in the run's vocabulary")


if __name__ == "__main__":
    cli.run(main)
