"""What train.layer_stats costs: epoch time (training + validation, as metrics.jsonl's wall_time
advances) of the reference experiment with the per-layer statistics on and off, interleaved.

    python benchmarks/layer_stats_cost.py [--rounds=3] [--epochs=6]

Prints one Markdown table row per setting: the median epoch time over every round's epochs 2..E
(epoch 1 compiles), and the cost of the statistics relative to the epoch.
"""

import argparse
import statistics
import tempfile

from rnnjax.config import default_config
from rnnjax.training.train import train_and_evaluate


def epoch_times(layer_stats: bool, epochs: int, workdir: str) -> list[float]:
    cfg = default_config()
    cfg.train.num_epochs, cfg.train.progress, cfg.train.layer_stats = epochs, False, layer_stats
    cfg.checkpoint.every_epochs = 1000  # saves only after the last epoch
    cfg.generate.prefixes = []
    wall = [r["wall_time"] for r in train_and_evaluate(cfg, workdir)["metrics"]]
    return [b - a for a, b in zip(wall, wall[1:])]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6)
    a = p.parse_args()
    times = {True: [], False: []}
    for _ in range(a.rounds):
        for on in (False, True):
            with tempfile.TemporaryDirectory() as d:
                times[on] += epoch_times(on, a.epochs, d)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print("| train.layer_stats | median epoch (s) | epochs timed |")
    print("|---|---|---|")
    print(f"| False | {off:.3f} | {len(times[False])} |")
    print(f"| True | {on:.3f} | {len(times[True])} |")
    print(f"\ncost of the statistics: {100 * (on - off) / off:+.1f}% of the epoch")


if __name__ == "__main__":
    main()
