"""The three Dockerfile layers do not know the next one (BuildKit's parser / instructions / shell split)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import snapfs

SRC = Path(snapfs.__file__).parent / "frontend"

# frontend module -> what it may import: its siblings by name, the rest of snapfs as snapfs.<module>.
# (That the frontend imports nothing else of snapfs is also an import-linter contract: tests/test_layering.py.)
ALLOWED = {
    "shellwords": {"snapfs.errors"},
    "syntax": {"snapfs.errors", "shellwords"},
    "values": {"snapfs.errors"},
    "instructions": {"snapfs.errors", "syntax", "values"},
    "plan": {"snapfs.errors", "snapfs.platforms", "syntax", "instructions", "values", "shellwords"},
    "dockerignore": {"snapfs.errors"},
}


def _snapfs_imports(module: str) -> set[str]:
    tree = ast.parse((SRC / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("snapfs."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("snapfs."))
    return found


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_layering(module: str):
    imports = _snapfs_imports(module)
    assert imports, f"{module} should at least import snapfs.errors"
    assert imports <= ALLOWED[module]
