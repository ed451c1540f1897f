"""``ADD http://user:password@host/...`` end to end: the download uses the credentials (a real server that demands
Basic auth), and the password reaches nothing the build prints or writes: stdout, stderr, the config, the
history, any blob of the OCI layout (layers scanned decompressed). Signed query strings the same."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "context"))
from context_servers import BasicAuthFileHandler, HTTPServerThread  # noqa: E402
from tarkit import every_byte  # noqa: E402


PASSWORD = "pa55-Word-never-seen"
SIGNATURE = "f00dSIGNATUREbabe"


@pytest.fixture
def files(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "f.txt").write_text("downloaded with credentials\n")
    srv = HTTPServerThread(BasicAuthFileHandler, root=str(root), user="ci", password=PASSWORD, seen=[])
    try:
        yield srv.port
    finally:
        srv.stop()


def build(registry, tmp_path, dockerfile: str):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    out = tmp_path / "oci"
    r = subprocess.run([sys.executable, "-m", "snapfs", "build", f"--context=dir://{ctx}", "--no-push",
                        f"--oci-layout-path={out}", f"--registry-map=docker.io={registry.host}",
                        f"--insecure-registry={registry.host}", "--skip-default-registry-fallback",
                        f"--cache-dir={tmp_path / 'cache'}"], capture_output=True, text=True)
    for secret in (PASSWORD, SIGNATURE):
        assert secret not in r.stdout + r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    return r, out


def image_config(out) -> dict:
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    return json.loads((out / "blobs/sha256" / manifest["config"]["digest"][7:]).read_text())


def test_add_url_credentials_and_signatures_reach_no_output(registry, tmp_path, files):
    port = files
    r, out = build(registry, tmp_path,
                   f"FROM busybox\nADD http://ci:{PASSWORD}@127.0.0.1:{port}/f.txt /dst/\n"
                   f"ADD http://ci:{PASSWORD}@127.0.0.1:{port}/f.txt?X-Amz-Signature={SIGNATURE}&v=1 /signed/\n"
                   "RUN cat /dst/f.txt /signed/f.txt > /both\n")
    assert r.returncode == 0, r.stderr
    blob = every_byte(out)
    assert b"downloaded with credentials" in blob  # the credentials did their job: the file is in a layer
    for secret in (PASSWORD, SIGNATURE):
        assert secret.encode() not in blob
    history = [h["created_by"] for h in image_config(out)["history"] if "ADD" in h.get("created_by", "")]
    assert history == [f"ADD http://***@127.0.0.1:{port}/f.txt /dst/ # buildkit",
                       f"ADD http://***@127.0.0.1:{port}/f.txt?X-Amz-Signature=***&v=*** /signed/ # buildkit"]
    assert f"STEP 2/4: ADD http://***@127.0.0.1:{port}/f.txt /dst/" in r.stderr


def test_add_url_failures_show_the_url_redacted(registry, tmp_path, files):
    port = files
    r, out = build(registry, tmp_path, f"FROM busybox\nADD http://ci:wrong-{PASSWORD}@127.0.0.1:{port}/f.txt /d/\n")
    assert r.returncode == 8 and not out.exists()
    assert r.stderr.strip().splitlines()[-1] == (
        f"snapfs: step 2/2 (ADD at Dockerfile:2): ADD http://***@127.0.0.1:{port}/f.txt: HTTP 401")


def test_add_git_url_failure_shows_the_url_redacted(registry, tmp_path, files):
    port = files  # not a git server: the clone fails and git's own message quotes the URL
    r, _ = build(registry, tmp_path, f"FROM busybox\nADD http://ci:{PASSWORD}@127.0.0.1:{port}/r.git /src/\n")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 8
    assert last.startswith(f"snapfs: step 2/2 (ADD at Dockerfile:2): ADD http://***@127.0.0.1:{port}/r.git: "
                           "git clone failed: ")


def test_copy_of_a_url_is_refused_with_the_url_redacted(registry, tmp_path, files):
    port = files
    r, _ = build(registry, tmp_path, f"FROM busybox\nCOPY http://ci:{PASSWORD}@127.0.0.1:{port}/f.txt /d/\n")
    assert r.returncode == 8
    assert r.stderr.strip().splitlines()[-1] == (
        f"snapfs: step 2/2 (COPY at Dockerfile:2): source can't be a URL for COPY: "
        f"http://***@127.0.0.1:{port}/f.txt (use ADD)")
