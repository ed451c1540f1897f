"""Exit codes of `snapfs build` stay apart: a RUN command's own status never poses as one of snapfs's categories.

A failed RUN exits 9 whatever its status (the status is in the last line); a registry failure exits 6; an
interrupted build 128 + signal. Before, the RUN's status was passed through, so `RUN exit 6` looked like a
registry error and a RUN killed by SIGTERM like an interrupted build.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from registry_servers import free_port

from snapfs.errors import RegistryError, RunFailedError


def _build(registry, tmp_path, dockerfile: str, *args: str) -> subprocess.CompletedProcess:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    cmd = [sys.executable, "-m", "snapfs", "build", "-c", str(ctx), f"--registry-map=docker.io={registry.host}",
           f"--insecure-registry={registry.host}", "--skip-default-registry-fallback",
           f"--cache-dir={tmp_path / 'cache'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))


@pytest.mark.parametrize("run, status", [("exit 6", 6), ("exit 143", 143), ("kill -TERM $$", 143),
                                         ("exit 2", 2), ("exit 1", 1)])
def test_a_failed_run_exits_9_and_names_its_status(registry, tmp_path, run, status):
    r = _build(registry, tmp_path, f"FROM busybox\nRUN {run}\n", "--no-push")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == RunFailedError.exit_code == 9, r.stderr
    assert last.startswith("snapfs: step 2/2 (RUN at Dockerfile:2): ") and last.endswith(
        f"returned a non-zero code: {status}"), last


def test_a_registry_failure_exits_6_not_like_a_run(registry, tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: the push check fails before the first step
    r = _build(registry, tmp_path, "FROM busybox\nRUN exit 6\n", f"--destination={dead}/team/app:1",
               f"--insecure-registry={dead}")
    assert r.returncode == RegistryError.exit_code == 6, r.stderr
    assert "non-zero code" not in r.stderr and f"cannot push to {dead}/team/app:1" in r.stderr
