"""The test suite's own XLA compilation cache (tests/conftest.py): a half-written entry is dropped
before a run, a whole one kept, and an oversized cache starts again empty."""

import conftest
from jax._src.compilation_cache import compress_executable


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
