"""The README as a test: its commands, as written, in a temporary copy of the repository with
relative paths; shortened only by appending config overrides (fewer epochs). When the README
changes, this is what keeps it true."""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
ENV.pop("RNNJAX_WORKDIR", None)

pytestmark = pytest.mark.slow


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
    """Every shell command in the README's bash blocks: continuation lines joined, comments dropped."""
    out = []
    for block in blocks("bash"):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split("  #")[0].strip()
            if cmd:
                out.append(re.sub(r"\s+", " ", cmd))
    return out


def readme_command(start: str) -> list[str]:
    """The README's command that starts with ``start`` (exactly one), as an argv."""
    found = [c for c in commands() if c.startswith(start)]
    assert len(found) == 1, f"the README should have exactly one command starting with {start!r}: {found}"
    argv = shlex.split(found[0].split(" && ")[-1])  # 'pip install ... && python ...': the part after the install
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


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


def run(repo, argv, *more):
    proc = subprocess.run([*argv, *more], cwd=repo, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, f"{argv[1:]} {more}\n{proc.stderr[-3000:]}"
    return proc


# The tests that use the quick-start run share one test worker (pytest-xdist's loadgroup): it is trained once.
QUICK_START = pytest.mark.xdist_group("readme_quick_start")


@pytest.fixture(scope="module")
def quick_start(repo):
    """The README's first command in the copy, shortened to 2 epochs, then rerun to 3: (first, again) outputs."""
    train = readme_command("pip install -e . && python scripts/train.py --config=configs/deep_lstm.py")
    first = run(repo, train, "--config.train.num_epochs=2", "--config.checkpoint.every_epochs=1")
    again = run(repo, train, "--config.train.num_epochs=3", "--config.checkpoint.every_epochs=1")
    return first, again


@QUICK_START
def test_quick_start_trains_and_rerunning_resumes(repo, quick_start):
    first, again = quick_start
    assert "826,396 parameters" in first.stdout and "workdir runs/deep_lstm\ntraining epochs 1-2" in first.stdout
    assert "curves: runs/deep_lstm/curves.png" in first.stdout
    for name in ("config.json", "vocab.json", "metrics.jsonl", "curves.png", "samples.txt", "checkpoints"):
        assert (repo / "runs" / "deep_lstm" / name).exists(), name
    assert "resuming from epoch 3, step 16" in again.stdout  # 8 minibatches an epoch
    assert not (repo / "runs" / "deep_lstm" / "damaged").exists()
    assert len((repo / "runs" / "deep_lstm" / "metrics.jsonl").read_text().splitlines()) == 3
    smoke_cmd = readme_command("python scripts/train.py --config=configs/deep_lstm.py:smoke")
    smoke = run(repo, smoke_cmd, "--config.train.num_epochs=1")
    assert "workdir runs/deep_lstm-smoke" in smoke.stdout  # its own default workdir: the full run is untouched


@QUICK_START
def test_generate_commands(repo, quick_start):
    greedy = run(repo, readme_command("python scripts/generate.py --workdir=runs/deep_lstm --prefix=\"time traveller\""))
    assert greedy.stdout.startswith("time traveller") and len(greedy.stdout.rstrip("\n")) == len("time traveller") + 100
    assert greedy.stderr.startswith("# step ") and "the best of the run" in greedy.stderr
    sampled = run(repo, readme_command("python scripts/generate.py --workdir=runs/deep_lstm --prefix=\"the time\""))
    assert [x.split(" ")[0] for x in sampled.stdout.splitlines()] == ["the", "it"]
    assert "# step 24 " in sampled.stderr  # --step=latest: epoch 3


@QUICK_START
def test_python_snippet(repo, quick_start):
    [snippet] = [b for b in blocks("python") if "rnnjax.load(" in b]
    proc = run(repo, [sys.executable, "-c", snippet + "\nprint(repr(run))\nprint(run.generate('time traveller', 10))\n"])
    assert proc.stdout.splitlines()[0].startswith("Run(") and proc.stdout.splitlines()[1].startswith("time traveller")


def test_own_text_commands(repo):
    for start, workdir in [
        ("python scripts/train.py --config=configs/deep_lstm.py --config.data.paths=my_book.txt --workdir", "runs/my_book"),
        ("python scripts/train.py --config=configs/deep_lstm.py --config.data.paths=a.txt,b.txt", "runs/raw"),
        ("python scripts/train.py --config=configs/deep_lstm.py --config.data.paths=my_book.txt "
         "--config.data.tokenizer=word", "runs/words"),
    ]:
        run(repo, readme_command(start), "--config.train.num_epochs=1")
        assert (repo / workdir / "checkpoints").is_dir() and (repo / workdir / "samples.txt").read_text().strip()
    assert "T" in json.loads((repo / "runs" / "raw" / "vocab.json").read_text())["idx_to_token"]  # none keeps case
    words = (repo / "runs" / "words" / "samples.txt").read_text().split()
    assert words[:2] == ["the", "time"] and len(words) == 2 + 50


def test_books_and_evaluate_commands(repo):
    train = readme_command("python scripts/train.py --config=configs/books.py --config.data.paths=a.txt,b.txt")
    out = run(repo, train, "--config.train.num_epochs=2", "--config.data.max_tokens=5000", "--config.model.hidden_size=32")
    assert "workdir runs/books" in out.stdout and "bpc" in out.stdout
    assert "test perplexity" in out.stdout and "  a.txt: " in out.stdout and "  b.txt: " in out.stdout
    evaluation = json.loads((repo / "runs" / "books" / "evaluation.json").read_text())
    assert set(evaluation["test_ppl_by_source"]) == {"a.txt", "b.txt"} and evaluation["test_bpc"] > 0
    last = json.loads((repo / "runs" / "books" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(last["val_ppl_by_source"]) == {"a.txt", "b.txt"}
    scored = run(repo, readme_command("python scripts/evaluate.py --workdir=runs/books --text=b.txt"))
    assert scored.stdout.startswith("b.txt: perplexity ") and "bits per character" in scored.stdout


def test_sweep_and_summarize(repo):
    run(repo, readme_command("python scripts/sweep.py --config=configs/sweep_depth_cell.py:smoke"), "--config.train.num_epochs=1")
    summary = run(repo, readme_command("python scripts/sweep.py --summarize=runs/sweep_smoke"))
    assert "lstm" in summary.stdout and "gru" in summary.stdout
    for name in ("results.csv", "results.md", "sweep.png"):
        assert (repo / "runs" / "sweep_smoke" / name).exists()


@QUICK_START
def test_notebook_finds_the_run_from_notebooks(repo, quick_start):
    import nbformat
    from nbclient import NotebookClient

    assert "notebooks/restore_and_generate.ipynb" in README
    nb = nbformat.read(repo / "notebooks" / "restore_and_generate.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(repo / "notebooks")}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "runs/deep_lstm" in text and "the best of the run" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
