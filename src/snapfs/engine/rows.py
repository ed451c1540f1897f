"""The snapshot row format shared by both kernels, and its decoding into friendly values.

A snapshot is three byte strings: fixed-size records, concatenated relative paths, and an "extras" blob holding
symlink targets and xattrs for the entries that have them. Rows come in component order: bytewise by path
except that '/' sorts first, which is the order of a depth-first walk with sorted siblings.
"""
from __future__ import annotations

import errno
import os
import stat
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple

from snapfs.errors import InputError

# One row per entry; this module owns the layout (the compiled kernel keeps a C copy that must match).
RECORD = struct.Struct("<QqqQQQQQIIIIIIII")
assert RECORD.size == 96
_NAMES_AT = struct.Struct("<QQ")  # name_off, extra_off: bytes 48..63
_LENGTHS_AT = struct.Struct("<II")  # name_len, extra_len: bytes 80..87

FLAG_MOUNTPOINT = 1

# Why an entry counts as changed (bits returned by the kernels' diff_rows).
REASONS = {
    1: "type", 2: "mode", 4: "owner", 8: "size", 16: "mtime", 32: "ctime", 64: "inode",
    128: "link/xattrs", 256: "rdev", 512: "nlink", 1024: "content",
}
R_TYPE, R_INODE, R_HASH = 1, 64, 1024

ADDED, DELETED, MODIFIED = 0, 1, 2


