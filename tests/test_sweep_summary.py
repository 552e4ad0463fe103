"""A sweep's results read back: the table's columns per axis, depth aggregated over seeds, the
plot."""

import csv
import json

import pytest

from rnnjax.sweeps.grid import SweepError, trial_name
from rnnjax.sweeps.sweep_summary import aggregate_depth, plot_sweep, summarize


def fake_trial(root, overrides, best, status="done", cell="gru", num_layers=1, epochs=3):
    """A trial directory as run_sweep leaves it (result.json with the overrides, metrics.jsonl), no
    training."""
    d = root / trial_name(overrides)
    d.mkdir(parents=True)
    o = {"model.cell": cell, "model.num_layers": num_layers, **overrides}
    row = {
        "name": d.name,
        **{k.split(".")[-1]: v for k, v in overrides.items()},
        "overrides": overrides,
        "cell": o["model.cell"],
        "num_layers": o["model.num_layers"],
        "hidden_size": 32,
        "num_params": 1000,
        "train_ppl": best + 1,
        "best_val_ppl": best,
        "tokens_per_sec": 1e4,
        "wall_time": 1.0,
        "status": status,
        "error": "",
    }
    (d / "result.json").write_text(json.dumps(row))
    (d / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"epoch": e, "val_ppl": best + epochs - e}) + "\n"
            for e in range(1, epochs + 1)
        )
    )
    return d


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_summary_has_a_column_per_axis(tmp_path):
    for seed in (0, 1, 2):
        for lr in (1.0, 2.0):
            fake_trial(tmp_path, {"seed": seed, "train.learning_rate": lr}, best=10 + seed + lr)
    legacy = fake_trial(
        tmp_path, {"seed": 7, "train.learning_rate": 0.5}, best=9.0
    )  # result.json without "overrides"
    row = json.loads((legacy / "result.json").read_text())
    del row["overrides"]
    (legacy / "result.json").write_text(json.dumps(row))
    summarize(tmp_path)
    table = read_csv(tmp_path / "results.csv")
    assert list(table[0])[:6] == [
        "name",
        "cell",
        "num_layers",
        "hidden_size",
        "seed",
        "learning_rate",
    ]
    got = sorted((r["seed"], r["learning_rate"], r["best_val_ppl"]) for r in table)
    assert got == sorted(
        [(str(s), str(lr), str(10 + s + lr)) for s in (0, 1, 2) for lr in (1.0, 2.0)]
        + [("7", "0.5", "9.0")]
    )
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0] == (
        "| cell | num_layers | hidden_size | seed | learning_rate | num_params | train_ppl "
        "| best_val_ppl "
        "| tokens_per_sec | wall_time | status |"
    )
    assert "| gru | 1 | 32 | 2 | 1.0 | 1000 | 14.000 | 13.000 |" in "\n".join(md)
    assert len(set(md[2:])) == 7  # no two rows look the same


def test_axis_columns_are_named_by_last_part_when_unambiguous(tmp_path):
    fake_trial(
        tmp_path,
        {"model.cell": "lstm", "train.x": 1, "data.x": "a|b", "data.status": 3},
        best=5.0,
        cell="lstm",
    )
    summarize(tmp_path)
    (row,) = read_csv(tmp_path / "results.csv")
    assert list(row) == [
        "name",
        "cell",
        "num_layers",
        "hidden_size",
        "train.x",
        "data.x",
        "data.status",
        "impl",
        "num_params",
        "train_ppl",
        "best_val_ppl",
        "best_val_bpc",
        "best_epoch",
        "test_ppl",
        "test_bpc",
        "tokens_per_sec",
        "wall_time",
        "status",
        "error",
    ]
    assert (row["cell"], row["train.x"], row["data.x"], row["data.status"], row["status"]) == (
        "lstm",
        "1",
        "a|b",
        "3",
        "done",
    )
    assert "| lstm | 1 | 32 | 1 | a\\|b | 3 |" in (tmp_path / "results.md").read_text()


def test_depth_aggregates_over_seeds_per_cell_and_other_axes():
    def row(cell, layers, ppl, status="done", **overrides):
        o = {"model.cell": cell, "model.num_layers": layers, **overrides}
        return {
            "cell": cell,
            "num_layers": layers,
            "best_val_ppl": ppl,
            "status": status,
            "overrides": o,
        }

    rows = [
        row("gru", 1, 10.0, seed=0),
        row("gru", 1, 14.0, seed=1),
        row("gru", 1, 12.0, seed=2),
        row("gru", 2, 9.0, seed=0),
        row("gru", 2, 99.0, "failed", seed=1),
        row("lstm", 2, 8.0, seed=0),
        row("lstm", 2, 6.0, seed=1),
        row("lstm", 2, 20.0, seed=0, **{"train.learning_rate": 2.0}),
    ]
    rows.append(
        {"cell": "rnn", "num_layers": 3, "best_val_ppl": 30.0, "status": "done", "seed": 4}
    )  # no "overrides"
    assert aggregate_depth(rows) == [
        {
            "cell": "gru",
            "group": "",
            "num_layers": 1,
            "mean": 12.0,
            "min": 10.0,
            "max": 14.0,
            "n": 3,
        },
        {"cell": "gru", "group": "", "num_layers": 2, "mean": 9.0, "min": 9.0, "max": 9.0, "n": 1},
        {"cell": "lstm", "group": "", "num_layers": 2, "mean": 7.0, "min": 6.0, "max": 8.0, "n": 2},
        {
            "cell": "lstm",
            "group": "learning_rate=2.0",
            "num_layers": 2,
            "mean": 20.0,
            "min": 20.0,
            "max": 20.0,
            "n": 1,
        },
        {
            "cell": "rnn",
            "group": "",
            "num_layers": 3,
            "mean": 30.0,
            "min": 30.0,
            "max": 30.0,
            "n": 1,
        },
    ]


