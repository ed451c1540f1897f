"""The layer cache keeps no credentials: an ``ADD http://user:password@...`` (with ``--checksum``) and a RUN with a
URL carrying a password are cached in an ``oci:`` cache, and the password reaches no entry (configs, manifests,
layers decompressed), no ``--cache-report`` and no output; the steps still hit on a rebuild, and a RUN whose URL
credentials changed runs again (what it fetches may depend on them)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "context"))
from context_servers import BasicAuthFileHandler, HTTPServerThread  # noqa: E402
from tarkit import every_byte  # noqa: E402


PASSWORD = "pa55-Cache-never-seen"
OTHER = "other-Cache-pa55"
DATA = b"downloaded with credentials\n"


@pytest.fixture
def files(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "f.txt").write_bytes(DATA)
    srv = HTTPServerThread(BasicAuthFileHandler, root=str(root), user="ci", password=PASSWORD, seen=[])
    try:
        yield srv.port
    finally:
        srv.stop()


def _build(registry, tmp_path, dockerfile: str, n: int) -> dict:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    report = tmp_path / f"report{n}.json"
    r = subprocess.run([sys.executable, "-m", "snapfs", "build", f"--context=dir://{ctx}", "--no-push",
                        f"--oci-layout-path={tmp_path / f'out{n}'}", f"--registry-map=docker.io={registry.host}",
                        f"--insecure-registry={registry.host}", "--skip-default-registry-fallback",
                        f"--cache-dir={tmp_path / 'cache'}", "--cache", "--cache-copy-layers",
                        f"--cache-repo=oci:{tmp_path / 'layer-cache'}", f"--cache-report={report}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for secret in (PASSWORD, OTHER):
        assert secret not in r.stdout + r.stderr
        assert secret not in report.read_text()
    return {row["instruction"].split()[0]: row for row in json.loads(report.read_text())["steps"]}


def test_cache_entries_keep_no_url_credentials(registry, tmp_path, files):
    url = f"http://ci:{PASSWORD}@127.0.0.1:{files}/f.txt"
    checksum = "sha256:" + hashlib.sha256(DATA).hexdigest()
    dockerfile = (f"FROM busybox\nADD --checksum={checksum} {url} /dst/\n"
                  f"RUN echo mirror {url} > /dev/null; cat /dst/f.txt > /copy\n")
    first = _build(registry, tmp_path, dockerfile, 1)
    assert first["ADD"]["result"] == first["RUN"]["result"] == "miss"
    cached = every_byte(tmp_path / "layer-cache")
    assert DATA in cached  # the ADD's layer is in the cache
    assert PASSWORD.encode() not in cached
    assert b"http://***@127.0.0.1" in cached  # the URLs are there, redacted

    again = _build(registry, tmp_path, dockerfile, 2)
    assert again["ADD"]["result"] == again["RUN"]["result"] == "hit", again

    other = dockerfile.replace(f"echo mirror {url}", f"echo mirror {url.replace(PASSWORD, OTHER)}")
    changed = _build(registry, tmp_path, other, 3)
    assert changed["ADD"]["result"] == "hit", changed
    assert changed["RUN"]["result"] == "miss", changed
    assert changed["RUN"]["reason"] == "credentials in URLs changed", changed
    cached = every_byte(tmp_path / "layer-cache")
    assert PASSWORD.encode() not in cached and OTHER.encode() not in cached
