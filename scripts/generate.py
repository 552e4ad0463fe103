r"""Sample text from a trained run.

    python scripts/generate.py --workdir=runs/deep_lstm --prefix="time traveller" --num_chars=100 \
        [--step=N] [--temperature=0.8] [--top_k=5] [--seed=0]

Greedy (temperature 0) by default, as ``rnnjax.generate.generate``. A bad flag or argument
exits non-zero with one line, ``error: <message>``.
"""

import sys

from absl import app, flags, logging

from rnnjax.checkpoint import CheckpointError
from rnnjax.generate import check_args
from rnnjax.run import load

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by scripts/train.py.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_PREFIX = flags.DEFINE_multi_string("prefix", ["time traveller"], "Prompt; repeat the flag for several (batched).")
_NUM_CHARS = flags.DEFINE_integer("num_chars", 100, "Tokens to generate after each prefix.", lower_bound=1)
_TEMPERATURE = flags.DEFINE_float(
    "temperature", 0.0, "0 (default) = greedy: the most likely token each step; > 0 samples, higher = more random.",
    lower_bound=0.0)
_TOP_K = flags.DEFINE_integer(
    "top_k", None, "When sampling, only among the k most likely tokens (clamped to the vocabulary).", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (same seed, same text).", lower_bound=0, upper_bound=2**32 - 1)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a flag error as one line (absl's own is two: FATAL ... and a help hint)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # the output is the text (and one error line): library warnings only with -v
        logging.set_verbosity(logging.ERROR)
    args = (_PREFIX.value, _NUM_CHARS.value, _TEMPERATURE.value, _TOP_K.value, _SEED.value)
    try:
        check_args(*args)  # NaN/inf temperature, an empty prefix: refused before the (slow) restore
        run = load(_WORKDIR.value, _STEP.value)
        texts = run.generate(*args)  # checks again, and for prefixes empty after the run's preprocessing
    except (ValueError, CheckpointError) as e:  # the user's arguments or workdir; anything else is a bug: traceback
        sys.exit(f"error: {e}")
    for text in texts:
        print(text)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
