"""Declarative test trees: build a directory from nested literals, and read back what a layer must carry."""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field

T0 = 1_700_000_000 * 10**9  # a fixed timestamp (ns) so trees do not depend on the clock


@dataclass(frozen=True)
class File:
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = T0
    xattrs: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Dir:
    children: dict = field(default_factory=dict)
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime_ns: int = T0
    xattrs: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Symlink:
    target: str
    uid: int = 0
    gid: int = 0
    mtime_ns: int = T0


@dataclass(frozen=True)
class Hardlink:
    to: str  # path relative to the tree root of an earlier regular file


@dataclass(frozen=True)
class Fifo:
    mode: int = 0o644
    mtime_ns: int = T0


@dataclass(frozen=True)
class Dev:
    major: int
    minor: int
    char: bool = True
    mode: int = 0o666
    mtime_ns: int = T0


def build(root: str, children: dict, *, root_mode: int = 0o755) -> str:
    """Create ``children`` under ``root`` (which may exist). Directory times are set last."""
    os.makedirs(root, exist_ok=True)
    os.chmod(root, root_mode)
    dirs: list[tuple[str, Dir]] = []
    _build(root, children, dirs)
    for path, d in reversed(dirs):
        os.utime(path, ns=(d.mtime_ns, d.mtime_ns), follow_symlinks=False)
    return root


def _build(parent: str, children: dict, dirs: list) -> None:
    for name, node in children.items():
        path = os.path.join(parent, name)
        if isinstance(node, Dir):
            os.mkdir(path)
            _build(path, node.children, dirs)
            for k, v in node.xattrs:
                os.setxattr(path, k, v, follow_symlinks=False)
            os.chown(path, node.uid, node.gid)
            os.chmod(path, node.mode)
            dirs.append((path, node))
        elif isinstance(node, File):
            with open(path, "wb") as f:
                f.write(node.data)
            os.chown(path, node.uid, node.gid)
            os.chmod(path, node.mode)
            for k, v in node.xattrs:  # after chown, which clears security.capability
                os.setxattr(path, k, v)
            os.utime(path, ns=(node.mtime_ns, node.mtime_ns))
        elif isinstance(node, Symlink):
            os.symlink(node.target, path)
            os.chown(path, node.uid, node.gid, follow_symlinks=False)
            os.utime(path, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)
        elif isinstance(node, Hardlink):
            root = parent
            while not os.path.exists(os.path.join(root, node.to)):
                root = os.path.dirname(root)
            os.link(os.path.join(root, node.to), path)
        elif isinstance(node, Fifo):
            os.mkfifo(path, node.mode)
            os.chmod(path, node.mode)
            os.utime(path, ns=(node.mtime_ns, node.mtime_ns))
        elif isinstance(node, Dev):
            kind = stat.S_IFCHR if node.char else stat.S_IFBLK
            os.mknod(path, kind | node.mode, os.makedev(node.major, node.minor))
            os.chmod(path, node.mode)
            os.utime(path, ns=(node.mtime_ns, node.mtime_ns))
        else:
            raise TypeError(node)


def state(root: str, *, dir_mtimes: bool = False) -> dict[str, tuple]:
    """Everything a layer carries, per path: type, permission bits, owner, size, mtime (s), link target, device
    numbers, kept xattrs, content digest, and hard-link grouping (as the first path of each inode)."""
    out: dict[str, tuple] = {}
    first: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            fmt = stat.S_IFMT(st.st_mode)
            link = os.readlink(full) if fmt == stat.S_IFLNK else None
            digest = None
            group = None
            if fmt == stat.S_IFREG:
                with open(full, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                group = first.setdefault((st.st_dev, st.st_ino), rel) if st.st_nlink > 1 else None
            xattrs = ()
            if fmt in (stat.S_IFREG, stat.S_IFDIR):
                xattrs = tuple(sorted((k, os.getxattr(full, k, follow_symlinks=False))
                                      for k in os.listxattr(full, follow_symlinks=False)
                                      if k.startswith("user.") or k == "security.capability"))
            mtime = st.st_mtime_ns // 10**9 if (fmt != stat.S_IFDIR or dir_mtimes) else None
            rdev = (os.major(st.st_rdev), os.minor(st.st_rdev)) if fmt in (stat.S_IFCHR, stat.S_IFBLK) else None
            out[rel] = (fmt, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_size if fmt == stat.S_IFREG else None, mtime, link, rdev, xattrs, digest, group)
    return out
