"""Layer format: what the tar holds, in which order, how it is compressed and hashed, and who can read it."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tarfile

import pytest
import zstandard

from snapfs.engine import changes, layer, snapshot
from snapfs.engine.apply import apply_layer
from snapfs.errors import InputError, UsageError
from snapfs.mediatypes import layer_media_type
from treekit import T0, Dir, File, Symlink, build, state

CAP = bytes.fromhex("0100000200200000000000000000000000000000")


def diff_of(tmp_path, old_spec, new_spec):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    build(old, old_spec)
    build(new, new_spec)
    return changes.diff(snapshot.take(old), snapshot.take(new))


def members(path):
    with tarfile.open(path) as t:
        return [(m.name, m.type, m.linkname) for m in t.getmembers()]


def test_gnu_tar_lists_every_kind_of_entry(tmp_path):
    d = diff_of(tmp_path, {"gone": File(b"x"), "etc": Dir({})}, {
        "etc": Dir({"conf": File(b"c" * 1000, mode=0o4755, uid=12, gid=34, xattrs=(("security.capability", CAP),
                                                                                   ("user.a", b"1")))}),
        "lnk": Symlink("etc/conf"), "dir": Dir({"hard": File(b"h")}, mode=0o1777)})
    os.link(tmp_path / "new/dir/hard", tmp_path / "new/hard2")
    d = changes.diff(snapshot.take(str(tmp_path / "old")), snapshot.take(str(tmp_path / "new")))
    blob = layer.write_layer(d, str(tmp_path / "l.tar.gz"))
    out = subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-tvvf", blob.path],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    listing = [(l.split()[0], l.split()[1], l.split(None, 5)[5]) for l in out if not l.startswith("  ")]
    assert listing == [
        ("----------", "0/0", ".wh.gone"),
        ("drwxrwxrwt", "0/0", "dir/"),
        ("-rw-r--r--", "0/0", "dir/hard"),
        ("drwxr-xr-x", "0/0", "etc/"),  # the parent of a change carries its metadata
        ("-rwsr-xr-x*", "12/34", "etc/conf"),
        ("hrw-r--r--", "0/0", "hard2 link to dir/hard"),
        ("lrwxrwxrwx", "0/0", "lnk -> etc/conf"),
    ]
    xattr_lines = [l.strip() for l in out if l.startswith("  ")]
    assert any("security.capability" in l for l in xattr_lines) and any("user.a" in l for l in xattr_lines)
    with tarfile.open(blob.path) as t:
        for m in t.getmembers():
            assert m.uname == "" and m.gname == ""
        conf = t.getmember("etc/conf")
        assert conf.pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == CAP


def test_descriptor_values_match_the_bytes(tmp_path):
    d = diff_of(tmp_path, {}, {"f": File(os.urandom(300_000)), "g": File(b"g" * 2_000_000)})
    for comp, opener in (("gzip", gzip.open), ("zstd", lambda p: zstandard.open(p, "rb")), ("none", open)):
        blob = layer.write_layer(d, str(tmp_path / f"l.{comp}"), compression=comp)
        data = open(blob.path, "rb").read()
        assert blob.digest == "sha256:" + hashlib.sha256(data).hexdigest() and blob.size == len(data)
        with opener(blob.path) as f:
            raw = f.read() if comp != "none" else data
        assert blob.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
        assert blob.media_type == layer_media_type(comp)
        assert raw.endswith(b"\0" * 1024) and len(raw) % 512 == 0


def test_reproducible_layers_are_byte_identical(tmp_path):
    spec = {"a": Dir({"f": File(b"x" * 100_000)}), "b": Symlink("a")}
    blobs = []
    for run in range(2):
        root = tmp_path / f"run{run}"
        build(str(root / "old"), {})
        build(str(root / "new"), spec)
        os.utime(root / "new/a", ns=(T0 + run * 10**9, T0 + run * 10**9))  # different dir mtimes per run
        d = changes.diff(snapshot.take(str(root / "old")), snapshot.take(str(root / "new")))
        for comp in ("gzip", "zstd"):
            blobs.append((comp, layer.write_layer(d, str(root / comp), compression=comp, epoch=1_000)))
    for comp in ("gzip", "zstd"):
        a, b = [open(bl.path, "rb").read() for c, bl in blobs if c == comp]
        assert a == b
    gz = open([bl.path for c, bl in blobs if c == "gzip"][0], "rb").read()
    assert gz[4:8] == b"\0\0\0\0"  # no timestamp in the gzip header
    with tarfile.open([bl.path for c, bl in blobs if c == "gzip"][0]) as t:
        assert {m.mtime for m in t.getmembers()} == {1_000}


def test_epoch_only_clamps_newer_mtimes(tmp_path):
    d = diff_of(tmp_path, {}, {"old": File(mtime_ns=10 * 10**9), "new": File(mtime_ns=T0)})
    blob = layer.write_layer(d, str(tmp_path / "l"), epoch=1_000)
    with tarfile.open(blob.path) as t:
        assert {m.name: m.mtime for m in t.getmembers()} == {"new": 1_000, "old": 10}


def test_sorted_paths_with_parents_first(tmp_path):
    d = diff_of(tmp_path, {"x": Dir({"y": Dir({})})},
                {"x": Dir({"y": Dir({"z-1": File(), "z": Dir({"q": File()})}), "a": File()}), "x-y": File()})
    names = [n for n, _, _ in members(layer.write_layer(d, str(tmp_path / "l")).path)]
    assert names == ["x", "x/a", "x/y", "x/y/z", "x/y/z/q", "x/y/z-1", "x-y"]


def test_replaced_directory_gets_an_opaque_whiteout_when_smaller(tmp_path):
    many = {f"f{i}": File(b"old") for i in range(30)}
    d = diff_of(tmp_path, {"d": Dir(many)}, {"d": Dir({"new": File(b"n")})})
    blob = layer.write_layer(d, str(tmp_path / "l"))
    assert blob.opaque_dirs == 1 and blob.whiteouts == 0
    assert members(blob.path) == [("d", tarfile.DIRTYPE, ""), ("d/.wh..wh..opq", tarfile.REGTYPE, ""),
                                  ("d/new", tarfile.REGTYPE, "")]
    # One deleted file among many kept ones: a whiteout is smaller than rewriting the directory.
    d = diff_of(tmp_path / "2", {"d": Dir({**many, "gone": File()})}, {"d": Dir(many)})
    blob = layer.write_layer(d, str(tmp_path / "l2"))
    assert blob.opaque_dirs == 0 and members(blob.path) == [("d", tarfile.DIRTYPE, ""),
                                                            ("d/.wh.gone", tarfile.REGTYPE, "")]
    # Both layers apply to the old tree and give the new one.
    for case, path in (("", "l"), ("2", "l2")):
        base = tmp_path / case if case else tmp_path
        shutil.copytree(base / "old", base / "check", symlinks=True)
        apply_layer(str(tmp_path / path), str(base / "check"))
        assert state(str(base / "check")) == state(str(base / "new"))


def test_opaque_can_be_disabled(tmp_path):
    d = diff_of(tmp_path, {"d": Dir({f"f{i}": File() for i in range(10)})}, {"d": Dir({})})
    blob = layer.write_layer(d, str(tmp_path / "l"), opaque=False)
    assert blob.opaque_dirs == 0 and blob.whiteouts == 10


def test_sockets_are_skipped(tmp_path):
    build(str(tmp_path / "old"), {})
    build(str(tmp_path / "new"), {"f": File()})
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "new/sock"))
    try:
        d = changes.diff(snapshot.take(str(tmp_path / "old")), snapshot.take(str(tmp_path / "new")))
        assert [c.path for c in d.changes] == ["f", "sock"]
        assert [n for n, _, _ in members(layer.write_layer(d, str(tmp_path / "l")).path)] == ["f"]
    finally:
        s.close()


def test_a_file_changed_after_the_snapshot_is_an_error_not_a_corrupt_layer(tmp_path):
    d = diff_of(tmp_path, {}, {"f": File(b"1234")})
    (tmp_path / "new/f").write_bytes(b"123456")
    with pytest.raises(InputError, match=r"new/f: changed while the layer was written"):
        layer.write_layer(d, str(tmp_path / "l"))
    assert not os.listdir(tmp_path / "new") == [] and not (tmp_path / "l").exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith("l")] == []  # no temp file left behind


def test_bad_compression_choices_are_refused(tmp_path):
    d = diff_of(tmp_path, {}, {})
    with pytest.raises(UsageError, match="unknown compression 'lz4'"):
        layer.write_layer(d, str(tmp_path / "l"), compression="lz4")
    with pytest.raises(UsageError, match="gzip level must be 0-9, got 12"):
        layer.write_layer(d, str(tmp_path / "l"), compression="gzip", level=12)


def test_bad_source_date_epoch_is_refused(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(InputError, match="SOURCE_DATE_EPOCH must be an integer"):
        layer.source_date_epoch()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert layer.source_date_epoch() == 1_700_000_000


def _oci_layout(tmp_path, blobs):
    """A minimal image layout around our layers, written by hand so umoci/skopeo judge the layers alone."""
    out = tmp_path / "oci"
    (out / "blobs/sha256").mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (out / "blobs/sha256" / digest).write_bytes(data)
        return "sha256:" + digest

    for b in blobs:
        shutil.copy(b.path, out / "blobs/sha256" / b.digest.split(":")[1])
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in blobs]},
                         "history": [{"created_by": "snapfs test"} for _ in blobs]}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": put(config), "size": len(config)},
                           "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size}
                                      for b in blobs]}).encode()
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                "digest": put(manifest), "size": len(manifest),
                                                "annotations": {"org.opencontainers.image.ref.name": "t"}}]}
    (out / "index.json").write_text(json.dumps(index))
    (out / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return out


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_umoci_and_skopeo_accept_an_image_of_our_layers(tmp_path, compression):
    base = {"bin": Dir({"sh": File(b"#!/bin/true", mode=0o755)}), "etc": Dir({"gone": File(b"g"),
                                                                               "keep": File(b"k")})}
    top = {"bin": Dir({"sh": File(b"#!/bin/true", mode=0o755), "ls": Symlink("sh")}), "etc": Dir({"keep": File(b"K")})}
    build(str(tmp_path / "empty"), {})
    build(str(tmp_path / "base"), base)
    build(str(tmp_path / "top"), top)
    take = snapshot.take
    l1 = layer.write_layer(changes.diff(take(str(tmp_path / "empty")), take(str(tmp_path / "base"))),
                           str(tmp_path / "l1"), compression=compression)
    l2 = layer.write_layer(changes.diff(take(str(tmp_path / "base")), take(str(tmp_path / "top"))),
                           str(tmp_path / "l2"), compression=compression)
    oci = _oci_layout(tmp_path, [l1, l2])
    info = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{oci}:t"], capture_output=True, text=True,
                                     check=True).stdout)
    assert info["Layers"] == [l1.digest, l2.digest]
    if compression == "gzip":  # Debian's umoci 0.4 predates zstd layers
        subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{oci}:t", str(tmp_path / "bundle")],
                       check=True, capture_output=True)
        rootfs = tmp_path / "bundle/rootfs"
        assert sorted(os.listdir(rootfs / "etc")) == ["keep"]
        assert (rootfs / "etc/keep").read_bytes() == b"K" and os.readlink(rootfs / "bin/ls") == "sh"


def test_content_is_never_read_through_a_link_planted_after_the_snapshot(tmp_path):
    # The very same file (same inode) moved out of the tree and reached through a new link in its parent's
    # place: a path-based open would pass the (dev, ino, size) check and copy it; it must not be reached.
    d = diff_of(tmp_path, {}, {"l": Dir({"x": File(b"moved out")})})
    outside = str(tmp_path / "outside")
    os.rename(str(tmp_path / "new" / "l"), outside)
    os.symlink(outside, str(tmp_path / "new" / "l"))
    with pytest.raises(InputError, match=r"new/l/x: cannot read: No such file or directory"):
        layer.write_layer(d, str(tmp_path / "out.tar"), compression="none")
    assert not os.path.exists(tmp_path / "out.tar")


def test_an_entry_below_a_symlink_is_never_put_in_a_layer(tmp_path):
    import struct

    from snapfs.errors import LayerError

    d = diff_of(tmp_path, {}, {"l": Dir({"x": File(b"x")})})
    recs = bytearray(d.new.records)
    struct.pack_into("<I", recs, 64, 0o120777)  # forge row 0 ("l") into a symlink: its child is now below one
    forged = snapshot.Snapshot(d.new.root, bytes(recs), d.new.names, d.new.extras, d.new.root_dev,
                               d.new.root_ino, d.new.start_ns, d.new.racy_ns)
    bad = changes.Diff(d.old, forged, tuple(changes.Change(c.kind, c.path, forged.entry(i), None)
                                            for i, c in enumerate(d.changes)))
    with pytest.raises(LayerError, match=r"^l/x: refusing a layer entry whose parent l is not a directory$"):
        layer.plan_entries(bad)
