"""Deep directory chains for depth-limit tests, made and removed through dir fds (their paths exceed PATH_MAX,
and ``shutil.rmtree`` recurses once per level)."""
from __future__ import annotations

import os

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def make_chain(root: str, levels: int, *, name: str = "d123456789", leaf: bytes | None = b"leaf",
               xattr: tuple[str, bytes] | None = None) -> str:
    """``root/name/name/...`` with ``levels`` directories and, if ``leaf``, a file ``f`` in the deepest one
    (so the deepest entry is ``levels + 1`` components below the root). Returns the leaf's relative path."""
    os.makedirs(root, exist_ok=True)
    fd = os.open(root, _DIR)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
        if leaf is not None:
            f = os.open("f", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644, dir_fd=fd)
            try:
                os.write(f, leaf)
                if xattr:
                    os.setxattr(f, *xattr)
            finally:
                os.close(f)
    finally:
        os.close(fd)
    return "/".join([name] * levels + (["f"] if leaf is not None else []))


def remove_chain(root: str, *, name: str = "d123456789") -> None:
    """Remove a chain made by ``make_chain`` level by level from the top, with O(1) fds and no recursion."""
    fd = os.open(root, _DIR)
    try:
        while True:
            try:
                child = os.open(name, _DIR, dir_fd=fd)
            except FileNotFoundError:
                return
            try:
                inner = os.listdir(child)
                if "f" in inner:
                    os.unlink("f", dir_fd=child)
                if name in inner:  # lift the next level up, then drop this one
                    os.rename(name, ".up", src_dir_fd=child, dst_dir_fd=fd)
            finally:
                os.close(child)
            os.rmdir(name, dir_fd=fd)
            if ".up" not in os.listdir(fd):
                return
            os.rename(".up", name, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)
