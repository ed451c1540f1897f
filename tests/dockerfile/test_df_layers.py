"""The three Dockerfile layers do not know the next one (BuildKit's parser / instructions / shell split)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import snapfs

SRC = Path(snapfs.__file__).parent

# module -> snapfs modules it may import
ALLOWED = {
    "shellwords": {"errors"},
    "dockerfile": {"errors", "shellwords"},
    "instruction_values": {"errors"},
    "instructions": {"errors", "dockerfile", "instruction_values"},
    "stages": {"errors", "dockerfile", "instructions", "instruction_values", "shellwords"},
    "dockerignore": {"errors"},
}


def _snapfs_imports(module: str) -> set[str]:
    tree = ast.parse((SRC / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("snapfs."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("snapfs."))
    return found


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_layering(module: str):
    imports = _snapfs_imports(module)
    assert imports, f"{module} should at least import errors"
    assert imports <= ALLOWED[module]
