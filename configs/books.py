"""Character models that generalise, on any text files: raw text (case and punctuation kept), each
file split 90/5/5 into train/validation/test from its end, early stopping on validation perplexity,
test perplexity and bits per character per file at the end.

    python scripts/train.py --config=configs/books.py --config.data.paths=a.txt,b.txt

The defaults were chosen by the sweep in ``configs/sweep_books.py`` (five stages, 27 trials on d2l's
split; docs/results.md, "More books"): a 2-layer LSTM of width 256 with dropout 0.5 between the
layers and 0.5 on the top layer's output, AdamW (lr 1e-2, weight decay 0.01) with 200 warm-up steps
and a cosine decay, batch 16, 64 steps (not varied). Wider (512) or deeper (3) stacks, more dropout, a lower
learning rate or batch 32 were each worse on that split.
"""

from rnnjax.config import default_config, variant


def get_config(arg: str | None = None):
    c = default_config()
    c.data.preprocess = "none"
    c.data.max_tokens = 0  # every training token
    c.data.val_fraction = 0.05
    c.data.test_fraction = 0.05
    c.data.num_steps = 64
    c.model.cell = "lstm"
    c.model.num_layers = 2
    c.model.hidden_size = 256
    c.data.batch_size = 16
    c.model.dropout = 0.5
    c.model.output_dropout = 0.5
    c.train.optimizer = "adamw"
    c.train.learning_rate = 1e-2
    c.train.weight_decay = 0.01
    c.train.schedule = "warmup_cosine"
    c.train.warmup_steps = 200
    c.train.num_epochs = 50
    c.train.early_stopping_patience = 5
    c.checkpoint.every_epochs = 5
    c.generate.prefixes = ["The Time Traveller", "It was"]
    c.generate.num_chars = 80
    return variant(c, arg, d2l_split=d2l_split)


def d2l_split(c):
    """The recipe on d2l's experiment: the bundled book preprocessed as d2l does (28 tokens), the
    first 10,000 characters train and the next 5,000 validate (``configs/books.py:d2l_split``)."""
    c.data.preprocess = "d2l"
    c.data.val_fraction = c.data.test_fraction = 0.0
    c.data.max_tokens, c.data.num_val = 10_000, 5_000
    c.train.num_epochs = 300
    c.train.early_stopping_patience = 30
    c.checkpoint.every_epochs = 10
    c.generate.prefixes = ["time traveller", "traveller"]
    return c