def test_sweep_plot_of_32_trials_is_readable_and_leaves_the_backend_alone(tmp_path):
    import matplotlib

    dirs = [
        fake_trial(
            tmp_path,
            {"model.cell": c, "model.num_layers": n, "seed": s},
            best=10 + n * (c == "gru") + s,
            cell=c,
            num_layers=n,
        )
        for c in ("gru", "lstm")
        for n in (1, 2, 3, 4)
        for s in (0, 1, 2, 3)
    ]
    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # as a notebook's backend: summarize must not switch it
    try:
        rows = summarize(tmp_path)
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)
    assert len(rows) == 32 and (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    fig = plot_sweep([json.loads((d / "result.json").read_text()) for d in dirs], dirs)
    depth, curves = fig.axes
    assert list(depth.get_xticks()) == [1, 2, 3, 4]  # integer depths only
    means = [line.get_ydata().tolist() for line in depth.get_lines()]
    assert means == [
        [12.5, 13.5, 14.5, 15.5],
        [11.5, 11.5, 11.5, 11.5],
    ]  # one line per cell: the mean over 4 seeds
    assert [t.get_text() for t in depth.get_legend().get_texts()] == ["gru (n=4)", "lstm (n=4)"]
    assert len(curves.get_lines()) == 32 and [
        t.get_text() for t in curves.get_legend().get_texts()
    ] == ["gru", "lstm"]


@pytest.mark.parametrize(
    "damage,why",
    [
        ({"name": "x"}, "has no name, or no status"),
        ([1, 2], "holds a JSON list"),
        (
            {
                "name": "seed=1",
                "status": "done",
                "cell": "gru",
                "num_layers": 1,
                "best_val_ppl": "9",
            },
            "best_val_ppl is '9'",
        ),
        ("{not json", "cannot be read"),
        ({"name": "seed=1", "status": "done"}, "has no cell, or no whole num_layers"),
        (
            {"name": "seed=1", "status": "done", "cell": "gru", "num_layers": 1.5},
            "has no cell, or no whole num_layers",
        ),
        (
            {
                "name": "seed=1",
                "status": "done",
                "cell": "gru",
                "num_layers": 1,
                "metrics": {"val_ppl": "x"},
            },
            "metrics.val_ppl is 'x', not a number",
        ),
    ],
)
def test_a_damaged_trial_result_is_left_out_naming_its_file(tmp_path, caplog, damage, why):
    fake_trial(tmp_path, {"seed": 0}, best=10.0)
    bad = fake_trial(tmp_path, {"seed": 1}, best=11.0) / "result.json"
    bad.write_text(damage if isinstance(damage, str) else json.dumps(damage))
    rows = summarize(tmp_path)
    assert [r["best_val_ppl"] for r in rows] == [10.0]
    assert f"{bad} {why}" in caplog.text and "rerun the sweep to redo that trial" in caplog.text
    assert len(read_csv(tmp_path / "results.csv")) == 1


def test_a_summary_of_damaged_results_only_is_one_line(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "result.json").write_text("{}")
    with pytest.raises(SweepError, match="no trial result .* can be read .*result.json") as e:
        summarize(tmp_path)
    assert "\n" not in str(e.value) and not (tmp_path / "results.csv").exists()


def test_the_summary_files_replace_links_and_leave_their_targets(tmp_path):
    fake_trial(tmp_path, {"seed": 0}, best=10.0)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    for name in ("results.csv", "results.md", "sweep.png"):
        (outside / name).write_text("theirs")
        (tmp_path / name).symlink_to(outside / name)
    summarize(tmp_path)
    for name in ("results.csv", "results.md", "sweep.png"):
        assert (outside / name).read_text() == "theirs" and not (tmp_path / name).is_symlink()


def test_a_null_best_perplexity_and_a_misnamed_result_do_not_break_the_summary(tmp_path, caplog):
    fake_trial(tmp_path, {"seed": 0}, best=10.0)
    nan = fake_trial(tmp_path, {"seed": 1}, best=11.0) / "result.json"
    row = json.loads(nan.read_text())
    nan.write_text(json.dumps({**row, "best_val_ppl": None}))  # a NaN, written null
    moved = fake_trial(tmp_path, {"seed": 2}, best=12.0) / "result.json"
    moved.write_text(json.dumps({**json.loads(moved.read_text()), "name": "seed=0"}))
    rows = summarize(tmp_path)
    assert [r["name"] for r in rows] == ["seed=0", "seed=1"]
    assert "names trial 'seed=0', not its folder's 'seed=2'" in caplog.text


def test_a_damaged_trial_curve_is_named_not_dropped_silently(tmp_path, caplog):
    d = fake_trial(tmp_path, {"seed": 0}, best=10.0)
    (d / "metrics.jsonl").write_text('{"epoch": 1, "val_ppl": 3.0}\n5\n{"epoch": 3}\n')
    summarize(tmp_path)
    assert (
        "metrics.jsonl line 2 is a JSON int" in caplog.text
        and "left out of sweep.png" in caplog.text
    )
