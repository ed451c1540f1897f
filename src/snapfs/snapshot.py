"""Snapshots of a directory tree: take one, save it to a file, load it back.

A snapshot is the walk's compact rows (see ``rows``) plus what change detection needs later: when it was taken,
which entries were "racy" (modified so close to the snapshot that a later write could keep the same mtime) and
the content hashes (xxh3-128) of those racy regular files.
"""
from __future__ import annotations

import io
import json
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Iterator

import xxhash
import zstandard

from . import backend
from .errors import InputError, SnapshotError
from .rows import RECORD, Entry, decode

MAGIC = b"SNAPFS\x00\x01"
# File timestamps come from the kernel's coarse clock (one tick, 1-10 ms) and may lag the real time by one
# tick; anything modified within this window before the walk started could be rewritten in the same tick.
RACY_WINDOW_NS = max(20_000_000, 2 * int(time.clock_getres(getattr(time, "CLOCK_REALTIME_COARSE", 0)) * 1e9))
_CHUNK = 1 << 20


def content_hash(path: str | bytes) -> bytes:
    """xxh3-128 of a regular file's bytes (opened without following a final symlink)."""
    h = xxhash.xxh3_128()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with open(fd, "rb", buffering=0, closefd=False) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    finally:
        os.close(fd)
    return h.digest()


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The state of a tree at one moment. Rows are in component order; see ``rows``."""

    root: str
    records: bytes
    names: bytes
    extras: bytes
    root_dev: int
    root_ino: int
    start_ns: int
    racy_ns: int
    hashes: dict[int, bytes] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records) // RECORD.size

    def entry(self, i: int) -> Entry:
        return decode(self.records, self.names, self.extras, i)

    def __iter__(self) -> Iterator[Entry]:
        return (self.entry(i) for i in range(len(self)))

    @property
    def rows(self) -> tuple[bytes, bytes, bytes]:
        return (self.records, self.names, self.extras)

    def full_path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def same_tree(self, other: Snapshot) -> bool:
        """Two snapshots of one tree (same root inode on the same device): ctime and inode compare."""
        return (self.root_dev, self.root_ino) == (other.root_dev, other.root_ino)


def take(root: str, *, one_fs: bool = True, ignore: tuple[str, ...] | list[str] = (), xattrs: bool = True,
         quiescent: bool = False, kernel=None) -> Snapshot:
    """Walk ``root`` and return its snapshot.

    Racy regular files (mtime or ctime within ``RACY_WINDOW_NS`` of the walk's start) get their content
    hashed, so a later same-tick rewrite is still seen. With ``quiescent=True`` the caller promises that
    nothing writes to the tree until this returns; then it is enough to wait until the racy window has passed
    (a few ms) and no content is hashed.
    """
    kernel = kernel or backend.get()
    ign = tuple(_norm_ignore(p) for p in ignore)
    start = time.time_ns()
    records, names, extras, dev, ino = kernel.walk(root, one_fs=one_fs, ignore=ign, xattrs=xattrs)
    racy_ns = start - RACY_WINDOW_NS
    racy = kernel.racy_rows(records, racy_ns)
    hashes: dict[int, bytes] = {}
    if racy and quiescent:
        # Once the clock has moved past the window, any later write gets a newer timestamp.
        delay = (start + RACY_WINDOW_NS - time.time_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        racy_ns = 0
    elif racy:
        prefix = os.fsencode(root)
        for i in racy:
            rel = decode(records, names, b"", i).path
            try:
                hashes[i] = content_hash(os.path.join(prefix, os.fsencode(rel)))
            except OSError:
                pass  # vanished or unreadable since the walk: the diff will see its stat change
    return Snapshot(os.path.abspath(root), records, names, extras, dev, ino, start, racy_ns, hashes)


def _norm_ignore(path: str) -> str:
    p = os.path.normpath("/" + path).lstrip("/")
    if not p or p == ".":
        raise InputError(f"ignore path {path!r} would ignore the whole root")
    return p


def save(snap: Snapshot, path: str) -> None:
    """Write ``snap`` to ``path`` atomically (temp file + rename); zstd-compressed with a checksum."""
    meta = {"root": snap.root, "root_dev": snap.root_dev, "root_ino": snap.root_ino, "start_ns": snap.start_ns,
            "racy_ns": snap.racy_ns, "count": len(snap), "sizes": [len(snap.records), len(snap.names),
                                                                    len(snap.extras), len(snap.hashes)]}
    head = json.dumps(meta, sort_keys=True).encode()
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(head)) + head)
            cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, threads=-1)
            with cctx.stream_writer(f, closefd=False) as w:
                for blob in (snap.records, snap.names, snap.extras):
                    w.write(blob)
                for i in sorted(snap.hashes):
                    w.write(struct.pack("<Q", i) + snap.hashes[i])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        raise InputError(f"{path}: cannot write snapshot: {exc.strerror}") from None


def load(path: str, *, kernel=None) -> Snapshot:
    """Read a snapshot written by ``save``; a corrupt or truncated file is a SnapshotError."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise InputError(f"{path}: cannot read snapshot: {exc.strerror}") from None
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + 4:
        raise SnapshotError(f"{path}: not a snapfs snapshot")
    (hlen,) = struct.unpack_from("<I", raw, len(MAGIC))
    try:
        meta = json.loads(raw[len(MAGIC) + 4:len(MAGIC) + 4 + hlen])
        nrec, nnames, nextras, nhash = meta["sizes"]
        body = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw[len(MAGIC) + 4 + hlen:]))
        records, names, extras = body.read(nrec), body.read(nnames), body.read(nextras)
        hblob = body.read(nhash * 24)
        if body.read(1) or (len(records), len(names), len(extras), len(hblob)) != (nrec, nnames, nextras,
                                                                                    nhash * 24):
            raise ValueError("length mismatch")
    except (ValueError, KeyError, TypeError, zstandard.ZstdError) as exc:
        raise SnapshotError(f"{path}: corrupt snapshot ({exc})") from None
    if nrec % RECORD.size or nrec // RECORD.size != meta["count"]:
        raise SnapshotError(f"{path}: corrupt snapshot (record count)")
    problem = (kernel or backend.get()).check_rows(records, names, extras)
    if problem:
        raise SnapshotError(f"{path}: corrupt snapshot ({problem})")
    hashes = {struct.unpack_from("<Q", hblob, k)[0]: hblob[k + 8:k + 24] for k in range(0, len(hblob), 24)}
    if any(i >= meta["count"] for i in hashes):
        raise SnapshotError(f"{path}: corrupt snapshot (hash index)")
    return Snapshot(meta["root"], records, names, extras, meta["root_dev"], meta["root_ino"], meta["start_ns"],
                    meta["racy_ns"], hashes)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
