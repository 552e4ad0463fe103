"""A 100-million-character corpus: load time and peak host memory, loading and training.

    python benchmarks/corpus_scale.py [--chars=100000000] [--train_seconds=120]

The bundled book repeated (ASCII, and with a non-ASCII character in every line); each in a fresh
process: ``load_corpus`` with configs/books.py's data fields, then ``scripts/train.py`` on it until
SIGTERM. Prints a Markdown table (peak RSS, seconds, steps).
"""

import argparse
import os
import pathlib
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOAD = """
import resource, sys, time
t0 = time.perf_counter()
from rnnjax.dataset import data
from rnnjax.config import resolve
sys.path.insert(0, {configs!r})
import books
cfg = books.get_config()
cfg.data.paths = [{path!r}]
corpus = data.load_corpus(resolve(cfg).data)
t = time.perf_counter() - t0
print(t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, len(corpus.train), len(corpus.val),
      len(corpus.test), corpus.train.dtype, len(corpus.vocab))
"""


def make_corpus(path: pathlib.Path, chars: int, ascii_only: bool) -> None:
    book = (ROOT / "rnnjax" / "corpora" / "timemachine.txt").read_text()
    if not ascii_only:
        book = book.replace("\n", " é\n")
    with open(path, "w", encoding="utf-8") as f:
        left = chars
        while left > 0:
            f.write(book[:left])
            left -= len(book)


def child_peak_rss(argv: list[str], seconds: float | None, cwd: str) -> tuple[float, str, float]:
    """Run ``argv``; SIGTERM it after ``seconds`` (None: let it finish).
    Returns (peak RSS MiB, output, wall s)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    if seconds is not None:
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024, out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--chars", type=int, default=100_000_000)
    p.add_argument("--train_seconds", type=float, default=120)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for ascii_only in (True, False):
            path = pathlib.Path(d) / "big.txt"
            make_corpus(path, a.chars, ascii_only)
            size = path.stat().st_size / 2**20
            code = LOAD.format(configs=str(ROOT / "configs"), path=str(path))
            rss, out, _ = child_peak_rss([sys.executable, "-c", code], None, d)
            load_s, _, n_train, n_val, n_test, dtype, vocab = out.split()[-7:]
            argv = [
                sys.executable,
                str(ROOT / "scripts" / "train.py"),
                f"--config={ROOT / 'configs' / 'books.py'}",
                f"--config.data.paths={path}",
                "--config.train.progress=False",
                f"--workdir={d}/run",
            ]
            train_rss, train_out, wall = child_peak_rss(argv, a.train_seconds, d)
            steps = re.search(r"step (\d+)", train_out.splitlines()[-1] if train_out else "")
            rows.append(
                (
                    ("ASCII" if ascii_only else "non-ASCII (é in every line)"),
                    size,
                    float(load_s),
                    rss,
                    f"{int(n_train):,} / {int(n_val):,} / {int(n_test):,} {dtype}, vocab {vocab}",
                    train_rss,
                    steps.group(1) if steps else "?",
                    wall,
                    train_out.strip().splitlines()[-1:],
                )
            )
            subprocess.run(["rm", "-rf", f"{d}/run"], check=True)
    print(
        "| corpus | file (MiB) | load_corpus (s) | peak RSS, load (MiB) | "
        "train / val / test tokens | peak RSS, training (MiB) | steps in the run |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, size, load_s, rss, split, train_rss, steps, wall, last in rows:
        print(
            f"| {name} | {size:.0f} | {load_s:.1f} | {rss:.0f} | {split} | {train_rss:.0f} | "
            f"{steps} ({wall:.0f} s, then SIGTERM) |"
        )
        print(f"<!-- last line: {last} -->", file=sys.stderr)
    print(
        f"\nhost: {os.cpu_count()} cores, {resource.getpagesize()}-byte pages; "
        "ru_maxrss of each fresh process."
    )


if __name__ == "__main__":
    main()
