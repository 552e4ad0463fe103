"""Nothing lost, part three (issue #35): the files of a run other than its checkpoints. Each is
written whole or not at all and never through a link (a link where a file belongs is replaced,
its target left as it was); a directory where a file belongs is one line naming it."""

import json
import os
import pathlib
import shutil

import pytest
from conftest import copy_run, small_config

import rnnjax
from rnnjax.rundir.checkpoint import CheckpointError
from rnnjax.rundir.workdir import WorkdirError, append_metrics, write_atomic
from rnnjax.training.train import train_and_evaluate

# Every file train.py writes in a workdir besides checkpoints/ and the event files (their names
# are new each time).
RUN_FILES = (
    "config.json",
    "vocab.json",
    "metrics.jsonl",
    "curves.png",
    "samples.txt",
    "evaluation.json",
    ".lock",
)


def evaluate_cli(workdir, *flags) -> list[str]:
    """The argv of scripts/evaluate.py on ``workdir``."""
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    return [sys.executable, str(root / "scripts" / "evaluate.py"), f"--workdir={workdir}", *flags]


def redo_last_epoch(run):
    shutil.rmtree(run / "checkpoints" / "72")  # a kill after epoch 3's record, before its save


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_link_in_a_run_is_replaced_and_its_target_never_written(smoke_run, tmp_path, name):
    run = copy_run(smoke_run[0], tmp_path / "run")
    outside = tmp_path / "outside" / name
    outside.parent.mkdir()
    shutil.move(run / name, outside)
    os.symlink(outside, run / name)
    (run / (name + ".tmp")).symlink_to(tmp_path / "outside" / "planted")  # a link at the temp name
    before = outside.read_bytes()
    redo_last_epoch(run)
    train_and_evaluate(small_config(3), run)
    assert outside.read_bytes() == before and not (tmp_path / "outside" / "planted").exists()
    if name != ".lock":  # written again: a file of the run's own
        assert not (run / name).is_symlink() and (run / name).is_file()
    if name == "metrics.jsonl":
        assert [r["epoch"] for r in map(json.loads, (run / name).read_text().splitlines())] == [
            1,
            2,
            3,
        ]


@pytest.mark.parametrize("name", ["evaluation.json", "curves.png", "samples.txt"])
def test_a_directory_where_a_run_file_belongs_is_one_line(smoke_run, tmp_path, name):
    run = copy_run(smoke_run[0], tmp_path / "run")
    (run / name).unlink()
    (run / name).mkdir()
    (run / name / "keep").write_text("mine")
    with pytest.raises(WorkdirError, match=f"{name} is a directory where a file belongs") as e:
        train_and_evaluate(small_config(3), run)
    assert "\n" not in str(e.value) and (run / name / "keep").read_text() == "mine"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old report\n")

    def fail(f):
        f.write(b"half a new rep")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, fail)
    assert path.read_text() == "old report\n" and sorted(os.listdir(tmp_path)) == ["report.md"]


def test_appending_a_record_to_a_link_replaces_the_link(tmp_path):
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text('{"epoch": 1}\n')
    path = tmp_path / "metrics.jsonl"
    path.symlink_to(outside)
    append_metrics(path, {"epoch": 2})
    assert outside.read_text() == '{"epoch": 1}\n' and not path.is_symlink()
    assert path.read_text().splitlines() == ['{"epoch": 1}', '{"epoch": 2}']


