"""rnnjax against PyTorch's nn.LSTM/GRU/RNN: weights converted both ways give equal logits."""

import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.cells import CELLS
from rnnjax.network.model import DeepRNN
from rnnjax.use.interop import from_torch, to_torch

V, H, B, T = 11, 16, 3, 7


def make(cell, num_layers):
    acts = ("relu",) if cell == "rnn" else ("tanh",)
    return DeepRNN(vocab_size=V, hidden_size=H, num_layers=num_layers, cell=cell, activation=acts)


def _torch_or_skip():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("cell", [c for c in CELLS if CELLS[c].torch])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_torch_weights_give_equal_logits(cell, num_layers):
    torch = _torch_or_skip()
    torch.manual_seed(0)
    cls = getattr(torch.nn, CELLS[cell].torch)
    kw = {"nonlinearity": "relu"} if CELLS[cell].uses_activation else {}
    rnn = cls(V, H, num_layers=num_layers, batch_first=True, **kw)
    out = torch.nn.Linear(H, V)
    tokens = np.random.default_rng(0).integers(0, V, (B, T))
    with torch.no_grad():
        y, _ = rnn(torch.nn.functional.one_hot(torch.as_tensor(tokens), V).float())
        ref = out(y).numpy()
    as_np = lambda m: {k: v.detach().numpy() for k, v in m.state_dict().items()}  # noqa: E731
    params = from_torch(as_np(rnn), as_np(out))
    model = make(cell, num_layers)
    logits, _ = model.apply(params, jnp.asarray(tokens), model.initial_carry(B))
    assert float(np.abs(np.asarray(logits) - ref).max()) <= 1e-5
    # And back: loading our arrays into torch reproduces the state_dict exactly.
    rnn_sd, lin_sd = to_torch(params)
    for k, v in as_np(rnn).items():
        np.testing.assert_array_equal(rnn_sd[k], v)
    np.testing.assert_array_equal(lin_sd["weight"], as_np(out)["weight"])
    rnn.load_state_dict({k: torch.tensor(v) for k, v in rnn_sd.items()})


def test_from_torch_rejects_bidirectional():
    sd = {"weight_ih_l0": np.zeros((4, 3)), "weight_ih_l0_reverse": np.zeros((4, 3))}
    with pytest.raises(ValueError, match="unidirectional"):
        from_torch(sd, {"weight": np.zeros((3, 4)), "bias": np.zeros(3)})
