"""Deep trees: the walker, snapshots, the diff and the layer writer are iterative and refuse a tree deeper
than ``limits.MAX_DEPTH`` with a one-line error instead of crashing (both kernels)."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile

import pytest

from deepkit import make_chain, remove_chain
from snapfs.engine import backend, changes, layer, snapshot
from snapfs.errors import InputError
from snapfs.limits import MAX_DEPTH

NAME = "d123456789"


@pytest.fixture
def deep_root(tmp_path):
    root = str(tmp_path / "deep")
    yield root
    if os.path.isdir(root):
        remove_chain(root, name=NAME)


def test_a_tree_at_the_limit_works_in_both_kernels_byte_for_byte(deep_root):
    # MAX_DEPTH - 1 directories and a file below them: the deepest entry is exactly MAX_DEPTH levels down,
    # its path (~5.6 KB) far beyond PATH_MAX; its xattr must still be read.
    leaf = make_chain(deep_root, MAX_DEPTH - 1, xattr=("user.deep", b"yes"))
    fast, pure = backend.get("compiled").walk(deep_root), backend.get("python").walk(deep_root)
    assert fast == pure
    snap = snapshot.take(deep_root, kernel=backend.get("compiled"))
    assert len(snap) == MAX_DEPTH and snap.entry(MAX_DEPTH - 1).path == leaf
    assert snap.entry(MAX_DEPTH - 1).xattrs == (("user.deep", b"yes"),)


@pytest.mark.parametrize("levels", [MAX_DEPTH, 3000])
def test_a_deeper_tree_is_a_one_line_error_naming_the_path_start(kernel, deep_root, levels):
    make_chain(deep_root, levels)
    with pytest.raises(InputError) as err:
        kernel.walk(deep_root)
    head = "/".join([NAME] * 4)
    assert err.value.message == (f"{deep_root}/{head}/...: directory tree nested deeper than {MAX_DEPTH} levels "
                                 "(snapfs's depth limit)")
    assert err.value.exit_code == 3


def test_max_depth_counts_entries_not_directories(kernel, deep_root):
    make_chain(deep_root, 3, leaf=None)
    assert len(kernel.walk(deep_root, max_depth=3)[0]) // 96 == 3  # an empty directory at the limit is fine
    make_chain(deep_root + "/" + "/".join([NAME] * 3), 0)  # a file one level below it is not
    with pytest.raises(InputError, match=f"^{deep_root}/{NAME}/{NAME}/{NAME}/f: directory tree nested deeper"):
        kernel.walk(deep_root, max_depth=3)


@pytest.mark.parametrize("name", ["d", NAME])  # short names: a short path, deep recursion (was rc 139)
def test_cli_snapshot_of_a_very_deep_tree_fails_cleanly(tmp_path, name):
    root = str(tmp_path / "deep")
    make_chain(root, 3000, name=name)
    out = str(tmp_path / "snap.idx")
    try:
        r = subprocess.run([sys.executable, "-m", "snapfs", "snapshot", root, "-o", out],
                           capture_output=True, text=True)
    finally:
        remove_chain(root, name=name)
    assert r.returncode == 3, r.stderr  # was 139: a segfault in the recursive walker
    assert r.stderr.splitlines() == [f"snapfs: {root}/{'/'.join([name] * 4)}/...: directory tree nested "
                                     f"deeper than {MAX_DEPTH} levels (snapfs's depth limit)"]
    assert not os.path.exists(out)


def test_walk_at_the_limit_needs_no_raised_fd_limit(deep_root):
    # One fd per level: with a soft RLIMIT_NOFILE of 256 the walk raises it (up to the hard limit) itself.
    make_chain(deep_root, MAX_DEPTH - 1)
    code = ("import resource, sys; from snapfs.engine import backend\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
            f"for k in ('compiled', 'python'): assert len(backend.get(k).walk({deep_root!r})[0]) == {MAX_DEPTH} * 96\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_diff_and_layer_of_a_tree_at_the_limit(deep_root, tmp_path):
    empty = str(tmp_path / "empty")
    os.mkdir(empty)
    leaf = make_chain(deep_root, MAX_DEPTH - 1, leaf=b"bottom")
    d = changes.diff(snapshot.take(empty), snapshot.take(deep_root))
    assert len(d.changes) == MAX_DEPTH and d.changes[-1].path == leaf
    blob = layer.write_layer(d, str(tmp_path / "deep.tar"), compression="none")
    with tarfile.open(blob.path) as t:
        members = t.getmembers()
        assert [m.name for m in members][-1] == leaf
        assert t.extractfile(members[-1]).read() == b"bottom"


def test_patch_counts_depth_from_the_root_and_names_the_real_path(kernel, deep_root):
    make_chain(deep_root, 2, leaf=None)
    old = snapshot.take(deep_root, kernel=kernel)
    sub = "/".join([NAME] * 2)
    make_chain(os.path.join(deep_root, sub), MAX_DEPTH - 2)  # now MAX_DEPTH + 1 entries deep
    with pytest.raises(InputError) as err:
        snapshot.patch(old, subtrees=[sub], kernel=kernel)
    assert err.value.message == (f"{deep_root}/{'/'.join([NAME] * 4)}/...: directory tree nested deeper than "
                                 f"{MAX_DEPTH} levels (snapfs's depth limit)")


def test_the_layer_writer_refuses_an_entry_deeper_than_the_limit(tmp_path):
    # Only a snapshot loaded from a file can hold one (every walk stops at the limit): forge its deletion.
    from snapfs.errors import LayerError
    from snapfs.engine.rows import Entry

    deep = "/".join(["d"] * (MAX_DEPTH + 1))
    gone = Entry(deep, 0o100644, 0, 0, 0, 0, 0, 1, 1, 0, 1, None, (), 0)
    root = str(tmp_path / "root")
    os.mkdir(root)
    snap = snapshot.take(root)
    d = changes.Diff(snap, snap, (changes.Change("deleted", deep, None, gone),))
    with pytest.raises(LayerError, match=rf"^d/d/d/.*\.\.\.: deeper than {MAX_DEPTH} levels \(snapfs's depth limit\)$"):
        layer.plan_entries(d)


def test_scratch_of_any_depth_is_removed(tmp_path):
    """A RUN step can nest far deeper than the limit before its snapshot refuses the tree; the build's clean-up
    must still remove it (shutil.rmtree ends in RecursionError past ~1,000 levels)."""
    from snapfs.engine import lifecycle
    from snapfs.engine.rootfs import remove_path

    for remove in (lifecycle.remove_tree, remove_path):
        scratch = str(tmp_path / "snapfs-build-scratch")
        make_chain(scratch, 3000)
        remove(scratch)
        assert not os.path.lexists(scratch)
    assert remove_path(str(tmp_path / "missing")) is False
