"""The deep stack (DeepRNN): the scan against a Python loop over time and layers, each layer reading
the one below, causality, dropout between layers, finite-difference gradients, every Impl value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rnnjax import cells
from rnnjax.config import default_config, resolve
from rnnjax.network.model import DeepRNN
from rnnjax.training.steps import cross_entropy


def loop_reference(model: DeepRNN, params, tokens, carry):
    """The spec as a plain Python loop over time, then over layers (time-major)."""
    cell = cells.CELLS[model.cell]
    carry = list(carry)
    outs = []
    for t in range(tokens.shape[1]):
        x = jax.nn.one_hot(tokens[:, t], model.vocab_size)  # H^(0)_t = X_t
        for l, p in enumerate(params["layers"]):
            carry[l], x = cell.step(
                p, carry[l], x, model.layer_activation(l)
            )  # layer l reads layer l-1 at time t
        outs.append(x @ params["w_out"] + params["b_out"])  # only the top layer feeds the output
    return jnp.stack(outs, 1), tuple(carry)


@pytest.mark.parametrize("name", list(cells.CELLS))
@pytest.mark.parametrize("num_layers", [1, 3, 4])
def test_scanned_stack_equals_time_loop(name, num_layers):
    acts = (
        ("tanh", "relu", "tanh", "relu")[:num_layers]
        if cells.CELLS[name].uses_activation
        else ("tanh",)
    )
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
    a, _ = single.apply(
        single.init(jax.random.key(0)),
        tokens,
        single.initial_carry(1),
        dropout_key=jax.random.key(1),
    )
    b, _ = single.apply(single.init(jax.random.key(0)), tokens, single.initial_carry(1))
    np.testing.assert_array_equal(a, b)


def test_output_dropout_drops_the_top_layers_output_in_training_only_the_same_in_every_impl():
    """model.output_dropout: the top layer's output, before the output layer; its carry is
    untouched, evaluation ignores it, and rnnjax, autodiff and the cuDNN stack (lstm_ref standing
    in) draw one mask."""
    import dataclasses
    import functools

    from rnnjax.network.impls import cudnn

    model = DeepRNN(
        vocab_size=7, hidden_size=16, num_layers=2, cell="lstm", dropout=0.25, output_dropout=0.5
    )
    params = model.init(jax.random.key(0))
    tokens = jnp.array([[0, 1, 2, 3, 4], [5, 6, 0, 1, 2]])
    s0, key = model.initial_carry(2), jax.random.key(1)
    plain = dataclasses.replace(model, output_dropout=0.0)
    np.testing.assert_array_equal(
        model.apply(params, tokens, s0)[0], plain.apply(params, tokens, s0)[0]
    )
    train, carry = model.apply(params, tokens, s0, dropout_key=key)
    train_plain, carry_plain = plain.apply(params, tokens, s0, dropout_key=key)
    for a, b in zip(jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves(carry_plain)):
        np.testing.assert_array_equal(
            a, b
        )  # the top layer's h is dropped on its way out, not in its carry
    # about half of the top layer's units are zeroed: logits = b_out + (kept h / 0.5) @ w_out
    assert float(jnp.abs(train - train_plain).max()) > 1e-3
    autodiff = dataclasses.replace(model, impl="autodiff").apply(
        params, tokens, s0, dropout_key=key
    )[0]
    ref = functools.partial(cudnn.apply, kernel=cudnn.reference_kernel)(
        model, params, tokens, s0, key
    )[0]
    np.testing.assert_allclose(autodiff, train, atol=1e-5)
    np.testing.assert_allclose(ref, train, atol=1e-5)


@pytest.mark.parametrize("cell", list(cells.CELLS))  # a new cell too, by default
def test_gradients_match_finite_differences(cell):
    model = DeepRNN(vocab_size=5, hidden_size=3, num_layers=2, cell=cell)
    tokens = jnp.array([[0, 1, 2, 3], [4, 3, 2, 1]])
    targets = jnp.roll(tokens, -1, axis=1)
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(
            lambda x: x.astype(jnp.float64), model.init(jax.random.key(0))
        )
        carry = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), model.initial_carry(2))

        def loss(p):
            return cross_entropy(model.apply(p, tokens, carry)[0], targets).mean()

        check_grads(loss, (params,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_every_impl_value_builds_its_model():
    from rnnjax.config import IMPLS
    from rnnjax.network.model import Impl, resolve_impl
    from rnnjax.training.train import build_model

    assert set(IMPLS) == {i.value for i in Impl}
    for value in IMPLS:
        cfg = default_config()
        cfg.model.impl = value
        built = build_model(resolve(cfg), 28).impl
        assert built is resolve_impl(value, cfg.model.cell) and built is not Impl.AUTO
        assert built is Impl(value) or value == "auto"


def test_auto_runs_rnnjax_without_the_kernels_and_on_a_gpu_where_only_a_missing_build_is_said(
    monkeypatch,
):
    """resolve_impl's fallbacks without needing the extension (tests/test_native.py runs the real
    missing library): no kernels on a CPU -> rnnjax and one line naming why and how to build them;
    a GPU/TPU backend -> rnnjax and nothing said; an explicit impl is never reinterpreted."""
    from rnnjax.network.impls import native
    from rnnjax.network.model import Impl, auto_fallback_note, resolve_impl

    monkeypatch.setattr(native, "_EXT", None)
    monkeypatch.setattr(native, "WHY_NOT", "the native extension is not built here (test)")
    assert resolve_impl("auto", "lstm") is Impl.FUSED
    assert DeepRNN(5, 4, 1, impl="auto").impl is Impl.FUSED
    assert auto_fallback_note("auto", "lstm") == (
        "model.impl = 'auto' runs the pure-JAX layer (rnnjax), not the native kernels: the native "
        "extension is not built here (test); reinstall with a C++ compiler (pip install -e .) to "
        "build them"
    )
    assert auto_fallback_note("rnnjax", "lstm") is None  # asked for: nothing to explain
    assert auto_fallback_note("auto", "mingru") is None  # no kernel: rnnjax by design
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve_impl("auto", "lstm") is Impl.FUSED and auto_fallback_note("auto", "lstm") is None
    assert resolve_impl("native", "lstm") is Impl.NATIVE  # (native falls back in its own line)
    assert resolve_impl("flax", "gru") is Impl.FLAX
