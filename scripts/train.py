r"""Train a deep RNN language model.

    python scripts/train.py --config=configs/deep_lstm.py [--workdir=runs/deep_lstm] \
        [--resume=auto|must|never] [--config.model.num_layers=3 ...]
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from rnnjax.checkpoint import CheckpointError
from rnnjax.config import ConfigError, resolve
from rnnjax.parallel import initialize_distributed, set_cpu_devices
from rnnjax.train import Preempted, train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_RESUME = flags.DEFINE_enum(
    "resume", "auto", ["auto", "must", "never"],
    "auto: resume from the workdir's latest checkpoint if any; must: fail if there is none; "
    "never: refuse a workdir that holds checkpoints.",
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Multi-process run: call jax.distributed.initialize (implied by --coordinator_address). Unset flags below are "
    "auto-detected from SLURM / Open MPI / TPU / JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, e.g. 10.0.0.1:1234.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    try:  # before any JAX call: the CPU device count is fixed when the backend starts
        cfg = resolve(_CONFIG.value)
        set_cpu_devices(cfg.parallel.cpu_devices, cfg.data.batch_size)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    if _DISTRIBUTED.value or _COORDINATOR.value:
        initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
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
          f"(best {summary['best_val_ppl']:.3f}), {summary['wall_time']:.0f} s on {summary['num_devices']} device(s), "
          f"workdir {workdir}")
    for s in summary["samples"]:
        print(s)


if __name__ == "__main__":
    app.run(main)
