"""Honest platforms: a base for another platform than asked is refused (or, forced, used and said), an index
gives the platform asked for, and RUN steps for a foreign architecture need binfmt emulation.

The bases are made here from the busybox fixture: the same (amd64) binaries labelled arm64, and an index of an
amd64 and an arm64 image whose configs differ, so which one was picked shows in the built config.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from imagekit import image_of
from snapfs.image.layout import read_layout, write_layout
from snapfs.platforms import Platform
from snapfs.run.emulation import find_handler

ARM64_EMULATED = find_handler("arm64") is not None  # this machine's binfmt_misc (none on the reference machines)


@pytest.fixture(scope="module")
def bases(busybox_layout, tmp_path_factory):
    d = tmp_path_factory.mktemp("platform-bases")
    layers = list(read_layout(busybox_layout, ref_name="busybox").layers)
    arm = str(d / "arm64-only")
    write_layout(arm, image_of(layers, platform=Platform("linux", "arm64"), cmd=["arm64-only"]))
    multi = str(d / "multi")
    for arch in ("amd64", "arm64"):
        write_layout(multi, image_of(layers, platform=Platform("linux", arch), cmd=[f"made-for-{arch}"]))
    return {"amd64": f"oci:{busybox_layout}:busybox", "arm64": f"oci:{arm}", "multi": f"oci:{multi}"}


def snapfs_build(tmp_path, dockerfile: str, *args: str):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "snapfs", "build", f"--context=dir://{ctx}", "--no-push",
           f"--oci-layout-path={out}", f"--cache-dir={tmp_path / 'cache'}", *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    config = json.loads(read_layout(str(out)).config_bytes) if r.returncode == 0 else None
    return r, config


def test_a_single_platform_base_for_another_platform_is_refused(tmp_path, bases):
    r, _ = snapfs_build(tmp_path, f"FROM {bases['amd64']}\nRUN echo hi\n", "--custom-platform=linux/arm64")
    assert r.returncode == 3
    assert r.stderr.splitlines()[-1] == (
        f"snapfs: base image {bases['amd64']} is for linux/amd64, not the requested linux/arm64 (a single-platform "
        "image: no index to pick another from); --platform-mismatch=warn uses it anyway")
    assert "STEP 1/" not in r.stderr  # before any step
    assert not os.path.exists(tmp_path / "out")


def test_from_platform_is_checked_too(tmp_path, bases):
    r, _ = snapfs_build(tmp_path, f"FROM --platform=linux/arm64 {bases['amd64']}\nCOPY Dockerfile /\n")
    assert r.returncode == 3 and "is for linux/amd64, not the requested linux/arm64" in r.stderr


def test_forced_mismatch_warns_and_keeps_the_base_platform(tmp_path, bases):
    r, config = snapfs_build(tmp_path, f"FROM {bases['amd64']}\nRUN echo ran > /ran\n",
                             "--custom-platform=linux/arm64", "--platform-mismatch=warn")
    assert r.returncode == 0, r.stderr
    assert (f"base image {bases['amd64']} is for linux/amd64, not the requested linux/arm64 (a single-platform "
            "image: no index to pick another from); using it as it is (--platform-mismatch=warn)") in r.stderr
    # The RUN step ran the base's own (amd64) binaries natively, and the image says what it holds.
    assert (config["os"], config["architecture"]) == ("linux", "amd64")


def test_an_index_gives_the_platform_asked_for(tmp_path, bases):
    for arch in ("arm64", "amd64"):
        r, config = snapfs_build(tmp_path, f"FROM {bases['multi']}\nCOPY Dockerfile /\n",
                                 f"--custom-platform=linux/{arch}")
        assert r.returncode == 0, r.stderr
        assert config["architecture"] == arch and config["config"]["Cmd"] == [f"made-for-{arch}"]
    r, _ = snapfs_build(tmp_path, f"FROM {bases['multi']}\n", "--custom-platform=linux/s390x")
    assert r.returncode == 3 and "none for linux/s390x" in r.stderr.splitlines()[-1]


@pytest.mark.skipif(ARM64_EMULATED, reason="this machine emulates arm64: the refusal cannot happen here")
def test_run_for_a_foreign_architecture_without_emulation_is_refused_before_any_step(tmp_path, bases):
    for base, args in ((bases["arm64"], ()), (bases["multi"], ("--custom-platform=linux/arm64",))):
        r, _ = snapfs_build(tmp_path, f"FROM {base} AS build\nCOPY Dockerfile /\nRUN echo hi\n", *args)
        assert r.returncode == 8, r.stderr
        assert r.stderr.splitlines()[-1] == (
            "snapfs: stage build: RUN steps for linux/arm64 need emulation on this amd64 host, and "
            "/proc/sys/fs/binfmt_misc has no enabled handler for aarch64 (install one, e.g. `docker run "
            "--privileged --rm tonistiigi/binfmt --install arm64` or Debian's qemu-user-binfmt)")
        assert "STEP 1/" not in r.stderr


def test_a_foreign_stage_without_run_needs_no_emulation(tmp_path, bases):
    r, config = snapfs_build(tmp_path, f"FROM {bases['arm64']}\nCOPY Dockerfile /\nENV A=1\n")
    assert r.returncode == 0, r.stderr
    assert config["architecture"] == "arm64"
