"""The same Dockerfile built by snapfs and by `buildah bud --isolation chroot` (a reference that follows Docker's
semantics): the images' filesystems and configs must agree, apart from what buildah is known to add."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest
from registry_servers import need

from snapfs import apply_layers
from snapfs.layout import read_layout

pytestmark = pytest.mark.slow

DOCKERFILE = """FROM busybox
ENV APP=/srv/app
WORKDIR $APP
COPY --chown=app:staff files/ ./
COPY --chmod=0755 run.sh /usr/local/bin/
RUN mkdir -p /data/sub && echo hi > /data/x && chmod 0750 /data && ln -s /data/x /data/link \\
 && ln /data/x /data/hard && rm /etc/group && mkdir /tmp/gone && rm -r /tmp/gone
RUN echo more >> /data/x && chown 1000:50 /data/sub
USER app
EXPOSE 8080/tcp 53/udp
LABEL org.example.team=builders
ENTRYPOINT ["/usr/local/bin/run.sh"]
CMD ["--serve"]
"""
FILES = {"files/a.txt": "A\n", "files/sub/b.txt": "B\n", "run.sh": "#!/bin/sh\necho run\n"}
# buildah leaves these behind (see TESTING.md); they are no part of the Dockerfile's result.
BUILDAH_ARTIFACTS = {"etc/hosts", "etc/hostname", "etc/resolv.conf", "run", "proc", "sys", "dev"}


def tree(root: str) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            data = open(full, "rb").read() if stat.S_ISREG(st.st_mode) else None
            link = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, data, link,
                        st.st_nlink if stat.S_ISREG(st.st_mode) else None)
    return out


def test_same_filesystem_and_config_as_buildah(run_build, registry, tmp_path):
    need("buildah")
    built = run_build(DOCKERFILE, FILES)
    ctx = tmp_path / "ctx"
    storage = tmp_path / "buildah"
    base = f"{registry.host}/library/busybox:latest"
    (ctx / "Dockerfile").write_text(DOCKERFILE.replace("FROM busybox", f"FROM {base}"))
    common = ["buildah", "--root", str(storage / "root"), "--runroot", str(storage / "run"), "--storage-driver", "vfs"]
    r = subprocess.run([*common, "bud", "--isolation", "chroot", "--tls-verify=false", "--quiet", "-t", "ref",
                        str(ctx)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "buildah-oci"
    subprocess.run([*common, "push", "ref", f"oci:{out}:ref"], check=True, capture_output=True)
    ref_root = str(tmp_path / "buildah-root")
    os.makedirs(ref_root)
    ref_image = read_layout(str(out), ref_name="ref")
    apply_layers([l.path for l in ref_image.layers], ref_root)
    ours, theirs = tree(built.rootfs), tree(ref_root)
    for rel in list(theirs):
        if rel in BUILDAH_ARTIFACTS or any(rel.startswith(a + "/") for a in BUILDAH_ARTIFACTS):
            if rel not in ours:
                del theirs[rel]
    assert {k: v for k, v in ours.items() if k not in theirs} == {}
    assert {k: v for k, v in theirs.items() if k not in ours} == {}
    assert {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]} == {}
    c_ours, c_theirs = built.config["config"], json.loads(ref_image.config_bytes)["config"]
    for key in ("Env", "Entrypoint", "Cmd", "WorkingDir", "User", "ExposedPorts"):
        assert c_ours.get(key) == c_theirs.get(key), key
    labels = {k: v for k, v in (c_theirs.get("Labels") or {}).items() if not k.startswith("io.buildah")}
    assert c_ours.get("Labels") == labels
    shutil.rmtree(storage, ignore_errors=True)
