"""Path resolution inside a root (RootFS, as COPY uses it) and the walker's view of a tree (TreeView)."""
from __future__ import annotations

import errno
import os

import pytest

from snapfs.engine.rootfs import RootFS, TreeView
from treekit import Dir, File, Symlink, build


@pytest.fixture
def trees(tmp_path):
    """A root full of links that point out of it, and an "outside" directory they would reach on the host."""
    outside = str(tmp_path / "outside")
    build(outside, {"secret": File(b"host"), "sub": Dir({"f": File(b"host-f")})})
    root = str(tmp_path / "root")
    build(root, {"dir": Dir({"x": File(b"x")})})
    os.makedirs(root + outside)
    build(root + outside, {"secret": File(b"inside")})
    build(root, {
        "etc": Dir({"app": Symlink(outside), "rel": Symlink("../../../../" + outside.lstrip("/"))}),
        "loop1": Symlink("loop2"), "loop2": Symlink("/loop1"),
        "a": Symlink("b"), "b": Symlink("/c/.."), "c": Dir({"file": File(b"c")}),
        "proc-like": Symlink("/proc/self/root"),
    })
    return root, outside


def read_in(root: RootFS, path: str) -> bytes:
    with root.at(path, follow=True) as (fd, name):
        f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
        try:
            return os.read(f, 100)
        finally:
            os.close(f)


def test_absolute_and_dotdot_links_resolve_inside_the_root(trees):
    root, outside = trees
    with RootFS(root) as r:
        assert read_in(r, "etc/app/secret") == b"inside"          # absolute target: relative to the root
        assert read_in(r, "etc/rel/secret") == b"inside"          # ".." clamped at the root, like a chroot
        assert read_in(r, "/../../etc/app/secret") == b"inside"
        assert read_in(r, "a/c/file") == b"c"                     # a link to a link to "/c/.." (the root)


def test_links_that_leave_the_tree_never_reach_the_host(trees):
    root, outside = trees
    with RootFS(root) as r:
        assert r.lstat("etc/app/sub/f") is None                   # exists only on the host
        with pytest.raises(FileNotFoundError):
            with r.at("etc/app/sub/f", follow=True):
                pass
        # A magic link's text is resolved inside the root (which has no /proc), never the host's /proc.
        with pytest.raises(FileNotFoundError):
            with r.at("proc-like/etc", follow=True):
                pass


def test_link_loops_give_eloop(trees):
    root, _ = trees
    with RootFS(root) as r, pytest.raises(OSError) as err:
        with r.at("loop1/x", follow=True):
            pass
    assert err.value.errno == errno.ELOOP


def test_tree_view_never_follows_a_link_at_any_component(trees):
    root, outside = trees
    with TreeView(root) as v:
        assert v.lstat("etc/app").st_mode & 0o170000 == 0o120000   # the link itself
        assert v.lstat("etc/app/secret") is None                    # below a link: not in the tree
        assert v.lstat("a/c/file") is None and v.lstat("loop1/x") is None
        assert v.lstat("dir/x/below-a-file") is None
        assert v.lstat("c/file").st_size == 1
        with pytest.raises(FileNotFoundError):
            v.open("etc/app/secret")
        assert v.readlink("etc/app") == os.fsencode(outside)
        with pytest.raises(ValueError, match="not a relative entry path"):
            v.parent("dir/../etc")


def test_tree_view_handles_paths_longer_than_path_max(tmp_path):
    root = str(tmp_path / "deep")
    os.mkdir(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    name = "n" * 200
    for _ in range(30):  # 30 * 201 bytes: far beyond PATH_MAX (4096)
        os.mkdir(name, dir_fd=fd)
        nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    os.close(fd)
    rel = "/".join([name] * 30 + ["leaf"])
    with TreeView(root) as v:
        assert v.lstat(rel).st_size == 0
        os.close(v.open(rel))
