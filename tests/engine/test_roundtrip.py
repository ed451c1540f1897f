"""Property: for random trees A and B, applying diff(A, B) to a copy of A gives B exactly.

"Exactly" is everything a layer carries (see treekit.state): type, permission bits incl. setuid/setgid/sticky,
owner, size, mtime (seconds), symlink target, device numbers, kept xattrs, content and hard-link grouping.
Both kernels must produce the same diff on every generated case.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from snapfs.engine import apply, backend, changes, layer, snapshot
from treekit import T0, Dev, Dir, Fifo, File, Symlink, build, state

CAP = bytes.fromhex("0100000200200000000000000000000000000000")
NAMES = st.sampled_from(["a", "b", "c", "d", ".e", "f-g", "h.i"])
MTIMES = st.sampled_from([T0, T0 + 10**9, T0 + 123_456_789])  # whole seconds and sub-second
XATTRS = st.sampled_from([(), (("user.k", b"v"),), (("user.k", b"w"), ("user.z", b"\x00\xff"))])


def files():
    return st.builds(File, data=st.sampled_from([b"", b"x", b"y", b"hello", b"\x00" * 700, b"z" * 5000]),
                     mode=st.sampled_from([0o644, 0o755, 0o4755, 0o2711, 0o600]), uid=st.sampled_from([0, 1000]),
                     gid=st.sampled_from([0, 100]), mtime_ns=MTIMES, xattrs=XATTRS)


def leaves():
    return st.one_of(files(), files(),
                     st.builds(Symlink, target=st.sampled_from(["a", "../b", "/etc/passwd", "c/d"]), uid=st.just(0)),
                     st.builds(Fifo, mode=st.sampled_from([0o644, 0o600])),
                     st.builds(Dev, major=st.just(1), minor=st.sampled_from([3, 5]), char=st.booleans()))


trees = st.recursive(
    st.dictionaries(NAMES, leaves(), max_size=4),
    lambda kids: st.dictionaries(NAMES, st.one_of(leaves(), st.builds(
        Dir, children=kids, mode=st.sampled_from([0o755, 0o700, 0o1777]), uid=st.sampled_from([0, 7]),
        xattrs=XATTRS)), max_size=4),
    max_leaves=14)


@st.composite
def mutated(draw, spec):
    """B from A: keep, delete, change, retype or replace each node; add some new ones."""
    out = {}
    for name, node in spec.items():
        action = draw(st.sampled_from(["keep", "keep", "keep", "delete", "change", "retype"]))
        if action == "keep":
            out[name] = (Dir(draw(mutated(node.children)), node.mode, node.uid, node.gid, node.mtime_ns,
                             node.xattrs) if isinstance(node, Dir) else node)
        elif action == "change":
            out[name] = (Dir(node.children, draw(st.sampled_from([0o750, 0o755])), node.uid, 5, node.mtime_ns,
                             draw(XATTRS)) if isinstance(node, Dir) else draw(leaves()))
        elif action == "retype":
            out[name] = (draw(leaves()) if isinstance(node, Dir) else
                         Dir(draw(st.dictionaries(NAMES, leaves(), max_size=3))))
    for name, node in draw(st.dictionaries(NAMES, leaves(), max_size=2)).items():
        out.setdefault(name, node)
    return out


def add_hardlinks(root: str, draw) -> None:
    regular = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                     if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f)))
    if regular and draw(st.booleans()):
        src = draw(st.sampled_from(regular))
        os.link(os.path.join(root, src), os.path.join(root, "hl"))


@settings(max_examples=int(os.environ.get("SNAPFS_HYPOTHESIS_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(a=trees, data=st.data())
def test_apply_diff_reproduces_b(a, data):
    b = data.draw(mutated(a))
    compression = data.draw(st.sampled_from(["gzip", "zstd", "none"]))
    work = tempfile.mkdtemp(prefix="snapfs-prop-")
    try:
        ra, rb, rc = (os.path.join(work, n) for n in ("a", "b", "c"))
        build(ra, a)
        build(rb, b)
        add_hardlinks(rb, data.draw)
        subprocess.run(["cp", "-a", ra, rc], check=True)
        results = {}
        for name in ("compiled", "python"):
            k = backend.get(name)
            d = changes.diff(snapshot.take(ra, kernel=k), snapshot.take(rb, kernel=k), kernel=k)
            results[name] = [(c.kind, c.path, c.reasons) for c in d.changes]
        assert results["compiled"] == results["python"]
        blob = layer.write_layer(d, os.path.join(work, "layer"), compression=compression)
        apply.apply_layer(blob.path, rc)
        assert state(rc) == state(rb)
    finally:
        shutil.rmtree(work)


@settings(max_examples=int(os.environ.get("SNAPFS_HYPOTHESIS_EXAMPLES", "60")) // 2, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(a=trees, data=st.data())
def test_patched_snapshot_equals_a_full_walk(a, data):
    """Given the paths a change touched (what an overlay upper dir or a COPY reports), patching the old
    snapshot gives exactly the rows a full walk gives, on both kernels."""
    b = data.draw(mutated(a))
    work = tempfile.mkdtemp(prefix="snapfs-patch-")
    try:
        ra, rb = os.path.join(work, "a"), os.path.join(work, "b")
        build(ra, a)
        build(rb, b)
        d = changes.diff(snapshot.take(ra), snapshot.take(rb))
        blob = layer.write_layer(d, os.path.join(work, "layer"), compression="none")
        kernels = {name: backend.get(name) for name in ("compiled", "python")}
        olds = {name: snapshot.take(ra, kernel=k) for name, k in kernels.items()}
        apply.apply_layer(blob.path, ra)  # changes A in place, touching only what the diff lists
        touched = [c.path for c in d.changes]
        for name, k in kernels.items():
            patched = snapshot.patch(olds[name], paths=touched, kernel=k)
            full = snapshot.take(ra, kernel=k)
            assert k.check_rows(*patched.rows) == ""
            assert list(patched) == list(full)
    finally:
        shutil.rmtree(work)
