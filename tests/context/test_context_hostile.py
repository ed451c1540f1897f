"""Hostile and broken archives: refused with one line naming the source and the entry; nothing lands outside."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

from context_kit import Entry, hostile_tar, tree_listing
from snapfs.context.extract import ContextError, extract_context
from snapfs.context.resolve import fetch_context
from snapfs.limits import MAX_DEPTH, MAX_HEADER_BYTES, MAX_LAYER_BYTES
from tarkit import SIZE_FIELD, SPARSE_FORMATS, deep_name, disk_usage, patch_header, plain_tar, sparse_tar

SYM, LNK, DIR = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE

HOSTILE = {
    "dotdot": ([Entry("../outside.txt", data=b"pwned")], r"\.\./outside\.txt: refused: '\.\.' in the name"),
    "deep-dotdot": ([Entry("a/../../outside.txt", data=b"pwned")], r"a/\.\./\.\./outside\.txt: refused: '\.\.' in the name"),
    "absolute": ([Entry("/tmp/outside.txt", data=b"pwned")], r"/tmp/outside\.txt: refused: absolute name"),
    "symlink-root-then-through": ([Entry("x", SYM, linkname="/"), Entry("x/etc/passwd", data=b"pwned")],
                                  r"x/etc/passwd: refused: 'x' is a symbolic link; nothing may be written"),
    "symlink-parent-then-through": ([Entry("up", SYM, linkname=".."), Entry("up/outside.txt", data=b"pwned")],
                                    r"up/outside\.txt: refused: 'up' is a symbolic link"),
    "symlink-inside-then-through": ([Entry("d", DIR, mode=0o755), Entry("l", SYM, linkname="d"),
                                     Entry("l/f", data=b"x")], r"l/f: refused: 'l' is a symbolic link"),
    "symlink-dir-then-hardlink": ([Entry("x", SYM, linkname="/etc"), Entry("h", LNK, linkname="x/passwd")],
                                  r"h: refused: 'x' is a symbolic link"),
    "hardlink-absolute": ([Entry("h", LNK, linkname="/etc/passwd")],
                          r"h: refused: hardlink target /etc/passwd: absolute name"),
    "hardlink-dotdot": ([Entry("h", LNK, linkname="../../../../etc/passwd")],
                        r"h: refused: hardlink target .*'\.\.' in the name"),
    "hardlink-missing": ([Entry("h", LNK, linkname="nothing")], r"h: refused: hardlink target nothing does not"),
    "hardlink-dir": ([Entry("d", DIR, mode=0o755), Entry("h", LNK, linkname="d")], r"h: refused: hardlink target d is a directory"),
    "root-not-dir": ([Entry("./", data=b"x")], r"\./: refused: the root entry must be a directory"),
}


@pytest.fixture
def sandbox(tmp_path):
    """A workdir next to a bait directory the archives aim at; returns (workdir, bait listing function)."""
    (tmp_path / "bait").mkdir()
    (tmp_path / "bait" / "keep.txt").write_text("keep\n")
    return tmp_path


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_archive_is_refused(sandbox, name):
    entries, message = HOSTILE[name]
    archive = sandbox / "hostile.tgz"
    archive.write_bytes(hostile_tar(entries))
    before = tree_listing(str(sandbox))
    workdir = sandbox / "work"
    with pytest.raises(ContextError, match=rf"^tar://{archive}: {message}") as info:
        fetch_context(f"tar://{archive}", workdir=str(workdir))
    assert "\n" not in str(info.value)
    assert os.listdir(workdir) == []  # the partial context is removed
    after = tree_listing(str(sandbox))
    for key in [k for k in after if k.startswith("work")]:
        after.pop(key)
    assert after == before  # nothing written next to (or above) the context
    assert not os.path.exists("/tmp/outside.txt")


def test_symlinks_themselves_are_kept_as_symlinks(tmp_path):
    data = hostile_tar([Entry("abs", SYM, linkname="/etc/passwd"), Entry("rel", SYM, linkname="../../x"),
                        Entry("l", SYM, linkname="f"), Entry("l", data=b"replaced")])
    dest = tmp_path / "ctx"
    dest.mkdir()
    extract_context(io.BytesIO(data), str(dest), what="t")
    assert os.readlink(dest / "abs") == "/etc/passwd" and os.readlink(dest / "rel") == "../../x"
    assert not os.path.islink(dest / "l") and (dest / "l").read_bytes() == b"replaced"  # replaced, not followed


def test_later_entries_replace_earlier_ones(tmp_path):
    data = hostile_tar([Entry("d/f", data=b"1"), Entry("d", data=b"now a file"), Entry("d2", data=b"x"),
                        Entry("d2", DIR, mode=0o750), Entry("d2/g", data=b"g")])
    dest = tmp_path / "ctx"
    dest.mkdir()
    extract_context(io.BytesIO(data), str(dest), what="t")
    assert (dest / "d").read_bytes() == b"now a file" and (dest / "d2" / "g").read_bytes() == b"g"
    assert os.stat(dest / "d2").st_mode & 0o777 == 0o750


def test_read_only_directories_get_their_mode_after_their_children(tmp_path):
    data = hostile_tar([Entry("ro", DIR, mode=0o555), Entry("ro/f", data=b"x", mode=0o444)])
    dest = tmp_path / "ctx"
    dest.mkdir()
    extract_context(io.BytesIO(data), str(dest), what="t")
    assert os.stat(dest / "ro").st_mode & 0o777 == 0o555 and (dest / "ro" / "f").read_bytes() == b"x"


def test_devices_are_skipped_with_a_warning(tmp_path, caplog):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ti = tarfile.TarInfo("null")
        ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
        tar.addfile(ti)
        tar.addfile(tarfile.TarInfo("ok"), io.BytesIO(b""))
    dest = tmp_path / "ctx"
    dest.mkdir()
    stats = extract_context(io.BytesIO(buf.getvalue()), str(dest), what="t")
    assert (stats.entries, stats.skipped) == (1, 1) and os.listdir(dest) == ["ok"]
    assert "skipping device node" in caplog.text


BROKEN = {
    "not-a-tar": (b"<html>this is a login page</html>" * 40, r"not a valid tar"),
    "corrupt-gzip": (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 200, r"corrupt or truncated compressed"),
    "truncated-gzip": (hostile_tar([Entry("f", data=os.urandom(100000))])[:3000], r"corrupt or truncated compressed"),
    "truncated-tar": (hostile_tar([Entry("f", data=os.urandom(5000))], "none")[:3000], r"f: corrupt or truncated"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_archive_is_one_line(tmp_path, name):
    data, message = BROKEN[name]
    archive = tmp_path / "c.tgz"
    archive.write_bytes(data)
    with pytest.raises(ContextError, match=rf"^tar://{archive}: .*{message}") as info:
        fetch_context(f"tar://{archive}", workdir=str(tmp_path / "w"))
    assert "\n" not in str(info.value)


def test_decompression_bomb_is_capped(tmp_path):
    data = hostile_tar([Entry("big", data=b"\0" * (4 << 20))])
    dest = tmp_path / "ctx"
    dest.mkdir()
    with pytest.raises(ContextError, match=r"^bomb: big: refused: its 4194304 bytes would take the archive past "
                                           r"the limit of 1048576 bytes"):
        extract_context(io.BytesIO(data), str(dest), what="bomb", max_bytes=1 << 20)
    with pytest.raises(ContextError, match=r"^bomb: decompressed size exceeds the limit of 65536 bytes"):
        extract_context(io.BytesIO(data), str(dest), what="bomb", max_bytes=65536)
    assert os.listdir(dest) == []  # refused before (or removed after) its data was written


# --- the same caps as layers: sparse files, negative sizes, headers, depth ---------------------------------------

def test_tiny_sparse_context_past_the_default_cap_is_refused(tmp_path):
    """A 2.5 KB tar:// context used to write a gigabyte file (now: counted at its full size, refused)."""
    tar, _ = sparse_tar(tmp_path, MAX_LAYER_BYTES + 1, "pax-1.0")
    assert tar.stat().st_size <= 3072
    workdir = tmp_path / "work"
    with pytest.raises(ContextError) as info:
        fetch_context(f"tar://{tar}", workdir=str(workdir))
    assert str(info.value) == (f"tar://{tar}: big: refused: its {MAX_LAYER_BYTES + 1} bytes would take the archive "
                               f"past the limit of {MAX_LAYER_BYTES} bytes (uncompressed, sparse files at their "
                               "full size)")
    assert os.listdir(workdir) == []


