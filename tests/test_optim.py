"""The optimizer's gradient clipping bounds the update."""

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import param_bytes, small_config

from rnnjax.config import resolve
from rnnjax.training.optim import make_optimizer
from rnnjax.training.steps import TrainState, make_train_step, train_sums
from rnnjax.training.train import build_model


def test_clipping_is_applied():
    """d2l's JAX trainer never clipped: an update must move params by exactly lr * clip
    (in global norm) when the gradient norm exceeds the clip, and by lr * |g| without clipping."""
    cfg = resolve(small_config())
    model = build_model(cfg, 28)
    params = model.init(jax.random.key(0))
    xs = jax.random.randint(jax.random.key(1), (1, 8, 10), 0, 28)
    ys = jnp.roll(xs, -1, axis=-1)
    deltas = {}
    for clip in (0.01, 0.0):
        tc = dataclasses.replace(cfg.train, grad_clip=clip)
        tx, _ = make_optimizer(tc, 10)
        step = make_train_step(model, tx, reset_carry=False)
        fresh = jax.tree_util.tree_map(jnp.copy, params)  # the step donates its input
        state = TrainState(jnp.int32(0), fresh, tx.init(fresh), jnp.int32(0))
        new, _, acc = step(
            state,
            model.initial_carry(8),
            train_sums(model, fresh, False),
            xs,
            ys,
            0,
            jax.random.key(0),
        )
        diff = jax.tree_util.tree_map(lambda a, b: a - b, new.params, params)
        deltas[clip] = (float(optax.tree.norm(diff)), float(acc["grad_norm"]))
    (clipped, gnorm), (unclipped, gnorm2) = deltas[0.01], deltas[0.0]
    assert gnorm > 0.01 and gnorm == pytest.approx(gnorm2)
    assert clipped == pytest.approx(2.0 * 0.01, rel=1e-4)
    assert unclipped == pytest.approx(2.0 * gnorm, rel=1e-4)


def _old_optimizer(tc, total_steps):
    """The optimizer as main 4059f9e built it (a closed list of sgd, adam, adamw)."""
    from rnnjax.training.optim import make_schedule

    schedule = make_schedule(tc, total_steps)
    factory = {"sgd": optax.sgd, "adam": optax.adam, "adamw": optax.adamw}[tc.optimizer]
    kwargs = {"learning_rate": tc.learning_rate if tc.schedule == "constant" else schedule}
    if tc.optimizer == "adamw":
        kwargs["weight_decay"] = tc.weight_decay
    opt = optax.inject_hyperparams(factory)(**kwargs)
    return optax.chain(optax.clip_by_global_norm(tc.grad_clip), opt) if tc.grad_clip > 0 else opt


@pytest.mark.parametrize(
    "name, schedule, wd",
    [
        ("sgd", "constant", 0.0),
        ("adam", "constant", 0.0),
        ("adamw", "constant", 0.1),
        ("adamw", "warmup_cosine", 0.01),
    ],
)
def test_sgd_adam_adamw_are_bitwise_what_they_were(name, schedule, wd):
    """Any optax name now, but the three old ones give the same state tree and bitwise the same
    updates."""
    tc = dataclasses.replace(
        resolve(small_config()).train,
        optimizer=name,
        schedule=schedule,
        weight_decay=wd,
        warmup_steps=2,
        learning_rate=0.01,
    )
    params = {"w": jax.random.normal(jax.random.key(0), (4, 3)), "b": jnp.ones(3)}
    grads = jax.tree_util.tree_map(lambda x: jnp.sin(x) * 3.0, params)
    outs = []
    for tx in (make_optimizer(tc, 10)[0], _old_optimizer(tc, 10)):
        state, p = tx.init(params), params
        for _ in range(3):
            updates, state = tx.update(grads, state, p)
            p = optax.apply_updates(p, updates)
        outs.append((jax.tree_util.tree_structure(state), param_bytes(p), param_bytes(state)))
    assert outs[0] == outs[1]


def test_any_optax_optimizer_trains_by_name(tmp_path):
    """``train.optimizer = 'lion'`` (never named in rnnjax) trains, with optimizer_kwargs and
    weight_decay passed on; its hyperparameters sit in the state (vectorized sweeps)."""
    from rnnjax.training.train import train_and_evaluate

    cfg = small_config(
        1,
        **{
            "train.optimizer": "lion",
            "train.learning_rate": 1e-3,
            "train.weight_decay": 0.01,
            "train.optimizer_kwargs": {"b1": 0.95, "mu_dtype": "float32"},
        },
    )
    out = train_and_evaluate(cfg, tmp_path / "run")
    assert out["metrics"][0]["val_ppl"] < 27  # learned: below a uniform guess over the vocabulary
    tx, _ = make_optimizer(resolve(cfg).train, 10)
    state = tx.init({"w": jnp.ones(3)})
    hp = state[1].hyperparams
    assert float(hp["weight_decay"]) == pytest.approx(0.01)
    assert float(hp["b1"]) == pytest.approx(0.95)
    assert "mu_dtype" not in hp  # a string: static, not a traced hyperparameter


