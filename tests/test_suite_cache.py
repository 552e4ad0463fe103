"""The test suite's own XLA compilation cache (tests/conftest.py): a half-written entry is dropped
before a run, a whole one kept, and an oversized cache starts again empty; the suite without
pytest-xdist."""

import pathlib
import subprocess
import sys

import conftest
from jax._src.compilation_cache import compress_executable

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_a_half_written_entry_is_dropped_and_a_whole_one_kept(tmp_path):
    blob = compress_executable(bytes(range(256)) * 64)
    (tmp_path / "jit_f-aa-cache").write_bytes(blob)
    (tmp_path / "jit_g-bb-cache").write_bytes(blob[: len(blob) // 2])  # a kill mid-write
    (tmp_path / "jit_h-cc-cache").write_bytes(b"")  # a kill right after open
    conftest._tidy_xla_cache(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jit_f-aa-cache"]
    assert (tmp_path / "jit_f-aa-cache").read_bytes() == blob


def test_a_cache_past_its_size_starts_again_empty(tmp_path, monkeypatch):
    blob = compress_executable(b"x" * 4096)
    for i in range(3):
        (tmp_path / f"jit_f-{i}-cache").write_bytes(blob)
    monkeypatch.setattr(conftest, "XLA_CACHE_MAX_BYTES", 2 * len(blob))
    conftest._tidy_xla_cache(tmp_path)
    assert tmp_path.is_dir() and not list(tmp_path.iterdir())


def test_the_suite_runs_without_xdist_in_one_process():
    """``-p no:xdist`` (or a pytest without pytest-xdist) runs the tests in this process; the
    parallel workers are conftest's default, not an addopts flag that only xdist knows."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-q", "tests/test_vocab.py"],
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-2000:] + proc.stderr
    assert "bringing up nodes" not in proc.stdout
