"""A newcomer's first hour: relative paths from the current directory, one-line errors for
command-line mistakes, list fields on the command line, config variants with their own
workdir, a short console, the best checkpoint in ``rnnjax.load``, notebooks keep their plots."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest
from conftest import param_bytes, small_config, tiered

import rnnjax
from rnnjax.config import ConfigError
from rnnjax.rundir.checkpoint import CheckpointError
from rnnjax.training.train import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
TRAIN = str(ROOT / "scripts" / "train.py")


def run_cli(cwd, *args, timeout=300):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=ENV, timeout=timeout
    )


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Work from a fresh temporary directory holding a copy of configs/, as a user in a clone
    would."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    for p in (ROOT / "configs").glob("*.py"):
        (tmp_path / "configs" / p.name).write_text(p.read_text())
    return tmp_path


def test_relative_workdir_trains_resumes_and_loads(in_tmp):
    out = train_and_evaluate(
        small_config(2), "rel/run"
    )  # orbax 0.12.8 rejected this at the first save
    assert (in_tmp / "rel" / "run" / "checkpoints").is_dir() and out[
        "workdir"
    ] == in_tmp / "rel" / "run"
    again = train_and_evaluate(
        small_config(3), "rel/run"
    )  # resume from a relative path: nothing quarantined
    assert not (in_tmp / "rel" / "run" / "damaged").exists()
    assert [r["epoch"] for r in again["metrics"]] == [1, 2, 3]
    run = rnnjax.load("rel/run", step="latest")
    assert param_bytes(run.params) == param_bytes(again["params"])
    assert not list(in_tmp.rglob("*.orbax-checkpoint-tmp*"))


# The exhaustive tier: tests/test_readme.py's quick start runs the same path by default (the
# README's commands: default workdir runs/deep_lstm, its resume, the smoke variant's own workdir,
# generate.py from the relative workdir).
@pytest.mark.exhaustive
@pytest.mark.slow
def test_cli_default_workdir_is_relative_and_per_variant(in_tmp):
    first = run_cli(
        in_tmp, TRAIN, "--config=configs/deep_lstm.py:smoke", "--config.train.num_epochs=2"
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert (in_tmp / "runs" / "deep_lstm-smoke" / "checkpoints").is_dir()
    assert not (
        in_tmp / "runs" / "deep_lstm"
    ).exists()  # the full config keeps its own default workdir
    second = run_cli(
        in_tmp, TRAIN, "--config=configs/deep_lstm.py:smoke", "--config.train.num_epochs=3"
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from epoch 3" in second.stdout
    assert not (in_tmp / "runs" / "deep_lstm-smoke" / "damaged").exists()
    records = [
        json.loads(x)
        for x in (in_tmp / "runs" / "deep_lstm-smoke" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    gen = run_cli(
        in_tmp,
        str(ROOT / "scripts" / "generate.py"),
        "--workdir=runs/deep_lstm-smoke",
        "--num_chars=5",
    )
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert gen.stdout.startswith("time traveller")


@pytest.mark.slow
def test_console_is_short_and_quiet(in_tmp):
    proc = run_cli(
        in_tmp, TRAIN, "--config=configs/deep_lstm.py:smoke", "--config.train.num_epochs=4"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (proc.stdout + proc.stderr).replace("\r", "\n")
    lines = [
        x for x in text.splitlines() if x.strip() and "%|" not in x
    ]  # progress-bar redraws aside
    assert len(lines) <= 12, lines
    assert not any(x.startswith(("I1", "W1", "INFO", "WARNING")) for x in lines), (
        lines
    )  # no library log lines
    assert (
        "2-layer lstm (hidden 32" in text
        and "parameters" in text
        and "workdir runs/deep_lstm-smoke" in text
    )
    assert "best" in lines[-4] and "curves: runs/deep_lstm-smoke/curves.png" in text
    verbose = run_cli(
        in_tmp,
        TRAIN,
        "--config=configs/deep_lstm.py:smoke",
        "--config.train.num_epochs=5",
        "--verbosity=0",
        "--config.train.progress=False",
    )
    assert (
        verbose.returncode == 0 and "orbax" in verbose.stderr
    )  # --verbosity raises library logging again


DEFAULT_MISTAKES = (
    "hiden_size",
    "seed = -1",
    "cannot read 'missing.txt'",
    "GiB is available",
    "cpu_devices = 999",
    "'lino'",
    "unexpected argument",
)


@pytest.mark.parametrize(
    "args, message",
    tiered(
        [
            (
                ["--config.model.hiden_size=128"],
                "error: --config.model.hiden_size is not a config field; did you mean "
                "--config.model.hidden_size?",
            ),
            (["--config.modle.cell=gru"], "did you mean --config.model.cell?"),
            (
                ["--config.model.num_layers=abc"],
                "error: flag --config.model.num_layers=abc: invalid literal for int()",
            ),
            (
                ["--config.model.output_dropout=abc"],
                "could not convert string to float: 'abc'; config.model.output_dropout takes "
                "a number in [0, 1)",
            ),
            (
                ["--config.train.early_stopping_patience=1.5"],
                "; config.train.early_stopping_patience takes an integer >= 0",
            ),
            (
                ["--config.train.progress=maybe"],
                "boolean flag: 'maybe'; config.train.progress takes True or False",
            ),
            (["--config.seed=-1"], "error: config.seed = -1 is not allowed"),
            (["--config.seed=4294967296"], "error: config.seed = 4294967296 is not allowed"),
            (
                ["--config.data.paths=missing.txt"],
                "error: config.data.paths: cannot read 'missing.txt'",
            ),
            (["--config.data.paths=/dev/zero"], "is not a regular file"),
            (["--config.data.paths=[oops"], "is not a Python list"),
            (["--config.model.hidden_size=10000000"], "GiB is available; make them smaller"),
            (["--resume=sometimes"], "error: flag --resume=sometimes"),
            (
                ["--config.parallel.cpu_devices=999"],
                "error: config.parallel.cpu_devices = 999 is more than this host's",
            ),
            (["extra"], "error: unexpected argument 'extra'"),
            (
                ["--config.data.paths="],
                "error: flag --config.data.paths=: the value is empty; "
                "give a,b or write [] for an empty list",
            ),
            (["--workdir="], "error: --workdir is empty; give a directory"),
            (
                ["--config.train.optimizer=lino"],
                "error: config.train.optimizer = 'lino' is not an optax optimizer; "
                "did you mean 'lion'?",
            ),
            (
                ["--config.train.optimizer_kwargs={'b3': 1.0}"],
                "error: config.train.optimizer_kwargs: optax.sgd takes no argument 'b3'; "
                "it takes momentum",
            ),
        ],
        # by default one mistake per layer that answers it: flag parsing, a field's rule, the
        # corpus, memory, devices, the optimizer, argv; the exhaustive tier runs the rest
        lambda case: any(k in case[1] for k in DEFAULT_MISTAKES),
    ),
)
def test_cli_mistakes_are_one_line_and_create_nothing(in_tmp, args, message):
    proc = run_cli(in_tmp, TRAIN, "--config=configs/deep_lstm.py:smoke", *args)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0, proc.stderr  # one line, no traceback
    assert message in proc.stderr
    assert not (in_tmp / "runs").exists()


def test_a_sweep_refuses_an_unknown_optimizer_before_any_trial(in_tmp):
    proc = run_cli(
        in_tmp,
        str(ROOT / "scripts" / "sweep.py"),
        "--config=configs/sweep_depth_cell.py:smoke",
        "--workdir=sw",
        "--config.train.optimizer=lino",
    )
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert "error: config.train.optimizer = 'lino' is not an optax optimizer" in proc.stderr
    assert not (in_tmp / "sw").exists()


@pytest.mark.parametrize(
    "script, args, message",
    [
        (
            "train.py",
            ["--config=configs/deep_lstm.py:smoke", "--config.model.num_layers=two"],
            "takes an integer >= 1",
        ),
        (
            "train.py",
            ["--config=configs/deep_lstm.py:smoke", "--config.model.cell=lstn"],
            "config.model.cell = 'lstn'",
        ),
        (
            "train.py",
            ["--config=configs/deep_lstm.py:smoke", "--workdir="],
            "error: --workdir is empty",
        ),
        # issue 25 item 10: absl said "The flag 'config.train.num_epochs' is defined twice. First
        # ..."
        (
            "train.py",
            [
                "--config=configs/deep_lstm.py:smoke",
                "--config=configs/deep_lstm.py",
                "--config.train.num_epochs=1",
            ],
            "error: --config was given twice "
            "(configs/deep_lstm.py:smoke, configs/deep_lstm.py); give it",
        ),
        (
            "sweep.py",
            [
                "--config=configs/sweep_depth_cell.py",
                "--config",
                "configs/sweep_depth_cell.py:smoke",
                "--workdir=s",
                "--config.train.num_epochs=1",
            ],
            "error: --config was given twice",
        ),
        # issue 25 item 6: passed validation, trained epoch 1, then a 31-line traceback in the
        # sampler
        (
            "train.py",
            ["--config=configs/deep_lstm.py:smoke", "--config.generate.num_chars=0"],
            "error: config.generate.num_chars = 0 is not allowed: an integer >= 1",
        ),
        (
            "train.py",
            ["--config=configs/deep_lstm.py:smoke", "--config.train.optimizer_kwargs=b1"],
            "error: flag --config.train.optimizer_kwargs=b1: not a Python dict; "
            "config.train.optimizer_kwargs takes a dict",
        ),
        (
            "train.py",
            ["--config=configs/deep_lstm.py:smoke", "--config.train.optimizer_kwargs.b1=0.9"],
            "error: --config.train.optimizer_kwargs.b1: set the whole dict, e.g. "
            "--config.train.optimizer_kwargs=",
        ),
        (
            "sweep.py",
            ["--config=configs/sweep_depth_cell.py"],
            "error: give --config and --workdir",
        ),
        ("generate.py", ["--workdir=run", "--num_chars=0"], "error: flag --num_chars=0"),
        (
            "evaluate.py",
            ["--workdir=run", "--text=nope.txt"],
            "error: --text=nope.txt: does not exist",
        ),
    ],
)
def test_command_line_mistakes_are_answered_before_jax_imports(in_tmp, script, args, message):
    """A mistyped flag is answered in well under a second: the scripts import only light modules
    (rnnjax.cli, rnnjax.config, rnnjax.rundir.workdir) before they have checked their flags. Here an
    importable ``jax`` that fails on import proves none of these paths imports it."""
    (in_tmp / "fake" / "jax").mkdir(parents=True)
    (in_tmp / "fake" / "jax" / "__init__.py").write_text("raise ImportError('jax was imported')\n")
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(in_tmp / "fake"), str(ROOT)]))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        cwd=in_tmp,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert message in proc.stderr and "jax was imported" not in proc.stderr
    assert not (in_tmp / "runs").exists()


def test_the_package_imports_lazily_and_exports_what_it_did():
    """``import rnnjax`` alone does not import JAX; every name in ``rnnjax.__all__`` resolves, and
    ``rnnjax.generate`` is the function (its module is ``rnnjax.network.sampling``)."""
    code = (
        "import sys, importlib, rnnjax, rnnjax.cli, rnnjax.config; "
        "assert 'jax' not in sys.modules; "
        "import rnnjax.network.sampling; assert callable(rnnjax.generate), rnnjax.generate; "
        "assert importlib.import_module('rnnjax.network.sampling').sample; "
        "assert all(getattr(rnnjax, n) is not None for n in rnnjax.__all__); "
        "assert set(rnnjax.__all__) == set(rnnjax._WHERE); print('ok')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize(
    "config, message",
    [
        (
            "configs/deep_lstm.py:smok",
            "error: config variant 'smok' does not exist; variants: smoke",
        ),
        ("configs/nope.py", "error: config file configs/nope.py does not exist"),
        ("bad.py", "error: the config file raised RuntimeError: boom"),
        ("noget.py", "has no attribute 'get_config'"),
        ("nogroups.py", "error: config.data.batch_size is missing"),
    ],
)
def test_bad_config_files_are_one_line(in_tmp, config, message):
    (in_tmp / "bad.py").write_text("def get_config(arg=None):\n    raise RuntimeError('boom')\n")
    (in_tmp / "noget.py").write_text("x = 1\n")
    (in_tmp / "nogroups.py").write_text("def get_config(arg=None):\n    return {'seed': 0}\n")
    proc = run_cli(in_tmp, TRAIN, f"--config={config}")
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert message in proc.stderr
    assert not (in_tmp / "runs").exists()


@pytest.mark.slow
def test_list_fields_from_the_command_line(in_tmp):
    (in_tmp / "a.txt").write_text("the quick brown fox jumps over the lazy dog " * 150)
    (in_tmp / "b.txt").write_text("pack my box with five dozen liquor jugs " * 150)
    proc = run_cli(
        in_tmp,
        TRAIN,
        "--config=configs/deep_lstm.py:smoke",
        "--workdir=own",
        "--config.train.num_epochs=1",
        "--config.data.paths=a.txt,b.txt",
        "--config.generate.prefixes=the quick,pack my",
        "--config.data.reserved_tokens=['<pad>']",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((in_tmp / "own" / "config.json").read_text())
    assert saved["data"]["paths"] == ["a.txt", "b.txt"]
    assert saved["data"]["reserved_tokens"] == ["<pad>"]
    assert [s.split(" ")[0] for s in (in_tmp / "own" / "samples.txt").read_text().splitlines()] == [
        "the",
        "pack",
    ]
    assert "<pad>" in json.loads((in_tmp / "own" / "vocab.json").read_text())["idx_to_token"]
    assert (
        "j" in json.loads((in_tmp / "own" / "vocab.json").read_text())["idx_to_token"]
    )  # b.txt was read


def test_config_variants():
    import importlib.util

    spec = importlib.util.spec_from_file_location("c", ROOT / "configs" / "deep_lstm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (
        module.get_config().data.batch_size == 32
        and module.get_config("smoke").data.batch_size == 8
    )
    with pytest.raises(ConfigError, match="config variant 'smok' does not exist"):
        module.get_config("smok")


def test_load_best_latest_and_step(in_tmp):
    cfg = small_config(
        10
    )  # a tiny corpus that adam overfits: validation is best at epoch 6, not at the end
    cfg.data.max_tokens, cfg.data.num_val, cfg.data.batch_size, cfg.data.num_steps = 600, 200, 4, 10
    cfg.model.hidden_size, cfg.train.optimizer, cfg.train.learning_rate = 64, "adam", 0.03
    cfg.checkpoint.max_to_keep = 1
    out = train_and_evaluate(cfg, "run")
    records = out["metrics"]
    best = min(records, key=lambda r: r["val_ppl"])
    assert best["epoch"] != records[-1]["epoch"], (
        "the test needs a run whose best epoch is not the last"
    )
    assert rnnjax.load("run").step == best["step"]  # the default is the best checkpoint
    assert rnnjax.load("run", step="best").step == best["step"]
    latest = rnnjax.load("run", step="latest")
    assert latest.step == records[-1]["step"] and param_bytes(latest.params) == param_bytes(
        out["params"]
    )
    assert rnnjax.load("run", step=best["step"]).step == best["step"]
    with pytest.raises(ValueError, match="step = 'newest' is not allowed"):
        rnnjax.load("run", step="newest")
    with pytest.raises(CheckpointError, match="does not exist"):
        rnnjax.load("no/such/run")
    (in_tmp / "afile").write_text("x")
    with pytest.raises(CheckpointError, match="afile is a file, not a run directory"):
        rnnjax.load("afile")
    text = repr(rnnjax.load("run"))
    assert (
        len(text) < 300
        and "\n" not in text
        and f"step {best['step']}" in text
        and "best val_ppl" in text
    )


def test_run_and_api_generate_share_one_greedy_default(smoke_run):
    run = rnnjax.load(smoke_run[0])
    api = rnnjax.generate(run.model, run.params, run.vocab, "time", 15)
    assert run.generate("time", 15) == api == run.generate("time", 15, temperature=0.0)


def test_plotting_keeps_the_notebook_backend(tmp_path):
    import matplotlib

    from rnnjax.rundir.plotting import plot_curves

    matplotlib.use("svg")  # stands for a notebook's inline backend: anything but Agg
    plot_curves(
        [
            {"epoch": 1, "train_ppl": 20.0, "val_ppl": None},
            {"epoch": 2, "train_ppl": 10.0, "val_ppl": 12.0},
        ],
        tmp_path / "c.png",
    )
    assert matplotlib.get_backend() == "svg"
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interop_is_an_attribute_and_returns_writable_arrays():
    import rnnjax as r

    model = r.DeepRNN(28, 8, 2, "lstm")
    rnn_state, linear = r.interop.to_torch(model.init(jax.random.key(0)))
    assert all(
        a.flags.writeable and a.flags.c_contiguous for a in [*rnn_state.values(), *linear.values()]
    )


@pytest.mark.slow
def test_ctrl_c_while_starting_up_is_one_line(in_tmp):
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, TRAIN, "--config=configs/deep_lstm.py:smoke"],
        cwd=in_tmp,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # Python and JAX are still importing
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert len(err.strip().splitlines()) == 1 and err.startswith("stopped by signal 2"), err[-2000:]
    assert (
        not (in_tmp / "runs" / "deep_lstm-smoke" / "checkpoints").exists()
        or "saved a checkpoint" in err
    )


@pytest.mark.slow
def test_a_closed_console_pipe_does_not_stop_training(in_tmp):
    proc = subprocess.Popen(
        [
            sys.executable,
            TRAIN,
            "--config=configs/deep_lstm.py:smoke",
            "--config.train.num_epochs=4",
        ],
        cwd=in_tmp,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    proc.stdout.readline()  # like `| head -1`: read one line, then go away
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0
    records = [
        json.loads(x)
        for x in (in_tmp / "runs" / "deep_lstm-smoke" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]


def test_another_config_is_refused_with_both_values_and_a_finished_run_says_so(in_tmp, capsys):
    cfg = small_config(2)
    cfg.train.progress = True
    train_and_evaluate(cfg, "run")
    capsys.readouterr()
    cfg.train.num_epochs = 1
    train_and_evaluate(cfg, "run")  # fewer epochs than trained: nothing to do
    assert "already trained 2 epochs: nothing to resume" in capsys.readouterr().out
    cfg.model.hidden_size = 16
    with pytest.raises(
        CheckpointError, match=r"different config.model.hidden_size \(32 there, 16 here\)"
    ):
        train_and_evaluate(cfg, "run")
