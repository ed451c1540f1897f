"""Build a corpus case with ``buildah bud`` (1.28, Debian) and compare its image with snapfs's.

buildah (run without ``--layers``, see below) follows Docker's classic semantics and is an independent
implementation, so a difference is either a snapfs bug, a feature buildah 1.28 lacks, or a documented
BuildKit-vs-buildah disagreement (snapfs follows BuildKit); a case records the last two in its
``expect.toml`` (see ``test_parity_buildah.py``).

Differences are keyed so that a case can name the ones it expects: ``file:/path`` (type, mode, owner, size,
link target, content or hard-link group; or present on one side only), ``config:Key``, ``error`` (only one
side failed to build).

Layers are not compared: buildah without ``--layers`` commits a stage as one layer, and with ``--layers`` it
departs from Docker (WORKDIR directories made only when a later step needs them, and then by that step's
``--chown``; a hard link added in a later layer written as a plain file), which would hide real differences.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from dataclasses import dataclass

from snapfs import apply_layers
from snapfs.image.layout import read_layout

# buildah leaves these behind (TESTING.md): mount points and files it binds in for RUN, kept empty in the image.
BUILDAH_ARTIFACTS = ("etc/hosts", "etc/hostname", "etc/resolv.conf", "run", "proc", "sys", "dev")
CONFIG_KEYS = ("Env", "Entrypoint", "Cmd", "WorkingDir", "User", "ExposedPorts", "Volumes", "Labels",
               "StopSignal", "Shell", "OnBuild", "Healthcheck")
# case -> "matched" | "known" (only listed differences) | "skipped: why" | "differs"; conftest prints a summary.
RESULTS: dict[str, str] = {}


@dataclass
class Buildah:
    """One buildah storage (``--root``/``--runroot``) shared by a session, so busybox is pulled once."""

    root: str
    registries_conf: str

    @classmethod
    def create(cls, root: str, registry_host: str) -> "Buildah":
        os.makedirs(root, exist_ok=True)
        conf = os.path.join(root, "registries.conf")
        # FROM busybox -> docker.io/library/busybox -> the local plain-HTTP registry, as snapfs's --registry-map.
        with open(conf, "w") as f:
            f.write('unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n'
                    f'[[registry]]\nprefix = "docker.io"\nlocation = "{registry_host}"\ninsecure = true\n')
        return cls(root, conf)

    def _cmd(self, *args: str) -> list[str]:
        return ["buildah", "--root", os.path.join(self.root, "root"), "--runroot", os.path.join(self.root, "run"),
                "--storage-driver", "vfs", "--registries-conf", self.registries_conf, *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(self._cmd(*args), capture_output=True, text=True,
                           env={**os.environ, "CONTAINERS_REGISTRIES_CONF": self.registries_conf})
        if check and r.returncode:
            raise RuntimeError(f"buildah {args[0]} failed: {r.stderr[-3000:]}")
        return r

    def bud(self, ctx: str, tag: str, *, build: dict, secret_files: dict) -> subprocess.CompletedProcess:
        """``buildah bud`` with the case's ``[build]`` options that change the result (the others, e.g.
        compression or snapshot mode, cannot change what the image holds)."""
        args = ["bud", "--isolation", "chroot", "--format", "docker", "--tls-verify=false",
                "--quiet", "-t", tag]
        for k, v in build.get("build_args", {}).items():
            args += ["--build-arg", f"{k}={v}"]
        for k, v in build.get("labels", {}).items():
            args += ["--label", f"{k}={v}"]
        if "target" in build:
            args += ["--target", build["target"]]
        for sid, path in secret_files.items():
            args += ["--secret", f"id={sid},src={path}"]
        return self.run(*args, ctx, check=False)

    def export(self, tag: str, out: str) -> tuple[str, dict]:
        """Unpack the image to ``out``/rootfs; return it and its Docker-format config (Healthcheck, Shell and
        OnBuild live only there)."""
        layout = os.path.join(out, "oci")
        os.makedirs(out, exist_ok=True)
        self.run("push", "--quiet", tag, f"oci:{layout}:ref")
        rootfs = os.path.join(out, "rootfs")
        os.makedirs(rootfs)
        apply_layers([layer.path for layer in read_layout(layout, ref_name="ref").layers], rootfs)
        info = json.loads(self.run("inspect", "--type", "image", tag).stdout)
        return rootfs, info["Docker"]

    def remove(self, tag: str) -> None:
        self.run("rmi", "--force", tag, check=False)


def tree(root: str) -> dict[str, tuple]:
    """Every entry below ``root``: (type, mode, uid, gid, size, link target, content digest, hard-link group)."""
    out, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(full, root)
            st = os.lstat(full)
            digest = link = size = None
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()[:16]
                size = st.st_size
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                link = os.readlink(full)
            out[rel] = {"type": stat.S_IFMT(st.st_mode), "mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid,
                        "gid": st.st_gid, "size": size, "target": link, "sha256": digest, "links": None}
    for paths in inodes.values():
        for p in paths:
            out[p]["links"] = tuple(sorted(set(paths) - {p})) or None
    return out


def compare_trees(ours: dict, theirs: dict) -> dict[str, str]:
    theirs = dict(theirs)
    for rel in list(theirs):
        r = rel.lstrip("/")
        if rel not in ours and any(r == a or r.startswith(a + "/") for a in BUILDAH_ARTIFACTS):
            del theirs[rel]
    diffs = {}
    for rel in sorted(set(ours) | set(theirs)):
        a, b = ours.get(rel), theirs.get(rel)
        if a is None:
            diffs[f"file:{rel}"] = f"only in buildah's image: {b}"
        elif b is None:
            diffs[f"file:{rel}"] = f"only in snapfs's image: {a}"
        elif a != b:
            diffs[f"file:{rel}"] = ", ".join(f"{k} {a[k]!r} != buildah {b[k]!r}" for k in a if a[k] != b[k])
    return diffs


def _norm(key: str, value):
    if key == "Labels" and value:
        value = {k: v for k, v in value.items() if not k.startswith("io.buildah.")}
    return None if value in (None, [], {}, "") else value


def compare_configs(ours: dict, theirs: dict) -> dict[str, str]:
    """``ours``: snapfs's image config; ``theirs``: buildah's Docker-format config (``buildah inspect``)."""
    diffs = {}
    a_cfg, b_cfg = ours.get("config") or {}, theirs.get("config") or {}
    for key in CONFIG_KEYS:
        a, b = _norm(key, a_cfg.get(key)), _norm(key, b_cfg.get(key))
        if a != b:
            diffs[f"config:{key}"] = f"snapfs {a!r} != buildah {b!r}"
    return diffs