OPTAX_OPTIMIZERS = sorted(
    n
    for n in dir(optax)
    if not n.startswith("_")
    and inspect.isfunction(getattr(optax, n))
    and "learning_rate" in inspect.signature(getattr(optax, n)).parameters
)


@pytest.mark.filterwarnings("ignore:Specifying a key will be required")  # noisy_sgd's own notice
@pytest.mark.parametrize("name", OPTAX_OPTIMIZERS)
def test_every_optax_optimizer_takes_steps_or_is_refused_in_one_line(name):
    """Every function in optax's namespace that takes ``learning_rate``: two jitted updates of a
    small tree give finite parameters, or the config is refused in one line naming why."""
    from rnnjax.config import ConfigError
    from rnnjax.training.optim import NEEDS_MORE

    fields = {"train.optimizer": name, "train.schedule": "warmup_cosine", "train.warmup_steps": 1}
    if name in NEEDS_MORE:
        with pytest.raises(ConfigError, match=f"optimizer = '{name}' cannot train here") as e:
            make_optimizer(resolve(small_config(1, **fields)).train, 10)
        assert "\n" not in str(e.value)
        return
    tx, _ = make_optimizer(resolve(small_config(1, **fields)).train, 10)
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}

    @jax.jit
    def step(params, state):
        grads = jax.tree_util.tree_map(lambda x: 0.1 * x, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(2):
        params, state = step(params, state)
    assert all(jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"train.optimizer": "lino"},
            r"^config.train.optimizer = 'lino' is not an optax optimizer; "
            r"did you mean 'lion'\? give the "
            r"name of a function in optax that takes learning_rate",
        ),
        ({"train.optimizer": "tree"}, r"'tree' is not an optax optimizer"),  # a module of optax
        (
            {"train.optimizer": "adam", "train.optimizer_kwargs": {"b3": 0.9}},
            r"^config.train.optimizer_kwargs: optax.adam takes no argument 'b3'; "
            r"it takes b1, b2, eps",
        ),
        (
            {"train.optimizer": "sgd", "train.weight_decay": 0.1},
            r"^config.train.weight_decay = 0.1 but optax.sgd takes no weight_decay",
        ),
        (  # a known argument of the wrong type: caught by one traced update, not the first step
            {"train.optimizer": "adam", "train.optimizer_kwargs": {"b1": "x"}},
            r"^config.train.optimizer_kwargs = \{'b1': 'x'\}: optax.adam cannot update with "
            r"them \(TypeError: .*\); give each argument the type optax documents$",
        ),
        (
            {"train.optimizer": "adam", "train.optimizer_kwargs": {"b1": [1, 2]}},
            r"optax.adam cannot update with them \(TypeError",
        ),
        (  # a flag or inf where optax's default is a float: no TypeError to trace, refused by type
            {"train.optimizer": "adam", "train.optimizer_kwargs": {"b1": True}},
            r"^config.train.optimizer_kwargs: optax.adam's b1 = True is not a finite number "
            r"\(its default is 0.9\); give a number$",
        ),
        (
            {"train.optimizer": "adam", "train.optimizer_kwargs": {"b1": float("inf")}},
            r"b1 = inf is not a finite number",
        ),
    ],
)
def test_bad_optimizer_is_one_line_before_training(fields, message, tmp_path):
    from rnnjax.config import ConfigError
    from rnnjax.training.train import train_and_evaluate

    with pytest.raises(ConfigError, match=message) as e:
        train_and_evaluate(small_config(1, **fields), tmp_path / "run")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_memory_estimate_sizes_the_real_optimizer_state():
    """capacity sizes optimizer state with jax.eval_shape of the real optimizer: adam keeps two
    moments per parameter, lion one, sgd none (no table of names)."""
    from rnnjax.training.capacity import estimate_memory

    est = {
        name: estimate_memory(resolve(small_config(**{"train.optimizer": name})), 28)
        for name in ("sgd", "lion", "adam")
    }
    model = build_model(resolve(small_config()), 28)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    nbytes = sum(x.size * 4 for x in jax.tree_util.tree_leaves(shapes))
    assert est["adam"] - est["sgd"] == pytest.approx(2 * nbytes, abs=64)
    assert est["lion"] - est["sgd"] == pytest.approx(nbytes, abs=64)
