"""Training curves: train and validation perplexity against epoch."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

from rnnjax.rundir.workdir import Key


def plot_curves(
    records: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = ""
) -> None:
    """Save a PNG of ``train_ppl`` and ``val_ppl`` (log scale) against ``epoch``.

    Drawn on a ``Figure`` with its own Agg canvas: pyplot and the process's matplotlib
    backend are never touched, so a notebook keeps its inline plots. Written atomically, never
    through a link (:func:`rnnjax.rundir.workdir.write_atomic`).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    epochs = [r[Key.EPOCH] for r in records]
    nan = float("nan")
    for key, label in ((Key.TRAIN_PPL, "train"), (Key.VAL_PPL, "validation")):
        ax.plot(epochs, [nan if r.get(key) is None else r[key] for r in records], label=label)
    ax.set(xlabel="epoch", ylabel="perplexity", yscale="log", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from rnnjax.rundir.workdir import write_atomic

    write_atomic(pathlib.Path(path), lambda f: fig.savefig(f, format="png", dpi=100))
