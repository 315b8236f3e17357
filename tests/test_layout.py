"""Who may import whom, read from the source: the installed packages never import the helpers
or the tests, `models/` no web or command-line stack, and nothing imports `tests/`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from devkit import REPO

# folder -> top-level modules it must not import
FORBIDDEN = {
    "models": {"tests", "devkit", "benchmarks", "service", "fastapi", "starlette", "uvicorn",
               "typer", "click"},
    "service": {"tests", "devkit", "benchmarks"},
    "benchmarks": {"tests"},
    "devkit": {"tests", "benchmarks"},
}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every `import` and `from ... import` in the file, lazy ones too."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder", FORBIDDEN)
def test_imports_stay_inside_their_layer(folder: str) -> None:
    files = sorted((REPO / folder).rglob("*.py"))
    assert files
    wrong = {
        str(path.relative_to(REPO)): sorted(imported_modules(path) & FORBIDDEN[folder])
        for path in files
    }
    assert {path: names for path, names in wrong.items() if names} == {}