def test_written_files_keep_the_usual_permissions(tmp_path):
    write_atomic(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize(
    "line,problem",
    [
        ("5", "is a JSON int, not a record"),
        ("[1, 2]", "is a JSON list, not a record"),
        ('{"val_ppl": 3.0}', "has epoch None"),
        ('{"epoch": "2", "val_ppl": 3.0}', "has epoch '2'"),
        ('{"epoch": 2, "val_ppl": 3.0}', "has epoch 2 after epoch 2 on the line before"),
        ('{"epoch": 3, "val_ppl": "low"}', "has val_ppl 'low', not a number"),
    ],
)
def test_a_damaged_metrics_line_is_one_line_naming_it_for_every_reader(
    smoke_run, tmp_path, line, problem
):
    run = copy_run(smoke_run[0], tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([*lines[:2], line, *lines[2:]]) + "\n")
    before = (run / "metrics.jsonl").read_bytes()
    for read in (lambda: rnnjax.load(run), lambda: train_and_evaluate(small_config(3), run)):
        with pytest.raises(WorkdirError, match=f"metrics.jsonl line 3 {problem}") as e:
            read()
        assert "\n" not in str(e.value) and "fix or remove the wrong line" in str(e.value)
    assert (run / "metrics.jsonl").read_bytes() == before


def test_a_deleted_config_json_with_checkpoints_is_refused_not_replaced(smoke_run, tmp_path):
    run = copy_run(smoke_run[0], tmp_path / "run")
    (run / "config.json").unlink()
    with pytest.raises(WorkdirError, match="holds checkpoints but no config.json; restore") as e:
        train_and_evaluate(small_config(3, **{"train.learning_rate": 0.5}), run)
    assert "\n" not in str(e.value) and not (run / "config.json").exists()


@pytest.mark.parametrize(
    "field,value,fix",
    [
        ("hidden_size", 48, "set model.hidden_size back to 32"),
        ("num_layers", 3, "set model.num_layers back to 2"),
        ("cell", "gru", "set model.cell back to 'lstm'"),
    ],
)
def test_a_hand_edited_config_json_names_the_field_that_disagrees(
    smoke_run, tmp_path, field, value, fix
):
    run = copy_run(smoke_run[0], tmp_path / "run")
    saved = json.loads((run / "config.json").read_text())
    saved["model"][field] = value
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match=f"config.json has model.{field} = .*; {fix}") as e:
        rnnjax.load(run)  # generate.py, evaluate.py and the notebooks load this way
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match=fix):  # a resume with the edit as its config too
        train_and_evaluate(small_config(3, **{f"model.{field}": value}), run)


@pytest.mark.parametrize("text_flag", ["-", "/dev/stdin"])
def test_evaluate_reads_stdin_and_drops_a_byte_order_mark(smoke_run, text_flag):
    import subprocess

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    args = evaluate_cli(smoke_run[0])
    text = "the time traveller smiled round at us"
    out = [
        subprocess.run(
            [*args, f"--text={text_flag}"], input=data, capture_output=True, env=env, timeout=120
        )
        for data in (text.encode(), b"\xef\xbb\xbf" + text.encode())
    ]
    assert [p.returncode for p in out] == [0, 0], out[0].stderr[-2000:]
    plain, with_bom = (p.stdout.decode().splitlines()[0] for p in out)
    # the same characters scored, the same perplexity: the mark is not read as text
    assert "perplexity" in plain and plain.split(":", 1)[1] == with_bom.split(":", 1)[1]


