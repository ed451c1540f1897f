"""The suite's start lists every missing program at once (run for real: pytest with a PATH lacking them)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from toolcheck import TOOLS, missing_tools

HERE = os.path.dirname(__file__)


def _pytest(path: str, no_skip: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path, "SNAPFS_NO_SKIP": no_skip}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--collect-only",
                           os.path.join(HERE, "engine", "test_tarheader.py")], env=env, capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(HERE))


def _path_without(tmp_path, *absent: str) -> str:
    """A PATH holding every tool of the suite except ``absent`` (links to the real programs)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        real = shutil.which(tool)
        if tool not in absent and real:
            os.symlink(real, bin_dir / tool)
    return str(bin_dir)


def test_all_missing_tools_are_listed_in_one_line_and_stop_the_run(tmp_path):
    path = _path_without(tmp_path, "buildah", "skopeo", "umoci", "azurite-blob")
    assert missing_tools(path) == ["azurite-blob", "buildah", "skopeo", "umoci"]
    r = _pytest(path, "1")
    assert r.returncode == 4, r.stdout + r.stderr
    lines = [l for l in (r.stdout + r.stderr).splitlines() if "tool(s) the tests run are missing" in l]
    message = ("4 tool(s) the tests run are missing: azurite-blob (npm azurite), buildah (apt buildah), "
               "skopeo (apt skopeo), umoci (apt umoci); scripts/setup.sh installs them")
    assert lines and all(message in l for l in lines), r.stdout + r.stderr  # one line names them all
    assert "collected" not in r.stdout  # stopped before any test


def test_without_no_skip_the_list_is_a_warning(tmp_path):
    r = _pytest(_path_without(tmp_path, "buildah", "gcc"), "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("warning: 2 tool(s) the tests run are missing: buildah (apt buildah), gcc (apt gcc); "
            "scripts/setup.sh installs them (tests that need them skip)") in r.stderr


def test_setup_installs_every_apt_tool():
    with open(os.path.join(HERE, "..", "scripts", "setup.sh")) as f:
        text = f.read()
    apt = set(re.search(r"APT_PKGS=\(([^)]*)\)", text).group(1).split())
    wanted = {how.split()[1] for how in TOOLS.values() if how.startswith("apt ")}
    assert wanted - apt == set()
    assert "azurite@" in text and "'.[test]'" in text
