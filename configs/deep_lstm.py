r"""The seed experiment: 2-layer LSTM, hidden 256, on The Time Machine (d2l's deep RNN).

python scripts/train.py --config=configs/deep_lstm.py
python scripts/train.py --config=configs/deep_lstm.py:smoke   # a seconds-long check
"""

from rnnjax.config import default_config, variant


def get_config(arg: str | None = None):
    config = default_config()  # every field, with comments, lives there
    config.model.cell = "lstm"
    return variant(config, arg)  # ":smoke" shrinks it to seconds; another name is an error
