"""A blob store with a read-only fallback (a shared, pre-warmed cache) and the tag records ``snapfs warm`` keeps."""
from __future__ import annotations

import hashlib

from snapfs.image.blobstore import BlobStore
from snapfs.image.reference import parse_reference
from snapfs.image.warmrefs import WarmRefs
from snapfs.platforms import Platform


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_reads_find_the_fallback_and_writes_stay_in_the_store(tmp_path):
    shared = BlobStore(str(tmp_path / "shared"))
    warmed = shared.put_bytes(b"warmed")
    store = BlobStore(str(tmp_path / "own"), private=True, fallback=shared)
    assert store.has(warmed, size=6) and not store.has(warmed, size=7)
    assert store.path(warmed) == shared.path(warmed)
    assert store.read_bytes(warmed, limit=10) == b"warmed"
    assert store.put_bytes(b"warmed") == warmed  # already there: nothing written
    assert not (tmp_path / "own").exists()
    new = store.put_bytes(b"new")
    assert store.path(new) == store.own_path(new) and not shared.has(new)
    # A damaged copy in the shared store (wrong size) is not used: the blob is written to the store itself.
    bad = _digest(b"right")
    with open(shared.own_path(bad), "wb") as f:
        f.write(b"wrong size")
    assert not store.has(bad, size=5)
    store.put_bytes(b"right")
    assert store.path(bad) == store.own_path(bad) and store.has(bad, size=5)


def test_warm_refs_record_tags_per_platform(tmp_path):
    refs = WarmRefs(str(tmp_path))
    amd64, arm64 = Platform.parse("linux/amd64"), Platform.parse("linux/arm64")
    tag = parse_reference("registry.example/app:1")
    assert refs.lookup(tag, amd64) is None
    refs.record(tag, amd64, _digest(b"a"))
    refs.record(tag, arm64, _digest(b"b"))
    refs.record(parse_reference("registry.example/app:2"), amd64, _digest(b"c"))
    assert refs.lookup(tag, amd64) == _digest(b"a") and refs.lookup(tag, arm64) == _digest(b"b")
    assert refs.lookup(parse_reference("registry.example/app:1"), Platform.parse("linux/arm/v7")) is None
    pinned = parse_reference(f"registry.example/app@{_digest(b'x')}")
    refs.record(pinned, amd64, _digest(b"x"))  # a digest needs no record
    assert refs.lookup(pinned, amd64) is None
    (tmp_path / "refs.json").write_text("{not json")
    assert refs.lookup(tag, amd64) is None  # damaged: as if nothing was recorded
