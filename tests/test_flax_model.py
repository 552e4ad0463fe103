"""rnnjax against Flax's own recurrent cells (the reference implementation, ``impl="flax"``):
equal logits and carries, weights converted both ways, and it trains like rnnjax."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import small_config

from rnnjax.cells import CELLS
from rnnjax.network.impls.flax_model import from_flax, to_flax
from rnnjax.network.model import DeepRNN, Impl
from rnnjax.training.train import train_and_evaluate

V, H, B, T = 11, 16, 3, 7


def make(cell, num_layers):
    acts = ("relu",) if CELLS[cell].uses_activation else ("tanh",)
    return DeepRNN(vocab_size=V, hidden_size=H, num_layers=num_layers, cell=cell, activation=acts)


@pytest.mark.parametrize("cell", [c for c in CELLS if CELLS[c].flax])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_flax_reference_gives_equal_logits(cell, num_layers):
    model = make(cell, num_layers)
    flax_model = dataclasses.replace(model, impl=Impl.FLAX)
    params = model.init(jax.random.key(0))
    # Random nonzero carry and both biases nonzero, so every term is exercised.
    carry = jax.tree_util.tree_map(lambda z: z + 0.5, model.initial_carry(B))
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    ours, our_carry = model.apply(params, tokens, carry)
    theirs, their_carry = flax_model.apply(to_flax(params, model), tokens, carry)
    assert float(jnp.abs(ours - theirs).max()) <= 1e-5
    for a, b in zip(jax.tree_util.tree_leaves(our_carry), jax.tree_util.tree_leaves(their_carry)):
        assert float(jnp.abs(a - b).max()) <= 1e-5
    back, _ = model.apply(from_flax(to_flax(params, model), model), tokens, carry)
    assert float(jnp.abs(back - ours).max()) <= 1e-5


def test_flax_lstm_cell_and_optimized_cell_agree():
    """The Flax impl uses OptimizedLSTMCell; its params are those of nn.LSTMCell."""
    import flax.linen as nn

    model = make("lstm", 1)
    p = to_flax(model.init(jax.random.key(0)), model)["layer_0"]
    x = jax.random.normal(jax.random.key(1), (B, 5))
    p = jax.tree_util.tree_map(lambda a: a, p)
    p = {k: ({"kernel": v["kernel"][:5]} if k.startswith("i") else v) for k, v in p.items()}
    carry = (jnp.ones((B, H)) * 0.1, jnp.ones((B, H)) * -0.2)
    a = nn.LSTMCell(H).apply({"params": p}, carry, x)
    b = nn.OptimizedLSTMCell(H).apply({"params": p}, carry, x)
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


@pytest.mark.exhaustive  # by default: test_flax_reference_gives_equal_logits
def test_flax_impl_trains_like_rnnjax(tmp_path):
    """Both start from the same weights; they differ only in bias layout (PyTorch's two biases
    per gate vs Flax's one, so SGD moves the summed bias twice as fast), hence loose agreement."""
    cfg = small_config(**{"model.cell": "gru"})
    cfg.train.num_epochs = 15
    cfg.train.optimizer, cfg.train.learning_rate = "adam", 0.01
    ours = train_and_evaluate(cfg, tmp_path / "ours")
    cfg.model.impl = "flax"
    theirs = train_and_evaluate(cfg, tmp_path / "flax")
    assert set(theirs["params"]) == {"layer_0", "layer_1", "out"}  # really Flax's parameter tree
    assert theirs["metrics"][-1]["train_ppl"] < 0.75 * theirs["metrics"][0]["train_ppl"]
    assert theirs["metrics"][-1]["val_ppl"] == pytest.approx(
        ours["metrics"][-1]["val_ppl"], rel=0.05
    )
