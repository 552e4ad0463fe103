"""Imports run one way: cells, then the config and data, then layers, then the model and its
implementations, then steps (and what reads a trained run), then train, then sweep. Read from the
source (every ``import``, also inside functions), so a cycle or an upward import fails here."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Each module may import modules of its own level or below. A new module gets a level here.
LEVELS = [
    [
        "errors",
        "fields",
        "console",
        "host",
        "integrity",
        "metrics",
        "profiling",
        "tensorboard_log",
        "vocab",
    ],
    ["cells"],  # the package and every cell file
    [
        "config",
        "config_doc",
        "cli",
        "workdir",
        "lock",
        "preflight",
        "text",
        "data",
        "optim",
        "checkpoint",
        "grid",
        "plotting",  # writes through workdir.write_atomic
    ],
    ["budget"],  # the run's length (reads the config and the workdir)
    ["stack", "fused", "native"],  # layers
    [
        "model",
        "cudnn",
        "flax_model",
        "pipeline",
        "parallel",
        "trace",
        "interop",
        "capacity",
        "build",
    ],
    ["steps", "layout", "evaluation", "sampling", "inside", "run"],
    ["group", "records", "finish", "resume", "loop", "train", "vectorize"],
    ["sweep", "sweep_summary"],
]
# Compiled extensions (setup.py): they import nothing of rnnjax, so any module may import them.
COMPILED = {"_native_ext", "_native_ext_avx2"}
LEVEL = {name: i for i, names in enumerate(LEVELS) for name in names}


def _name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT / "rnnjax").with_suffix("").parts
    return parts[0] if parts[0] != "__init__" else ""


def _imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] == "rnnjax"
        ):
            mods = (
                [f"rnnjax.{a.name}" for a in node.names]
                if node.module == "rnnjax"
                else [node.module]
            )
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names if a.name.split(".")[0] == "rnnjax"]
        else:
            continue
        found |= {m.split(".")[1] for m in mods if m.count(".") >= 1}
    return found - COMPILED


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "rnnjax").rglob("*.py")):
        name = _name(path)
        if name:  # the package's lazy __init__ re-exports the public API: above every level
            graph.setdefault(name, set()).update(_imports(path) - {name})
    return graph


def test_every_module_has_a_level_and_imports_only_its_level_or_below():
    graph = _graph()
    assert set(graph) == set(LEVEL), (
        f"modules without a level (or levels without a module): {set(graph) ^ set(LEVEL)}"
    )
    upward = [(m, d) for m, deps in graph.items() for d in deps if LEVEL[d] > LEVEL[m]]
    assert not upward, f"imports against the direction (module -> what it imports): {upward}"


def test_loading_a_run_and_inspecting_it_never_import_the_trainer():
    graph = _graph()

    def closure(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for d in graph[todo.pop()] - seen:
                seen.add(d)
                todo.append(d)
        return seen

    for reader in ("run", "inside", "sampling", "model", "steps"):
        assert not closure(reader) & {"train", "vectorize", "sweep"}, reader


def test_the_model_spec_holds_no_device_placement():
    """DeepRNN is the math; where it runs (pipeline stages, cuDNN's data devices) is a Placement."""
    import dataclasses

    from rnnjax.model import DeepRNN, Placed, Placement

    assert {f.name for f in dataclasses.fields(DeepRNN)} == {
        "vocab_size",
        "hidden_size",
        "num_layers",
        "cell",
        "activation",
        "dropout",
        "output_dropout",
        "locked_dropout",
        "weight_drop",
        "impl",
    }
    placed = Placed(DeepRNN(5, 4, 2, "gru"), Placement(pipeline_stages=2))
    assert placed.cell == "gru" and placed.num_layers == 2 and hash(placed) == hash(placed)
