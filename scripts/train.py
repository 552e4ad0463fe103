r"""Train a deep RNN language model.

    python scripts/train.py --config=configs/deep_lstm.py [--workdir=runs/deep_lstm] \
        [--resume=auto|must|never|restart] [--config.model.num_layers=3 ...] [--verbosity=0]
"""

import _startup  # noqa: F401, I001  (first: Ctrl-C while JAX imports is one line)
import sys

from absl import flags
from ml_collections import config_flags

from rnnjax import (
    cli,
)  # light modules only up to main(): flag mistakes are answered before JAX imports
from rnnjax.config import ConfigError, resolve
from rnnjax.rundir.workdir import RESUME_MODES, WorkdirError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file (file.py:variant).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (default: runs/<config name>[-<variant>])."
)
_RESUME = flags.DEFINE_enum(
    "resume",
    "auto",
    list(RESUME_MODES),
    "auto: resume from the workdir's latest good checkpoint if any; must: fail if there is none; "
    "never: refuse a workdir that holds checkpoints; restart: move the workdir's files to "
    "WORKDIR/discarded/ and start over.",
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-process run: call jax.distributed.initialize (implied by --coordinator_address). Unset "
    "flags below are auto-detected from SLURM / Open MPI / TPU / JAX_COORDINATOR_ADDRESS, "
    "JAX_NUM_PROCESSES, JAX_PROCESS_ID.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, e.g. 10.0.0.1:1234."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes in a multi-process run."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index, 0 .. num_processes - 1."
)
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --config=configs/deep_lstm.py")
    if _WORKDIR.value is not None and not _WORKDIR.value.strip():
        cli.fail(
            "--workdir is empty; give a directory, or leave the flag out for runs/<config name>"
        )
    try:
        cfg = resolve(_CONFIG.value)
    except ConfigError as e:
        cli.fail(str(e))
    workdir = cli.user_path(_WORKDIR.value) if _WORKDIR.value else cli.default_workdir()
    from rnnjax.host import threads_from_env
    from rnnjax.network.parallel import initialize_distributed, set_cpu_devices_for
    from rnnjax.rundir.checkpoint import CheckpointError
    from rnnjax.rundir.integrity import no_space
    from rnnjax.training.console import Preempted
    from rnnjax.training.train import train_and_evaluate

    try:  # before any JAX call: the CPU device count is fixed when the backend starts
        set_cpu_devices_for(cfg)
        threads_from_env()  # before the workdir: the kernels read it when the step is traced
    except (ConfigError, ValueError) as e:
        cli.fail(str(e))
    if _DISTRIBUTED.value or _COORDINATOR.value:
        initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    try:
        summary = train_and_evaluate(cfg, workdir, resume=_RESUME.value)
    except (ConfigError, CheckpointError, WorkdirError, FloatingPointError) as e:
        cli.fail(str(e))
    except OSError as e:
        if not (why := no_space(e)):
            raise
        where = e.filename or "the workdir"
        fix = "raise the limit (ulimit -f unlimited)" if "ulimit" in why else "free some space"
        cli.fail(f"{why} while writing {where}: {fix} and rerun the same command to resume")
    except Preempted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    print(cli.end_block(summary))


if __name__ == "__main__":
    cli.run(main)
