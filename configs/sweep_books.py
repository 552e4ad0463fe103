r"""The sweep that chose ``configs/books.py``'s recipe, on d2l's split (the bundled book, first 10,000
characters train, next 5,000 validate; the split where the reference LSTM's best validation
perplexity is 6.71).

    python scripts/sweep.py --config=configs/sweep_books.py --workdir=runs/sweep_books
    python scripts/sweep.py --config=configs/sweep_books.py:stage2 --workdir=runs/sweep_books2   # around stage 1's best
    python scripts/sweep.py --summarize=runs/sweep_books

Every trial is ``configs/books.py:d2l_split`` (AdamW, warm-up + cosine, early stopping) with the
grid's fields changed; the results and what was chosen are in the README, "More books".
"""

import importlib.util
from pathlib import Path

from rnnjax.config import variant


def get_config(arg: str | None = None):
    spec = importlib.util.spec_from_file_location("books_config", Path(__file__).with_name("books.py"))
    books = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(books)
    return variant(books.get_config("d2l_split"), arg, stage2=_stage2)


def _stage2(c):
    """Stage 1's best (dropout 0.5, lr 5e-3, batch 16), to which stage 2 adds dropout on the top layer's output."""
    c.model.dropout, c.train.learning_rate, c.data.batch_size = 0.5, 5e-3, 16
    return c


def get_sweep(arg: str | None = None):
    if arg == "stage2":
        return {"model.output_dropout": [0.3, 0.5], "train.weight_decay": [0.01, 0.1], "train.learning_rate": [5e-3, 1e-2]}
    return {"model.dropout": [0.3, 0.5], "train.learning_rate": [2e-3, 5e-3], "data.batch_size": [16, 32]}