@pytest.mark.parametrize("fmt", sorted(SPARSE_FORMATS))
def test_sparse_context_under_the_cap_keeps_its_holes_and_is_capped_by_max_bytes(tmp_path, fmt):
    tar, source = sparse_tar(tmp_path, 1 << 30, fmt, data=((12345, b"data"),))
    dest = tmp_path / "ctx"
    dest.mkdir()
    with pytest.raises(ContextError, match=rf"^t: big: refused: its {1 << 30} bytes would take the archive past"):
        extract_context(io.BytesIO(tar.read_bytes()), str(dest), what="t", max_bytes=1_000_000)
    assert os.listdir(dest) == [] and disk_usage(dest) == (0, 0)
    extract_context(io.BytesIO(tar.read_bytes()), str(dest), what="t")
    st = os.stat(dest / "big")
    assert st.st_size == 1 << 30 and st.st_blocks * 512 <= 1 << 16
    with open(dest / "big", "rb") as f:
        f.seek(12340)
        assert f.read(16) == b"\0" * 5 + b"data" + b"\0" * 7


def test_negative_size_in_a_context_is_refused(tmp_path):
    raw = patch_header(plain_tar([("neg", b""), ("after", b"a")]), 0, SIZE_FIELD, b"\xff" * 12)
    dest = tmp_path / "ctx"
    dest.mkdir()
    with pytest.raises(ContextError) as info:
        extract_context(io.BytesIO(raw), str(dest), what="t")
    assert str(info.value) == "t: neg: negative size -1 in the header"
    assert os.listdir(dest) == []


