"""The ``train``, ``checkpoint``, ``parallel`` and ``generate`` groups' fields."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from rnnjax.config.fields import Field, Rule, at_least, boolean, one_of, real, strings
from rnnjax.config.model_fields import OUR_STACK_IMPLS, one_of_impls

# The time budget (train.max_minutes) is set once this many warm-up steps have run.
MEASURED_STEPS = 20


def _pipeline_needs_our_stack(c: Any) -> str | None:
    if c.parallel.cpu_pipeline and c.model.impl not in OUR_STACK_IMPLS:
        return (
            "config.parallel.cpu_pipeline needs rnnjax's stack; "
            "use model.impl = 'rnnjax' or 'autodiff'"
        )
    if c.parallel.cpu_pipeline and c.model.locked_dropout > 0:
        return (
            "config.model.locked_dropout is not in the layer pipeline (its masks span the whole "
            "sequence); set parallel.cpu_pipeline = False or model.locked_dropout = 0"
        )
    return None


def _kwargs_ok(v: Any, c: Any) -> bool:
    return isinstance(v, Mapping) and all(isinstance(k, str) and k.isidentifier() for k in v)


def _kwargs_not_hyperparams(c: Any) -> str | None:
    for name in ("learning_rate", "weight_decay"):
        if name in c.train.optimizer_kwargs:
            return (
                f"config.train.optimizer_kwargs sets {name}; set config.train.{name} instead "
                "(the schedule and the vectorized sweeps read it there)"
            )
    return None


def loss_terms() -> list[str]:
    """The train fields that weigh a loss term (``loss_term=True``):
    rnnjax.training.steps.LOSS_TERMS's names."""
    return [f.name for f in GROUPS["train"][1] if isinstance(f, Field) and f.loss_term]


def _loss_terms_apply(c: Any) -> str | None:
    on = [n for n in loss_terms() if getattr(c.train, n) > 0]
    if on and c.model.impl not in OUR_STACK_IMPLS:
        return (
            f"config.train.{on[0]} reads the top layer's outputs in rnnjax's stack, not "
            f"impl {c.model.impl!r}; use model.impl = {one_of_impls(OUR_STACK_IMPLS)}, "
            f"or set train.{on[0]} to 0"
        )
    return None


def _budget_measurable(c: Any) -> str | None:
    """A time budget's step time is measured during warm-up, before the decay depends on it."""
    t = c.train
    if t.max_minutes > 0 and t.max_steps > 0:
        return (
            "config.train.max_minutes and config.train.max_steps both set the run's length; "
            "set one of them to 0"
        )
    if t.max_minutes > 0 and t.schedule == "warmup_cosine" and t.warmup_steps < MEASURED_STEPS:
        return (
            f"config.train.max_minutes measures the step time during warm-up: with "
            f"schedule 'warmup_cosine' set config.train.warmup_steps >= {MEASURED_STEPS}"
        )
    return None


