"""VOLUME directories and the FROM scratch / PATH config, as buildah and Kaniko (issue 11, items 4 and 5).

The reference is buildah 1.28 (``buildah bud --layers --isolation chroot``, as the corpus harness runs it),
checked for real in the last test. A RUN creates every missing directory of the config's Volumes (the stage's
VOLUME lines and the base image's; root, 0755, parents too, whatever the USER; symlinks followed inside the root;
an existing path left alone), in the RUN's layer: the classic builder and buildah make them as the RUN's mount
points. A VOLUME with no RUN after it changes only the config. A ``FROM scratch`` config has the default PATH and
no WorkingDir; a base without PATH gets the default one after its own variables.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest
from registry_servers import need
from parity import compare_trees, tree

from snapfs import apply_layers
from snapfs.builder.imageconfig import DEFAULT_PATH
from snapfs.errors import BuildError
from snapfs.image.layout import read_layout, write_layout
from snapfs.image.model import with_config


def info(built, p: str) -> tuple[str, int, int, int]:
    st = os.lstat(built.path(p))
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "file"
    return kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def entries(built) -> list[tuple[str, bool]]:
    return [(h["created_by"], bool(h.get("empty_layer"))) for h in built.config["history"]]


def _variant(busybox_layout: str, out: str, inner: dict) -> str:
    """busybox with its config's Env dropped and ``inner`` merged in, as a local OCI layout base."""
    img = read_layout(busybox_layout, ref_name="busybox")
    cfg = img.config()
    cfg["config"] = {k: v for k, v in cfg["config"].items() if k != "Env"} | inner
    write_layout(out, with_config(img, cfg), ref_name="b")
    return f"oci:{out}:b"


def test_run_after_volume_creates_its_missing_directories(run_build):
    b = run_build("FROM busybox\n"
                  "RUN mkdir -p /pre && echo before > /pre/a && ln -s /tmp /lnk && ln -s /nowhere/x /dangling"
                  " && echo f > /file && mkdir -m 0700 /exists && chown 1000:1000 /exists\n"
                  "USER app\n"
                  "VOLUME /pre /v/new data /lnk/sub /dangling /file /exists\n"
                  "RUN test -d /v/new && test -d /tmp/sub\n")
    # created: root-owned 0755 whatever the USER, parents too, relative paths from "/", through symlinks
    for p in ("/v", "/v/new", "/data", "/tmp/sub", "/nowhere", "/nowhere/x"):
        assert info(b, p) == ("dir", 0o755, 0, 0), p
    # existing paths are left as they are, with what was written to them before the VOLUME line
    assert b.read("/pre/a") == b"before\n" and b.read("/file") == b"f\n"
    assert info(b, "/exists") == ("dir", 0o700, 1000, 1000)
    assert os.readlink(b.path("/lnk")) == "/tmp" and os.readlink(b.path("/dangling")) == "/nowhere/x"
    assert b.config["config"]["Volumes"] == {p: {} for p in
                                             ("/pre", "/v/new", "data", "/lnk/sub", "/dangling", "/file", "/exists")}
    assert entries(b)[-2:] == [("VOLUME [/pre /v/new data /lnk/sub /dangling /file /exists]", True),
                               ("RUN /bin/sh -c test -d /v/new && test -d /tmp/sub # buildkit", False)]
    assert len(b.config["rootfs"]["diff_ids"]) == 3  # busybox, the two RUNs (the second holds the directories)


def test_volume_directories_without_an_overlay_root(run_build):
    b = run_build("FROM busybox\nVOLUME /v/a\nRUN true\n", isolation="none")  # a plain stage root, walked in full
    assert info(b, "/v/a") == ("dir", 0o755, 0, 0)
    assert len(b.config["rootfs"]["diff_ids"]) == 2


def test_volume_without_a_run_after_changes_only_the_config(run_build):
    b = run_build("FROM busybox\nVOLUME /data\nCOPY f /g\nVOLUME /tmp /last\n", {"f": "F"})
    assert not os.path.lexists(b.path("/data")) and not os.path.lexists(b.path("/last"))
    assert [e for e in entries(b) if e[0].startswith("VOLUME")] == [("VOLUME [/data]", True),
                                                                    ("VOLUME [/tmp /last]", True)]
    assert len(b.config["rootfs"]["diff_ids"]) == 2


def test_base_image_volumes_are_created_by_the_first_run(run_build, busybox_layout, tmp_path):
    base = _variant(busybox_layout, str(tmp_path / "volbase"), {"Volumes": {"/basevol/x": {}}})
    b = run_build(f"FROM {base}\nRUN true\n")
    assert info(b, "/basevol") == info(b, "/basevol/x") == ("dir", 0o755, 0, 0)


def test_volume_content_copied_or_written_later_is_kept(run_build):
    """The decision for writes after the VOLUME line: kept (BuildKit). buildah, Kaniko and Docker's classic
    builder drop what a later RUN writes there (docs/migrating-from-kaniko.md, Behaviour)."""
    b = run_build("FROM busybox\nVOLUME /app/data\nCOPY f /app/data/f\nRUN echo run > /app/data/r\n", {"f": "F"})
    assert b.read("/app/data/f") == b"F" and b.read("/app/data/r") == b"run\n"


