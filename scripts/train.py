r"""Train a deep RNN language model.

    python scripts/train.py --config=configs/deep_lstm.py [--workdir=runs/deep_lstm] \
        [--resume=auto|must|never] [--config.model.num_layers=3 ...]
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from rnnjax.checkpoint import CheckpointError
from rnnjax.config import ConfigError
from rnnjax.train import Preempted, train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_RESUME = flags.DEFINE_enum(
    "resume", "auto", ["auto", "must", "never"],
    "auto: resume from the workdir's latest checkpoint if any; must: fail if there is none; "
    "never: refuse a workdir that holds checkpoints.",
)
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    config_path = flags.FLAGS["config"].config_filename
    workdir = _WORKDIR.value or os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])
    try:
        summary = train_and_evaluate(_CONFIG.value, workdir, resume=_RESUME.value)
    except (ConfigError, CheckpointError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    except Preempted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    print(f"train perplexity {summary['train_ppl']:.3f}, validation perplexity {summary['val_ppl']:.3f} "
          f"(best {summary['best_val_ppl']:.3f}), {summary['wall_time']:.0f} s, workdir {workdir}")
    for s in summary["samples"]:
        print(s)


if __name__ == "__main__":
    app.run(main)
