"""The README and the docs pages, read as data: their commands, their links, their markers.

A page's commands are the lines of its fenced ``bash`` blocks (a trailing ``\\`` joins lines; a
comment starts with ``#`` at the start of a line or after two spaces) and its fenced ``python``
blocks. ``tests/test_readme.py`` runs every one of them. A block that cannot run in the tests
(it needs a GPU or several hosts, runs for hours, starts a server, or is the test suite itself)
carries a marker on the line right above its fence, with the reason:

    <!-- untested: needs an NVIDIA GPU; tests/test_cudnn.py checks the one-line refusal -->

Here: every relative link resolves (the file exists and, for a Markdown page, the ``#anchor`` is
one of its headings), every marker is well formed, the README is short and links every page, and
the README's test command is the one CI runs.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MARKER = "<!-- untested:"
BLOCK = re.compile(
    r"(?:^<!-- untested: (?P<reason>[^\n]*?) -->\n)?^```(?P<lang>bash|python)\n(?P<body>.*?)^```",
    re.S | re.M,
)


@dataclasses.dataclass(frozen=True)
class Command:
    page: str  # the page's path, relative to the repository root
    lang: str  # "bash": one shell command; "python": a whole block
    text: str  # bash: continuation lines joined, comment dropped, spaces collapsed
    untested: str | None  # the marker's reason, or None: the tests run it


def rel(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def page_commands(page: pathlib.Path) -> list[Command]:
    """The commands of one page, in order."""
    out = []
    for m in BLOCK.finditer(page.read_text()):
        reason, lang, body = m["reason"], m["lang"], m["body"]
        if lang == "python":
            out.append(Command(rel(page), lang, body, reason))
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                out.append(Command(rel(page), lang, re.sub(r"\s+", " ", line), reason))
    return out


def commands() -> list[Command]:
    """Every command of the README and of docs/*.md."""
    return [c for page in PAGES for c in page_commands(page)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    """The anchors of a page's headings (outside code), duplicates numbered as GitHub does."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        base = slug(heading)
        out.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return out


def links(page: pathlib.Path) -> list[str]:
    """The targets of a page's Markdown links and images, outside code."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {rel(file)}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: {rel(file)} has no heading with the anchor #{anchor}")
    assert not broken, f"{rel(page)}: broken links:\n" + "\n".join(broken)


def test_the_link_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "# Top\n\n## Adding a cell\n\n[a](nope.md) [b](#adding-a-cell) [c](#nope) `[d](x.md)`\n"
    )
    assert links(page) == ["nope.md", "#adding-a-cell", "#nope"]
    assert anchors(page) == {"top", "adding-a-cell"}
    heading = "Inside the stack: TensorBoard, `rnnjax.inspect`"
    assert slug(heading) == "inside-the-stack-tensorboard-rnnjaxinspect"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_untested_marker_sits_on_a_block_and_gives_a_reason(page):
    text = page.read_text()
    marked = [m for m in BLOCK.finditer(text) if m["reason"] is not None]
    assert text.count(MARKER) == len(marked), f"{rel(page)}: a marker not right above a fence"
    assert all(len(m["reason"].strip()) >= 10 for m in marked), f"{rel(page)}: a marker, no reason"


def test_the_parser_reads_blocks_markers_continuations_and_comments(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "x\n\n```bash\n# a comment line\n"
        "python a.py --x=1 \\\n    --y=2   # says what\n```\n\n"
        "<!-- untested: needs a GPU somewhere -->\n```bash\npython gpu.py\n```\n\n"
        "```python\nimport rnnjax\n```\n\n```text\nnot a command\n```\n"
    )
    found = [(c.lang, c.text, c.untested) for c in page_commands(page)]
    assert found == [
        ("bash", "python a.py --x=1 --y=2", None),
        ("bash", "python gpu.py", "needs a GPU somewhere"),
        ("python", "import rnnjax\n", None),
    ]


def test_the_readme_is_short_and_links_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    missing = [rel(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_a_newcomer_finds_own_text_resume_best_checkpoint_and_adding_a_cell_in_the_readme():
    text = README.read_text()
    for needle in (
        "--config.data.paths=my_book.txt",
        "--resume=must",
        "the best checkpoint",
        'rnnjax.load("runs/deep_lstm")',
        "docs/cells.md#adding-a-cell",
    ):
        assert needle in text, needle


def test_the_readmes_test_command_is_the_one_ci_runs():
    ci = [
        x.strip().replace(" --quiet", "")
        for x in (ROOT / ".ci" / "run").read_text().splitlines()
        if x.strip() and not x.startswith("#")
    ]
    tests = [c for c in page_commands(README) if "pytest" in c.text]
    assert len(tests) == 1 and tests[0].untested, tests
    install, _, run = tests[0].text.partition(" && ")
    # the README's command, then the exhaustive tier (tests marked exhaustive, left out of it)
    assert ci[-2:] == [run, "python -m pytest -m exhaustive"] and run == "python -m pytest"
    assert f"python -m {install}" in ci, f"CI does not install as the README says: {install}"


def test_pip_installs_name_extras_that_exist():
    pyproject = (ROOT / "pyproject.toml").read_text()
    section = pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^([\w-]+) = \[", section, flags=re.M))
    assert {"test", "bench"} <= extras
    for c in commands():
        for spec in re.findall(r'pip install (?:-e )?"?\.\[([^\]]+)\]', c.text):
            assert set(spec.split(",")) <= extras, f"{c.page}: {c.text}"


def test_the_reading_path_of_one_step_is_what_implementation_md_says():
    """docs/implementation.md's "Reading one step": the files of its table exist, and their count
    and total lines are the figures the page states (lines within 10%: the page is re-counted when
    the path grows or shrinks by more)."""
    import re

    page = (ROOT / "docs" / "implementation.md").read_text()
    section = page[page.index("**Reading one step**") : page.index("Each epoch: the sampler")]
    stated = re.search(r"(\d+) files, ([\d,]+) lines", section)
    files = sorted(set(re.findall(r"`(rnnjax/[\w/]+\.py)`", section.split("| file |")[1])))
    lines = sum(len((ROOT / f).read_text().splitlines()) for f in files)
    assert len(files) == int(stated.group(1)), files
    assert abs(lines - int(stated.group(2).replace(",", ""))) <= 0.1 * lines, lines
