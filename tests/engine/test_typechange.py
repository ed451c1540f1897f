"""Property: any entry changing type in place (dir <-> file <-> symlink, with or without children, a link to a
host directory included) re-snapshots, diffs and writes a layer correctly, on both kernels.

This is what a RUN step like ``rm -rf /a && echo x > /a`` does: the builder then reads again every path it
has seen in the stage (``a/d`` included, now below a file), so the patched snapshot must treat a path below a
file or a symlink as gone, never as an error and never by following the link.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from snapfs.engine import apply, backend, changes, layer, snapshot
from treekit import Dir, File, Symlink, build, state

SECRET = b"HOST-SECRET-typechange"
KINDS = ["file", "empty-dir", "dir", "link-in-tree", "link-out"]
CHILD_PATHS = ["x", "y", "y/z"]
TYPE = {"file": "file", "empty-dir": "dir", "dir": "dir", "link-in-tree": "link", "link-out": "link"}


def node(kind: str, outside: str):
    return {"file": File(b"a file"), "empty-dir": Dir({}),
            "dir": Dir({"x": File(b"child"), "y": Dir({"z": File(b"grandchild")})}),
            "link-in-tree": Symlink("keep"), "link-out": Symlink(outside)}[kind]


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


@settings(max_examples=int(os.environ.get("SNAPFS_HYPOTHESIS_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(KINDS)), min_size=1, max_size=3))
def test_type_changes_snapshot_diff_and_layer(pairs):
    work = tempfile.mkdtemp(prefix="snapfs-retype-")
    try:
        outside, root, copy = (os.path.join(work, n) for n in ("outside", "root", "copy"))
        build(outside, {"x": File(SECRET), "y": Dir({"z": File(SECRET)})})
        names = [f"n{i}" for i in range(len(pairs))]
        build(root, {"keep": Dir({"x": File(b"kept")}),
                     **{n: node(old, outside) for n, (old, _) in zip(names, pairs)}})
        subprocess.run(["cp", "-a", root, copy], check=True)
        kernels = {k: backend.get(k) for k in ("compiled", "python")}
        olds = {k: snapshot.take(root, kernel=kern, quiescent=True) for k, kern in kernels.items()}
        for n, (old, new) in zip(names, pairs):
            if old != new:
                remove(os.path.join(root, n))
                build(root, {n: node(new, outside)})
        # Everything the builder may have seen at these names, whatever they are now.
        touched = [n for n in names] + [f"{n}/{c}" for n in names for c in CHILD_PATHS]
        found = {}
        for k, kern in kernels.items():
            full = snapshot.take(root, kernel=kern, quiescent=True)
            patched = snapshot.patch(olds[k], paths=touched, kernel=kern, quiescent=True)
            assert kern.check_rows(*patched.rows) == ""
            assert list(patched) == list(full)
            d = changes.diff(olds[k], patched, kernel=kern)
            found[k] = [(c.kind, c.path, c.reasons) for c in d.changes]
            assert found[k] == [(c.kind, c.path, c.reasons) for c in changes.diff(olds[k], full, kernel=kern).changes]
        assert found["compiled"] == found["python"]
        got = found["compiled"]
        for n, (old, new) in zip(names, pairs):
            mine = [c for c in got if c[1] == n or c[1].startswith(n + "/")]
            if old == new:
                assert mine == []
                continue
            at = [c for c in mine if c[1] == n]
            if TYPE[old] != TYPE[new]:
                assert at == [("modified", n, "type")]
            else:  # same type, a new inode or target: at most a modification, never a type change
                assert all(c[0] == "modified" and "type" not in c[2] for c in at)
            below = [(c[0], c[1]) for c in mine if c[1] != n]
            if new == "dir":
                assert below == [("added", f"{n}/x"), ("added", f"{n}/y"), ("added", f"{n}/y/z")]
            elif old == "dir" and new == "empty-dir":
                assert below == [("deleted", f"{n}/x"), ("deleted", f"{n}/y")]  # one deletion per tree
            else:
                assert below == []  # nothing below a file or a link, and no old children reported
        blob = layer.write_layer(d, os.path.join(work, "layer.tar"), compression="none")
        with open(blob.path, "rb") as f:
            assert SECRET not in f.read()
        apply.apply_layer(blob.path, copy)
        assert state(copy) == state(root)
    finally:
        shutil.rmtree(work)
