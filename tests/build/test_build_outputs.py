"""`snapfs build` as a Kaniko Job runs it: CLI flags, pushes to a real registry, local outputs, digest files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from registry_servers import skopeo

DF = "FROM busybox\nARG V=1\nRUN echo \"v$V\" > /version\nCOPY app.txt /app/\nCMD [\"cat\", \"/version\"]\n"


@pytest.fixture
def ctx(tmp_path):
    d = tmp_path / "ctx"
    d.mkdir()
    (d / "Dockerfile").write_text(DF)
    (d / "app.txt").write_text("app")
    return d


def snapfs_build(registry, tmp_path, *args, env=None):
    cmd = [sys.executable, "-m", "snapfs", "build", f"--registry-map=docker.io={registry.host}",
           f"--insecure-registry={registry.host}", "--skip-default-registry-fallback",
           f"--cache-dir={tmp_path / 'cache'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_push_with_kaniko_flags_then_pull_back(registry, ctx, tmp_path):
    dest = f"{registry.host}/team/app"
    r = snapfs_build(registry, tmp_path, f"--context=dir://{ctx}", "--dockerfile=Dockerfile",
                     f"--destination={dest}:1.0", f"--destination={dest}:latest", "--build-arg=V=7",
                     "--label=org.opencontainers.image.source=https://example.invalid/app",
                     f"--digest-file={tmp_path / 'digest'}",
                     f"--image-name-with-digest-file={tmp_path / 'names'}",
                     f"--image-name-tag-with-digest-file={tmp_path / 'tags'}", "--reproducible=true",
                     "--cache=false", "--cleanup")
    assert r.returncode == 0, r.stderr
    digest = (tmp_path / "digest").read_text()
    assert r.stdout.strip() == digest and digest.startswith("sha256:")
    assert (tmp_path / "names").read_text() == f"{dest}@{digest}\n{dest}@{digest}\n"
    assert (tmp_path / "tags").read_text() == f"{dest}:1.0@{digest}\n{dest}:latest@{digest}\n"
    for tag in ("1.0", "latest"):
        info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{dest}:{tag}").stdout)
        assert info["Digest"] == digest
        assert info["Labels"] == {"org.opencontainers.image.source": "https://example.invalid/app"}
    out = tmp_path / "pulled"
    skopeo("copy", "--src-tls-verify=false", f"docker://{dest}:1.0", f"oci:{out}:x")
    assert "STEP 3/5: RUN echo \"v$V\" > /version" in r.stderr and "built sha256:" in r.stderr


def test_local_outputs_tarball_layout_docker_format_zstd(registry, ctx, tmp_path):
    r = snapfs_build(registry, tmp_path, "-c", str(ctx), "--no-push", f"--tar-path={tmp_path / 'img.tar'}",
                     f"--oci-layout-path={tmp_path / 'oci'}", "--image-format=docker",
                     f"--benchmark-file={tmp_path / 'bench.json'}", "--log-format=json")
    assert r.returncode == 0, r.stderr
    info = json.loads(skopeo("inspect", f"docker-archive:{tmp_path / 'img.tar'}").stdout)
    raw = json.loads(skopeo("inspect", "--raw", f"oci:{tmp_path / 'oci'}").stdout)
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert {l["mediaType"] for l in raw["layers"]} == {"application/vnd.docker.image.rootfs.diff.tar.gzip"}
    assert len(info["Layers"]) == 3
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert [s["instruction"].split()[0] for s in bench["steps"]] == ["ARG", "RUN", "COPY", "CMD"]
    assert all(json.loads(line)["level"] in ("info", "warning") for line in r.stderr.splitlines() if line)

    # A scratch stage takes the requested platform (a single-arch base keeps its own, as in BuildKit).
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY app.txt /\n")
    r = snapfs_build(registry, tmp_path, "-c", str(ctx), "--no-push", f"--oci-layout-path={tmp_path / 'oci-z'}",
                     "--compression=zstd", "--compression-level=9", "--custom-platform=linux/arm64/v8")
    assert r.returncode == 0, r.stderr
    raw = json.loads(skopeo("inspect", "--raw", f"oci:{tmp_path / 'oci-z'}").stdout)
    assert raw["layers"][-1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    cfg = json.loads(skopeo("inspect", "--config", f"oci:{tmp_path / 'oci-z'}").stdout)
    assert (cfg["os"], cfg["architecture"], cfg.get("variant")) == ("linux", "arm64", "v8")


def test_failed_build_leaves_no_output_and_no_tag(registry, ctx, tmp_path):
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo partial > /p\nRUN false\n")
    dest = f"{registry.host}/team/broken:1"
    r = snapfs_build(registry, tmp_path, "-c", str(ctx), f"--destination={dest}",
                     f"--oci-layout-path={tmp_path / 'oci'}", f"--tar-path={tmp_path / 'img.tar'}",
                     f"--digest-file={tmp_path / 'digest'}")
    assert r.returncode == 9 and "step 3/3 (RUN at Dockerfile:3)" in r.stderr and "non-zero code: 1" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "oci").exists() and not (tmp_path / "img.tar").exists()
    assert not (tmp_path / "digest").exists()
    assert skopeo("inspect", "--tls-verify=false", f"docker://{dest}", check=False).returncode != 0


@pytest.mark.parametrize("args, message", [
    (["--cache=true", "--no-push"], "--cache needs --cache-repo (a registry repository or oci:DIR)"),
    (["--cache", "--cache-repo=docker-archive:/x.tar", "--no-push"], "--cache-repo 'docker-archive:/x.tar': use a "
                                                                     "registry repository or oci:DIR"),
    (["--cache", "--cache-ttl=soon"], "--cache-ttl 'soon': expected a duration such as 336h"),
    (["--no-push=maybe"], "--no-push: expected true or false, got 'maybe'"),
    (["--snapshot-mode=fast"], "invalid choice: 'fast'"),
    # Checked before any work: the context is not even read (it used to fail after the first step's snapshot).
    (["--no-push", "--compression-level=99"], "snapfs: gzip level must be 0-9, got 99"),
    (["--no-push", "--compression=zstd", "--compression-level=0"], "snapfs: zstd level must be 1-22, got 0"),
    ([], "no output: give --destination, --tar-path or --oci-layout-path (or --no-push)"),
])
def test_bad_flags_are_refused_clearly(registry, ctx, tmp_path, args, message):
    extra = [] if not args or args[0].startswith("--no-push") else []
    r = snapfs_build(registry, tmp_path, "-c", str(ctx), *args, *extra)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr


def test_options_are_checked_before_any_work(registry, tmp_path):
    """A bad --compression-level is refused before the context is read (not after the first step)."""
    r = snapfs_build(registry, tmp_path, "-c", str(tmp_path / "nope"), "--no-push", "--compression-level=99")
    assert r.returncode != 0 and r.stderr.strip() == "snapfs: gzip level must be 0-9, got 99"


def test_missing_context_and_dockerfile(registry, tmp_path):
    r = snapfs_build(registry, tmp_path, "-c", str(tmp_path / "nope"), "--no-push")
    assert r.returncode == 3 and f"context {tmp_path / 'nope'}: no such directory" in r.stderr
    (tmp_path / "empty").mkdir()
    r = snapfs_build(registry, tmp_path, "-c", str(tmp_path / "empty"), "--no-push")
    assert r.returncode == 3 and "Dockerfile: Dockerfile not found in the context" in r.stderr


def test_a_full_disk_is_one_line_naming_the_step(registry, ctx, tmp_path):
    """A filesystem failure inside a step (here: a 64 KiB tmpfs as scratch space) is no traceback."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        (ctx / "big.bin").write_bytes(os.urandom(1 << 20))
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY big.bin /\n")
        r = snapfs_build(registry, tmp_path, "-c", str(ctx), "--no-push", f"--oci-layout-path={tmp_path / 'oci'}",
                         env={"TMPDIR": str(small)})
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert "No space left on device" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("snapfs: ")
        assert not (tmp_path / "oci").exists()
    finally:
        subprocess.run(["umount", str(small)], check=True)
