"""The house rules a maintainer relies on: citations resolve inside the repository, the package has no
import cycle, and the documented loss list is the registry's."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "netvlad_port"
SOURCES = [
    *PACKAGE.rglob("*.py"),
    *(ROOT / "tests").glob("*.py"),
    *(ROOT / "matlab_ref").glob("*.m"),
    *(ROOT / "docs").glob("*.md"),
    *(ROOT / "weights").glob("*.md"),
    ROOT / "README.md",
    *(ROOT / "tests" / "data" / "parity").rglob("README.md"),
]


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_nothing_cites_material_outside_the_repository():
    outside = re.compile("reference " + "§|peers " + "§|" + "shared" + "/")
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in SOURCES
        if p != Path(__file__)
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert not hits


def test_every_docs_anchor_resolves():
    anchors = {
        p.name: {slug(h) for h in re.findall(r"^#+ (.+)$", p.read_text(), re.M)} for p in (ROOT / "docs").glob("*.md")
    }
    cited = {
        (doc, anchor, str(p.relative_to(ROOT)))
        for p in SOURCES
        for doc, anchor in re.findall(r"(\w+\.md)#([\w-]+)", p.read_text())
        if doc in anchors
    }
    assert cited, "no citations found: the pattern is broken"
    missing = sorted(c for c in cited if c[1] not in anchors.get(c[0], ()))
    assert not missing


def _import_graph() -> dict[str, set[str]]:
    modules = {}
    for p in PACKAGE.rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        modules[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = p
    graph = {m: set() for m in modules}
    for name, path in modules.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            if isinstance(node, ast.ImportFrom):
                parts = base[: len(base) - node.level + 1] if node.level else []
                target = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    child = f"{target}.{alias.name}"
                    dep = child if child in modules else target
                    if dep in modules and dep != name:
                        graph[name].add(dep)
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules and a.name != name}
    return graph


def test_the_package_has_no_import_cycle():
    graph = _import_graph()
    assert len(graph) > 30 and graph["netvlad_port.train.loop"]  # the parser sees the package
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep) :] + [dep]))
            if dep not in state:
                visit(dep)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_documented_losses_are_the_registered_ones():
    from netvlad_port.losses import LOSSES

    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"Losses \(`--loss`\): (.+?)\.\n", readme, re.S).group(1)
    assert sorted(re.findall(r"`([\w-]+)`", listed)) == sorted(LOSSES)


def test_no_pickle_anywhere_in_the_package():
    """Weights and outputs are safetensors / JSON / HDF5; nothing may unpickle untrusted files. The one
    reader of foreign ``.pth`` checkpoints (importers/pth.py) loads weights-only, with an allow-list."""
    banned = re.compile(
        r"^\s*(import|from)\s+(c?pickle|dill|joblib)|pickle\.loads?\(|torch\.load\(|(?<![.\w])(eval|exec)\("
        r"|allow_pickle\s*=\s*True|weights_only\s*=\s*False"
    )
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in PACKAGE.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]  # fmt: skip
    assert [h for h in hits if not h.startswith("netvlad_port/importers/pth.py:")] == []
    calls = re.findall(r"torch\.load\(([^)]*)\)", (PACKAGE / "importers" / "pth.py").read_text())
    assert calls and all("weights_only=True" in c for c in calls if c != "...")


def test_readme_command_reference_matches_the_cli():
    from netvlad_port.cli import COMMANDS, main

    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([\w-]+)` \| (.+?) \|$", readme, re.M)
    assert rows == list(COMMANDS.items()) and sorted(COMMANDS) == sorted(main.commands)


def test_the_core_never_imports_a_plugin():
    """Only the wings under netvlad_port/plugins may import netvlad_port.plugins.* (they register through the
    entry-point group, docs/extending.md#plug-ins); the runtime side is tests/test_plugins.py."""
    graph = _import_graph()
    assert "netvlad_port.plugins.stml.guidance" in graph  # the parser sees the wings
    core = {m: deps for m, deps in graph.items() if not m.startswith("netvlad_port.plugins")}
    hits = sorted(f"{m} -> {d}" for m, deps in core.items() for d in deps if d.startswith("netvlad_port.plugins"))
    assert not hits


def test_no_function_in_train_is_long():
    """The trainer stays split along its seams: no function of netvlad_port/train over 60 lines."""
    long = [
        f"{p.name}:{n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for p in (PACKAGE / "train").glob("*.py")
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 60
    ]
    assert not long
    assert len((PACKAGE / "train" / "loop.py").read_text().splitlines()) < 350
