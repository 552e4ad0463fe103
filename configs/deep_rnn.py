r"""2-layer vanilla (tanh) RNN, otherwise the seed experiment.

python scripts/train.py --config=configs/deep_rnn.py
python scripts/train.py --config=configs/deep_rnn.py --config.model.activation="['tanh','relu']"
"""

from rnnjax.config import default_config, variant


def get_config(arg: str | None = None):
    config = default_config()
    config.model.cell = "rnn"
    # A vanilla RNN at lr 2 diverges more easily than the gated cells; lr 1 trains stably.
    config.train.learning_rate = 1.0
    return variant(config, arg)