def test_oversized_headers_in_a_context_are_refused(tmp_path):
    raw = plain_tar([("f", b"x")], pax={"comment": "x" * (2 * MAX_HEADER_BYTES)}, fmt=tarfile.PAX_FORMAT)
    dest = tmp_path / "ctx"
    dest.mkdir()
    with pytest.raises(ContextError, match=rf"^t: the headers of one entry exceed {MAX_HEADER_BYTES} bytes$"):
        extract_context(io.BytesIO(raw), str(dest), what="t")


def test_context_depth_limit(tmp_path):
    dest = tmp_path / "ctx"
    dest.mkdir()
    at_limit = [(deep_name(MAX_DEPTH), b"x")]
    stats = extract_context(io.BytesIO(plain_tar(at_limit, fmt=tarfile.PAX_FORMAT)), str(dest), what="t")
    assert stats.entries == 1
    too_deep = deep_name(MAX_DEPTH + 1)
    with pytest.raises(ContextError) as info:
        extract_context(io.BytesIO(plain_tar([(too_deep, b"x")], fmt=tarfile.PAX_FORMAT)), str(dest), what="t")
    assert str(info.value) == f"t: {too_deep}: refused: {MAX_DEPTH + 1} levels deep; the limit is {MAX_DEPTH}"


def test_context_entry_cap(tmp_path):
    dest = tmp_path / "ctx"
    dest.mkdir()
    with pytest.raises(ContextError, match=r"^t: f3: refused: more than 3 entries in one archive$"):
        extract_context(io.BytesIO(plain_tar([(f"f{i}", b"") for i in range(5)])), str(dest), what="t",
                        max_entries=3)
