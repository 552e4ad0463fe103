"""The README and the docs pages as a test: every command in them runs here, as written, in a
temporary copy of the repository with relative paths, shortened only by appended config overrides.

How a page's commands are found, and how a page marks one that cannot run in the tests, is in
``tests/test_docs.py``. Commands whose result says more than "it ran" have a test of their own
below (``OWN_TESTS``: their starts); every other ``python scripts/train.py`` command runs in
``test_every_other_command`` at the smoke config's sizes for one epoch. A command that is neither
run here nor marked fails ``test_every_command_is_run_or_marked``. The ``pip install`` before
``&&`` is not run (the tests run installed); ``test_docs.py`` checks the extras it names. The
runs take about a minute of CPU in all (marked ``slow``); the quick start is trained once.
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import tiered
from test_docs import Command, commands

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
ENV.pop("RNNJAX_WORKDIR", None)

# The commands that have a test of their own, exactly as the pages write them.
QUICK = "pip install -e . && python scripts/train.py --config=configs/deep_lstm.py"
RESUME = "python scripts/train.py --config=configs/deep_lstm.py --resume=must"
SMOKE = "python scripts/train.py --config=configs/deep_lstm.py:smoke"
TRAIN = "python scripts/train.py --config=configs/deep_lstm.py"
OWN = f"{TRAIN} --config.data.paths=my_book.txt --workdir=runs/my_book"
RAW = (
    f"{TRAIN} --config.data.paths=a.txt,b.txt --config.data.preprocess=none "
    '--config.generate.prefixes="It was" --workdir=runs/raw'
)
WORDS = (
    f"{TRAIN} --config.data.paths=my_book.txt --config.data.tokenizer=word "
    '--config.data.min_freq=2 --config.generate.prefixes="the time" --workdir=runs/words'
)
BOOKS = "python scripts/train.py --config=configs/books.py --config.data.paths=a.txt,b.txt"
EVALUATE = "python scripts/evaluate.py --workdir=runs/books --text=b.txt"
GENERATE = "python scripts/generate.py --workdir=runs/deep_lstm"
GREEDY = f'{GENERATE} --prefix="time traveller" --num_chars=100'
SAMPLED = (
    f'{GENERATE} --prefix="the time" --prefix="it was" '
    "--temperature=0.8 --top_k=5 --seed=1 --step=latest"
)
SWEEP = (
    "python scripts/sweep.py --config=configs/sweep_depth_cell.py:smoke --workdir=runs/sweep_smoke"
)
SUMMARIZE = "python scripts/sweep.py --summarize=runs/sweep_smoke"
OWN_TESTS = (
    QUICK,
    RESUME,
    SMOKE,
    OWN,
    RAW,
    WORDS,
    BOOKS,
    EVALUATE,
    GREEDY,
    SAMPLED,
    SWEEP,
    SUMMARIZE,
)

# The smoke config's sizes (rnnjax.config.smoke), one epoch: what a train command is shortened by.
SHRINK = {
    "train.num_epochs": 1,
    "data.max_tokens": 2000,
    "data.num_val": 500,
    "data.batch_size": 8,
    "data.num_steps": 10,
    "model.hidden_size": 32,
    "train.max_steps": 0,  # epochs, not a step or time budget
    "train.max_minutes": 0.0,
}


def runnable_commands() -> list[Command]:
    """The distinct commands the tests run (the same command on two pages runs once)."""
    seen = {}
    for c in commands():
        if c.untested is None and c.lang == "bash":
            seen.setdefault(c.text, c)
    return list(seen.values())


def split_env(text: str) -> tuple[dict[str, str], list[str]]:
    """A command's leading ``VAR=value`` assignments, and its words after them."""
    words = shlex.split(text)
    env = {}
    while re.match(r"^[A-Z_]+=", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words


def default_workdir(argv: list[str]) -> str:
    """Where a train command writes: --workdir, else runs/<config file>[-<variant>] (rnnjax.cli)."""
    for a in argv:
        if a.startswith("--workdir="):
            return a.split("=", 1)[1]
    config = next(a for a in argv if a.startswith("--config=")).split("=", 1)[1]
    path, _, variant = config.partition(":")
    return "runs/" + pathlib.Path(path).stem + (f"-{variant}" if variant else "")


def others() -> list[Command]:
    """The commands with no test of their own."""
    return [c for c in runnable_commands() if c.text not in OWN_TESTS]


def python_pages() -> list[str]:
    """The pages with python blocks the tests run."""
    return sorted({c.page for c in commands() if c.lang == "python" and c.untested is None})


def page_command(command: str) -> list[str]:
    """One of OWN_TESTS as an argv (the part after ``pip install ... &&``); a page must have it."""
    on_pages = {c.text for c in runnable_commands()}
    assert command in on_pages, f"no page has the command {command!r} any more"
    argv = shlex.split(command.split(" && ")[-1])
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def test_every_command_is_run_or_marked():
    """Each command has a test of its own here, or is a train command test_every_other_command
    runs, or sits in a block marked untested (with a reason); each of OWN_TESTS is on a page."""
    neither = [
        f"{c.page}: {c.text}"
        for c in others()
        if split_env(c.text)[1][:2] != ["python", "scripts/train.py"]
    ]
    assert not neither, "commands no test runs; test or mark them:\n" + "\n".join(neither)
    for command in OWN_TESTS:
        page_command(command)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the repository's user-facing files (the package itself is the installed one)."""
    d = tmp_path_factory.mktemp("clone")
    for name in ("configs", "scripts", "notebooks"):
        shutil.copytree(ROOT / name, d / name)
    text = (ROOT / "rnnjax" / "corpora" / "timemachine.txt").read_text()
    (d / "my_book.txt").write_text(text)
    half = len(text) // 2
    (d / "a.txt").write_text(text[:half])
    (d / "b.txt").write_text(text[half:])
    return d


def run(repo, argv, *more, env=None):
    proc = subprocess.run(
        [*argv, *more], cwd=repo, capture_output=True, text=True, env=env or ENV, timeout=600
    )
    assert proc.returncode == 0, f"{argv[1:]} {more}\n{proc.stderr[-3000:]}"
    return proc


def shrink(argv: list[str]) -> list[str]:
    """The SHRINK overrides for the fields a command does not set itself."""
    return [
        f"--config.{k}={v}"
        for k, v in SHRINK.items()
        if not any(a.startswith(f"--config.{k}=") for a in argv)
    ]


# The tests that use the quick-start run share one test worker (pytest-xdist's loadgroup): it is
# trained once.
QUICK_START = pytest.mark.xdist_group("readme_quick_start")


@pytest.fixture(scope="module")
def quick_start(repo):
    """The README's first command in the copy, shortened to 2 epochs, then its resume to 3."""
    every = "--config.checkpoint.every_epochs=1"
    first = run(repo, page_command(QUICK), "--config.train.num_epochs=2", every)
    again = run(repo, page_command(RESUME), "--config.train.num_epochs=3", every)
    return first, again


@pytest.mark.slow
@QUICK_START
def test_quick_start_trains_and_resumes(repo, quick_start):
    first, again = quick_start
    assert "826,396 parameters" in first.stdout
    assert "workdir runs/deep_lstm\ntraining epochs 1-2" in first.stdout
    assert "curves: runs/deep_lstm/curves.png" in first.stdout
    for name in (
        "config.json",
        "vocab.json",
        "metrics.jsonl",
        "curves.png",
        "samples.txt",
        "checkpoints",
    ):
        assert (repo / "runs" / "deep_lstm" / name).exists(), name
    assert "resuming from epoch 3, step 16" in again.stdout  # 8 minibatches an epoch
    assert not (repo / "runs" / "deep_lstm" / "damaged").exists()
    assert len((repo / "runs" / "deep_lstm" / "metrics.jsonl").read_text().splitlines()) == 3
    smoke = run(repo, page_command(SMOKE), "--config.train.num_epochs=1")
    assert "workdir runs/deep_lstm-smoke" in smoke.stdout  # its own workdir: the full run untouched


@pytest.mark.slow
@QUICK_START
def test_generate_commands(repo, quick_start):
    greedy = run(repo, page_command(GREEDY))
    assert greedy.stdout.startswith("time traveller")
    assert len(greedy.stdout.rstrip("\n")) == len("time traveller") + 100
    assert greedy.stderr.startswith("# step ") and "the best of the run" in greedy.stderr
    sampled = run(repo, page_command(SAMPLED))
    assert [x.split(" ")[0] for x in sampled.stdout.splitlines()] == ["the", "it"]
    assert "# step 24 " in sampled.stderr  # --step=latest: epoch 3


@pytest.mark.slow
@QUICK_START
def test_python_blocks(repo, quick_start):
    """Each page's python blocks, in order, as one script in a namespace of its own (later blocks
    use earlier blocks' names); all pages in one process, so JAX starts once."""
    scripts = {
        page: "\n".join(
            c.text
            for c in commands()
            if c.lang == "python" and c.page == page and c.untested is None
        )
        for page in python_pages()
    }
    assert "README.md" in scripts and len(scripts) >= 2, scripts.keys()
    driver = (
        "import json, sys\n"
        "for page, src in json.loads(sys.argv[1]).items():\n"
        "    names = {'__name__': '__main__'}\n"
        "    exec(compile(src, page, 'exec'), names)\n"
        "    print('ran', page, repr(names['run'])[:4], flush=True)\n"
    )
    proc = run(repo, [sys.executable, "-c", driver, json.dumps(scripts)])
    ran = [x for x in proc.stdout.splitlines() if x.startswith("ran ")]
    assert ran == [f"ran {page} Run(" for page in scripts], proc.stdout[-2000:]
    assert proc.stdout.startswith("time traveller")  # the README's generated text comes first


# The own-text commands: my_book.txt runs by default; the raw-text and word-level variants (whose
# reading of the files tests/test_data.py checks in-process) run in the exhaustive tier.
OWN_TEXT = [(OWN, "runs/my_book"), (RAW, "runs/raw"), (WORDS, "runs/words")]


@pytest.mark.slow
@pytest.mark.parametrize(
    "start, workdir",
    tiered(OWN_TEXT, lambda c: c[0] == OWN),
    ids=[pathlib.PurePath(w).name for _, w in OWN_TEXT],
)
def test_own_text_commands(repo, start, workdir):
    argv = page_command(start)
    run(repo, argv, *shrink(argv))
    assert (repo / workdir / "checkpoints").is_dir()
    assert (repo / workdir / "samples.txt").read_text().strip()
    if start == RAW:
        raw_vocab = json.loads((repo / workdir / "vocab.json").read_text())["idx_to_token"]
        assert "T" in raw_vocab  # preprocess none keeps case
    if start == WORDS:
        words = (repo / workdir / "samples.txt").read_text().split()
        assert words[:2] == ["the", "time"] and len(words) == 2 + 50


# by default: test_books.py::test_early_stopping_keeps_the_best_epoch_and_tests_with_it
@pytest.mark.exhaustive
@pytest.mark.slow
def test_books_and_evaluate_commands(repo):
    out = run(
        repo,
        page_command(BOOKS),
        "--config.train.num_epochs=2",
        "--config.data.max_tokens=5000",
        "--config.model.hidden_size=32",
        "--config.train.max_minutes=0",
    )
    assert "workdir runs/books" in out.stdout and "bpc" in out.stdout
    assert "test perplexity" in out.stdout
    evaluation = json.loads((repo / "runs" / "books" / "evaluation.json").read_text())
    assert evaluation["test_bpc"] > 0  # the far end of a.txt + b.txt: one held-out stream
    assert "test_ppl_by_source" not in evaluation
    scored = run(repo, page_command(EVALUATE))
    assert scored.stdout.startswith("b.txt: perplexity ") and "bits per character" in scored.stdout


@pytest.mark.exhaustive  # by default: test_sweep.py::test_sweep_runs_records_failures_and_resumes
@pytest.mark.slow
def test_sweep_and_summarize(repo):
    run(repo, page_command(SWEEP), "--config.train.num_epochs=1")
    summary = run(repo, page_command(SUMMARIZE))
    assert "lstm" in summary.stdout and "gru" in summary.stdout
    for name in ("results.csv", "results.md", "sweep.png"):
        assert (repo / "runs" / "sweep_smoke" / name).exists()


@pytest.mark.exhaustive
@pytest.mark.slow
@pytest.mark.parametrize(
    "command", others(), ids=lambda c: f"{c.page}:{default_workdir(split_env(c.text)[1])}"
)
def test_every_other_command(repo, command):
    """A train command of the pages with no test of its own: it runs for one epoch at the smoke
    config's sizes, exits 0 and leaves a run (one epoch's metrics and a checkpoint)."""
    assigned, words = split_env(command.text)
    env = dict(ENV, **assigned)
    assert words[:2] == ["python", "scripts/train.py"], command
    argv = [sys.executable, *words[1:]]
    out = run(repo, argv, *shrink(argv), env=env)
    workdir = repo / default_workdir(argv)
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1], out.stdout[-2000:]
    assert (workdir / "checkpoints").is_dir()
    if "xla_force_host_platform_device_count=4" in command.text:
        assert "4 cpu device(s)" in out.stdout
    if "cpu_pipeline=True" in command.text:
        assert "layer pipeline" in out.stdout
    if "profile_steps" in command.text:
        assert list((workdir / "profile").rglob("*.xplane.pb"))


@pytest.mark.slow
@QUICK_START
def test_notebook_finds_the_run_from_notebooks(repo, quick_start):
    import nbformat
    from nbclient import NotebookClient

    assert "notebooks/restore_and_generate.ipynb" in (ROOT / "README.md").read_text()
    nb = nbformat.read(repo / "notebooks" / "restore_and_generate.ipynb", as_version=4)
    where = {"metadata": {"path": str(repo / "notebooks")}}
    NotebookClient(nb, timeout=300, kernel_name="python3", resources=where).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    assert "runs/deep_lstm" in text and "the best of the run" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
