"""Who may import whom, read from the source: the installed packages never import the helpers
or the tests, `models/` no web or command-line stack, `media/` (between the two) neither and
not `service/`, `models/` not `media/`, `service/` not the command, nothing
imports `tests/`, and no module of the project imports itself back through others (lazy
imports inside functions count: a cycle hidden in a function body is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from devkit import REPO

# What no layer under the service imports: the helpers, the layers above, the web and command
# stacks.
BELOW_THE_SERVICE = {
    "tests",
    "devkit",
    "benchmarks",
    "service",
    "cli",
    "fastapi",
    "starlette",
    "uvicorn",
    "typer",
    "click",
}
# folder -> top-level modules it must not import
FORBIDDEN = {
    "models": BELOW_THE_SERVICE | {"media"},
    "media": BELOW_THE_SERVICE,
    "service": {"tests", "devkit", "benchmarks", "cli", "typer", "click"},
    "cli": {"tests", "devkit", "benchmarks"},
    "benchmarks": {"tests"},
    "devkit": {"tests", "benchmarks"},
}
PACKAGES = ("models", "media", "service", "cli", "benchmarks", "devkit")


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every `import` and `from ... import` in the file, lazy ones too."""
    return {name.split(".")[0] for name in imported_names(path)}


def imported_names(path: Path) -> set[str]:
    """Dotted names of every `import x.y` and of `from x.y import z` as `x.y.z` (a module or
    a name in x.y), lazy ones too."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


def import_graph() -> dict[str, set[str]]:
    """Each project module -> the project modules it imports (`from a import b` imports a.b
    when that is a module, else a)."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for dotted in imported_names(path):
            while dotted and dotted not in modules:
                dotted = dotted.rpartition(".")[0]
            if dotted and dotted != name:
                targets.add(dotted)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("folder", FORBIDDEN)
def test_imports_stay_inside_their_layer(folder: str) -> None:
    files = sorted((REPO / folder).rglob("*.py"))
    assert files
    wrong = {
        str(path.relative_to(REPO)): sorted(imported_modules(path) & FORBIDDEN[folder])
        for path in files
    }
    assert {path: names for path, names in wrong.items() if names} == {}


def test_no_module_imports_itself_back() -> None:
    graph = import_graph()
    assert {"models.model", "models.tiling", "models.pipeline", "cli.app"} <= graph.keys()
    assert "models.model" in graph["models.tiling"]  # the graph sees `from models.model import`
    assert "models.tiling" in graph["models.pipeline"]  # and `from models import tiling`
    assert cycles(graph) == []


def test_the_cycle_finder_finds_lazy_cycles(tmp_path: Path) -> None:
    """The oracle for the test above: a cycle through a lazy import (model.py importing tiling
    inside a function, tiling importing model at the top) is reported."""
    graph = {
        "models.model": {"models.tiling"},
        "models.tiling": {"models.model"},
        "models.pipeline": {"models.model"},
    }
    assert cycles(graph) == [["models.model", "models.tiling"]]
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from models import tiling\n")
    assert imported_names(module) == {"models.tiling"}
