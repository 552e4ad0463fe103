r"""Run (or summarize) a grid sweep: one run directory per trial under --workdir.

    python scripts/sweep.py --config=configs/sweep_depth_cell.py --workdir=runs/sweep \
        [--shard=i/n] [--axis=seed=0,1,2 ...] [--vectorize] [--config.train.num_epochs=50 ...]
    python scripts/sweep.py --summarize=runs/sweep

SIGTERM/SIGINT stop the sweep (exit status 128 + signal number): rerun the same command to resume.
"""

import _startup  # noqa: F401, I001  (first: Ctrl-C while JAX imports is one line)
import ast
import importlib.util
import sys

from absl import flags
from ml_collections import config_flags

from rnnjax.rundir import workdir as rundir
from rnnjax import (
    cli,
)  # light modules only up to main(): flag mistakes are answered before JAX imports
from rnnjax.config import ConfigError, resolve
from rnnjax.rundir.workdir import WorkdirError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file with get_config() and get_sweep()."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: one subdirectory per trial.")
_SHARD = flags.DEFINE_string(
    "shard", "0/1", "Run only trials k with k mod n == i (i/n), e.g. one shard per machine."
)
_AXIS = flags.DEFINE_multi_string(
    "axis",
    [],
    "Extra grid axis FIELD=v1,v2,... (values as Python literals); for a field the grid has "
    "already, its values replace the grid's.",
)
_VECTORIZE = flags.DEFINE_bool(
    "vectorize",
    False,
    "Train trials that differ only in seed / learning rate / weight decay as one vmapped program.",
)
_SUMMARIZE = flags.DEFINE_string(
    "summarize", None, "Only merge the finished trials under this directory."
)


def _literal(text: str):
    """'2' -> 2, '0.5' -> 0.5, 'gru' -> 'gru'."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _grid(config_path: str) -> dict:
    path, _, arg = config_path.partition(":")
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        sys.exit(f"error: {path} has no get_sweep(); add one returning {{field: [values]}}")
    grid = module.get_sweep(arg or None)
    if not isinstance(grid, dict):
        sys.exit(
            f"error: {path}: get_sweep() returned {type(grid).__name__}; return a dict "
            f"{{field: [values]}}"
        )
    grid = dict(grid)
    for axis in _AXIS.value:
        field, _, values = axis.partition("=")
        if not field or not values:
            sys.exit(f"error: --axis={axis!r}: give FIELD=v1,v2,..., e.g. --axis=seed=0,1,2")
        grid[field] = [_literal(v) for v in values.split(",")]
    return grid


def main(argv):
    del argv
    if not _SUMMARIZE.value and not (_CONFIG.value and _WORKDIR.value):
        sys.exit("error: give --config and --workdir (or --summarize=DIR)")
    from rnnjax.sweeps.sweep_summary import summarize

    if _SUMMARIZE.value:
        root = cli.user_path(_SUMMARIZE.value)
        try:
            summarize(root)
        except ValueError as e:
            sys.exit(f"error: {e}")
        print((root / rundir.RESULTS_MD).read_text())
        return 0
    workdir = cli.user_path(_WORKDIR.value)
    try:
        base = resolve(_CONFIG.value)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    from rnnjax.network.parallel import set_cpu_devices_for
    from rnnjax.sweeps.sweep import SweepInterrupted, run_sweep
    from rnnjax.training.optim import optimizer_factory

    try:
        optimizer_factory(
            base.train
        )  # an optax name or argument mistake: one line, no trial directory
        set_cpu_devices_for(
            base
        )  # before any JAX call: the CPU device count is fixed when the backend starts
        grid = _grid(flags.FLAGS["config"].config_filename)
        rows = run_sweep(_CONFIG.value, grid, workdir, _SHARD.value, _VECTORIZE.value)
    except SweepInterrupted as e:  # SIGTERM/SIGINT: summarize what finished, say how to resume
        if list(workdir.glob("*/result.json")):
            try:
                summarize(workdir)
                print((workdir / rundir.RESULTS_MD).read_text())
            except ValueError as why:  # the summary cannot be written: said, the stop still is
                print(f"error: {why}", file=sys.stderr)
        print(e, file=sys.stderr)
        return 128 + e.signum
    except (ConfigError, ValueError, WorkdirError) as e:
        sys.exit(f"error: {e}")
    if not list(
        workdir.glob("*/result.json")
    ):  # this shard had no trials, and no other shard finished one yet
        return 0
    try:
        summarize(workdir)
    except ValueError as e:  # e.g. results.csv a directory: the trials' results are kept
        sys.exit(f"error: {e}")
    failed = [r for r in rows if r["status"] == "failed"]
    print((workdir / rundir.RESULTS_MD).read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main)
