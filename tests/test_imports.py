"""Imports run one way, folder by folder: the ground (errors, host), cells, the config, the data
set, the run directory, the command line, the network, training, and last what reads a trained run
(use) and sweeps. Read from the source (every ``import``, also inside functions), so a cycle or an
upward import fails here."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rnnjax"

# Each folder of rnnjax/ (or module at its top) may import its own level or below. A new folder
# (or top-level module) gets a level here; a new module in a folder takes the folder's.
LEVELS = [
    ["errors", "host"],
    ["cells"],
    ["config"],
    ["dataset"],
    ["rundir"],
    ["cli"],  # the scripts' flags: the config and the run directory's paths
    ["network"],  # network/impls/ too
    ["training"],
    ["use", "sweeps"],
]
# Compiled extensions (setup.py): they import nothing of rnnjax, so any module may import them.
COMPILED = {"_native_ext", "_native_ext_avx2"}
LEVEL = {name: i for i, names in enumerate(LEVELS) for name in names}


def _module(path: pathlib.Path) -> str:
    """rnnjax/training/loop.py -> "rnnjax.training.loop" (a package: its folder's name)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The folder (or top-level module) of a module: "rnnjax.training.loop" -> "training"."""
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: pathlib.Path) -> set[str]:
    """The rnnjax modules (dotted) a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] == "rnnjax"
        ):
            found |= {f"{node.module}.{a.name}" for a in node.names}  # a name or a submodule
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "rnnjax"}
    return {m for m in found if _unit(m) not in COMPILED}


def _modules() -> dict[str, set[str]]:
    """Every module of rnnjax -> the modules of rnnjax it imports (names that are no module are
    dropped, and so is the package's lazy __init__, which imports nothing when imported)."""
    files = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    return {
        m: {d for d in _imports(p) if d in files and d not in (m, "rnnjax")}
        for m, p in files.items()
    }


def _graph() -> dict[str, set[str]]:
    """Folder (or top-level module) -> the folders it imports."""
    graph: dict[str, set[str]] = {}
    for mod, deps in _modules().items():
        if _unit(mod):  # the package's lazy __init__ re-exports the public API: above every level
            graph.setdefault(_unit(mod), set()).update({_unit(d) for d in deps} - {_unit(mod), ""})
    return graph


def test_every_folder_has_a_level_and_imports_only_its_level_or_below():
    graph = _graph()
    assert set(graph) == set(LEVEL), (
        f"folders without a level (or levels without a folder): {set(graph) ^ set(LEVEL)}"
    )
    upward = [(m, d) for m, deps in graph.items() for d in deps if LEVEL[d] > LEVEL[m]]
    assert not upward, f"imports against the direction (folder -> what it imports): {upward}"


def test_the_graph_sees_imports_inside_folders():
    """The checks read real edges: the stack loop imports the layer implementations."""
    mods = _modules()
    assert "rnnjax.network.impls.fused" in mods["rnnjax.network.model"]
    assert "training" in _graph()["use"]


def test_loading_a_run_and_inspecting_it_never_import_the_trainer():
    graph = _modules()

    def closure(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for d in graph[todo.pop()] - seen:
                seen.add(d)
                todo.append(d)
        return seen

    trainer = {"rnnjax.training.train", "rnnjax.training.vectorize", "rnnjax.sweeps.sweep"}
    readers = ["use.run", "use.inside", "network.sampling", "network.model", "training.steps"]
    for reader in readers:
        assert not closure(f"rnnjax.{reader}") & trainer, reader


def test_the_model_spec_holds_no_device_placement():
    """DeepRNN is the math; where it runs (pipeline stages, cuDNN's data devices) is a Placement."""
    import dataclasses

    from rnnjax.network.model import DeepRNN, Placed, Placement

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
    placed = Placed.of(DeepRNN(5, 4, 2, "gru"), Placement(pipeline_stages=2))
    assert placed.cell == "gru" and placed.num_layers == 2 and hash(placed) == hash(placed)
    # a Placed is the spec by inheritance (editors follow it), not by forwarding attributes
    assert placed.spec == DeepRNN(5, 4, 2, "gru") and "__getattr__" not in vars(Placed)
