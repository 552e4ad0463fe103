r"""2-layer GRU, otherwise the seed experiment (d2l's exercise: replace the LSTM by a GRU).

python scripts/train.py --config=configs/deep_gru.py
"""

from rnnjax.config import default_config, variant


def get_config(arg: str | None = None):
    config = default_config()
    config.model.cell = "gru"
    return variant(config, arg)
