"""Property-based fault suite: hypothesis generates config overrides, corpus bytes, generation
arguments and command lines; every case ends in success or in one clear line, never a
traceback, and a refused command creates nothing.

The default budget is small for CI; ``RNNJAX_FAULT_EXAMPLES=200 python -m pytest
tests/test_faults_property.py`` runs a longer search (the command-line property uses a
tenth of it: each case is a process).
"""

import math
import os
import pathlib
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnjax.config import ConfigError, default_config, resolve
from rnnjax.data import load_corpus

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
EXAMPLES = int(os.environ.get("RNNJAX_FAULT_EXAMPLES", "60"))
CLI_EXAMPLES = max(4, EXAMPLES // 10)


def _fields(node, prefix=""):
    out = []
    for key, value in node.items():
        out += _fields(value, f"{prefix}{key}.") if hasattr(value, "items") else [f"{prefix}{key}"]
    return out


FIELDS = _fields(default_config())
VALUES = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.none(), st.text(max_size=8), st.lists(st.one_of(st.text(max_size=4), st.integers(-3, 3)), max_size=3),
    st.sampled_from(["lstm", "gru", "rnn", "sgd", "adam", "relu", "tanh", "d2l", "char", "word", "random", "flax"]),
)


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message.strip() and "Traceback" not in message


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), VALUES, min_size=1, max_size=4))
def test_any_config_override_resolves_or_names_the_field(overrides):
    cfg = default_config().to_dict()
    for field, value in overrides.items():
        group, _, leaf = field.rpartition(".")
        (cfg[group] if group else cfg)[leaf] = value
    try:
        resolve(cfg)
    except ConfigError as e:
        assert one_line(str(e)) and str(e).startswith("config."), str(e)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000), st.sampled_from(["d2l", "none"]), st.sampled_from(["char", "word"]))
def test_any_corpus_bytes_load_or_say_why(tmp_path, raw, preprocess, tokenizer):
    path = tmp_path / "corpus.txt"
    path.write_bytes(raw)
    cfg = default_config()
    cfg.data.paths = [str(path)]
    cfg.data.preprocess, cfg.data.tokenizer = preprocess, tokenizer
    cfg.data.max_tokens, cfg.data.num_val, cfg.data.batch_size, cfg.data.num_steps = 40, 9, 2, 3
    try:
        corpus = load_corpus(resolve(cfg).data)
    except ConfigError as e:
        assert one_line(str(e)) and str(e).startswith("config.data."), str(e)
    else:
        assert len(corpus.train) == 40 and len(corpus.val) == 9 and corpus.train.max() < len(corpus.vocab)


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(
    st.one_of(st.text(max_size=6), st.lists(st.text(max_size=4), max_size=3), st.none(), st.integers()),
    st.one_of(st.integers(-5, 50), st.floats(allow_nan=True), st.booleans(), st.text(max_size=2)),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3), st.none()),
    st.one_of(st.none(), st.integers(-3, 100), st.floats(allow_nan=True)),
    st.one_of(st.integers(-5, 2**33), st.floats(allow_nan=True)),
)
def test_any_generation_arguments_are_checked_in_one_line(prefixes, num_chars, temperature, top_k, seed):
    from rnnjax.generate import check_args

    try:
        check_args(prefixes, num_chars, temperature, top_k, seed)
    except ValueError as e:
        assert one_line(str(e)), str(e)
    else:  # what passes is what sampling can use
        assert isinstance(num_chars, int) and num_chars >= 1
        assert isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0


FRAGMENTS = st.sampled_from([
    "--config.model.hiden_size=8", "--config.model.hidden_size=-3", "--config.model.hidden_size=abc",
    "--config.model.num_layers=3", "--config.model.cell=gru", "--config.model.cell=transformer",
    "--config.data.paths=missing.txt", "--config.data.paths=corpus.txt", "--config.data.paths=/dev/null",
    "--config.data.paths=[", "--config.data.batch_size=0", "--config.data.num_steps=100000",
    "--config.train.learning_rate=nan", "--config.train.learning_rate=-1", "--config.train.optimizer=adam",
    "--config.seed=-7", "--config.seed=99999999999", "--config.generate.prefixes=", "--config.generate.num_chars=-1",
    "--config.parallel.cpu_devices=999", "--config.checkpoint.every_epochs=0", "--resume=sometimes", "--resume=must",
    "--config.bogus=1", "--workdir=corpus.txt", "--workdir=corpus.txt/run", "positional", "--config.model.dropout=1.5",
])


@pytest.mark.slow
@settings(max_examples=CLI_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(FRAGMENTS, min_size=1, max_size=3, unique=True))
def test_any_command_line_succeeds_or_is_one_line_creating_nothing(tmp_path_factory, args):
    cwd = tmp_path_factory.mktemp("cli")
    (cwd / "corpus.txt").write_text("the time traveller smiled round at us " * 80)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), f"--config={ROOT / 'configs' / 'deep_lstm.py'}:smoke",
         "--workdir=run", "--config.train.num_epochs=1", "--config.train.progress=False", *args],
        cwd=cwd, capture_output=True, text=True, env=ENV, timeout=300)
    if proc.returncode == 0:
        assert (cwd / "run" / "checkpoints").is_dir() or any("--workdir=" in a for a in args)
        return
    assert proc.stderr.startswith("error: ") and one_line(proc.stderr), (args, proc.stderr[-3000:])
    assert sorted(p.name for p in cwd.iterdir()) == ["corpus.txt"], (args, sorted(cwd.iterdir()))
