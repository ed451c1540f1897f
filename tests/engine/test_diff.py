"""The diff contract (see snapfs.diff's docstring), case by case, on both kernels."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from snapfs.engine import changes as diff, snapshot
from snapfs.errors import UsageError
from treekit import T0, Dir, File, Symlink, build


def changes(d):
    return [(c.kind, c.path, c.reasons) for c in d.changes]


@pytest.fixture
def base(tmp_path):
    root = str(tmp_path / "root")
    build(root, {
        "a": Dir({"x": File(b"x"), "sub": Dir({"deep": File(b"deep")})}),
        "b": File(b"bbbb"),
        "c": Symlink("b"),
        "d": Dir({"keep": File(b"k"), "drop": File(b"d")}),
    })
    return root


def take(root, kernel):
    return snapshot.take(root, kernel=kernel, quiescent=True)


def test_no_change_is_empty(kernel, base):
    assert diff.diff(take(base, kernel), take(base, kernel), kernel=kernel).changes == ()


def test_removed_tree_gives_one_deletion(kernel, base):
    old = take(base, kernel)
    shutil.rmtree(os.path.join(base, "a"))
    assert changes(diff.diff(old, take(base, kernel), kernel=kernel)) == [("deleted", "a", "")]


def test_directory_becomes_file_and_back(kernel, base):
    old = take(base, kernel)
    shutil.rmtree(os.path.join(base, "a"))
    build(base, {"a": File(b"now a file")})
    os.remove(os.path.join(base, "b"))
    build(base, {"b": Dir({"inside": File(b"i")})})
    got = changes(diff.diff(old, take(base, kernel), kernel=kernel))
    assert got == [("modified", "a", "type"), ("modified", "b", "type"), ("added", "b/inside", "")]


def test_parents_of_changes_are_not_reported(kernel, base):
    old = take(base, kernel)
    with open(os.path.join(base, "a/sub/deep"), "ab") as f:
        f.write(b"!")
    open(os.path.join(base, "a/sub/new"), "wb").close()
    got = changes(diff.diff(old, take(base, kernel), kernel=kernel))
    assert got == [("modified", "a/sub/deep", "size,mtime,ctime"), ("added", "a/sub/new", "")]


def test_metadata_changes_are_seen(kernel, base):
    old = take(base, kernel)
    os.chmod(os.path.join(base, "b"), 0o4755)
    os.chown(os.path.join(base, "a"), 1, 2)
    os.setxattr(os.path.join(base, "d"), "user.k", b"v")
    os.remove(os.path.join(base, "c"))
    os.symlink("a", os.path.join(base, "c"))
    got = {(k, p): r for k, p, r in changes(diff.diff(old, take(base, kernel), kernel=kernel))}
    assert got[("modified", "b")] == "mode,ctime"
    assert got[("modified", "a")] == "owner"
    assert got[("modified", "d")] == "link/xattrs"
    assert "link/xattrs" in got[("modified", "c")]  # new target (and a new inode)


def test_same_tree_rewrites_are_caught_by_ctime_and_inode(kernel, base):
    """cp -p / tar x / touch -d leave size and mtime as they were; ctime and inode still tell."""
    old = take(base, kernel)
    path = os.path.join(base, "b")
    st = os.stat(path)
    with open(path, "wb") as f:  # same size, then the old mtime put back (touch -d)
        f.write(b"BBBB")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    subprocess.run(["cp", "-p", os.path.join(base, "a/x"), os.path.join(base, "a/x.tmp")], check=True)
    os.replace(os.path.join(base, "a/x.tmp"), os.path.join(base, "a/x"))  # cp -p + rename: new inode
    got = changes(diff.diff(old, take(base, kernel), kernel=kernel))
    assert got == [("modified", "a/x", "ctime,inode"), ("modified", "b", "ctime")]


def test_replaced_directory_is_marked(kernel, base):
    old = take(base, kernel)
    build(base, {"d.new": Dir({"keep": File(b"k")})})  # both exist at once: a new inode for sure
    shutil.rmtree(os.path.join(base, "d"))
    os.rename(os.path.join(base, "d.new"), os.path.join(base, "d"))
    d = diff.diff(old, take(base, kernel), kernel=kernel)
    by_path = {c.path: c for c in d.changes}
    assert by_path["d"].replaced_dir
    assert [(c.kind, c.path) for c in d.changes] == [("modified", "d"), ("deleted", "d/drop"),
                                                     ("modified", "d/keep")]


def test_racy_entries_are_decided_by_content(kernel, base):
    """A rewrite in the same clock tick keeps every stat field: only the stored hash can tell.

    The blind spot is simulated exactly: the "new" snapshot reuses the old rows (as if the clock had not
    ticked), while the file's bytes really changed on disk."""
    path = os.path.join(base, "b")
    future = time.time_ns() + 10**9
    os.utime(path, ns=(future, future))
    old = snapshot.take(base, kernel=kernel)  # b's mtime is at or after the walk: racy, so hashed
    idx = [e.path for e in old].index("b")
    assert idx in old.hashes
    with open(path, "wb") as f:
        f.write(b"BBBB")
    blind = snapshot.Snapshot(old.root, old.records, old.names, old.extras, old.root_dev, old.root_ino,
                              old.start_ns, 0, {})
    assert changes(diff.diff(old, blind, kernel=kernel)) == [("modified", "b", "content")]
    assert changes(diff.diff(old, blind, mode="stat", kernel=kernel)) == []
    with open(path, "wb") as f:
        f.write(b"bbbb")  # same content again: not a change
    assert changes(diff.diff(old, blind, kernel=kernel)) == []


