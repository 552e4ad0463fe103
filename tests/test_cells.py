"""Each cell against a NumPy transcription of its equations."""

import jax
import numpy as np
import pytest

from rnnjax import cells


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