class Row(NamedTuple):
    """One record's fields in ``RECORD`` order; the offsets and lengths point into the names and extras."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    rdev: int
    name_off: int
    extra_off: int
    mode: int
    uid: int
    gid: int
    nlink: int
    name_len: int
    extra_len: int
    flags: int
    reserved: int


def row_count(records: bytes) -> int:
    """How many rows ``records`` holds; a length that is not a whole number of rows is an error."""
    n, rest = divmod(len(records), RECORD.size)
    if rest:
        raise ValueError(f"{len(records)} bytes of records is not a whole number of rows")
    return n


def row_at(records: bytes, i: int) -> Row:
    return Row._make(RECORD.unpack_from(records, i * RECORD.size))


def iter_rows(records: bytes) -> Iterator[Row]:
    return map(Row._make, RECORD.iter_unpack(records))


def row_bytes(records: bytes, lo: int, hi: int | None = None) -> bytes:
    """The raw records of rows ``lo`` up to ``hi`` (default: row ``lo`` alone)."""
    return records[lo * RECORD.size:(lo + 1 if hi is None else hi) * RECORD.size]


def row_name(records: bytes, names: bytes, i: int) -> bytes:
    r = row_at(records, i)
    return names[r.name_off:r.name_off + r.name_len]


def stat_row(st: os.stat_result, *, name_off: int = 0, name_len: int = 0, extra_off: int = 0, extra_len: int = 0,
             flags: int = 0) -> bytes:
    """The record of an entry with ``lstat`` result ``st``."""
    return RECORD.pack(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, st.st_rdev, name_off,
                       extra_off, st.st_mode, st.st_uid, st.st_gid, st.st_nlink, name_len, extra_len, flags, 0)


def place_row(rec: bytes, *, name_off: int, name_len: int, extra_off: int, extra_len: int) -> bytes:
    """``rec`` pointing at a name and an extra (an empty extra has offset 0, as the walkers write it)."""
    out = bytearray(rec)
    _NAMES_AT.pack_into(out, 48, name_off, extra_off if extra_len else 0)
    _LENGTHS_AT.pack_into(out, 80, name_len, extra_len)
    return bytes(out)


class Entry(NamedTuple):
    """One filesystem entry as recorded by a walk."""

    path: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    rdev: int
    nlink: int
    link: str | None
    xattrs: tuple[tuple[str, bytes], ...]
    flags: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)


def reasons_text(bits: int) -> str:
    return ",".join(name for bit, name in REASONS.items() if bits & bit) or "none"


def encode_extra(link: bytes | None, xattrs: list[tuple[bytes, bytes]]) -> bytes:
    """u32 link length + link, then per xattr (sorted by name): u16 name length, name, u32 value length, value."""
    if link is None and not xattrs:
        return b""
    parts = [struct.pack("<I", len(link or b"")), link or b""]
    for name, value in sorted(xattrs):
        parts += [struct.pack("<H", len(name)), name, struct.pack("<I", len(value)), value]
    return b"".join(parts)


def decode_extra(blob: bytes, is_link: bool) -> tuple[str | None, tuple[tuple[str, bytes], ...]]:
    if not blob:
        return (None, ())
    (n,) = struct.unpack_from("<I", blob, 0)
    link = blob[4:4 + n].decode("utf-8", "surrogateescape") if is_link else None
    pos, xattrs = 4 + n, []
    while pos < len(blob):
        (nl,) = struct.unpack_from("<H", blob, pos)
        name = blob[pos + 2:pos + 2 + nl].decode("utf-8", "surrogateescape")
        pos += 2 + nl
        (vl,) = struct.unpack_from("<I", blob, pos)
        xattrs.append((name, bytes(blob[pos + 4:pos + 4 + vl])))
        pos += 4 + vl
    return (link, tuple(xattrs))


def decode(records: bytes, names: bytes, extras: bytes, i: int) -> Entry:
    r = row_at(records, i)
    path = names[r.name_off:r.name_off + r.name_len].decode("utf-8", "surrogateescape")
    link, xattrs = decode_extra(extras[r.extra_off:r.extra_off + r.extra_len], stat.S_ISLNK(r.mode))
    return Entry(path, r.mode, r.uid, r.gid, r.size, r.mtime_ns, r.ctime_ns, r.ino, r.dev, r.rdev, r.nlink, link,
                 xattrs, r.flags)


def path_key(path: bytes) -> bytes:
    """Sort key giving component order (no path contains NUL, so mapping '/' to it is safe)."""
    return path.replace(b"/", b"\x00")


def add_xattrs(root: bytes, records: bytes, names: bytes, extras: bytes, *, scan) -> tuple[bytes, bytes]:
    """Run the xattr pass ``scan(root, records, names, lo, hi) -> [(i, blob)]`` and attach the blobs.

    Large trees are split across threads (the compiled scan releases the GIL). Blobs are appended to
    ``extras`` in row order, so the result does not depend on the thread count.
    """
    n = row_count(records)
    workers = min(4, os.cpu_count() or 1) if n >= 20_000 else 1
    bounds = [n * k // workers for k in range(workers + 1)]
    if workers == 1:
        found = scan(root, records, names, 0, n)
    else:
        with ThreadPoolExecutor(workers) as pool:
            parts = pool.map(lambda k: scan(root, records, names, bounds[k], bounds[k + 1]), range(workers))
            found = [item for part in parts for item in part]
    if not found:
        return records, extras
    recs, ext = bytearray(records), bytearray(extras)
    for i, blob in found:
        off = i * RECORD.size
        struct.pack_into("<Q", recs, off + 56, len(ext))  # extra_off
        struct.pack_into("<I", recs, off + 84, len(blob))  # extra_len
        ext += blob
    return bytes(recs), bytes(ext)


def too_deep(root: bytes, rel: bytes, max_depth: int):
    """The error for entry ``rel`` nested more than ``max_depth`` levels below ``root``."""
    return TooDeep(os.fsencode(root), bytes(rel), max_depth)


class TooDeep(InputError):
    """A tree nested deeper than the limit: one line naming the start of the path (the whole path can be
    hundreds of kilobytes); ``rel`` keeps the whole path for callers that walked a subtree."""

    def __init__(self, root: bytes, rel: bytes, max_depth: int) -> None:
        self.root, self.rel, self.max_depth = root, rel, max_depth
        parts = rel.split(b"/")
        head = b"/".join(parts[:4]) + (b"/..." if len(parts) > 4 else b"")
        where = os.fsdecode(root.rstrip(b"/") + b"/" + head)
        super().__init__(f"{where}: directory tree nested deeper than {max_depth} levels (snapfs's depth limit)")


def fd_room(max_depth: int) -> None:
    """A walk keeps one fd per level: make sure the soft RLIMIT_NOFILE leaves room for ``max_depth`` of them
    on top of what the process already uses (raised up to the hard limit, as Go's runtime does)."""
    import resource

    want = max_depth + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def kept_xattrs(path: str) -> list[tuple[bytes, bytes]]:
    """The xattrs an image keeps (``security.capability`` and ``user.*``) of one path, never following a link;
    one that vanishes between listing and reading is skipped."""
    found = []
    for name in os.listxattr(path, follow_symlinks=False):
        b = name.encode("utf-8", "surrogateescape")
        if b == b"security.capability" or b.startswith(b"user."):
            try:
                found.append((b, os.getxattr(path, name, follow_symlinks=False)))
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
    return found


def long_path_xattrs(root: bytes, records, names, rows: list[int]) -> list[tuple[int, bytes]]:
    """Kept xattrs of the regular files and directories ``rows`` whose full paths are too long for a path
    syscall: reached through directory fds instead (``TreeView``), never following a symlink."""
    from .rootfs import TreeView

    out = []
    with TreeView(root) as view:
        for i in rows:
            rel = bytes(row_name(records, names, i))
            try:
                path = view.fd_path(rel)
                found = kept_xattrs(path) if path else []
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.ENOENT):
                    continue
                raise InputError(f"{os.fsdecode(root)}/{os.fsdecode(rel)}: listing xattrs failed: "
                                 f"{os.strerror(exc.errno)}") from None
            if found:
                out.append((i, encode_extra(b"", found)))
    return out