# Each group: its one-line doc, then its fields and cross-field rules, checked in this order.
GROUPS: dict[str, tuple[str, list[Field | Rule]]] = {
    "train": (
        "The optimizer and the training loop (rnnjax/training/optim.py, rnnjax/training/train.py).",
        [
            Field(
                "num_epochs", 500, "Passes over the training split.", **at_least(1), resumable=True
            ),
            Field(
                "optimizer",
                "sgd",
                "Any optax optimizer by name: 'sgd', 'adam', 'adamw', 'lion', ... (a function in "
                "optax that takes learning_rate; checked by rnnjax.training.optim before "
                "training).",
                "the name of an optax optimizer, e.g. 'sgd', 'adam', 'adamw' or 'lion'",
                lambda v, c: isinstance(v, str) and v.isidentifier(),
            ),
            Field(
                "optimizer_kwargs",
                {},
                "Further keyword arguments of the optax optimizer, e.g. {'b1': 0.95}; on the "
                "command line --config.train.optimizer_kwargs=\"{'b1': 0.95}\".",
                "a dict of keyword arguments, e.g. {'b1': 0.95}",
                _kwargs_ok,
                added=True,
            ),
            Rule(
                "optimizer_kwargs sets neither learning_rate nor weight_decay.",
                _kwargs_not_hyperparams,
            ),
            Field(
                "learning_rate",
                2.0,
                "Peak learning rate.",
                **real("a finite number > 0", lambda v: v > 0),
            ),
            Field(
                "grad_clip",
                1.0,
                "Clip gradients to this global norm before the update (0 = no clipping).",
                **real("a finite number >= 0 (0 = off)", lambda v: v >= 0),
            ),
            Field(
                "weight_decay",
                0.0,
                "Decoupled weight decay, for optimizers that take weight_decay (adamw, lion, ...).",
                **real("a number >= 0", lambda v: v >= 0),
            ),
            Field(
                "schedule",
                "constant",
                "'constant' or 'warmup_cosine' (linear warm-up for warmup_steps, then cosine "
                "to 0).",
                **one_of("constant", "warmup_cosine"),
            ),
            Field("warmup_steps", 0, "Warm-up steps of 'warmup_cosine'.", **at_least(0)),
            Field(
                "max_steps",
                0,
                "The run's length in training steps (the last epoch may be partial); every "
                "schedule runs over it. 0 = train.num_epochs epochs.",
                **at_least(0, "0 = train.num_epochs epochs"),
                added=True,
            ),
            Field(
                "max_minutes",
                0.0,
                "A time budget: the run's length in steps is set from the step time measured "
                "during warm-up (compilation, each epoch's validation pass, samples and "
                "checkpoint, and the time already spent included) and recorded in "
                "WORKDIR/budget.json and the checkpoints, which a resumed run keeps. 0 = off.",
                **real("a number >= 0 (0 = off)", lambda v: v >= 0),
                added=True,
            ),
            Rule("max_minutes is measured during warm-up.", _budget_measurable),
            Field(
                "ar",
                0.0,
                "Activation regularisation (AWD-LSTM's AR): add ar times the mean square of the "
                "top layer's outputs, after output dropout, to the training loss (0 = off).",
                **real("a number >= 0 (0 = off)", lambda v: v >= 0),
                added=True,
                loss_term=True,
            ),
            Field(
                "tar",
                0.0,
                "Temporal activation regularisation (TAR): add tar times the mean square of the "
                "top layer's step-to-step output change to the training loss (0 = off).",
                **real("a number >= 0 (0 = off)", lambda v: v >= 0),
                added=True,
                loss_term=True,
            ),
            Rule("Loss terms (ar, tar) read rnnjax's stack.", _loss_terms_apply),
            Field(
                "weight_average",
                "",
                "Average the weights over training and evaluate with the average: 'ema' "
                "(exponential moving average) or 'polyak' (the mean since weight_average_start); "
                "validation, best, evaluation.json, samples and rnnjax.load use it, the raw "
                "weights are checkpointed beside it. '' = off.",
                "'' (off), 'ema' or 'polyak'",
                lambda v, c: v in ("", "ema", "polyak"),
                added=True,
            ),
            Field(
                "weight_average_decay",
                0.999,
                "EMA's decay: after each step, average = decay * average + (1 - decay) * params.",
                # the average is float32: a decay that rounds to 1 there would never move it
                **real(
                    "a number in (0, 1) that float32 holds below 1 (at most 0.99999994)",
                    lambda v: 0 < v < 1 and struct.unpack("f", struct.pack("f", v))[0] < 1,
                ),
                added=True,
            ),
            Field(
                "weight_average_start",
                0,
                "The average is the params themselves up to this step, then averages the params "
                "after each later step (Polyak: their plain mean, as ASGD; EMA: from there on).",
                **at_least(0, "0 = from the first step"),
                added=True,
            ),
            Field(
                "progress",
                True,
                "Show the start block and a tqdm progress bar. Off: only where a resumed run "
                "starts (stdout) and the start block's notes (files set aside, auto falling back "
                "to the pure-JAX layer, the time budget; stderr), one line each.",
                **boolean(),
                resumable=True,
            ),
            Field(
                "max_nonfinite",
                10,
                "Abort after this many consecutive non-finite steps (each one is skipped, not "
                "applied).",
                **at_least(1),
            ),
            Field(
                "layer_stats",
                True,
                "Per-layer statistics each epoch (metrics.jsonl, TensorBoard): gradient norms, "
                "hidden-state RMS, gate saturation, forget gate.",
                **boolean(),
                resumable=True,
                added=True,
            ),
            Field(
                "profile_steps",
                0,
                "Capture a jax.profiler trace of this many training steps, after the first "
                "(compiled) one, into WORKDIR/profile/; 0 = off.",
                **at_least(0, "0 = no profile"),
                resumable=True,
                added=True,
            ),
            Field(
                "early_stopping_patience",
                0,
                "Stop after this many epochs without a new best validation perplexity (0 = off); "
                "every new best epoch is then checkpointed and the end-of-run samples come from "
                "it.",
                **at_least(0, "epochs without a new best validation perplexity; 0 = off"),
                resumable=True,
                added=True,
            ),
        ],
    ),
    "checkpoint": (
        "Checkpoints in WORKDIR/checkpoints (rnnjax/rundir/checkpoint.py).",
        [
            Field(
                "every_epochs",
                10,
                "Save every this many epochs (and always after the last epoch).",
                **at_least(1),
                resumable=True,
            ),
            Field(
                "max_to_keep",
                3,
                "Keep this many latest checkpoints, plus the one with the best validation "
                "perplexity.",
                **at_least(1),
                resumable=True,
            ),
            Field(
                "every_minutes",
                0.0,
                "Also save mid-epoch once this many minutes have passed since the last save, so a "
                "kill during a long epoch loses at most that much (0 = off).",
                **real("a number >= 0 (0 = off)", lambda v: v >= 0),
                resumable=True,
                added=True,
            ),
        ],
    ),
    "parallel": (
        "Devices (rnnjax/network/parallel.py, rnnjax/network/impls/pipeline.py; BENCHMARKS.md).",
        [
            Field(
                "num_devices",
                0,
                "Data-parallel devices (across all processes); 0 = all. data.batch_size must "
                "divide by it.",
                **at_least(0, "0 = all devices"),
                resumable=True,
            ),
            Field(
                "cpu_devices",
                1,
                "CPU only: split this host's cores into this many JAX devices and train "
                "data-parallel over them; 1 = JAX's default, 0 = one per core (or the largest "
                "count that divides data.batch_size).",
                **at_least(0, "1 = JAX's default, 0 = one per core"),
                resumable=True,
                added=True,
            ),
            Field(
                "cpu_pipeline",
                False,
                "CPU only: run the layers as a pipeline over this host's CPU devices (same numbers "
                "as the plain stack; measured slower on 2 cores).",
                **boolean(),
                resumable=True,
                added=True,
            ),
            Rule(
                "cpu_pipeline needs rnnjax's stack, without locked_dropout.",
                _pipeline_needs_our_stack,
            ),
            Field(
                "pipeline_chunks",
                5,
                "Time chunks per sequence for the pipeline (the divisor of data.num_steps nearest "
                "it).",
                **at_least(1),
                resumable=True,
                added=True,
            ),
        ],
    ),
    "generate": (
        "The greedy samples printed (and saved to samples.txt) after training.",
        [
            Field(
                "prefixes",
                ["time traveller", "traveller"],
                "Prompts to continue; [] = no samples.",
                **strings("a list of non-empty strings", nonempty=True),
                resumable=True,
            ),
            Field(
                "num_chars",
                50,
                "Tokens generated after each prefix (rnnjax.network.sampling's rule too).",
                **at_least(1),
                resumable=True,
            ),
        ],
    ),
}
