"""The import layering of the packages (pyproject.toml [tool.importlinter]), checked by import-linter.

Data flows one way: cli > builder > run | context | image > engine | frontend, siblings independent, no cycles
between sibling modules, and errors/limits/redact import nothing of snapfs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import snapfs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lint_imports():
    exe = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
    if not os.path.exists(exe):
        pytest.skip("lint-imports is not installed (pip install -e '.[test]')")
    # The snapfs under test, not another one an editable install may put on the path.
    src = os.path.dirname(os.path.dirname(os.path.abspath(snapfs.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    r = subprocess.run([exe, "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"lint-imports failed:\n{r.stdout}\n{r.stderr}"
    assert "0 broken" in r.stdout, r.stdout
