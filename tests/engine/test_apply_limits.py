"""What one layer may cost: caps counted on declared sizes (sparse files at their apparent size), entry counts,
negative sizes, header sizes, depth; every refusal is one line and leaves no partial file."""
from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from deepkit import make_chain
from snapfs.builder.stageroot import unpack
from snapfs.engine.apply import apply_layer
from snapfs.engine.rootfs import remove_tree
from snapfs.errors import LayerError
from snapfs.image.model import Layer
from snapfs.limits import MAX_DEPTH, MAX_HEADER_BYTES, MAX_LAYER_BYTES
from tarkit import SIZE_FIELD, SPARSE_FORMATS, deep_name, disk_usage, patch_header, plain_tar, sparse_tar

GIB = 1 << 30


def cli_apply(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapfs", "apply", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def target(tmp_path):
    t = tmp_path / "target"
    t.mkdir()
    yield t
    if t.is_dir():  # deep trees: shutil.rmtree (and so pytest's own clean-up) recurses once per level
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            remove_tree(fd, "target")
        finally:
            os.close(fd)


# --- sparse entries ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", sorted(SPARSE_FORMATS))
def test_cli_refuses_a_tiny_sparse_tar_past_max_bytes_before_writing(tmp_path, target, fmt):
    tar, _ = sparse_tar(tmp_path, 4 * GIB, fmt)
    assert tar.stat().st_size <= 3072  # 1.5 KB in the old GNU format
    r = cli_apply("--max-bytes", 1_000_000, tar, target)
    assert r.returncode == 4, r.stderr
    assert r.stderr.splitlines() == [f"snapfs: {tar}: big: its {4 * GIB} bytes would take the archive past the "
                                     "limit of 1000000 bytes (uncompressed, sparse files at their full size)"]
    assert os.listdir(target) == [] and disk_usage(target) == (0, 0)  # no partial file, nothing allocated


@pytest.mark.parametrize("fmt", sorted(SPARSE_FORMATS))
def test_sparse_files_are_written_with_their_holes(tmp_path, target, fmt):
    size = 64 << 20
    data = ((0, b"head"), (5_000_003, os.urandom(70_000)), (size - 3, b"end"))
    tar, source = sparse_tar(tmp_path, size, fmt, data=data)
    stats = apply_layer(tar, target)
    out = target / "big"
    assert stats.entries == 1 and out.stat().st_size == size
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    assert out.stat().st_blocks * 512 < 1 << 20  # the holes stayed holes: ~70 KB allocated, not 64 MiB


def gzip_layer(tar: Path) -> Layer:
    plain = tar.read_bytes()
    blob = tar.with_suffix(".tar.gz")
    blob.write_bytes(gzip.compress(plain))
    return Layer(path=str(blob), digest="sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest(),
                 diff_id="sha256:" + hashlib.sha256(plain).hexdigest(), size=blob.stat().st_size)


def test_sparse_base_layer_unpacks_as_holes_or_is_refused_past_the_default_cap(tmp_path, target):
    """An 85-byte gzip layer used to write gigabytes into the cache of unpacked bases."""
    layer = gzip_layer(sparse_tar(tmp_path, 4 * GIB, "gnu")[0])
    assert layer.size < 200
    unpack([layer], str(target))
    assert disk_usage(target) == (4 * GIB, 0)  # a 4 GiB file that is one hole: nothing allocated
    os.unlink(target / "big")
    layer = gzip_layer(sparse_tar(tmp_path, MAX_LAYER_BYTES + 4096, "gnu")[0])
    blob = layer.path
    with pytest.raises(LayerError) as err:
        unpack([layer], str(target))
    assert err.value.message == (f"{blob}: big: its {MAX_LAYER_BYTES + 4096} bytes would take the archive past "
                                 f"the limit of {MAX_LAYER_BYTES} bytes (uncompressed, sparse files at their "
                                 "full size)")
    assert os.listdir(target) == []


def test_a_sparse_map_claiming_more_data_than_the_archive_holds_is_refused(tmp_path, target):
    pax = {"GNU.sparse.map": "0,4096", "GNU.sparse.size": "8192", "GNU.sparse.name": "s"}
    layer = tmp_path / "l.tar"
    layer.write_bytes(plain_tar([("s", b"x" * 512), ("after", b"a")], pax=pax, fmt=tarfile.PAX_FORMAT))
    with pytest.raises(LayerError) as err:
        apply_layer(layer, target)
    assert err.value.message == f"{layer}: s: invalid sparse map: 4096 bytes of data, the archive holds 512"
    pax["GNU.sparse.map"] = "100,10,0,10"  # out of order
    layer.write_bytes(plain_tar([("s", b"x" * 512)], pax=pax, fmt=tarfile.PAX_FORMAT))
    with pytest.raises(LayerError, match=r": s: invalid sparse map: region 0\+10 of a 8192-byte file$"):
        apply_layer(layer, target)
    assert os.listdir(target) == []


# --- negative sizes and oversized headers -----------------------------------------------------------------------

@pytest.mark.parametrize("field, shown", [
    (b"\xff" * 12, -1),  # base-256, as GNU tar encodes large or negative numbers
    (b"\xff" + b"\xff" * 9 + b"\xfc\x00", -1024),
    (b"-0000000001\0", -1),  # octal with a sign: tarfile's int() takes it
])
def test_a_negative_size_is_refused(tmp_path, target, field, shown):
    raw = patch_header(plain_tar([("neg", b""), ("after", b"a")]), 0, SIZE_FIELD, field)
    layer = tmp_path / "neg.tar"
    layer.write_bytes(raw)
    r = cli_apply(layer, target)
    assert r.returncode == 4, r.stderr
    assert r.stderr.splitlines() == [f"snapfs: {layer}: neg: negative size {shown} in the header"]
    assert os.listdir(target) == []  # was: "neg" applied as an empty file


def test_a_negative_size_in_a_pax_record_is_refused(tmp_path, target):
    layer = tmp_path / "neg.tar"
    layer.write_bytes(plain_tar([("neg", b""), ("after", b"a")], pax={"size": "-5"}, fmt=tarfile.PAX_FORMAT))
    with pytest.raises(LayerError) as err:
        apply_layer(layer, target)
    assert err.value.message == f"{layer}: neg: negative size -5 in the header"


def test_headers_past_the_cap_are_refused_before_they_fill_memory(tmp_path, target):
    raw = plain_tar([("f", b"x")], pax={"comment": "x" * (2 * MAX_HEADER_BYTES)}, fmt=tarfile.PAX_FORMAT)
    layer = tmp_path / "fat.tar.gz"
    layer.write_bytes(gzip.compress(raw))
    with pytest.raises(LayerError) as err:
        apply_layer(layer, target)
    assert err.value.message == f"{layer}: the headers of one entry exceed {MAX_HEADER_BYTES} bytes"


# --- entry count and partial files ------------------------------------------------------------------------------

def test_entry_cap(tmp_path, target):
    layer = tmp_path / "many.tar"
    layer.write_bytes(plain_tar([(f"f{i}", b"") for i in range(11)]))
    assert apply_layer(layer, target, max_entries=11).entries == 11
    r = cli_apply("--max-entries", 10, layer, tmp_path)
    assert r.returncode == 4 and r.stderr.splitlines() == [f"snapfs: {layer}: f10: more than 10 entries in one "
                                                           "archive"], r.stderr
    assert not (tmp_path / "f10").exists()


def test_a_file_stopped_half_way_by_the_stream_cap_is_removed(tmp_path, target):
    layer = tmp_path / "two.tar"
    layer.write_bytes(plain_tar([("big", b"b" * (3 << 20)), ("more", b"m" * (3 << 20))]))
    with pytest.raises(LayerError, match="decompressed size exceeds the limit of 3774873 bytes"):
        apply_layer(layer, target, max_bytes=int(3.6 * (1 << 20)))
    assert os.listdir(target) == []  # was: 3 MiB of "big" left behind


def test_a_file_whose_data_is_truncated_is_removed(tmp_path, target):
    raw = plain_tar([("a", b"1"), ("big", b"y" * 5000)])
    layer = tmp_path / "cut.tar"
    layer.write_bytes(raw[:512 * 3 + 1000])
    with pytest.raises(LayerError, match="big: corrupt or truncated tar data: unexpected end of data"):
        apply_layer(layer, target)
    assert sorted(os.listdir(target)) == ["a"]


# --- depth ------------------------------------------------------------------------------------------------------

def test_a_whiteout_removes_a_2000_deep_tree(tmp_path, target):
    make_chain(str(target), 2000, name="d")
    make_chain(str(target / "keep"), 3, name="k")
    layer = tmp_path / "wh.tar"
    layer.write_bytes(plain_tar([(".wh.d", b"")]))
    r = cli_apply(layer, target)  # was: a RecursionError traceback
    assert r.returncode == 0, r.stderr
    assert os.listdir(target) == ["keep"]


def test_an_opaque_directory_hides_a_2000_deep_tree(tmp_path, target):
    make_chain(str(target / "top"), 2000, name="d")
    layer = tmp_path / "opq.tar"
    layer.write_bytes(plain_tar([("top/mine", b"m"), ("top/.wh..wh..opq", b"")]))
    apply_layer(layer, target)
    assert os.listdir(target / "top") == ["mine"]


def test_an_entry_deeper_than_max_depth_is_refused(tmp_path, target):
    name = deep_name(MAX_DEPTH + 1)
    layer = tmp_path / "deep.tar"
    layer.write_bytes(plain_tar([("ok", b"1"), (name, b"x")], fmt=tarfile.PAX_FORMAT))
    r = cli_apply(layer, target)
    assert r.returncode == 4, r.stderr
    assert r.stderr.splitlines() == [f"snapfs: {layer}: {name}: {MAX_DEPTH + 1} levels deep; the limit is "
                                     f"{MAX_DEPTH}"]
    assert sorted(os.listdir(target)) == ["ok"]  # refused before its parents were made


def test_a_layer_at_max_depth_applies(tmp_path, target):
    entries = [(deep_name(level, "f"), b"x") for level in range(1, MAX_DEPTH + 1)]
    layer = tmp_path / "deep.tar.gz"
    layer.write_bytes(gzip.compress(plain_tar(entries, fmt=tarfile.PAX_FORMAT)))
    assert apply_layer(layer, target).entries == MAX_DEPTH
    fd = os.open(target, os.O_RDONLY)
    try:
        for _ in range(MAX_DEPTH - 1):
            assert os.stat("f", dir_fd=fd).st_size == 1
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        assert os.stat("f", dir_fd=fd).st_size == 1
    finally:
        os.close(fd)
