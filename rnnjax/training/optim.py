"""The optimizer: ``chain(clip_by_global_norm(grad_clip), <optax optimizer>(schedule, **kwargs))``.

``train.optimizer`` names any function in optax that takes ``learning_rate`` (``sgd``, ``adam``,
``adamw``, ``lion``, ...); ``train.optimizer_kwargs`` gives its other arguments, and
``train.weight_decay`` goes to the ones that take ``weight_decay``. :func:`optimizer_factory`
checks all of it (one line, before training).
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from rnnjax.config import ConfigError, TrainConfig

_FIND = (
    "the name of a function in optax that takes learning_rate (the list: "
    "https://optax.readthedocs.io/en/latest/api/optimizers.html, or "
    'python -c "import optax; help(optax)")'
)


# optax optimizers whose update needs more than gradients, which a train step does not give.
NEEDS_MORE = {
    "lbfgs": "its update needs the loss value, its gradient and the loss function (a line search)",
}


def _takes_learning_rate(fn: object) -> bool:
    try:
        return callable(fn) and "learning_rate" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


Factory = Callable[..., optax.GradientTransformation]


def optimizer_factory(cfg: TrainConfig) -> tuple[Factory, inspect.Signature]:
    """optax's function named ``cfg.optimizer`` and its signature; :class:`ConfigError` (one line)
    for a name optax lacks, an argument it does not take or lacks, or a ``weight_decay`` it would
    ignore."""
    name, kwargs = cfg.optimizer, dict(cfg.optimizer_kwargs)
    factory = getattr(optax, name, None) if not name.startswith("_") else None
    if not _takes_learning_rate(factory):
        names = [
            n
            for n in dir(optax)
            if not n.startswith("_") and _takes_learning_rate(getattr(optax, n))
        ]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"config.train.optimizer = {name!r} is not an optax optimizer; {hint}give {_FIND}"
        )
    if name in NEEDS_MORE:
        raise ConfigError(
            f"config.train.optimizer = {name!r} cannot train here: {NEEDS_MORE[name]}; give "
            "another, e.g. 'adam'"
        )
    sig = inspect.signature(factory)
    params = sig.parameters
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(kwargs) - set(params)) if not open_kwargs else []
    if unknown:
        takes = ", ".join(n for n in params if n not in ("learning_rate", "weight_decay"))
        raise ConfigError(
            f"config.train.optimizer_kwargs: optax.{name} takes no argument "
            f"{unknown[0]!r}; it takes {takes or 'nothing else'}"
        )
    for k, v in kwargs.items():  # what a traced update cannot catch: a flag or inf for a number
        default = params[k].default if k in params else None
        if isinstance(default, float) and (
            isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v))
        ):
            raise ConfigError(
                f"config.train.optimizer_kwargs: optax.{name}'s {k} = {v!r} is not a finite "
                f"number (its default is {default!r}); give a number"
            )
    given = set(kwargs) | {"learning_rate", "weight_decay"}
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty and n not in given and p.kind not in variadic
    ]
    if missing:
        example = f"--config.train.optimizer_kwargs=\"{{'{missing[0]}': ...}}\""
        raise ConfigError(
            f"config.train.optimizer_kwargs: optax.{name} needs {missing[0]!r}; "
            f"add it, e.g. {example}"
        )
    if cfg.weight_decay > 0 and "weight_decay" not in params:
        raise ConfigError(
            f"config.train.weight_decay = {cfg.weight_decay} but optax.{name} takes no "
            "weight_decay; set it to 0 or use an optimizer that takes it (adamw, lion, ...)"
        )
    return factory, sig


def make_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """Learning rate per step: constant, or linear warm-up then cosine decay to 0."""
    if cfg.schedule == "constant":
        return optax.constant_schedule(cfg.learning_rate)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(total_steps, cfg.warmup_steps + 1),
    )


def make_optimizer(
    cfg: TrainConfig, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns (optimizer, learning-rate schedule). Clipping (when grad_clip > 0) comes first.

    The learning rate (a constant, or the schedule's value at each step), weight decay and every
    float in ``optimizer_kwargs`` sit in the optimizer state (``optax.inject_hyperparams``): trials
    that differ only in them share one compiled program and one state layout
    (``rnnjax.training.vectorize``). Other kwargs (bools, ints, strings) are static.
    """
    factory, sig = optimizer_factory(cfg)
    schedule = make_schedule(cfg, total_steps)
    kwargs = dict(cfg.optimizer_kwargs)
    kwargs["learning_rate"] = cfg.learning_rate if cfg.schedule == "constant" else schedule
    if "weight_decay" in sig.parameters:
        kwargs["weight_decay"] = cfg.weight_decay
    # Only floats are injected: every other value, given or a default (adafactor's
    # min_dim_size_to_factor, lbfgs's memory_size: ints a traced value cannot stand in for), is
    # static.
    bound = sig.bind_partial(**kwargs)
    bound.apply_defaults()
    static = tuple(
        k
        for k, v in bound.arguments.items()
        if k not in ("learning_rate", "weight_decay")
        and sig.parameters[k].kind
        not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and not isinstance(v, float)
    )
    opt = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
    if cfg.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt, schedule


def check_optimizer(cfg: TrainConfig) -> None:
    """Refuse, in one line and before any compute, optimizer arguments of the wrong kind (a string
    where optax computes with a number, ...): one update is traced on a small parameter tree
    (``jax.eval_shape``: nothing runs)."""
    opt, _ = make_optimizer(cfg, total_steps=10)
    params = {
        "w": jax.ShapeDtypeStruct((2, 3), jnp.float32),
        "b": jax.ShapeDtypeStruct((3,), jnp.float32),
    }
    try:
        jax.eval_shape(lambda p: opt.update(p, opt.init(p), p), params)
    except Exception as e:  # noqa: BLE001 -- whatever optax raises while tracing, said in one line
        why = " ".join(f"{type(e).__name__}: {e}".split())[:160]
        raise ConfigError(
            f"config.train.optimizer_kwargs = {dict(cfg.optimizer_kwargs)!r}: "
            f"optax.{cfg.optimizer} cannot update with them ({why}); give each argument the type "
            "optax documents"
        ) from None
