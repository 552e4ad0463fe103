r"""Sample text from a trained run.

    python scripts/generate.py --workdir=runs/deep_lstm --prefix="time traveller" --num_chars=100 \
        [--step=N] [--temperature=0.8] [--top_k=5] [--seed=0]
"""

import sys

from absl import app, flags

from rnnjax.checkpoint import CheckpointError
from rnnjax.run import load

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by scripts/train.py.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_PREFIX = flags.DEFINE_multi_string("prefix", ["time traveller"], "Prompt; repeat the flag for several (batched).")
_NUM_CHARS = flags.DEFINE_integer("num_chars", 100, "Tokens to generate after each prefix.", lower_bound=0)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "0 = greedy; higher = more random.", lower_bound=0.0)
_TOP_K = flags.DEFINE_integer("top_k", None, "Sample only among the k most likely tokens.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (same seed, same text).")


def main(argv):
    del argv
    try:
        run = load(_WORKDIR.value, _STEP.value)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    for text in run.generate(_PREFIX.value, _NUM_CHARS.value, _TEMPERATURE.value, _TOP_K.value, _SEED.value):
        print(text)


if __name__ == "__main__":
    app.run(main)
