"""`snapfs build` against real registries: push access is checked before the first step (Kaniko's permission
check, skipped with --skip-push-permission-check or --no-push), and a build whose push fails writes no local
output (no OCI layout, no tarball, no digest file)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import pytest

from registry_servers import FAST, TLS_USER, Fault, free_port
from snapfs.builder.pipeline import BuildOptions, build
from snapfs.errors import RegistryError
from snapfs.image.reference import parse_reference
from snapfs.image.registry.client import RegistryOptions
from snapfs.image.registry.credentials import ANONYMOUS
from snapfs.image.transports import OutputOptions, check_destinations

# The step's output (on stdout), not its command line: "42marker" is printed only if the RUN step really ran.
DOCKERFILE = "FROM oci:{layout}:busybox\nRUN echo $((6*7))marker\n"
RAN = "42marker"
WRONG = "Wr0ng-Build-pw-77"


def _context(tmp_path, busybox) -> str:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(layout=busybox[0]))
    return str(ctx)


def _outputs(tmp_path) -> list[str]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return [f"--oci-layout-path={out / 'oci'}", f"--tar-path={out / 'img.tar'}", f"--digest-file={out / 'digest'}",
            f"--image-name-with-digest-file={out / 'names'}", f"--image-name-tag-with-digest-file={out / 'tags'}"]


def snapfs_build(tmp_path, busybox, *args, env=None) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "snapfs", "build", "-c", _context(tmp_path, busybox),
           f"--cache-dir={tmp_path / 'cache'}", *_outputs(tmp_path), *args]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    return p, time.monotonic() - t0


def _wrong_password_config(tmp_path, host) -> dict:
    d = tmp_path / "docker"
    d.mkdir(exist_ok=True)
    auth = base64.b64encode(f"{TLS_USER}:{WRONG}".encode()).decode()
    (d / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return {"DOCKER_CONFIG": str(d)}


def _no_outputs(tmp_path) -> None:
    assert sorted(os.listdir(tmp_path / "out")) == []


def test_wrong_password_fails_before_the_first_step(tls_registry, busybox, tmp_path):
    host = tls_registry.host
    dest = f"{host}/team/app:1"
    env = _wrong_password_config(tmp_path, host)
    p, seconds = snapfs_build(tmp_path, busybox, f"--destination={dest}",
                              f"--registry-certificate={host}={tls_registry.ca}", env=env)
    assert p.returncode == 6, p.stderr
    assert p.stderr.splitlines()[-1] == (f"snapfs: cannot push to {dest} (checked before the first step): "
                                         f"POST https://{host}/v2/team/app/blobs/uploads/: HTTP 401: "
                                         "credentials were rejected (UNAUTHORIZED: authentication required)")
    assert "STEP" not in p.stderr and RAN not in p.stdout + p.stderr and "Traceback" not in p.stderr
    assert WRONG not in p.stderr and env["DOCKER_CONFIG"] not in p.stderr
    assert seconds < 15
    _no_outputs(tmp_path)

    # Kaniko's flag skips the check: the steps run, the push then fails, and still nothing is written.
    for flag in ("--skip-push-permission-check", "--skip-push-permission-check=true"):
        p, _ = snapfs_build(tmp_path, busybox, f"--destination={dest}", flag,
                            f"--registry-certificate={host}={tls_registry.ca}", env=env)
        assert p.returncode == 6, p.stderr
        assert RAN in p.stdout and "checked before the first step" not in p.stderr
        assert "HTTP 401: credentials were rejected" in p.stderr.splitlines()[-1]
        assert WRONG not in p.stderr
        _no_outputs(tmp_path)


def test_unreachable_or_untrusted_destination_fails_fast(tls_registry, busybox, tmp_path):
    closed = f"127.0.0.1:{free_port()}"
    p, seconds = snapfs_build(tmp_path, busybox, f"--destination={closed}/x/y:1", f"--insecure-registry={closed}")
    assert p.returncode == 6, p.stderr
    assert p.stderr.splitlines()[-1].startswith(f"snapfs: cannot push to {closed}/x/y:1 (checked before the first "
                                                f"step): cannot reach registry {closed}: GET http://{closed}/v2/: "
                                                "ConnectError")
    assert "STEP" not in p.stderr and RAN not in p.stdout + p.stderr and seconds < 10
    # A TLS registry whose CA is not trusted (a bare build verifies certificates): named, before any step.
    host = tls_registry.host
    p, seconds = snapfs_build(tmp_path, busybox, f"--destination={host}/x/y:1")
    assert p.returncode == 6, p.stderr
    assert p.stderr.splitlines()[-1] == (f"snapfs: cannot push to {host}/x/y:1 (checked before the first step): "
                                         f"{host}: TLS certificate verify failed: unable to get local issuer "
                                         f"certificate (trust the registry's CA with --registry-certificate "
                                         f"{host}=CA.pem, or skip verification with --skip-tls-verify-registry "
                                         f"{host})")
    assert "STEP" not in p.stderr and seconds < 10
    _no_outputs(tmp_path)


def test_no_push_skips_the_check(busybox, tmp_path):
    closed = f"127.0.0.1:{free_port()}"
    p, _ = snapfs_build(tmp_path, busybox, f"--destination={closed}/x/y:1", "--no-push")
    assert p.returncode == 0, p.stderr
    assert RAN in p.stdout and sorted(os.listdir(tmp_path / "out")) == ["digest", "img.tar", "names", "oci", "tags"]


def test_token_registry_check_needs_push_rights(token_registry, token_creds):
    """With token auth: a push token is fetched, an upload session opened and cancelled (nothing left behind)."""
    proxy = token_registry.proxy
    proxy.reset()
    host = proxy.host
    dest = parse_reference(f"{host}/checked/app:1")
    outputs = OutputOptions(destinations=(dest,))
    registry = RegistryOptions(insecure_registries=(host,), **FAST)
    check_destinations(outputs, registry, credentials=lambda h: token_creds.get(h, ANONYMOUS))
    assert "repository:checked/app:pull,push" in token_registry.issuer.requests[-1]["scope"]
    calls = [(m, p.split("?")[0].rsplit("/", 1)[0], s) for m, p, s, _h in proxy.log if p != "/v2/"]
    # distribution wants the "delete" scope to cancel an upload: the cancel asks for it once and succeeds here
    assert calls[0] == ("POST", "/v2/checked/app/blobs/uploads", 202)
    assert calls[-1] == ("DELETE", "/v2/checked/app/blobs/uploads", 204)
    assert [c for c in calls if c[0] == "POST"] == calls[:1]
    with pytest.raises(RegistryError, match=rf"^cannot push to {dest} \(checked before the first step\): POST "
                                            rf"http://{host}/v2/checked/app/blobs/uploads/: HTTP 401: "
                                            r"authentication required, no credentials configured"):
        check_destinations(outputs, registry, credentials=lambda h: ANONYMOUS)
    check_destinations(OutputOptions(destinations=(dest,), check_push_access=False), registry,
                       credentials=lambda h: ANONYMOUS)
    check_destinations(OutputOptions(destinations=(dest,), no_push=True), registry, credentials=lambda h: ANONYMOUS)


# --------------------------------------------------------------------------- a failed push writes nothing

def test_failed_manifest_put_writes_no_local_output(plain_registry, proxy, busybox, tmp_path):
    """The registry takes every blob and then refuses the manifest (through the fault proxy): the build fails
    with a registry error and leaves no layout, tarball or digest file, in-process and through the CLI."""
    proxy.add(Fault("PUT", "/manifests/", "status", times=1000, status=503))
    out = tmp_path / "out"
    out.mkdir()
    dest = parse_reference(f"{proxy.host}/faults/manifest:1")
    outputs = OutputOptions(destinations=(dest,), tar_path=str(out / "img.tar"), oci_layout_path=str(out / "oci"),
                            digest_file=str(out / "digest"), image_name_with_digest_file=str(out / "names"))
    options = BuildOptions(context=_context(tmp_path, busybox), outputs=outputs, cache_dir=str(tmp_path / "cache"),
                           registry=RegistryOptions(insecure_registries=(proxy.host,), **FAST))
    with pytest.raises(RegistryError, match=rf"^{dest}: PUT http://{proxy.host}/v2/faults/manifest/manifests/1: "
                                            r"HTTP 503 \(INJECTED: fault\)$"):
        build(options)
    assert proxy.count("PUT", "/manifests/") == 1 + FAST.get("request_retries", 4)
    assert proxy.count("PUT", "/blobs/uploads/") >= 2  # the blobs went up: only the manifest failed
    _no_outputs(tmp_path)

    proxy.reset()
    proxy.add(Fault("PUT", "/manifests/", "status", times=1000, status=400))
    p, _ = snapfs_build(tmp_path, busybox, f"--destination={dest}", f"--insecure-registry={proxy.host}")
    assert p.returncode == 6, p.stderr
    assert p.stderr.splitlines()[-1] == (f"snapfs: {dest}: PUT http://{proxy.host}/v2/faults/manifest/manifests/1: "
                                         "HTTP 400 (INJECTED: fault)")
    assert proxy.count("PUT", "/manifests/") == 1
    _no_outputs(tmp_path)

    proxy.reset()  # the same build once the registry takes the manifest: every output, after the push
    p, _ = snapfs_build(tmp_path, busybox, f"--destination={dest}", f"--insecure-registry={proxy.host}")
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["digest", "img.tar", "names", "oci", "tags"]
    assert (tmp_path / "out" / "digest").read_text() == p.stdout.strip().splitlines()[-1]
    assert p.stderr.index(f"pushed {dest.name}@") < p.stderr.index("wrote OCI layout")


def test_a_local_output_that_fails_takes_back_the_ones_written_before_it(busybox, tmp_path):
    """--no-push: the tarball is written, then the layout cannot be (its parent is a file): the build fails and
    the tarball it created is removed again, so a failed build leaves no output; a file that existed stays."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "blocker").write_text("a file where the layout's parent should be")
    outputs = OutputOptions(no_push=True, tar_path=str(out / "img.tar"),
                            oci_layout_path=str(out / "blocker" / "oci"), digest_file=str(out / "digest"))
    options = BuildOptions(context=_context(tmp_path, busybox), outputs=outputs, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(OSError):
        build(options)
    assert sorted(os.listdir(out)) == ["blocker"]
    (out / "img.tar").write_bytes(b"an older archive")
    with pytest.raises(OSError):
        build(options)
    assert (out / "img.tar").exists()  # replaced atomically by the new archive, never deleted
