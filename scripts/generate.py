r"""Sample text from a trained run.

    python scripts/generate.py --workdir=runs/deep_lstm --prefix="time traveller" --num_chars=100 \
        [--step=best|latest|N] [--temperature=0.8] [--top_k=5] [--seed=0] \
        [--weights=average|raw]

Uses the best checkpoint (lowest validation perplexity) unless ``--step`` says otherwise, and
says which on stderr before generating. Greedy (temperature 0) by default, as
``rnnjax.generate.generate``. A bad flag or argument exits non-zero with one line,
``error: <message>``. ``--num_chars`` x prefixes is at most ``rnnjax.network.sampling.MAX_TOKENS``
(10,000,000). Ctrl-C or SIGTERM stops it within one chunk of generation (about a thousand
tokens) with one line saying what was printed; it writes no file.
"""

import _startup  # noqa: F401, I001  (first: Ctrl-C while JAX imports is one line)
import contextlib
import os
import signal
import sys

from absl import flags

from rnnjax import (
    cli,
)  # light modules only up to main(): flag mistakes are answered before JAX imports
from rnnjax.rundir.workdir import WorkdirError
from rnnjax.config import SAME_PARAMS_IMPLS

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory written by scripts/train.py.", required=True
)
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
_PREFIX = flags.DEFINE_multi_string(
    "prefix", ["time traveller"], "Prompt; repeat the flag for several (batched)."
)
_NUM_CHARS = flags.DEFINE_integer(
    "num_chars", 100, "Tokens to generate after each prefix.", lower_bound=1
)
_TEMPERATURE = flags.DEFINE_float(
    "temperature",
    0.0,
    "0 (default) = greedy: the most likely token each step; > 0 samples, higher = more random.",
    lower_bound=0.0,
)
_TOP_K = flags.DEFINE_integer(
    "top_k",
    None,
    "When sampling, only among the k most likely tokens (clamped to the vocabulary).",
    lower_bound=1,
)
_SEED = flags.DEFINE_integer(
    "seed", 0, "Sampling seed (same seed, same text).", lower_bound=0, upper_bound=2**32 - 1
)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; give the prompt as --prefix=...")
    from rnnjax.network.sampling import check_args
    from rnnjax.rundir.checkpoint import CheckpointError
    from rnnjax.use.run import load

    args = (_PREFIX.value, _NUM_CHARS.value, _TEMPERATURE.value, _TOP_K.value, _SEED.value)
    try:
        check_args(*args)  # NaN/inf temperature, an empty prefix: refused before the (slow) restore
        run = load(
            cli.user_path(_WORKDIR.value),
            cli.checkpoint_step(_STEP.value),
            _IMPL.value,
            _WEIGHTS.value,
        )
    except (
        ValueError,
        CheckpointError,
        WorkdirError,
    ) as e:  # the user's arguments or workdir; anything else: traceback
        cli.fail(str(e))
    print(f"# {run.describe_step()}", file=sys.stderr, flush=True)
    stop = _StopRequest()
    try:
        try:
            texts = run.generate(*args)  # checks again, and for prefixes empty after preprocessing
        except ValueError as e:
            cli.fail(str(e))
        stop.doing = "printing: the text above is incomplete"
        for text in texts:
            print(text)
        sys.stdout.flush()
    except BaseException:
        if stop.signum is None:
            raise
        print(f"stopped by signal {stop.signum} while {stop.doing}", file=sys.stderr)
        with contextlib.suppress(OSError):
            sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + stop.signum)  # no file to close; JAX's teardown would take seconds


class _StopRequest:
    """SIGINT/SIGTERM end generation between two compiled chunks (the handler raises there), and the
    exit line says what had been printed by then."""

    def __init__(self):
        self.signum: int | None = None
        self.doing = "generating: no text was printed"
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            raise KeyboardInterrupt


if __name__ == "__main__":
    cli.run(main)
