"""Training curves: train and validation perplexity against epoch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def plot_curves(records: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """Save a PNG of ``train_ppl`` and ``val_ppl`` (log scale) against ``epoch``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in records]
    ax.plot(epochs, [r["train_ppl"] for r in records], label="train")
    ax.plot(epochs, [r["val_ppl"] for r in records], label="validation")
    ax.set(xlabel="epoch", ylabel="perplexity", yscale="log", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
