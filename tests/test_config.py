"""Every config in configs/ builds; every invalid value stops the run before any compute."""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import with_fields

from rnnjax.config import ConfigError, default_config, resolve
from rnnjax.training.train import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_module(path):
    spec = importlib.util.spec_from_file_location("cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_config_file(path, arg=None):
    return load_module(path).get_config(arg)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_file_builds(path):
    from rnnjax.sweeps.grid import apply_overrides, trials

    mod = load_module(path)
    extra = {
        "books.py": ["d2l_split", "plain"],
        "sweep_books.py": ["stage2", "stage3", "stage4", "cells"],
    }.get(os.path.basename(path), [])
    for arg in (None, "smoke", *extra):
        cfg = resolve(mod.get_config(arg))
        if hasattr(mod, "get_sweep"):  # a sweep: every trial of its grid resolves
            grid = mod.get_sweep(arg)
            built = [resolve(apply_overrides(mod.get_config(arg), t)) for t in trials(grid)]
            for field, values in grid.items():  # every value of every axis reaches a trial's config
                group, name = field.split(".")
                assert {getattr(getattr(c, group), name) for c in built} == set(values), field
        elif os.path.basename(path) != "books.py":  # deep_<cell>.py trains that cell
            assert cfg.model.cell in os.path.basename(path)
        else:  # the recipe for any text: raw, split 90/5/5 at the far end, a time budget
            assert cfg.train.early_stopping_patience > 0 or arg == "plain"
            # a budget that anneals, except at the smoke config's sizes and on d2l's split
            assert (cfg.train.max_minutes > 0) == (arg in (None, "plain"))
            assert cfg.data.holdout == ("file" if arg == "d2l_split" else "end")
            if (
                arg == "d2l_split"
            ):  # d2l's experiment: first 10,000 characters train, next 5,000 validate
                assert (
                    cfg.data.preprocess,
                    cfg.data.val_fraction,
                    cfg.data.max_tokens,
                    cfg.data.num_val,
                ) == ("d2l", 0.0, 10_000, 5_000)
            else:
                assert (cfg.data.preprocess, cfg.data.val_fraction, cfg.data.test_fraction) == (
                    "none",
                    0.05,
                    0.05,
                )
                assert cfg.data.max_tokens == (2_000 if arg == "smoke" else 0)


def test_seed_config_is_the_reference_experiment():
    cfg = resolve(load_config_file(os.path.join(ROOT, "configs", "deep_lstm.py")))
    assert (cfg.model.cell, cfg.model.num_layers, cfg.model.hidden_size) == ("lstm", 2, 256)
    assert (cfg.data.batch_size, cfg.data.num_steps, cfg.data.max_tokens, cfg.data.sampler) == (
        32,
        35,
        10_000,
        "sequential",
    )
    assert (
        cfg.train.optimizer,
        cfg.train.learning_rate,
        cfg.train.grad_clip,
        cfg.train.num_epochs,
    ) == ("sgd", 2.0, 1.0, 500)


BAD = [
    ("model.num_layers", 0, "model.num_layers = 0"),
    ("model.hidden_size", 0, "model.hidden_size = 0"),
    ("train.learning_rate", 0.0, "train.learning_rate = 0.0"),
    ("train.learning_rate", -1.0, "train.learning_rate = -1.0"),
    ("train.learning_rate", float("nan"), "train.learning_rate = nan"),
    ("model.cell", "transformer", "model.cell = 'transformer'"),
    ("model.impl", "cudnn", "model.impl = 'cudnn'"),
    ("model.activation", "sigmoid", "model.activation = 'sigmoid'"),
    ("model.activation", ["tanh", "relu", "tanh"], "one per layer"),
    ("data.sampler", "shuffled", "data.sampler"),
    ("model.dropout", 1.0, "model.dropout"),
    ("parallel.cpu_devices", -1, "parallel.cpu_devices = -1"),
    # integers JAX's int32 cannot hold (steps, positions, schedules): refused, not a traceback
    ("train.num_epochs", 10**20, "train.num_epochs = 100000000000000000000 is not allowed: an"),
    ("train.warmup_steps", 2**31, "train.warmup_steps = 2147483648 is not allowed: an integer"),
    ("train.weight_average_start", 10**20, "train.weight_average_start = 1"),
    ("train.max_nonfinite", 10**20, "train.max_nonfinite = 1"),
]


@pytest.mark.parametrize("field,value,message", BAD)
def test_invalid_values_name_the_field(field, value, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")) as e:
        train_and_evaluate(with_fields(default_config(), **{field: value}), tmp_path / "run")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()  # stopped before writing or computing anything


def test_per_layer_activation_list_is_accepted():
    cfg = with_fields(default_config(), **{"model.activation": ["tanh", "relu"]})
    cfg.model.cell = "rnn"
    assert resolve(cfg).model.activation == ("tanh", "relu")


def test_cli_prints_one_line_and_creates_nothing(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "train.py"),
            "--config=" + os.path.join(ROOT, "configs", "deep_lstm.py"),
            f"--workdir={workdir}",
            "--config.model.num_layers=0",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: config.model.num_layers = 0 is not allowed: an integer >= 1"
    )
    assert not workdir.exists()


def test_allowed_quotes_each_fields_rule_for_the_command_line():
    """A wrong-typed flag (``--config.model.dropout=abc``) is answered with the field's rule: every
    scalar field of the default config has one, worded as its validation message."""
    from rnnjax.config import allowed

    assert allowed("model.dropout") == "a number in [0, 1)"
    assert allowed("train.progress") == "True or False"
    assert allowed("seed") == "an integer in [0, 2**32)"
    assert allowed("model.nope") is None and allowed("nope.x") is None
    cfg = default_config()
    scalars = [
        f"{g}.{k}"
        for g, sub in cfg.items()
        if hasattr(sub, "items")
        for k, v in sub.items()
        if isinstance(v, (bool, int, float))
    ]
    assert len(scalars) > 20
    missing = [f for f in scalars if not allowed(f)]
    assert not missing, missing


def test_docs_config_md_is_generated_from_the_declarations():
    """docs/config.md is what ``python -m rnnjax.config.config_doc`` writes; it lists every
    field."""
    from rnnjax.config import FIELDS
    from rnnjax.config.config_doc import COMMAND, PAGE, render

    assert PAGE.read_text() == render(), f"docs/config.md is stale: run {COMMAND}"
    assert all(f"| `{name}` |" in render() for name in FIELDS)


def test_every_form_derives_from_one_declaration_per_field():
    """default_config(), the frozen Config and to_dict() hold exactly the declared fields, with
    the declared defaults; a field added to a group's list appears in every form."""
    import dataclasses

    from rnnjax.config import FIELDS, GROUPS, Config

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if f"{prefix}{k}" not in FIELDS and isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    cfg = default_config()
    assert set(flat(cfg.to_dict())) == set(FIELDS)
    frozen = resolve(cfg)
    assert set(flat(frozen.to_dict())) == set(FIELDS)
    assert [f.name for f in dataclasses.fields(Config)] == ["seed", *GROUPS]
    for name, value in flat(frozen.to_dict()).items():
        default = FIELDS[name].convert(FIELDS[name].default)
        assert value == default, name
    assert frozen.model.activation == ("tanh",) and frozen.train.optimizer_kwargs == {}
    with pytest.raises(TypeError):
        frozen.train.optimizer_kwargs["b1"] = 0.9  # the frozen form is frozen all the way down


def test_a_config_saved_before_new_fields_still_resolves():
    """The layout-1 run's config.json (no optimizer_kwargs, no output_dropout, ...) resolves, the
    missing fields taking their defaults, and compares equal to today's default for them."""
    import json

    from rnnjax.config import first_difference

    path = os.path.join(ROOT, "tests", "fixtures", "run_v1", "config.json")
    saved = json.loads(open(path).read())
    cfg = resolve(saved)
    assert cfg.train.optimizer_kwargs == {} and cfg.model.output_dropout == 0.0
    assert first_difference(cfg.to_dict(), cfg.to_dict()) is None


@pytest.mark.parametrize(
    "field, saved, now, refused",
    [
        ("train.num_epochs", 3, 5, False),
        ("checkpoint.every_epochs", 10, 1, False),
        ("generate.num_chars", 50, 5, False),
        ("model.impl", "rnnjax", "autodiff", False),
        ("model.impl", "rnnjax", "flax", True),
        ("model.impl", "rnnjax", "auto", False),
        ("model.impl", "auto", "native", False),
        ("model.impl", "auto", "flax", True),
        ("model.hidden_size", 32, 64, True),
        ("train.optimizer_kwargs", {}, {"b1": 0.95}, True),
        ("train.optimizer", "sgd", "lion", True),
    ],
)
def test_what_a_resume_may_change_is_declared_per_field(field, saved, now, refused):
    from rnnjax.config import first_difference

    a, b = resolve(default_config()).to_dict(), resolve(default_config()).to_dict()
    group, leaf = field.split(".")
    a[group][leaf], b[group][leaf] = saved, now
    assert first_difference(a, b) == (field if refused else None)


def test_generate_num_chars_one_rule_for_config_and_sampler():
    """Issue 25 item 6: num_chars = 0 passed validation and failed in the sampler after epoch 1.
    Both now read the field's one rule."""
    from rnnjax.network.sampling import check_args

    rule = r"^config.generate.num_chars = 0 is not allowed: an integer >= 1$"
    with pytest.raises(ConfigError, match=rule):
        resolve(with_fields(default_config(), **{"generate.num_chars": 0}))
    with pytest.raises(ValueError, match=r"^num_chars must be an integer >= 1, got 0$"):
        check_args("time", 0)
    check_args("time", 1)
    resolve(with_fields(default_config(), **{"generate.num_chars": 1}))
    rule = r"generate.prefixes = \('time', ''\) is not allowed: a list of non-empty"
    with pytest.raises(ConfigError, match=rule):
        resolve(with_fields(default_config(), **{"generate.prefixes": ["time", ""]}))


def test_optimizer_kwargs_cannot_hold_the_learning_rate():
    with pytest.raises(
        ConfigError,
        match=r"^config.train.optimizer_kwargs sets learning_rate; set "
        r"config.train.learning_rate instead",
    ):
        resolve(with_fields(default_config(), **{"train.optimizer_kwargs": {"learning_rate": 0.1}}))
    rule = r"config.train.optimizer_kwargs = \{1: 2\} is not allowed: a dict"
    with pytest.raises(ConfigError, match=rule):
        resolve(with_fields(default_config(), **{"train.optimizer_kwargs": {1: 2}}))
