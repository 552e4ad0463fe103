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
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnjax.config import ConfigError, default_config, resolve
from rnnjax.dataset.data import load_corpus
from rnnjax.rundir.integrity import damaged_text_file

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
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.lists(st.one_of(st.text(max_size=4), st.integers(-3, 3)), max_size=3),
    st.sampled_from(
        [
            "lstm",
            "gru",
            "rnn",
            "sgd",
            "adam",
            "relu",
            "tanh",
            "d2l",
            "char",
            "word",
            "random",
            "flax",
        ]
    ),
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


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.binary(max_size=3000), st.sampled_from(["d2l", "none"]), st.sampled_from(["char", "word"])
)
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
        assert (
            len(corpus.train) == 40
            and len(corpus.val) == 9
            and corpus.train.max() < len(corpus.vocab)
        )


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(
    st.one_of(
        st.text(max_size=6), st.lists(st.text(max_size=4), max_size=3), st.none(), st.integers()
    ),
    st.one_of(st.integers(-5, 50), st.floats(allow_nan=True), st.booleans(), st.text(max_size=2)),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3), st.none()),
    st.one_of(st.none(), st.integers(-3, 100), st.floats(allow_nan=True)),
    st.one_of(st.integers(-5, 2**33), st.floats(allow_nan=True)),
)
def test_any_generation_arguments_are_checked_in_one_line(
    prefixes, num_chars, temperature, top_k, seed
):
    from rnnjax.network.sampling import check_args

    try:
        check_args(prefixes, num_chars, temperature, top_k, seed)
    except ValueError as e:
        assert one_line(str(e)), str(e)
    else:  # what passes is what sampling can use
        assert isinstance(num_chars, int) and num_chars >= 1
        assert (
            isinstance(temperature, (int, float))
            and math.isfinite(temperature)
            and temperature >= 0
        )


FRAGMENTS = st.sampled_from(
    [
        "--config.model.hiden_size=8",
        "--config.model.hidden_size=-3",
        "--config.model.hidden_size=abc",
        "--config.model.num_layers=3",
        "--config.model.cell=gru",
        "--config.model.cell=transformer",
        "--config.data.paths=missing.txt",
        "--config.data.paths=corpus.txt",
        "--config.data.paths=/dev/null",
        "--config.data.paths=[",
        "--config.data.batch_size=0",
        "--config.data.num_steps=100000",
        "--config.train.learning_rate=nan",
        "--config.train.learning_rate=-1",
        "--config.train.optimizer=adam",
        "--config.seed=-7",
        "--config.seed=99999999999",
        "--config.generate.prefixes=",
        "--config.generate.num_chars=-1",
        "--config.parallel.cpu_devices=999",
        "--config.checkpoint.every_epochs=0",
        "--resume=sometimes",
        "--resume=must",
        "--config.bogus=1",
        "--workdir=corpus.txt",
        "--workdir=corpus.txt/run",
        "positional",
        "--config.model.dropout=1.5",
    ]
)


@pytest.mark.slow
@settings(
    max_examples=CLI_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(FRAGMENTS, min_size=1, max_size=3, unique=True))
def test_any_command_line_succeeds_or_is_one_line_creating_nothing(tmp_path_factory, args):
    cwd = tmp_path_factory.mktemp("cli")
    (cwd / "corpus.txt").write_text("the time traveller smiled round at us " * 80)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            f"--config={ROOT / 'configs' / 'deep_lstm.py'}:smoke",
            "--workdir=run",
            "--config.train.num_epochs=1",
            "--config.train.progress=False",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    if proc.returncode == 0:
        assert (cwd / "run" / "checkpoints").is_dir() or any("--workdir=" in a for a in args)
        return
    assert proc.stderr.startswith("error: ") and one_line(proc.stderr), (args, proc.stderr[-3000:])
    assert sorted(p.name for p in cwd.iterdir()) == ["corpus.txt"], (args, sorted(cwd.iterdir()))


# --- Damage to any file orbax wrote in a checkpoint step ------------------------------------

DAMAGE_KINDS = ("random_bytes", "flipped_byte", "non_utf8", "truncated")


@pytest.fixture(scope="module")
def finished_run(smoke_run):
    """A finished 3-epoch smoke run (steps 24, 48, 72), the abstract trees of its two array items
    (from orbax's own metadata: whatever the items hold) and each step's arrays as restored."""
    import jax
    import orbax.checkpoint as ocp

    run, _ = smoke_run  # read only here: the tests damage copies
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def abstract(item):
        item_dir = run / "checkpoints" / "72" / item
        tree = ocp.StandardCheckpointer().metadata(item_dir).item_metadata.tree
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), tree
        )

    target = (abstract("params"), abstract("state"))
    clean = {s: _arrays(_restore(run, target, step=s)[1:3]) for s in (48, 72)}
    return run, target, clean


def _arrays(tree) -> list[bytes]:
    import jax
    import numpy as np

    return [np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(tree)]


def _restore(run, target, step=None):
    from rnnjax.rundir.checkpoint import Checkpointer

    ckpt = Checkpointer(run)  # writable, as the trainer's: a damaged step is moved to damaged/
    try:
        return ckpt.restore(lambda meta: target, step)
    finally:
        ckpt.close()