def test_two_trees_with_whole_second_mtimes_compare_content(kernel, tmp_path):
    """After a tar extraction mtimes have no sub-second part; equal size and mtime prove nothing."""
    spec = {"same": File(b"1234"), "differs": File(b"1234"), "ns": File(b"abcd", mtime_ns=T0 + 5)}
    old_root, new_root = str(tmp_path / "old"), str(tmp_path / "new")
    build(old_root, spec)
    build(new_root, {**spec, "differs": File(b"9999"), "ns": File(b"zzzz", mtime_ns=T0 + 5)})
    got = changes(diff.diff_trees(old_root, new_root, kernel=kernel))
    # "ns" has a sub-second mtime: trusted as equal by stat (documented behaviour)
    assert got == [("modified", "differs", "content")]
    assert changes(diff.diff_trees(old_root, new_root, mode="stat", kernel=kernel)) == []


def test_order_is_component_order(kernel, tmp_path):
    old_root, new_root = str(tmp_path / "old"), str(tmp_path / "new")
    build(old_root, {})
    build(new_root, {"a-b": File(), "a": Dir({"z": File()}), "a.c": Dir({"q": File()})})
    assert [c.path for c in diff.diff_trees(old_root, new_root, kernel=kernel).changes] == [
        "a", "a/z", "a-b", "a.c", "a.c/q"]


def test_snapshot_file_round_trip_and_diff_against_live_tree(kernel, base, tmp_path):
    snap = take(base, kernel)
    path = str(tmp_path / "snap.idx")
    snapshot.save(snap, path)
    loaded = snapshot.load(path, kernel=kernel)
    assert (loaded.records, loaded.names, loaded.extras, loaded.hashes) == (snap.records, snap.names,
                                                                              snap.extras, snap.hashes)
    os.remove(os.path.join(base, "d/drop"))
    got = changes(diff.diff(loaded, take(base, kernel), kernel=kernel))
    assert got == [("deleted", "d/drop", "")]


def test_bad_mode_is_refused(base):
    snap = snapshot.take(base)
    with pytest.raises(UsageError, match="unknown diff mode 'hash'"):
        diff.diff(snap, snap, mode="hash")


# -- patched snapshots: read again only what may have changed -------------------------------------------------

def _same_rows(a, b, kernel):
    """Two snapshots hold the same entries with the same stat fields (offsets may differ)."""
    assert kernel.check_rows(*b.rows) == ""
    assert [e for e in a] == [e for e in b]


def test_patch_equals_a_full_walk(kernel, base):
    old = take(base, kernel)
    shutil.rmtree(os.path.join(base, "a/sub"))                 # a removed tree
    os.remove(os.path.join(base, "b"))
    os.mkdir(os.path.join(base, "b"))                          # file -> directory
    open(os.path.join(base, "b/inside"), "w").close()
    shutil.rmtree(os.path.join(base, "d"))
    build(base, {"d": Dir({"keep": File(b"new"), "more": Symlink("keep")})})  # a replaced directory
    os.chmod(os.path.join(base, "a/x"), 0o600)                 # metadata only
    build(base, {"z-new": Dir({"deep": Dir({"f": File()})})})  # a new subtree
    changed = ["a/sub", "b", "b/inside", "a/x", "z-new", "z-new/deep", "z-new/deep/f"]
    patched = snapshot.patch(old, paths=changed, subtrees=["d"], kernel=kernel)
    _same_rows(take(base, kernel), patched, kernel)
    assert [(c.kind, c.path) for c in diff.diff(old, patched, kernel=kernel).changes] == \
        [(c.kind, c.path) for c in diff.diff(old, take(base, kernel), kernel=kernel).changes]


def test_patch_with_nothing_changed_and_ignored_paths(kernel, base):
    old = take(base, kernel)
    _same_rows(old, snapshot.patch(old, paths=["a", "a/x", "nope"], kernel=kernel), kernel)
    build(base, {"skip": Dir({"f": File()})})
    patched = snapshot.patch(old, paths=["skip", "skip/f"], ignore=["skip"], kernel=kernel)
    _same_rows(old, patched, kernel)


def test_patch_never_reads_through_a_link_that_replaced_a_directory(kernel, base, tmp_path):
    outside = str(tmp_path / "outside")
    build(outside, {"x": File(b"host secret"), "drop": File(b"host")})
    old = take(base, kernel)
    shutil.rmtree(os.path.join(base, "d"))
    os.symlink(outside, os.path.join(base, "d"))               # d/keep, d/drop now name host files
    patched = snapshot.patch(old, paths=["d", "d/keep", "d/drop", "d/x"], kernel=kernel)
    _same_rows(take(base, kernel), patched, kernel)
    assert [(c.kind, c.path) for c in diff.diff(old, patched, kernel=kernel).changes] == [("modified", "d")]


def test_patch_of_a_path_below_a_new_file_is_gone_not_an_error(kernel, base):
    old = take(base, kernel)
    shutil.rmtree(os.path.join(base, "a"))
    build(base, {"a": File(b"now a file")})
    patched = snapshot.patch(old, paths=["a", "a/x", "a/sub", "a/sub/deep"], kernel=kernel)
    _same_rows(take(base, kernel), patched, kernel)
