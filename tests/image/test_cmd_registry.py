"""``snapfs pull`` / ``snapfs push``: end to end through the CLI, one-line errors without tracebacks."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from registry_servers import TLS_USER, skopeo
from snapfs.cli.main import main
from snapfs.image.layout import read_layout, validate_image


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapfs", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_pull_then_push_cli(plain_registry, tmp_path, busybox):
    host = plain_registry.host
    out = str(tmp_path / "oci")
    p = run("pull", f"{host}/library/busybox:1", "--oci-layout", out, "--insecure-registry", host,
            "--platform", "linux/amd64")
    assert p.returncode == 0, p.stderr
    digest = p.stdout.strip()
    img = read_layout(out, ref_name="1")
    assert img.digest == digest == busybox[1].digest
    validate_image(img)
    json.loads(skopeo("inspect", f"oci:{out}:1").stdout)
    p = run("push", f"{out}:1", f"{host}/cli/app:a", f"{host}/cli/app:b", "--insecure-registry", host,
            "--digest-file", str(tmp_path / "digest"), "--chunk-size", "64k")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == digest == (tmp_path / "digest").read_text()
    for tag in ("a", "b"):
        info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{host}/cli/app:{tag}").stdout)
        assert info["Digest"] == digest
    # A docker archive made by skopeo pushes too.
    tar = str(tmp_path / "img.tar")
    skopeo("copy", f"oci:{out}:1", f"docker-archive:{tar}:x/y:z")
    p = run("push", tar, f"{host}/cli/fromtar:1", "--insecure-registry", host)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("args,code,message", [
    (["pull", "Bad//Ref", "--oci-layout", "x"], 3,
     "snapfs: invalid image reference 'Bad//Ref': repository must be lowercase letters, digits and separators\n"),
    (["pull", "busybox", "--oci-layout", "x", "--platform", "linux"], 2,
     'snapfs: invalid platform "linux": expected os/arch[/variant]\n'),
    (["push", "/nonexistent/dir", "127.0.0.1:1/x:y"], 3, "snapfs: /nonexistent/dir: OCI layout directory does not exist\n"),
    (["pull", "x", "--oci-layout", "o", "--registry-certificate", "nohost"], 2,
     "snapfs: --registry-certificate expects REGISTRY=VALUE, got 'nohost'\n"),
], ids=["bad-ref", "bad-platform", "missing-layout", "bad-certificate-flag"])
def test_cli_errors_are_one_line(args, code, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == code
    assert capsys.readouterr().err == message


def test_cli_unreachable_and_bad_credentials_no_traceback(tls_registry, tmp_path):
    port_closed = "127.0.0.1:1"
    p = run("pull", f"{port_closed}/x:y", "--oci-layout", str(tmp_path / "o"), "--insecure-registry", port_closed)
    assert p.returncode == 6
    assert p.stderr.startswith(f"snapfs: cannot reach registry {port_closed}: GET http://{port_closed}/v2/: "
                               "ConnectError") and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    secret = "Very-Secret-Wrong-pw"
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    auth = base64.b64encode(f"{TLS_USER}:{secret}".encode()).decode()
    (cfg / "config.json").write_text(json.dumps({"auths": {tls_registry.host: {"auth": auth}}}))
    p = run("pull", f"{tls_registry.host}/library/busybox:1", "--oci-layout", str(tmp_path / "o"),
            "--registry-certificate", f"{tls_registry.host}={tls_registry.ca}", "-vv", env={"DOCKER_CONFIG": str(cfg)})
    assert p.returncode == 6
    assert p.stderr.splitlines()[-1] == (f"snapfs: {tls_registry.host}/library/busybox:1: HEAD https://"
                                         f"{tls_registry.host}/v2/library/busybox/manifests/1: HTTP 401: "
                                         "credentials were rejected")
    assert secret not in p.stderr and auth not in p.stderr and "Traceback" not in p.stderr


def test_pull_cache_dir_is_the_builds_base_cache(plain_registry, tmp_path):
    """`snapfs pull --cache-dir D` fills the store `snapfs build --cache-dir D` reads bases from (D/blobs)."""
    import subprocess
    import sys

    from snapfs.image.blobstore import BlobStore
    from snapfs.image.layout import read_layout

    cache = tmp_path / "cache"
    r = subprocess.run([sys.executable, "-m", "snapfs", "pull", f"{plain_registry.host}/library/busybox:1",
                        "--oci-layout", str(tmp_path / "out"), "--cache-dir", str(cache),
                        f"--insecure-registry={plain_registry.host}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    image = read_layout(str(tmp_path / "out"))
    assert all(BlobStore(str(cache / "blobs")).has(layer.digest) for layer in image.layers)
