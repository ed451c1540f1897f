"""Snapshots of a directory tree: take one, save it to a file, load it back.

A snapshot is the walk's compact rows (see ``rows``) plus what change detection needs later: when it was taken,
which entries were "racy" (modified so close to the snapshot that a later write could keep the same mtime) and
the content hashes (xxh3-128) of those racy regular files.
"""
from __future__ import annotations

import io
import json
import os
import stat
import struct
import time
from dataclasses import dataclass, field
from typing import Iterator

import xxhash
import zstandard

from snapfs.errors import InputError, SnapshotError
from snapfs.limits import MAX_DEPTH
from . import backend
from .rootfs import TreeView
from .rows import (Entry, TooDeep, decode, encode_extra, kept_xattrs, path_key, place_row, row_at, row_bytes, row_count,
                   row_name, stat_row, too_deep)

MAGIC = b"SNAPFS\x00\x01"
# File timestamps come from the kernel's coarse clock (one tick, 1-10 ms) and may lag the real time by one
# tick; anything modified within this window before the walk started could be rewritten in the same tick.
# (Python does not name CLOCK_REALTIME_COARSE; it is 5 on Linux.)
_COARSE_CLOCK = getattr(time, "CLOCK_REALTIME_COARSE", 5)
try:
    RACY_WINDOW_NS = max(2_000_000, 2 * int(time.clock_getres(_COARSE_CLOCK) * 1e9))
except OSError:  # pragma: no cover - no coarse clock: assume the largest common tick
    RACY_WINDOW_NS = 20_000_000
# In quiescent mode, hashing a few small racy files is cheaper than waiting for the window to pass.
_HASH_INSTEAD_OF_WAIT = (64, 4 << 20)
_CHUNK = 1 << 20


def content_hash(path: str | bytes) -> bytes:
    """xxh3-128 of a regular file's bytes (opened without following a final symlink)."""
    return _hash_fd(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))


def content_hash_at(view: TreeView, rel: str | bytes) -> bytes:
    """``content_hash`` of entry ``rel`` of a tree, reached without following any symlink on the way."""
    return _hash_fd(view.open(rel))


def _hash_fd(fd: int) -> bytes:
    h = xxhash.xxh3_128()
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
        return row_count(self.records)

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
    return _finish(root, records, names, extras, dev, ino, start=start, quiescent=quiescent, kernel=kernel)


