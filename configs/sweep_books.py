r"""The sweep that chose ``configs/books.py:d2l_split``'s recipe (the earlier
``configs/books.py``), on d2l's split (the bundled book, first 10,000 characters train, next 5,000
validate; the split where the reference LSTM's best validation perplexity is 6.71). The recipe
for any text is chosen at book scale instead (docs/results.md, "A recipe that holds on unseen
text").

    python scripts/sweep.py --config=configs/sweep_books.py --workdir=runs/sweep_books
    # around stage 1's best; width x depth; more dropout
    python scripts/sweep.py --config=configs/sweep_books.py:stage2 --workdir=runs/sweep_books2
    python scripts/sweep.py --config=configs/sweep_books.py:stage3 --workdir=runs/sweep_books3
    python scripts/sweep.py --config=configs/sweep_books.py:stage4 --workdir=runs/sweep_books4
    python scripts/sweep.py --config=configs/sweep_books.py:cells --workdir=runs/sweep_books_cells
    python scripts/sweep.py --summarize=runs/sweep_books

Every trial is ``configs/books.py:d2l_split`` (AdamW, warm-up + cosine, early stopping) with the
grid's fields changed; the results and what was chosen are in docs/results.md, "More books".
"""

import importlib.util
from pathlib import Path

from rnnjax.config import variant


def get_config(arg: str | None = None):
    spec = importlib.util.spec_from_file_location(
        "books_config", Path(__file__).with_name("books.py")
    )
    books = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(books)
    return variant(
        books.get_config("d2l_split"),
        arg,
        stage2=_stage2,
        stage3=_stage3,
        cells=_stage3,
        stage4=_stage3,
    )


def _stage2(c):
    """Stage 1's best (dropout 0.5, lr 5e-3, batch 16), to which stage 2 adds dropout on the top
    layer's output."""
    c.model.dropout, c.train.learning_rate, c.data.batch_size = 0.5, 5e-3, 16
    return c


def _stage3(c):
    """Stage 2's best (output dropout 0.5, weight decay 0.01, lr 1e-2): stage 3 varies width and
    depth, "cells" the cell."""
    c = _stage2(c)
    c.model.output_dropout, c.train.weight_decay, c.train.learning_rate = 0.5, 0.01, 1e-2
    return c


def get_sweep(arg: str | None = None):
    if arg == "stage2":
        return {
            "model.output_dropout": [0.3, 0.5],
            "train.weight_decay": [0.01, 0.1],
            "train.learning_rate": [5e-3, 1e-2],
        }
    if arg == "stage3":
        return {"model.hidden_size": [256, 512], "model.num_layers": [2, 3]}
    if arg == "stage4":  # more dropout, at stage 3's best (hidden 256, 2 layers)
        return {"model.dropout": [0.5, 0.65], "model.output_dropout": [0.5, 0.65]}
    if arg == "cells":
        return {"model.cell": ["gru", "mingru", "minlstm"]}
    return {
        "model.dropout": [0.3, 0.5],
        "train.learning_rate": [2e-3, 5e-3],
        "data.batch_size": [16, 32],
    }
