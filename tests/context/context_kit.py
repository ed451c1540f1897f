"""Context archives for the tests: an app tree, tars in every compression, hostile tars built entry by entry."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import subprocess
import tarfile

import zstandard

APP = {
    "Dockerfile": "FROM scratch\nCOPY . /app\n",
    "app/hello.sh": "#!/bin/sh\necho hello from app\n",
    "app/data/.wh.notawhiteout": "plain file whose name looks like a whiteout\n",
    "sub/Dockerfile.sub": "FROM scratch\nCOPY x /x\n",
    "sub/x": "x in sub\n",
}


def make_app(root: str) -> str:
    for rel, text in APP.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    os.chmod(os.path.join(root, "app/hello.sh"), 0o755)
    os.symlink("hello.sh", os.path.join(root, "app/link.sh"))
    os.link(os.path.join(root, "sub/x"), os.path.join(root, "sub/x-hard"))
    return root


def tar_cli(src: str, dest: str, flag: str = "z") -> str:
    """The user's way: ``tar -C app -zcvf context.tar.gz .`` (GNU tar)."""
    subprocess.run(["tar", "-C", src, f"-{flag}cf", dest, "."], check=True)
    return dest


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if kind == "bzip2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    return data


def tar_of(src: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(src, arcname=".")
    return buf.getvalue()


def check_app(root: str) -> None:
    """``root`` holds exactly the app tree, symlink and hardlink included."""
    for rel, text in APP.items():
        with open(os.path.join(root, rel)) as f:
            assert f.read() == text, rel
    assert os.stat(os.path.join(root, "app/hello.sh")).st_mode & 0o777 == 0o755
    assert os.readlink(os.path.join(root, "app/link.sh")) == "hello.sh"
    a, b = os.stat(os.path.join(root, "sub/x")), os.stat(os.path.join(root, "sub/x-hard"))
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)


class Entry:
    """One tar member for hostile archives."""

    def __init__(self, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "",
                 mode: int = 0o644) -> None:
        self.name, self.kind, self.data, self.linkname, self.mode = name, kind, data, linkname, mode


def hostile_tar(entries: list[Entry], kind: str = "gzip") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type, ti.mode, ti.linkname = e.kind, e.mode, e.linkname
            ti.size = len(e.data) if e.kind == tarfile.REGTYPE else 0
            tar.addfile(ti, io.BytesIO(e.data) if ti.size else None)
    return compress(buf.getvalue(), kind)


def tree_listing(root: str) -> dict[str, tuple]:
    """Everything under ``root`` (lstat), to show that nothing outside changed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out