def test_volume_with_single_snapshot(run_build):
    b = run_build("FROM busybox\nVOLUME /a/b\nRUN true\nLABEL x=1\n", single_snapshot=True)
    assert info(b, "/a/b") == ("dir", 0o755, 0, 0)
    assert len(b.config["rootfs"]["diff_ids"]) == 2


def test_volume_below_a_file_names_the_step(run_build):
    with pytest.raises(BuildError) as exc:
        run_build("FROM busybox\nRUN echo x > /f\nVOLUME /f/sub\nRUN true\n")
    assert str(exc.value) == ("step 4/4 (RUN at Dockerfile:4): cannot create the directory of VOLUME /f/sub: "
                              "a parent is not a directory")


def test_from_scratch_config_has_default_path_and_no_workdir(run_build):
    b = run_build("FROM scratch\nCOPY f /f\n", {"f": "F"})
    c = b.config["config"]
    assert c["Env"] == [f"PATH={DEFAULT_PATH}"]
    assert not c.get("WorkingDir")
    # WORKDIR still resolves relative paths from "/" when none was set
    b = run_build("FROM scratch\nWORKDIR rel\nCOPY f ./\n", {"f": "F"})
    assert b.config["config"]["WorkingDir"] == "/rel" and b.read("/rel/f") == b"F"


def test_base_config_kept_and_path_added_after_base_env(run_build, busybox_layout, tmp_path):
    plain = run_build("FROM busybox\nRUN true\n")
    assert not plain.config["config"].get("WorkingDir")  # busybox has none, and none is added
    base = _variant(busybox_layout, str(tmp_path / "foo"), {"Env": ["FOO=1"], "WorkingDir": "/srv"})
    b = run_build(f"FROM {base}\nRUN echo \"$PATH\" > /p; pwd > /w\n")
    assert b.config["config"]["Env"] == ["FOO=1", f"PATH={DEFAULT_PATH}"]
    assert b.config["config"]["WorkingDir"] == "/srv"
    assert b.read("/p") == f"{DEFAULT_PATH}\n".encode() and b.read("/w") == b"/srv\n"
    base = _variant(busybox_layout, str(tmp_path / "noenv"), {})
    b = run_build(f"FROM {base}\nLABEL x=1\n")
    assert b.config["config"]["Env"] == [f"PATH={DEFAULT_PATH}"]


# Volumes created by a later RUN (through a symlink, relative, under USER app, one existing), one only followed
# by a COPY, trailing ones, and a scratch stage: files, config and layer count must all be buildah's.
VS_BUILDAH = """FROM busybox AS base
RUN mkdir -p /pre && echo before > /pre/a && ln -s /tmp /lnk && mkdir -m 0700 /exists \\
 && chown 1000:1000 /exists
USER app
VOLUME /pre /v/new data /lnk/sub /exists
COPY f /g
RUN test -d /v/new
USER root
VOLUME /copied/only
COPY f /app/data/f
VOLUME ["/app/data", "/last/one"]
FROM scratch
COPY --from=base /v /v
COPY f /f
VOLUME /empty
"""


def _buildah(registry, tmp_path, dockerfile: str, files: dict, target: str | None) -> tuple[str, dict, int]:
    """``buildah bud --layers`` (one layer per step, as the corpus harness builds): the image unpacked, its
    config and its number of layers."""
    ctx = tmp_path / "buildah-ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile.replace("FROM busybox", f"FROM {registry.host}/library/busybox"))
    for name, data in files.items():
        (ctx / name).write_text(data)
    storage = tmp_path / "buildah"
    common = ["buildah", "--root", str(storage / "root"), "--runroot", str(storage / "run"), "--storage-driver", "vfs"]
    args = ["--target", target] if target else []
    try:
        r = subprocess.run([*common, "bud", "--layers", "--isolation", "chroot", "--tls-verify=false", "--quiet",
                            *args, "-t", "ref", str(ctx)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        out = tmp_path / "buildah-oci"
        subprocess.run([*common, "push", "ref", f"oci:{out}:ref"], check=True, capture_output=True)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    root = str(tmp_path / "buildah-root")
    os.makedirs(root)
    image = read_layout(str(out), ref_name="ref")
    apply_layers([layer.path for layer in image.layers], root)
    return root, json.loads(image.config_bytes)["config"], len(image.layers)


@pytest.mark.parametrize("target", ["base", None])
def test_volume_and_scratch_config_same_as_buildah(run_build, registry, tmp_path, target):
    need("buildah")
    files = {"f": "F\n"}
    built = run_build(VS_BUILDAH, files, target=target)
    ref_root, ref_config, ref_layers = _buildah(registry, tmp_path, VS_BUILDAH, files, target)
    assert compare_trees(tree(built.rootfs), tree(ref_root)) == {}
    mine = built.config["config"]
    for key in ("Env", "WorkingDir", "Volumes", "User", "Cmd"):
        assert mine.get(key) == ref_config.get(key), key
    assert len(built.config["rootfs"]["diff_ids"]) == ref_layers