def test_records_lost_with_no_checkpoint_to_restore_them_are_named(smoke_run, tmp_path, caplog):
    run = copy_run(smoke_run[0], tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")  # epochs 2 and 3 cut away
    shutil.rmtree(run / "checkpoints" / "48")  # epoch 2's checkpoint rotated away long ago
    out = train_and_evaluate(small_config(3), run)
    assert [r["epoch"] for r in out["metrics"]] == [1, 3]  # epoch 3 back from its checkpoint
    assert "no record of epoch(s) 2 and no kept checkpoint holds them" in caplog.text


def test_a_negative_perplexity_in_metrics_is_refused(smoke_run, tmp_path):
    run = copy_run(smoke_run[0], tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"val_ppl": ', '"val_ppl": -5.0, "was": ', 1)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(WorkdirError, match="line 2 has val_ppl -5.0, not a perplexity"):
        rnnjax.load(run)


@pytest.mark.parametrize("name", ["config.json", "vocab.json", ".lock", "curves.png.tmp"])
def test_a_directory_at_any_run_file_or_its_temporary_is_one_line(smoke_run, tmp_path, name):
    run = copy_run(smoke_run[0], tmp_path / "run")
    if (run / name).exists():
        (run / name).unlink()
    (run / name).mkdir()
    with pytest.raises(WorkdirError, match="is a directory where") as e:
        train_and_evaluate(small_config(3), run)
    assert "\n" not in str(e.value) and (run / name).is_dir()


def test_a_null_perplexity_at_the_restored_step_is_described_and_config_json_named(
    smoke_run, tmp_path
):
    run = copy_run(smoke_run[0], tmp_path / "run")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    records[-1]["val_ppl"] = None
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert "val_ppl null" in rnnjax.load(run, step="latest").describe_step()
    (run / "config.json").write_text("{}")  # an object, but no run's config
    with pytest.raises(CheckpointError, match="config.json: .*restore the file from a copy"):
        rnnjax.load(run)


def test_training_on_a_config_json_that_is_no_runs_config_names_the_file(smoke_run, tmp_path):
    run = copy_run(smoke_run[0], tmp_path / "run")
    (run / "config.json").write_text("{}")
    with pytest.raises(WorkdirError, match="config.json has no config.* restore it from a copy"):
        train_and_evaluate(small_config(3), run)


@pytest.mark.parametrize("source", ["/dev/zero", "-"])
def test_evaluate_bounds_an_endless_stream_in_one_line(smoke_run, source):
    """--text=/dev/zero (or stdin without end) is read up to --max_mb, then refused in one line,
    instead of filling the host's memory."""
    import subprocess

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = evaluate_cli(smoke_run[0], f"--text={source}", "--max_mb=1")
    with open("/dev/zero", "rb") as zero:
        feed = zero if source == "-" else subprocess.DEVNULL
        p = subprocess.run(cmd, stdin=feed, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        f"error: --text={source}: more than --max_mb=1 MiB; give a smaller text, or raise --max_mb"
    ]


@pytest.mark.parametrize(
    "edit,why",
    [
        (lambda t: [x for x in t if x != "<unk>"] + ["Q"], "no '<unk>' token"),
        (lambda t: t[:5] + [t[6]] + t[6:], "twice"),
        (lambda t: t[:2] + [7] + t[3:], "a token is not a string"),
    ],
)
def test_a_vocab_json_that_is_no_vocabulary_is_named_by_every_reader(
    smoke_run, tmp_path, edit, why
):
    run = copy_run(smoke_run[0], tmp_path / "run")
    saved = json.loads((run / "vocab.json").read_text())
    saved["idx_to_token"] = edit(saved["idx_to_token"])
    (run / "vocab.json").write_text(json.dumps(saved))
    for read in (lambda: rnnjax.load(run), lambda: train_and_evaluate(small_config(4), run)):
        with pytest.raises(WorkdirError) as e:
            read()
        assert str(e.value).startswith(f"{run / 'vocab.json'} is damaged (") and why in str(e.value)


def test_a_vocab_json_edited_after_training_is_refused_by_the_readers(smoke_run, tmp_path):
    """Two tokens swapped: still a vocabulary, but not the one the checkpoints were trained with
    (each checkpoint's meta holds its sha256); reading it would swap the characters silently."""
    run = copy_run(smoke_run[0], tmp_path / "run")
    saved = json.loads((run / "vocab.json").read_text())
    t = saved["idx_to_token"]
    t[5], t[6] = t[6], t[5]
    (run / "vocab.json").write_text(json.dumps(saved))
    with pytest.raises(
        CheckpointError, match="is not the vocabulary checkpoint step .* was trained"
    ):
        rnnjax.load(run)
    before = (run / "vocab.json").read_bytes()
    with pytest.raises((WorkdirError, CheckpointError), match="different vocabulary"):
        train_and_evaluate(small_config(4), run)
    assert (run / "vocab.json").read_bytes() == before  # nothing rewritten
