"""Tests run on the CPU (``RNNJAX_TEST_PLATFORMS=cuda`` for the GPU checks of scripts/gpu_check.sh),
with float32 matmuls at full precision and one XLA compilation cache for the checkout's runs.

Below, what several test files share (imported as ``from conftest import small_config``: pytest
puts tests/ on sys.path): the small config they train, and how they compare runs."""

import atexit
import os
import pathlib
import shutil
import tempfile

os.environ["JAX_PLATFORMS"] = os.environ.get("RNNJAX_TEST_PLATFORMS", "cpu")
# One XLA compilation cache for this checkout's test runs (.pytest_cache/xla, git-ignored), shared
# by the workers and by the CLI subprocesses the tests start (they inherit the environment): a small
# program is compiled once, and the next run of the suite compiles only what changed (JAX keys an
# entry by the program, its options and the jax version). Results are the same with or without it;
# delete the folder for a cold run. A JAX_COMPILATION_CACHE_DIR of your own is used as given.
XLA_CACHE_MAX_BYTES = 2 << 30


def _xla_cache_dir() -> pathlib.Path:
    """The checkout's cache folder, or a temporary one (removed at exit) in a read-only checkout."""
    cache = pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "xla"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = pathlib.Path(tempfile.mkdtemp(prefix="rnnjax-tests-xla-"))
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
    return cache


def _tidy_xla_cache(cache: pathlib.Path) -> None:
    """Make the cache fit for this run (once, in the first process, before the xdist workers start):
    drop the entries that a killed process left half-written (they no longer decompress, and JAX
    would warn about them on every read), and start again empty past XLA_CACHE_MAX_BYTES."""
    from jax._src.compilation_cache import decompress_executable

    entries = list(cache.glob("*-cache"))
    if sum(p.stat().st_size for p in entries) > XLA_CACHE_MAX_BYTES:
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        return
    for p in entries:
        try:
            decompress_executable(p.read_bytes())
        except Exception:  # truncated: zlib/zstd say so
            p.unlink(missing_ok=True)


_ours = "JAX_COMPILATION_CACHE_DIR" not in os.environ  # a user's own cache is theirs to tidy
if _ours:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(_xla_cache_dir())
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
if _ours and "PYTEST_XDIST_WORKER" not in os.environ:  # after the settings: it imports jax
    _tidy_xla_cache(pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"]))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import hashlib  # noqa: E402
import sys  # noqa: E402

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rnnjax.config import default_config, smoke  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def with_fields(cfg: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
    """``cfg`` with dotted fields set in place, e.g.
    ``with_fields(cfg, **{"model.cell": "gru", "seed": 1})``."""
    for path, value in fields.items():
        *groups, leaf = path.split(".")
        node = cfg
        for g in groups:
            node = getattr(node, g)
        setattr(node, leaf, value)
    return cfg


def small_config(
    num_epochs: int = 3, progress: bool = False, **fields
) -> ml_collections.ConfigDict:
    """The smoke config (seconds per run), ``num_epochs`` long, progress bar off unless asked,
    with dotted ``fields`` set (see :func:`with_fields`)."""
    cfg = smoke(default_config())
    cfg.train.progress = progress
    cfg.train.num_epochs = num_epochs
    return with_fields(cfg, **fields)


def param_bytes(params) -> list[bytes]:
    """Every parameter array's bytes: equal lists mean bitwise-equal parameters."""
    return [np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(params)]


def snapshot(workdir) -> dict[str, str]:
    """A sha256 per file under ``workdir`` (every file): equal snapshots mean nothing was
    touched."""
    return {
        str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(pathlib.Path(workdir).rglob("*"))
        if p.is_file()
    }


def train_cli(workdir, *flags) -> list[str]:
    """The argv of scripts/train.py on the smoke LSTM config, progress bar off, into ``workdir``."""
    return [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        f"--config={ROOT / 'configs' / 'deep_lstm.py'}:smoke",
        f"--workdir={workdir}",
        "--config.train.progress=False",
        *flags,
    ]


def run_notebook(name: str, cwd, **env: str) -> tuple[str, int]:
    """Execute ``notebooks/<name>`` with nbclient (environment variables ``env`` set meanwhile,
    working directory ``cwd``); returns its code cells' text output and how many PNG images they
    drew."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
        ).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    return "".join(o.get("text", "") for o in outputs), sum(
        "image/png" in o.get("data", {}) for o in outputs
    )


def tiered(cases: list, representative) -> list:
    """A test matrix's cases: those for which ``representative(case)`` holds run by default; the
    rest are marked ``exhaustive`` (``python -m pytest -m exhaustive``; .ci/run runs both tiers)."""
    import pytest

    return [
        c
        if representative(c)
        else pytest.param(*(c if isinstance(c, tuple) else (c,)), marks=pytest.mark.exhaustive)
        for c in cases
    ]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A finished 3-epoch smoke run (checkpoints at steps 24, 48, 72) and what
    ``train_and_evaluate`` returned, trained once per test worker and shared by the tests that only
    read it; a test that changes a run copies it first (:func:`copy_run`)."""
    from rnnjax.training.train import train_and_evaluate

    workdir = tmp_path_factory.mktemp("smoke_run") / "run"
    out = train_and_evaluate(small_config(3), workdir)
    return workdir, out


def copy_run(src, dst) -> pathlib.Path:
    """A copy of the run at ``src`` in ``dst`` (its own files: changing it leaves ``src`` alone)."""
    shutil.copytree(src, dst)
    return pathlib.Path(dst)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """Parallel workers by default (pytest-xdist: ``-n auto``, at most 4, test groups kept on one
    worker), set here rather than in pyproject's addopts so that ``-p no:xdist`` (or pytest
    without xdist) runs the suite in one process instead of failing on ``-n``. An ``-n`` of your
    own wins."""
    worker = "PYTEST_XDIST_WORKER" in os.environ or hasattr(config, "workerinput")
    if (
        not worker
        and config.pluginmanager.hasplugin("xdist")
        and config.getoption("numprocesses") is None
    ):
        config.option.numprocesses = "auto"
        config.option.maxprocesses = 4
        config.option.dist = "loadgroup"


def pytest_collection_modifyitems(config, items):
    """The end-to-end runs (marked ``slow``) first, each part in its own order: pytest-xdist hands
    the tests out in this order, so the longest start early and the short ones fill the workers'
    last minutes (in file order, test_vectorize's and test_workdir's CLI runs came last, with one
    worker idle)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
