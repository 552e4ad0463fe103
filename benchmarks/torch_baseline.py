r"""The seed experiment written the way a PyTorch user would: ``nn.LSTM/GRU/RNN`` + ``nn.Linear``.

    python benchmarks/torch_baseline.py [--epochs=500] [--cell=lstm] [--num_layers=2] [--json=FILE]

The end-to-end baseline of ``scripts/benchmark.py``: the minibatches of configs/deep_lstm.py
(rnnjax.dataset.data, same seed), one-hot inputs, SGD after ``clip_grad_norm_``, the state carried
across minibatches, validation after every epoch. Needs torch (the ``[bench]`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

from rnnjax.cells import CELLS
from rnnjax.config import default_config, resolve
from rnnjax.dataset import batches, data
from rnnjax.host import retain_freed_memory


def torch_class(cell: str):
    """torch.nn's recurrent module named like an rnnjax cell (``nn.LSTM`` for "lstm"), or None
    when torch has none (minGRU, minLSTM)."""
    import torch

    cls = getattr(torch.nn, cell.upper(), None)
    return cls if isinstance(cls, type) and issubclass(cls, torch.nn.RNNBase) else None


def no_torch_module(cell: str) -> str:
    """Why torch cannot run ``cell``: the one line the benchmark report and this script print."""
    return f"torch.nn has no {cell.upper()} module (rnnjax's {cell} has no PyTorch counterpart)"


def torch_modules(cell: str, vocab_size: int, hidden_size: int, num_layers: int):
    """(recurrent module, output nn.Linear) with batch_first inputs [b, t, V]."""
    import torch

    cls = torch_class(cell)
    if cls is None:
        raise ValueError(no_torch_module(cell))
    rnn = cls(vocab_size, hidden_size, num_layers=num_layers, batch_first=True)
    return rnn, torch.nn.Linear(hidden_size, vocab_size)


def forward(rnn, out, x, state):
    """x: long tensor [b, t] -> (logits [b, t, V], new state); one-hot inputs as d2l."""
    import torch

    y, state = rnn(torch.nn.functional.one_hot(x, out.out_features).float(), state)
    return out(y), state


def train_step(rnn, out, opt, params, x, y, state, clip: float):
    """One clipped SGD step on long tensors x, y [b, t], starting from the previous minibatch's
    state (detached: truncated BPTT) or None. Returns (loss tensor, new state)."""
    import torch

    if state is not None:
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
    logits, state = forward(rnn, out, x, state)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    return loss, state


def run(
    epochs: int,
    cell: str = "lstm",
    num_layers: int = 2,
    seed: int = 0,
    hidden_size: int | None = None,
) -> dict:
    """Train the seed experiment for ``epochs``; returns perplexities and the wall time (s)."""
    import torch

    t_start = time.perf_counter()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    torch.manual_seed(seed)
    cfg = default_config()
    cfg.model.cell, cfg.model.num_layers, cfg.seed = cell, num_layers, seed
    cfg.model.hidden_size = hidden_size or cfg.model.hidden_size
    cfg = resolve(cfg)
    dc = cfg.data
    corpus = data.load_corpus(dc)
    V = len(corpus.vocab)
    rnn, out = torch_modules(cell, V, cfg.model.hidden_size, num_layers)
    params = list(rnn.parameters()) + list(out.parameters())
    opt = torch.optim.SGD(params, lr=cfg.train.learning_rate)
    as_long = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731

    train_ppl = val_ppl = float("nan")
    for epoch in range(1, epochs + 1):
        xs, ys = batches.epoch_batches(corpus.train, dc, cfg.seed, epoch)
        state, nll, n = None, 0.0, 0
        for x, y in zip(xs, ys):
            loss, state = train_step(
                rnn, out, opt, params, as_long(x), as_long(y), state, cfg.train.grad_clip
            )
            nll, n = nll + float(loss.detach()) * y.size, n + y.size
        train_ppl = math.exp(nll / n)
        with torch.no_grad():
            state, vnll, vn = None, 0.0, 0
            for x, y in batches.eval_windows(corpus.val, dc.batch_size, dc.num_steps):
                logits, state = forward(rnn, out, as_long(x), state)
                nll_sum = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, V), as_long(y).reshape(-1), reduction="sum"
                )
                vnll += float(nll_sum)
                vn += y.size
            val_ppl = math.exp(vnll / vn)
    return {
        "epochs": epochs,
        "cell": cell,
        "num_layers": num_layers,
        "train_ppl": train_ppl,
        "val_ppl": val_ppl,
        "seconds": time.perf_counter() - t_start,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=500, help="epochs (the seed experiment: 500)")
    parser.add_argument(
        "--cell", choices=list(CELLS), default="lstm", help="a cell with a torch.nn module"
    )
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--hidden_size", type=int, default=None, help="default: the config's")
    parser.add_argument("--json", default=None, help="also write the result here as JSON")
    args = parser.parse_args(argv)
    if torch_class(args.cell) is None:
        parser.error(no_torch_module(args.cell))
    retain_freed_memory()  # the allocator setting of scripts/train.py: like for like
    result = run(args.epochs, args.cell, args.num_layers, hidden_size=args.hidden_size)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
