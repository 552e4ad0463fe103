r"""Depth x cell-type sweep over the seed experiment (d2l's exercise: LSTM vs GRU vs RNN, and the
parallel-scan cells minGRU and minLSTM).

    python scripts/sweep.py --config=configs/sweep_depth_cell.py --workdir=runs/sweep
    # reduced budget
    python scripts/sweep.py --config=configs/sweep_depth_cell.py:quick --workdir=runs/sweep_quick
    python scripts/sweep.py --summarize=runs/sweep

get_config() is the base config; get_sweep() the grid (field -> values), plain data.
Add axes on the command line: --axis=seed=0,1,2 --axis=train.learning_rate=0.5,1.0
"""

from rnnjax.config import default_config, variant


def get_config(arg: str | None = None):
    def quick(config):  # docs/results.md's table: the full model, a 40-epoch budget
        config.train.num_epochs = 40
        return config

    return variant(default_config(), arg, quick=quick)


def get_sweep(arg: str | None = None):
    if arg == "smoke":
        return {"model.cell": ["gru", "lstm"], "model.num_layers": [1, 2]}
    return {
        "model.cell": ["rnn", "gru", "lstm", "mingru", "minlstm"],
        "model.num_layers": [1, 2, 3, 4],
    }
