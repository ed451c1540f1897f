"""``--dockerfile https://user:password@host/Dockerfile`` with a local directory context: fetched with the URL's
credentials (Basic auth), over https verified against ``SSL_CERT_FILE`` or plain http; every message shows the URL
redacted. Real servers on loopback (tests/context/context_servers.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from context_servers import BasicAuthFileHandler, HTTPServerThread

PASSWORD = "s3cr3t-Pa55word"
DOCKERFILE = 'FROM scratch\nLABEL fetched="over-{scheme}"\n'


def serve(scheme: str, tmp_path, tls):
    root = tmp_path / "www"
    root.mkdir()
    (root / "Dockerfile").write_text(DOCKERFILE.format(scheme=scheme))
    srv = HTTPServerThread(BasicAuthFileHandler, tls=tls if scheme == "https" else None, root=str(root),
                           password=PASSWORD, seen=[])
    try:
        yield scheme, srv.port, srv.server.RequestHandlerClass.seen
    finally:
        srv.stop()


@pytest.fixture(params=["https", "http"])
def server(request, tmp_path, tls):
    yield from serve(request.param, tmp_path, tls)


@pytest.fixture
def tls_server(tmp_path, tls):
    yield from serve("https", tmp_path, tls)


def build(tmp_path, url: str, *, ca: str | None):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text("FROM scratch\nLABEL fetched=no\n")  # the local one must not be used
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "HTTPS_PROXY", "HTTP_PROXY")}
    if ca:
        env["SSL_CERT_FILE"] = ca
    r = subprocess.run([sys.executable, "-m", "snapfs", "build", f"--context=dir://{ctx}", f"--dockerfile={url}",
                        "--no-push", f"--oci-layout-path={out}", f"--cache-dir={tmp_path / 'cache'}"],
                       capture_output=True, text=True, env=env)
    assert PASSWORD not in r.stdout + r.stderr and "Traceback" not in r.stderr, r.stderr
    return r, out


def labels(out) -> dict:
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    return json.loads((out / "blobs/sha256" / manifest["config"]["digest"][7:]).read_text())["config"]["Labels"]


def test_dockerfile_url_with_credentials_is_fetched_with_them(tmp_path, server, tls):
    scheme, port, seen = server
    r, out = build(tmp_path, f"{scheme}://snapfs:{PASSWORD}@127.0.0.1:{port}/Dockerfile", ca=tls["ca"])
    assert r.returncode == 0, r.stderr
    assert labels(out) == {"fetched": f"over-{scheme}"}
    assert seen == ["GET /Dockerfile HTTP/1.1"] * len(seen) and seen
    assert f"{scheme}://***@127.0.0.1:{port}/Dockerfile" in r.stderr  # the download's progress line


def test_wrong_password_is_one_line_with_the_url_redacted(tmp_path, server, tls):
    scheme, port, _ = server
    url = f"{scheme}://snapfs:wrong-{PASSWORD}@127.0.0.1:{port}/Dockerfile"
    r, out = build(tmp_path, url, ca=tls["ca"])
    assert r.returncode == 3 and not out.exists()
    assert r.stderr.strip().splitlines()[-1] == \
        f"snapfs: {scheme}://***@127.0.0.1:{port}/Dockerfile: access denied (HTTP 401 Unauthorized)"


def test_signed_query_and_missing_file_are_redacted(tmp_path, server, tls):
    scheme, port, _ = server
    url = f"{scheme}://snapfs:{PASSWORD}@127.0.0.1:{port}/nope?X-Amz-Signature={PASSWORD}&X-Amz-Date=1"
    r, _ = build(tmp_path, url, ca=tls["ca"])
    assert r.returncode == 3
    assert r.stderr.strip().splitlines()[-1] == (f"snapfs: {scheme}://***@127.0.0.1:{port}/nope?"
                                                 "X-Amz-Signature=***&X-Amz-Date=***: not found (HTTP 404)")


def test_https_is_verified_and_the_failure_names_the_redacted_url(tmp_path, tls_server):
    _, port, seen = tls_server
    r, out = build(tmp_path, f"https://snapfs:{PASSWORD}@127.0.0.1:{port}/Dockerfile", ca=None)
    assert r.returncode == 3 and not out.exists()
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"snapfs: https://***@127.0.0.1:{port}/Dockerfile: download failed: ")
    assert "CERTIFICATE_VERIFY_FAILED" in last
    assert seen == []  # no request (and so no credentials) reached the unverified server
