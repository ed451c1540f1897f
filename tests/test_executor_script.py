"""deploy/build-executor-image.sh needs nothing but a Python 3.11 with pip: snapfs itself comes from the wheels it
builds from this checkout (it used to fail with "No module named snapfs" unless snapfs was installed into $PYTHON).
The full image build is tests/build/test_pod_simulation.py; here the script stops at snapfs's argument parser."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the script builds for Debian bookworm's Python 3.11")
def test_the_script_runs_the_checkouts_snapfs_from_a_python_without_it(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert subprocess.run([python, "-c", "import snapfs"], capture_output=True, env=env).returncode == 1
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = subprocess.run(["bash", os.path.join(REPO, "deploy", "build-executor-image.sh"), "--no-push",
                        "--no-such-flag"], capture_output=True, text=True,
                       env={**env, "PYTHON": python, "TMPDIR": str(tmp)}, timeout=900)
    assert "No module named" not in r.stderr, r.stderr[-3000:]
    assert (r.returncode, r.stderr.strip().splitlines()[-1]) == (2, "snapfs: unrecognized arguments: --no-such-flag")
    assert os.listdir(tmp) == []  # the wheels and the throwaway builder are removed
