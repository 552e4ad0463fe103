"""Generation: greedy, sampled and batched prompts; the API refuses bad arguments before any
compute, clamps top_k, and scripts/generate.py turns every refusal into one line, ``error:
<message>``."""

import importlib
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import small_config

from rnnjax.config import default_config, resolve
from rnnjax.dataset import data
from rnnjax.network.model import DeepRNN
from rnnjax.network.sampling import generate
from rnnjax.training.train import train_and_evaluate

gen = importlib.import_module("rnnjax.network.sampling")
ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    PYTHONUNBUFFERED="1",
    PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
)


@pytest.fixture(scope="module")
def tiny():
    model = DeepRNN(vocab_size=28, hidden_size=16, num_layers=2, cell="lstm")
    vocab = data.load_corpus(resolve(default_config()).data).vocab
    assert len(vocab) == 28
    return model, model.init(jax.random.key(0)), vocab


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run (smoke config, one epoch), shared by the CLI tests."""
    workdir = tmp_path_factory.mktemp("run")
    out = train_and_evaluate(small_config(1), workdir)
    return workdir, out


def test_generation_greedy_sampled_and_batched():
    model = DeepRNN(vocab_size=28, hidden_size=16, num_layers=2, cell="lstm")
    params = model.init(jax.random.key(0))
    vocab = data.load_corpus(resolve(default_config()).data).vocab
    greedy = generate(model, params, vocab, "time traveller", 30)
    assert greedy.startswith("time traveller") and len(greedy) == 44
    assert (
        generate(model, params, vocab, "time traveller", 30, temperature=1.0, top_k=1, seed=5)
        == greedy
    )
    s1 = generate(model, params, vocab, "time traveller", 30, temperature=1.0, seed=1)
    assert s1 == generate(model, params, vocab, "time traveller", 30, temperature=1.0, seed=1)
    assert s1 != generate(model, params, vocab, "time traveller", 30, temperature=1.0, seed=2)
    both = generate(model, params, vocab, ["time traveller", "the time machi", "x"], 30)
    assert both[0] == greedy and both[1] == generate(model, params, vocab, "the time machi", 30)
    assert generate(model, params, vocab, "Time-Traveller!", 5).startswith(
        "time traveller "
    )  # d2l preprocessing


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"prefixes": ""}, "prefix 0 must be a non-empty string, got ''"),
        (
            {"prefixes": []},
            "prefixes must be a non-empty string or a non-empty list of strings, got []",
        ),
        ({"prefixes": ["time", ""]}, "prefix 1 must be a non-empty string, got ''"),
        ({"prefixes": ["time", 3]}, "prefix 1 must be a non-empty string, got 3"),
        (
            {"prefixes": "!!", "tokenizer": "word"},
            "prefix 0 ('!!') keeps no character after preprocessing ('d2l' leaves ' '); give text "
            "in the run's characters",
        ),
        (  # d2l's preprocessing turns what is not a letter into spaces: nothing to continue
            {"prefixes": "ЖЖЖ"},
            "prefix 0 ('ЖЖЖ') keeps no character after preprocessing ('d2l' leaves ' '); give "
            "text in the run's characters",
        ),
        ({"num_chars": 0}, "num_chars must be an integer >= 1, got 0"),
        ({"num_chars": -3}, "num_chars must be an integer >= 1, got -3"),
        ({"num_chars": 2.0}, "num_chars must be an integer >= 1, got 2.0"),
        ({"num_chars": True}, "num_chars must be an integer >= 1, got True"),
        (
            {"temperature": math.nan},
            "temperature must be a finite number >= 0 (0 = greedy), got nan",
        ),
        (
            {"temperature": math.inf},
            "temperature must be a finite number >= 0 (0 = greedy), got inf",
        ),
        ({"temperature": -0.5}, "temperature must be a finite number >= 0 (0 = greedy), got -0.5"),
        ({"temperature": "1"}, "temperature must be a finite number >= 0 (0 = greedy), got '1'"),
        ({"temperature": 1.0, "top_k": 0}, "top_k must be None or an integer >= 1, got 0"),
        ({"temperature": 1.0, "top_k": -1}, "top_k must be None or an integer >= 1, got -1"),
        ({"temperature": 1.0, "top_k": 2.5}, "top_k must be None or an integer >= 1, got 2.5"),
        ({"temperature": 1.0, "top_k": True}, "top_k must be None or an integer >= 1, got True"),
        ({"seed": -1}, "seed must be an integer with 0 <= seed < 2**32, got -1"),
        ({"seed": 2**32}, "seed must be an integer with 0 <= seed < 2**32, got 4294967296"),
        ({"seed": 1.5}, "seed must be an integer with 0 <= seed < 2**32, got 1.5"),
    ],
)
def test_bad_arguments_raise_one_line_before_any_compute(tiny, monkeypatch, kwargs, message):
    model, params, vocab = tiny

    def no_compute(*a, **k):
        raise AssertionError("sample() ran before the arguments were checked")

    monkeypatch.setattr(gen, "sample", no_compute)
    args = {"prefixes": "time traveller", "num_chars": 5, **kwargs}
    with pytest.raises(ValueError) as e:
        gen.generate(model, params, vocab, args.pop("prefixes"), args.pop("num_chars"), **args)
    assert str(e.value) == message and "\n" not in str(e.value)


def test_edge_values_are_accepted(tiny):
    model, params, vocab = tiny
    assert len(gen.generate(model, params, vocab, "x", 1)) == 2
    assert (
        len(
            gen.generate(
                model,
                params,
                vocab,
                "x",
                np.int64(3),
                temperature=np.float32(0.5),
                top_k=np.int32(2),
                seed=2**32 - 1,
            )
        )
        == 4
    )


def test_top_k_above_the_vocabulary_is_clamped(tiny):
    model, params, vocab = tiny
    common = dict(temperature=1.5, seed=7)
    full = gen.generate(
        model, params, vocab, ["time traveller", "the"], 40, top_k=len(vocab), **common
    )
    assert (
        gen.generate(model, params, vocab, ["time traveller", "the"], 40, top_k=10_000, **common)
        == full
    )
    assert (
        gen.generate(model, params, vocab, ["time traveller", "the"], 40, top_k=None, **common)
        == full
    )
    assert (
        gen.generate(model, params, vocab, ["time traveller", "the"], 40, top_k=1, **common) != full
    )  # k=1: greedy


def cli(*flags):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate.py"), *flags],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=180,
    )


def test_cli_default_is_greedy(trained):
    workdir, out = trained
    proc = cli(f"--workdir={workdir}", "--prefix=time traveller", "--num_chars=10")
    # no library warnings by default: stderr only says which checkpoint was used (the best by
    # default)
    assert (
        proc.returncode == 0
        and proc.stderr
        == "# step 24 (epoch 1, val_ppl {:.3f}, the best of the run)\n".format(out["val_ppl"])
    ), proc.stderr[-2000:]
    assert (
        proc.stdout.rstrip("\n") == out["samples"][0][:24]
    )  # the run's greedy sample (train.py generates greedily)


@pytest.mark.parametrize(
    "flags,line",
    [
        (["--num_chars=0"], "error: flag --num_chars=0: 0 is not a positive integer"),
        (
            ["--temperature=nan"],
            "error: temperature must be a finite number >= 0 (0 = greedy), got nan",
        ),
        (["--temperature=-1"], "error: flag --temperature=-1: -1.0 is not a non-negative number"),
        (["--top_k=0", "--temperature=1"], "error: flag --top_k=0: 0 is not a positive integer"),
        (["--prefix="], "error: prefix 0 must be a non-empty string, got ''"),
    ],
)
def test_cli_refuses_bad_arguments_in_one_line(trained, flags, line):
    workdir, _ = trained
    proc = cli(f"--workdir={workdir}", *flags)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.splitlines() == [line]


def test_cli_checks_arguments_before_the_restore(tmp_path):
    # no run in tmp_path: the argument error comes first, without restoring anything
    proc = cli(f"--workdir={tmp_path}", "--temperature=inf")
    assert proc.returncode != 0
    assert proc.stderr.splitlines() == [
        "error: temperature must be a finite number >= 0 (0 = greedy), got inf"
    ]
    proc = cli(f"--workdir={tmp_path}")
    assert proc.returncode != 0 and proc.stderr.splitlines() == [
        f"error: {tmp_path} has no checkpoints/ directory: it is not a finished or resumable run"
    ]


@pytest.mark.parametrize("greedy,top_k", [(True, None), (False, None), (False, 3)])
def test_chunked_generation_is_the_one_program_sample(tiny, monkeypatch, greedy, top_k):
    """generate runs in compiled chunks (a stop request acts between them); the tokens are those of
    the one-program ``sample``, whatever the chunk size (also one not dividing num_chars)."""
    import jax.numpy as jnp

    model, params, _ = tiny
    prefix = jnp.asarray([[1, 2, 3], [4, 5, 6]])
    args = (model, params, prefix, jax.random.key(3), jnp.float32(0.9))
    one = np.asarray(gen.sample(*args, num_chars=50, greedy=greedy, top_k=top_k))
    for chunk in (7, 50, 1024):
        monkeypatch.setattr(gen, "CHUNK", chunk)
        chunked = gen.sample_chunked(*args, num_chars=50, greedy=greedy, top_k=top_k)
        np.testing.assert_array_equal(chunked, one)


def test_num_chars_has_a_documented_bound(tiny):
    model, params, vocab = tiny
    with pytest.raises(ValueError, match=r"^num_chars = 10000001 is above the bound of 10,000,000"):
        gen.generate(model, params, vocab, "x", gen.MAX_TOKENS + 1)
    with pytest.raises(ValueError, match=r"^num_chars = 5000000 for each of 3 prefixes is above"):
        gen.generate(model, params, vocab, ["a", "b", "c"], 5_000_000)


@pytest.mark.slow
def test_cli_refuses_an_unbounded_length_and_stops_at_once_on_sigterm(trained):
    """--num_chars=100000000 is refused before the restore; a long generation stops within a chunk
    of SIGTERM and says truthfully that no text was printed."""
    import signal
    import time

    workdir, _ = trained
    proc = cli(f"--workdir={workdir}", "--num_chars=100000000")
    assert proc.returncode == 1 and proc.stderr.splitlines() == [
        "error: num_chars = 100000000 is above the bound of 10,000,000 tokens per call (num_chars "
        "x prefixes: the text is held in memory); ask for fewer"
    ]
    long = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "generate.py"),
            f"--workdir={workdir}",
            "--num_chars=10000000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        first = long.stderr.readline()
        assert first.startswith("# step 24 "), first + long.stderr.read()[-2000:]
        time.sleep(3)  # generating (or compiling its first chunk)
        assert long.poll() is None
        sent = time.monotonic()
        long.send_signal(signal.SIGTERM)
        out, err = long.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        long.kill()
    assert long.returncode == 128 + signal.SIGTERM and out == ""
    assert err.splitlines() == ["stopped by signal 15 while generating: no text was printed"], err
    assert took < 20, took  # the whole 10M-token generation would take minutes