def _damage(path: pathlib.Path, kind: str, where: float, value: int) -> None:
    data = bytearray(path.read_bytes())
    at = min(int(where * len(data)), max(len(data) - 1, 0))
    if kind == "random_bytes":
        data = bytearray(__import__("random").Random(value).randbytes(max(len(data), 1)))
    elif kind == "flipped_byte" and data:
        data[at] ^= 0xFF
    elif kind == "non_utf8":
        data[at : at + 1] = b"\xff"
    else:
        data = data[:at]
    path.write_bytes(bytes(data))


def _damaged_copy(data, src, tmp_path, files: list[str], under: str):
    """A fresh copy of the run ``src`` with one of ``files`` (relative to ``under`` in it)
    damaged as hypothesis draws: (the copy, the file, the kind of damage)."""
    rel = data.draw(st.sampled_from(files), label="file")
    kind = data.draw(st.sampled_from(DAMAGE_KINDS), label="damage")
    where = data.draw(st.floats(0, 1), label="where")
    value = data.draw(st.integers(0, 2**32 - 1), label="seed")
    run = tmp_path / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(src, run)
    _damage(run / under / rel, kind, where, value)
    return run, rel, kind


def _check_damaged_run(run, target, clean, rel: str, kind: str) -> None:
    """The latest step either still restores bit for bit (a file the restore does not need) or is
    moved to damaged/ and the previous step (48) is used: never an exception, never other arrays."""
    import rnnjax

    step_dir = run / "checkpoints" / "72"
    text_damage = damaged_text_file(step_dir)
    loaded = rnnjax.load(run, step="latest")  # read-only: falls back, moves nothing
    assert loaded.step in (48, 72) and step_dir.is_dir(), (rel, kind)
    step, params, state, _ = _restore(run, target)
    assert _arrays((params, state)) == clean[step], (rel, kind, step)
    if step == 48:
        moved = [p.name for p in (run / "damaged").iterdir()]
        assert len(moved) == 1 and moved[0].startswith("72.") and not step_dir.exists(), (rel, kind)
    if text_damage is not None:  # orbax's text files (metadata, sharding): damage, the file named
        assert step == 48 and loaded.step == 48, (rel, kind, text_damage)
        assert text_damage.startswith(rel), (rel, kind, text_damage)


def _orbax_files(run) -> list[str]:
    step_dir = run / "checkpoints" / "72"
    return sorted(str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file())


def test_non_utf8_garbage_in_each_file_orbax_wrote_is_caught(finished_run, tmp_path):
    """Walk the step directory: each file orbax wrote gets a non-UTF-8 first byte, one at a time."""
    src, target, clean = finished_run
    files = _orbax_files(src)
    assert any("array_metadatas" in f for f in files) and len(files) >= 10
    for rel in files:
        run = tmp_path / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(src, run)
        path = run / "checkpoints" / "72" / rel
        path.write_bytes(b"\xff" + path.read_bytes()[1:])
        _check_damaged_run(run, target, clean, rel, "non_utf8")


@settings(
    max_examples=max(10, EXAMPLES // 2),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_any_damage_to_any_checkpoint_file_falls_back_or_restores_intact(
    finished_run, tmp_path, data
):
    src, target, clean = finished_run
    run, rel, kind = _damaged_copy(data, src, tmp_path, _orbax_files(src), "checkpoints/72")
    _check_damaged_run(run, target, clean, rel, kind)


# --- Damage to any other file of a run --------------------------------------------------------


def _run_files(run) -> list[str]:
    """Every file of a run but its checkpoints and its lock: config, vocabulary, records, events,
    plot, samples, evaluation."""
    return sorted(
        str(p.relative_to(run))
        for p in run.rglob("*")
        if p.is_file() and "checkpoints" not in p.parts and p.name != ".lock"
    )


def _checkpoint_bytes(run) -> dict[str, bytes]:
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in (run / "checkpoints").rglob("*")
        if p.is_file()
    }


@settings(
    max_examples=max(10, EXAMPLES // 3),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_any_damage_to_any_other_run_file_is_one_line_naming_it_or_recovered(
    smoke_run, tmp_path, data
):
    """Rerunning the finished run's command and ``rnnjax.load`` after damaging one file of the
    run (kind x position x file): each either works, with every epoch's record back (from the
    checkpoints' meta) and the files it writes whole, or stops in one line that names the file.
    The checkpoints are never touched."""
    import json

    from conftest import small_config

    import rnnjax
    from rnnjax.rundir.checkpoint import CheckpointError
    from rnnjax.rundir.workdir import WorkdirError
    from rnnjax.training.train import train_and_evaluate

    src, _ = smoke_run
    run, rel, kind = _damaged_copy(data, src, tmp_path, _run_files(src), ".")
    before = _checkpoint_bytes(run)
    for attempt in (lambda: train_and_evaluate(small_config(3), run), lambda: rnnjax.load(run)):
        try:
            out = attempt()
        except (WorkdirError, CheckpointError) as e:
            assert "\n" not in str(e) and pathlib.Path(rel).name in str(e), (rel, kind, str(e))
            assert rel in ("config.json", "vocab.json", "metrics.jsonl"), (rel, kind, str(e))
            continue
        records = out["metrics"] if isinstance(out, dict) else out.metrics
        assert [r["epoch"] for r in records] == [1, 2, 3], (rel, kind)
    assert _checkpoint_bytes(run) == before, (rel, kind)
    if rel in ("curves.png", "evaluation.json", "samples.txt"):  # written again, whole
        assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (rel, kind)
        json.loads((run / "evaluation.json").read_text())
        assert len((run / "samples.txt").read_text().splitlines()) == 2, (rel, kind)
