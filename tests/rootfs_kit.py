"""Small root filesystems for tests that run commands: busybox plus passwd and group files.

Debian's ``busybox-static`` is one static binary; ``busybox --install -s`` run inside the root makes its applet
symlinks. A session builds one template and each test copies it (~300 entries, a few milliseconds).
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess

BUSYBOX = "/bin/busybox"

PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "app:x:1000:1000:app:/home/app:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = ("root:x:0:\n"
         "app:x:1000:\n"
         "extra:x:2000:app\n"
         "nogroup:x:65534:\n")


def busybox_available() -> bool:
    return os.path.isfile(BUSYBOX) and os.geteuid() == 0


def make_busybox_root(root: str, *, passwd: str = PASSWD, group: str = GROUP) -> str:
    """A minimal runnable root at ``root`` (which must not exist yet or be empty)."""
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "home/app"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    os.chown(os.path.join(root, "home/app"), 1000, 1000)
    shutil.copy2(BUSYBOX, os.path.join(root, "bin/busybox"))
    subprocess.run(["chroot", root, "/bin/busybox", "--install", "-s"], check=True)
    write(root, "etc/passwd", passwd)
    write(root, "etc/group", group)
    return root


def copy_root(template: str, dest: str) -> str:
    shutil.copytree(template, dest, symlinks=True)
    return dest


def write(root: str, rel: str, text: str | bytes, *, mode: int = 0o644) -> str:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    os.chmod(path, mode)
    return path


def listing(root: str) -> dict[str, tuple]:
    """Every entry below ``root`` (symlinks not followed) with type, mode, owner and size or link target.

    Directory mtimes are left out on purpose: creating and removing a mount point changes its parent's.
    """
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            extra = os.readlink(path) if stat.S_ISLNK(st.st_mode) else (0 if stat.S_ISDIR(st.st_mode) else
                                                                         st.st_size)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_gid, extra)
    return out


def mountinfo() -> list[str]:
    """The mount table of this process (without the per-mount ids that a remount may change), less the mounts
    that other processes' builds and test runs make meanwhile under the temp directory (their own pytest
    basetemp, their own snapfs scratch): what a sandbox of this process could leave behind stays in."""
    import re
    import tempfile

    tmp = os.path.realpath(tempfile.gettempdir()) + "/"
    ours = re.compile(rf"^snapfs-(?:build|run)-{os.getpid()}\.")
    basetemp = os.path.realpath(os.environ.get("SNAPFS_TEST_BASETEMP", "")) if os.environ.get(
        "SNAPFS_TEST_BASETEMP") else None

    def foreign(point: str) -> bool:
        if not point.startswith(tmp):
            return False
        first = point[len(tmp):].split("/", 1)[0]
        if first.startswith("snapfs-build-") or first.startswith("snapfs-run-"):
            return not ours.match(first)
        if first.startswith("pytest-of-"):
            return basetemp is None or not (point + "/").startswith(basetemp + "/")
        return False

    with open("/proc/self/mountinfo") as f:
        rows = [line.split()[3:5] for line in f]
    return sorted(" ".join(r) for r in rows if not foreign(r[1]))
