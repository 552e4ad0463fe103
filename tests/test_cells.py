"""Each cell against a NumPy transcription of its equations, and the scan against a Python loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import cells
from rnnjax.model import DeepRNN


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_rnn(p, h, x, act):
    z = x @ p["w_x"] + p["b_x"] + h @ p["w_h"] + p["b_h"]
    return np.tanh(z) if act == "tanh" else np.maximum(z, 0.0)


def np_gru(p, h, x):
    H = h.shape[-1]
    W_x, W_h, b_x, b_h = p["w_x"], p["w_h"], p["b_x"], p["b_h"]
    sl = lambda k: slice(k * H, (k + 1) * H)  # noqa: E731
    r = sigmoid(x @ W_x[:, sl(0)] + b_x[sl(0)] + h @ W_h[:, sl(0)] + b_h[sl(0)])
    z = sigmoid(x @ W_x[:, sl(1)] + b_x[sl(1)] + h @ W_h[:, sl(1)] + b_h[sl(1)])
    n = np.tanh(x @ W_x[:, sl(2)] + b_x[sl(2)] + r * (h @ W_h[:, sl(2)] + b_h[sl(2)]))
    return (1 - z) * n + z * h


def np_lstm(p, c, h, x):
    H = h.shape[-1]
    pre = lambda k: (x @ p["w_x"][:, k * H:(k + 1) * H] + h @ p["w_h"][:, k * H:(k + 1) * H]  # noqa: E731
                     + p["b_x"][k * H:(k + 1) * H] + p["b_h"][k * H:(k + 1) * H])
    i, f, g, o = sigmoid(pre(0)), sigmoid(pre(1)), np.tanh(pre(2)), sigmoid(pre(3))
    c = f * c + i * g
    return c, o * np.tanh(c)


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
def test_cell_step_matches_numpy_equations(name):
    cell = cells.CELLS[name]
    d, h, b = 3, 4, 2
    params = cell.init(jax.random.key(0), d, h)
    npp = {k: np.asarray(v, np.float64) for k, v in params.items()}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, d)).astype(np.float32)
    h0 = rng.normal(size=(b, h)).astype(np.float32)
    assert params["w_x"].shape == (d, cell.num_gates * h)
    if name == "lstm":
        c0 = rng.normal(size=(b, h)).astype(np.float32)
        (c1, h1), y = cell.step(params, (c0, h0), x)
        c_ref, h_ref = np_lstm(npp, c0, h0, x)
        np.testing.assert_allclose(c1, c_ref, rtol=1e-5, atol=1e-6)
    elif name == "gru":
        h1, y = cell.step(params, h0, x)
        h_ref = np_gru(npp, h0, x)
    else:
        for act in ("tanh", "relu"):
            h1, y = cell.step(params, h0, x, activation=act)
            h_ref = np_rnn(npp, h0, x, act)
            np.testing.assert_allclose(h1, h_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h1, h_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y, h1)


def loop_reference(model: DeepRNN, params, tokens, carry):
    """The spec as a plain Python loop over time, then over layers (time-major)."""
    cell = cells.CELLS[model.cell]
    carry = list(carry)
    outs = []
    for t in range(tokens.shape[1]):
        x = jax.nn.one_hot(tokens[:, t], model.vocab_size)  # H^(0)_t = X_t
        for l, p in enumerate(params["layers"]):
            kw = {"activation": model.layer_activation(l)} if model.cell == "rnn" else {}
            carry[l], x = cell.step(p, carry[l], x, **kw)  # layer l reads layer l-1 at time t
        outs.append(x @ params["w_out"] + params["b_out"])  # only the top layer feeds the output
    return jnp.stack(outs, 1), tuple(carry)


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("num_layers", [1, 3, 4])
def test_scanned_stack_equals_time_loop(name, num_layers):
    acts = ("tanh", "relu", "tanh", "relu")[:num_layers] if name == "rnn" else ("tanh",)
    model = DeepRNN(vocab_size=7, hidden_size=5, num_layers=num_layers, cell=name, activation=acts)
    params = model.init(jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (3, 6), 0, 7)
    carry = jax.tree_util.tree_map(lambda z: z + 0.3, model.initial_carry(3))
    logits, new_carry = model.apply(params, tokens, carry)
    ref_logits, ref_carry = loop_reference(model, params, tokens, carry)
    assert logits.shape == (3, 6, 7)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(new_carry), jax.tree_util.tree_leaves(ref_carry)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_layers_read_the_layer_below_not_the_input():
    """d2l's JAX GRU fed the raw input to every layer: perturbing layer 2's weights must
    change layer 3's carry only through layer 2's outputs (L = 3)."""
    model = DeepRNN(vocab_size=6, hidden_size=4, num_layers=3, cell="gru")
    params = model.init(jax.random.key(0))
    tokens = jnp.array([[1, 2, 3, 4]])
    _, s = model.apply(params, tokens, model.initial_carry(1))
    params2 = jax.tree_util.tree_map(lambda x: x, params)
    params2["layers"][1] = dict(params2["layers"][1], b_x=params2["layers"][1]["b_x"] + 1.0)
    _, s2 = model.apply(params2, tokens, model.initial_carry(1))
    np.testing.assert_array_equal(s[0], s2[0])  # layer 1 does not read layer 2
    assert float(jnp.abs(s[2] - s2[2]).max()) > 1e-3  # layer 3 reads layer 2
    assert params["layers"][2]["w_x"].shape == (4, 12)  # layer 3 inputs are hidden-sized


def test_jit_equals_no_jit_and_causality():
    model = DeepRNN(vocab_size=9, hidden_size=8, num_layers=2, cell="lstm")
    params = model.init(jax.random.key(3))
    tokens = jax.random.randint(jax.random.key(4), (2, 10), 0, 9)
    carry = model.initial_carry(2)
    eager, _ = model.apply(params, tokens, carry)
    jitted, _ = jax.jit(model.apply)(params, tokens, carry)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)
    # Changing tokens after position 4 never changes the logits at positions <= 4.
    changed = tokens.at[:, 5:].set((tokens[:, 5:] + 1) % 9)
    other, _ = model.apply(params, changed, carry)
    np.testing.assert_array_equal(eager[:, :5], other[:, :5])
    assert float(jnp.abs(eager[:, 5:] - other[:, 5:]).max()) > 0


def test_dropout_only_between_layers_and_only_in_training():
    model = DeepRNN(vocab_size=5, hidden_size=16, num_layers=2, cell="gru", dropout=0.5)
    params = model.init(jax.random.key(0))
    tokens = jnp.array([[0, 1, 2, 3]])
    s0 = model.initial_carry(1)
    eval1, _ = model.apply(params, tokens, s0)
    eval_nodrop, _ = DeepRNN(5, 16, 2, "gru").apply(params, tokens, s0)
    np.testing.assert_array_equal(eval1, eval_nodrop)  # evaluation: no dropout
    train1, st = model.apply(params, tokens, s0, dropout_key=jax.random.key(1))
    _, st_eval = model.apply(params, tokens, s0)
    np.testing.assert_array_equal(st[0], st_eval[0])  # the first layer's own carry is untouched
    assert float(jnp.abs(train1 - eval1).max()) > 1e-4  # its output to layer 2 is dropped
    single = DeepRNN(5, 16, 1, "gru", dropout=0.5)  # no dropout after the last (only) layer
    a, _ = single.apply(single.init(jax.random.key(0)), tokens, single.initial_carry(1), dropout_key=jax.random.key(1))
    b, _ = single.apply(single.init(jax.random.key(0)), tokens, single.initial_carry(1))
    np.testing.assert_array_equal(a, b)