def _finish(root: str, records: bytes, names: bytes, extras: bytes, dev: int, ino: int, *, start: int,
            quiescent: bool, kernel) -> Snapshot:
    """Racy handling shared by full and patched snapshots: hash racy files, or wait the window out."""
    racy_ns = start - RACY_WINDOW_NS
    racy = kernel.racy_rows(records, racy_ns)
    hashes: dict[int, bytes] = {}
    if racy and quiescent and len(racy) <= _HASH_INSTEAD_OF_WAIT[0] and sum(
            row_at(records, i).size for i in racy) <= _HASH_INSTEAD_OF_WAIT[1]:
        quiescent = False  # a few small files: hash them below rather than sleep
    if racy and quiescent:
        # Once the clock has moved past the window, any later write gets a newer timestamp.
        delay = (start + RACY_WINDOW_NS - time.time_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        racy_ns = 0
    elif racy:
        with TreeView(root) as view:
            for i in racy:
                try:
                    hashes[i] = content_hash_at(view, row_name(records, names, i))
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
    try:
        count = row_count(records)
    except ValueError:
        count = -1
    if count != meta["count"]:
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


class PathIndex:
    """Lookups by path in a snapshot's component-ordered rows (binary search, no per-row objects)."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap, self.n = snap, len(snap)

    def key(self, j: int) -> bytes:
        return path_key(row_name(self.snap.records, self.snap.names, j))

    def position(self, key: bytes, *, after: bool = False) -> int:
        """The first row whose key is not below ``key`` (with ``after``: above it)."""
        lo, hi = 0, self.n
        while lo < hi:
            mid = (lo + hi) // 2
            k = self.key(mid)
            if k < key or (after and k == key):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def find(self, path: str) -> int | None:
        key = path_key(os.fsencode(path))
        i = self.position(key)
        return i if i < self.n and self.key(i) == key else None

    def subtree_end(self, i: int) -> int:
        """One past the last row below directory row ``i`` (subtrees are contiguous in component order)."""
        prefix = self.key(i) + b"\x00"
        lo, hi = i + 1, self.n
        while lo < hi:  # rows below i are exactly the keys starting with prefix, and they come first
            mid = (lo + hi) // 2
            if self.key(mid).startswith(prefix):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def subtree(self, i: int) -> range:
        return range(i + 1, self.subtree_end(i))


def _extra_of(view: TreeView, rel: bytes, st: os.stat_result) -> bytes:
    """The walker's extras for one entry: a symlink's target, or the kept xattrs of files and directories."""
    if stat.S_ISLNK(st.st_mode):
        return encode_extra(view.readlink(rel), [])
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        found = []
        try:
            path = view.fd_path(rel)
            found = kept_xattrs(path) if path else []
        except OSError:
            pass
        return encode_extra(b"", found) if found else b""
    return b""


def patch(old: Snapshot, *, paths=(), subtrees=(), ignore=(), quiescent: bool = False, kernel=None) -> Snapshot:
    """The snapshot ``take(old.root)`` would give, when only ``paths`` (and anything below ``subtrees``) may
    have changed since ``old``: those are read again and spliced into the old rows, nothing else is walked.

    A path that is gone drops its rows (its whole subtree if it was a directory); a directory among
    ``subtrees`` is walked again in full (a directory replaced wholesale). Paths are read as the walker sees
    them (``TreeView``): a path below a symlink or a file is gone, never followed. Costs O(changes + log n)
    lookups and one copy of the row bytes.
    """
    kernel = kernel or backend.get()
    start = time.time_ns()
    ign = tuple(_norm_ignore(p) for p in ignore)

    def clean(p: str) -> str | None:
        p = os.path.normpath("/" + p).lstrip("/")
        if not p or p == "." or any(p == i or p.startswith(i + "/") for i in ign):
            return None
        return p

    subs = {c for c in (clean(p) for p in subtrees) if c}
    wanted = {c for c in (clean(p) for p in paths) if c} | subs
    for p in list(wanted):  # a child's change moves its parents' times and link counts: read them again too
        while "/" in p:
            p = p.rpartition("/")[0]
            if p in wanted:
                break
            wanted.add(p)
    todo = sorted(wanted, key=lambda p: path_key(os.fsencode(p)))
    index = PathIndex(old)
    drops: list[tuple[int, int]] = []
    fresh: list[tuple[int, bytes, bytes, bytes]] = []  # (insert position, name, record w/o offsets, extra)
    with TreeView(old.root) as view:
        for p in todo:
            rel = os.fsencode(p)
            st = view.lstat(rel)
            i = index.find(p)
            if i is not None:
                was_dir = stat.S_ISDIR(row_at(old.records, i).mode)
                whole = was_dir and (st is None or not stat.S_ISDIR(st.st_mode) or p in subs)
                drops.append((i, index.subtree_end(i) if whole else i + 1))
            if st is None:
                continue
            if rel.count(b"/") >= MAX_DEPTH:
                raise too_deep(view.root, rel, MAX_DEPTH)
            pos = index.position(path_key(rel), after=True)  # where p is (or would be): before its children
            fresh.append((pos, rel, stat_row(st), _extra_of(view, rel, st)))
            if p in subs and stat.S_ISDIR(st.st_mode):
                fresh += _walk_below(view, rel, pos, [x[len(p) + 1:] for x in ign if x.startswith(p + "/")],
                                     kernel)
    fresh.sort(key=lambda f: (f[0], path_key(f[1])))
    names, extras = bytearray(old.names), bytearray(old.extras)
    rows = []
    for pos, rel, rec, extra in fresh:
        rows.append((pos, place_row(rec, name_off=len(names), name_len=len(rel), extra_off=len(extras),
                                     extra_len=len(extra))))
        names += rel
        extras += extra
    records = _splice(old.records, _merge(drops), rows, len(old))
    return _finish(old.root, records, bytes(names), bytes(extras), old.root_dev, old.root_ino, start=start,
                   quiescent=quiescent, kernel=kernel)


def _walk_below(view: TreeView, rel: bytes, pos: int, ignore: list[str], kernel) -> list:
    """The walker's rows below directory ``rel``, renamed relative to the root: walked through an fd of the
    directory (opened without following anything), so no symlink on the way is followed."""
    fd = view.open(rel, os.O_RDONLY | os.O_DIRECTORY)
    via = f"/proc/self/fd/{fd}"
    try:
        # The depth limit counts from the stage root, not from the subtree.
        room = MAX_DEPTH - rel.count(b"/") - 1
        if room < 1:
            first = next(iter(os.listdir(fd)), None)
            if first is None:
                return []
            raise too_deep(view.root, rel + b"/" + os.fsencode(first), MAX_DEPTH)
        recs, names, extras, _, _ = kernel.walk(via, ignore=ignore, max_depth=room)
    except TooDeep as exc:
        raise too_deep(view.root, rel + b"/" + exc.rel, MAX_DEPTH) from None
    except InputError as exc:
        # Name the entry by its place in the tree, not by the fd it was walked through.
        raise InputError(exc.message.replace(via, os.path.join(os.fsdecode(view.root), os.fsdecode(rel)))
                         ) from None
    finally:
        os.close(fd)
    out = []
    for j in range(row_count(recs)):
        r = row_at(recs, j)
        out.append((pos, rel + b"/" + names[r.name_off:r.name_off + r.name_len], row_bytes(recs, j),
                    extras[r.extra_off:r.extra_off + r.extra_len]))
    return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _splice(records: bytes, drops: list[tuple[int, int]], rows: list[tuple[int, bytes]], n: int) -> bytes:
    """Old rows minus ``drops``, with each new row inserted before old position ``pos``."""
    kept, cur = [], 0
    for a, b in drops:
        if a > cur:
            kept.append((cur, a))
        cur = b
    if cur < n:
        kept.append((cur, n))
    out, k = [], 0
    for a, b in kept:
        while k < len(rows) and rows[k][0] <= a:
            out.append(rows[k][1])
            k += 1
        cur = a
        while k < len(rows) and rows[k][0] < b:
            out.append(row_bytes(records, cur, rows[k][0]))
            out.append(rows[k][1])
            cur = rows[k][0]
            k += 1
        out.append(row_bytes(records, cur, b))
    out.extend(r for _, r in rows[k:])
    return b"".join(out)
