"""The jitted pieces of training: the train state, the loss and its terms, and one training step.
Metrics are summed on the device (:mod:`rnnjax.training.metrics`); the evaluation step is in
:mod:`rnnjax.training.evaluation`.

Shape suffixes as in :mod:`rnnjax.network.model` (n = minibatches per epoch, b = batch, t = time, V
= vocabulary).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax.network import stack
from rnnjax.network.model import Carry, DeepRNN, Impl, Params
from rnnjax.rundir.workdir import Key
from rnnjax.training.metrics import (
    TrainSums,
    add_step,
    train_zeros,
)

Array = jax.Array


class TrainState(NamedTuple):
    step: Array  # int32 scalar: optimizer steps taken (skipped non-finite steps included)
    params: Params
    opt_state: optax.OptState
    nonfinite: Array  # int32 scalar: consecutive non-finite steps so far
    # train.weight_average: the averaged params, shaped as params (None: off, no leaves)
    average: Params | None = None


class Average(NamedTuple):
    """``train.weight_average`` and its settings, as the training step reads them."""

    mode: str = ""  # "" (off), "ema" or "polyak"
    decay: float = 0.999  # EMA's
    start: int = 0  # the average is the params themselves up to this step

    @classmethod
    def of(cls, tc) -> Average:
        """From a :class:`rnnjax.config.TrainConfig`."""
        return cls(tc.weight_average, tc.weight_average_decay, tc.weight_average_start)


NO_AVERAGE = Average()  # train.weight_average = "" (the default)


def init_train_state(
    model: DeepRNN, tx: optax.GradientTransformation, key: Array, average: Average = NO_AVERAGE
) -> TrainState:
    """Step 0: fresh params from ``key``, their optimizer state, no non-finite steps; with
    ``average.mode``, the average starts as a copy of the params."""
    params = model.init(key)
    avg = jax.tree_util.tree_map(jnp.copy, params) if average.mode else None
    return TrainState(jnp.int32(0), params, tx.init(params), jnp.int32(0), avg)


def update_average(average: Average, avg: Params, params: Params, step: Array) -> Params:
    """The average after step ``step`` (steps taken, this one included) whose params are
    ``params``. Up to ``average.start``: the params themselves. After it, "ema": ``decay * avg +
    (1 - decay) * params``; "polyak": the running mean of the params after steps start + 1 ..
    ``step`` (ASGD's average)."""
    after = step > average.start
    if average.mode == "ema":
        d = jnp.float32(average.decay)

        def one(a, p):
            return jnp.where(after, d * a + (1 - d) * p, p)

    else:
        n = (step - average.start).astype(jnp.float32)

        def one(a, p):
            return jnp.where(n > 1, a + (p - a) / n, p)

    return jax.tree_util.tree_map(one, avg, params)


def evaluated(state: TrainState) -> Params:
    """The params that validation, test, samples and the best checkpoint use: the average when
    ``train.weight_average`` is on, else the params."""
    return state.params if state.average is None else state.average


class Outputs(NamedTuple):
    """What a loss term reads of one training step's forward pass."""

    model: DeepRNN
    params: Params
    logits: Array  # [b, t, V]
    targets: Array  # [b, t] int32
    hidden: Array  # [t, b, h]: the top layer's outputs, before output dropout
    dropped: Array  # [t, b, h]: the same after output dropout (what the output layer reads)


def _tar(o: Outputs) -> Array:
    if o.hidden.shape[0] < 2:
        return jnp.float32(0.0)
    return jnp.mean(jnp.diff(o.hidden, axis=0) ** 2)


# Every loss term besides the cross-entropy, by name: its value for one step, a scalar. Its weight
# is the train config field of the same name, declared with ``loss_term=True`` (0 = off). The
# gradient is taken of cross-entropy + the sum of weight * value over the terms that are on, each
# of which is recorded as the training metric "<name>_loss" (weight * value); train_ppl stays the
# cross-entropy's. A new regulariser is one entry here and its field (docs/training.md).
LOSS_TERMS: dict[str, Callable[[Outputs], Array]] = {
    "ar": lambda o: jnp.mean(o.dropped**2),  # AWD-LSTM's AR: the outputs the output layer reads
    "tar": _tar,  # TAR: their step-to-step change, before output dropout
}


def loss_weights(tc) -> dict[str, float]:
    """The loss terms a :class:`rnnjax.config.TrainConfig` turns on: name -> weight (> 0)."""
    return {n: float(getattr(tc, n)) for n in LOSS_TERMS if getattr(tc, n) > 0}


def term_metric(name: str) -> str:
    """The training metric (and record key) of loss term ``name``."""
    return f"{name}_loss"


class Step(NamedTuple):
    """What one training step's metrics are computed from."""

    model: DeepRNN
    loss: Array  # mean minibatch cross-entropy
    params: Params  # before the update
    grads: Params
    updates: Params
    # the top layer's outputs [t, b, h] (before output dropout) when a metric asks for them
    # (``Metric.hidden``) or a loss term is on; else None
    hidden: Array | None = None


class Metric(NamedTuple):
    """A training metric: its value for one step (summed over the epoch's applied steps, recorded as
    the mean), whether it is computed only with ``train.layer_stats``, and whether it reads
    ``Step.hidden`` (the step then returns the top layer's outputs: ``model.impl`` rnnjax, native
    or autodiff)."""

    fn: Callable[[Step], Array]
    layer_stats: bool = False
    hidden: bool = False


# Every training metric, by name, where it is computed: a new one is one entry here.
TRAIN_METRICS: dict[str, Metric] = {
    "loss": Metric(lambda s: s.loss),
    Key.GRAD_NORM: Metric(lambda s: optax.tree.norm(s.grads)),  # pre-clip global norm
    # pre-clip norm of each layer's gradient, then of the output layer's: [L + 1]
    Key.GRAD_NORM_LAYERS: Metric(lambda s: layer_grad_norms(s.model, s.grads), layer_stats=True),
}


def train_sums(
    model: DeepRNN, params: Params, layer_stats: bool, terms: Iterable[str] = ()
) -> TrainSums:
    """Zero sums of every training metric this run computes (:data:`TRAIN_METRICS`; ``terms``:
    the loss terms that are on, :func:`loss_weights`), and the counters."""
    names = [n for n, m in TRAIN_METRICS.items() if layer_stats or not m.layer_stats]
    loss = jax.ShapeDtypeStruct((), jnp.float32)
    hidden = jax.ShapeDtypeStruct((2, 1, model.hidden_size), jnp.float32)
    shapes = jax.eval_shape(
        lambda loss, p, h: {n: TRAIN_METRICS[n].fn(Step(model, loss, p, p, p, h)) for n in names},
        loss,
        params,
        hidden,
    )
    return train_zeros(
        {n: x.shape for n, x in shapes.items()} | {term_metric(n): () for n in terms}
    )


def cross_entropy(logits_btv: Array, targets_bt: Array) -> Array:
    """Per-token cross-entropy: logits [b, t, V], targets [b, t] -> [b, t]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_btv, targets_bt)


def make_train_step(
    model: DeepRNN,
    tx: optax.GradientTransformation,
    reset_carry: bool,
    weights: Mapping[str, float] | None = None,
    average: Average = NO_AVERAGE,
):
    """Returns ``train_step(state, carry, metrics, xs_nbt, ys_nbt, i, key) -> (state, carry,
    metrics)``. ``weights``: the loss terms that are on, name -> weight (:func:`loss_weights`;
    ``metrics`` then holds their sums, :func:`train_sums`); ``average``: ``train.weight_average``
    (:func:`update_average`, after every step, a skipped one with its unchanged params).

    Trains on minibatch i. The carry (every layer's recurrent state) comes in as data, so no
    gradient flows into earlier minibatches (truncated BPTT); ``reset_carry`` zeroes it
    first (random sampling). ``metrics`` (:func:`train_sums`) sums each metric of
    :data:`TRAIN_METRICS` it holds, and counts applied and skipped steps. A step
    whose loss, gradient or update is not finite changes nothing but the counters: params,
    optimizer state and carry stay as they were.
    """
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(LOSS_TERMS))
    if unknown:
        raise ValueError(f"no loss term {unknown[0]!r}; one of {', '.join(LOSS_TERMS)}")

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train_step(state, carry, metrics, xs_nbt, ys_nbt, i, key):
        x_bt, y_bt = (
            xs_nbt[i].astype(jnp.int32),
            ys_nbt[i].astype(jnp.int32),
        )  # ids come in their smallest dtype
        if reset_carry:
            carry = jax.tree_util.tree_map(jnp.zeros_like, carry)
        dropout_key = jax.random.fold_in(key, state.step) if stack.draws_masks(model) else None

        def loss_fn(params):
            if not with_hidden:
                logits_btv, new_carry = model.apply(params, x_bt, carry, dropout_key=dropout_key)
                loss = cross_entropy(logits_btv, y_bt).mean()
                return loss, (loss, new_carry, None, {})
            logits_btv, new_carry, (h_tbh, dropped_tbh) = model.apply(
                params, x_bt, carry, dropout_key=dropout_key, with_hidden=True
            )
            loss = cross_entropy(logits_btv, y_bt).mean()
            out = Outputs(model, params, logits_btv, y_bt, h_tbh, dropped_tbh)
            terms = {n: w * LOSS_TERMS[n](out) for n, w in weights.items()}
            # the gradient's loss; the recorded one is the cross-entropy
            total = loss + sum(terms.values(), jnp.float32(0.0))
            return total, (loss, new_carry, h_tbh, terms)

        with_hidden = bool(weights) or any(
            TRAIN_METRICS[n].hidden for n in metrics if n in TRAIN_METRICS
        )
        (_, (loss, new_carry, hidden, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        gnorm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        step = Step(model, loss, state.params, grads, updates, hidden)
        values = {name: TRAIN_METRICS[name].fn(step) for name in metrics if name in TRAIN_METRICS}
        values |= {term_metric(n): v for n, v in terms.items() if term_metric(n) in metrics}
        params = optax.apply_updates(state.params, updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(gnorm) & jnp.isfinite(optax.tree.norm(updates))

        def keep(new, old):
            return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)

        nonfinite = jnp.where(ok, 0, state.nonfinite + 1)
        params = keep(params, state.params)
        avg = state.average
        if average.mode:
            avg = update_average(average, avg, params, state.step + 1)
        new_state = TrainState(
            state.step + 1, params, keep(opt_state, state.opt_state), nonfinite, avg
        )
        return new_state, keep(new_carry, carry), add_step(metrics, values, ok)

    return train_step


def layer_grad_norms(model: DeepRNN, grads: Params) -> Array:
    """[L + 1]: the norm of each layer's gradients, then of the output layer's (either params
    layout)."""
    if model.impl == Impl.FLAX:
        groups = [grads[f"layer_{l}"] for l in range(model.num_layers)] + [grads["out"]]
    else:
        groups = [*grads["layers"], {"w_out": grads["w_out"], "b_out": grads["b_out"]}]
    return jnp.stack([optax.tree.norm(g) for g in groups])


def nonfinite_part(
    model: DeepRNN, tx, state: TrainState, carry: Carry, x_bt: Array, y_bt: Array, reset_carry: bool
) -> str:
    """Which of loss, gradient or update is not finite on minibatch (x_bt, y_bt): the abort message
    names it."""
    if reset_carry:
        carry = jax.tree_util.tree_map(jnp.zeros_like, carry)
    x_bt, y_bt = jnp.asarray(x_bt, jnp.int32), jnp.asarray(y_bt, jnp.int32)

    def loss_fn(params):
        return cross_entropy(model.apply(params, x_bt, carry)[0], y_bt).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, _ = tx.update(grads, state.opt_state, state.params)
    for name, value in (
        ("loss", loss),
        ("gradient", optax.tree.norm(grads)),
        ("update", optax.tree.norm(updates)),
    ):
        if not np.isfinite(float(value)):
            return name
    return "loss, gradient or update (on an earlier minibatch)"
