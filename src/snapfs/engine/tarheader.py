"""Tar headers for layer entries (leaf module, no IO).

The common entry (ASCII name and link target of at most 100 bytes, no xattrs, numbers that fit the octal
fields) is encoded directly: ``tarfile``'s general builder costs ~25 us per entry, which dominates layers of
many small files. Everything else goes through ``tarfile`` in PAX format. Both paths give the same bytes for
the same entry; the tests check the fast path against ``tarfile`` as an oracle.
"""
from __future__ import annotations

import tarfile
import zlib

_MAGIC_AND_NAMES = b"ustar\x0000" + b"\0" * 64  # magic, version, empty uname and gname
_NO_DEV = b"\0" * 16
_PREFIX_PAD = b"\0" * 167  # prefix (155) and the block's tail (12)
_SMALL = 0o7777777  # largest value of an 8-byte octal field
_BIG = 0o77777777777  # of a 12-byte one
DEVICE_TYPES = (tarfile.CHRTYPE, tarfile.BLKTYPE)


def header(name: str, *, typ: bytes, mode: int, uid: int, gid: int, mtime: int, size: int = 0,
           linkname: str = "", devmajor: int = 0, devminor: int = 0,
           xattrs: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    """The header block(s) for one entry; directory names get their trailing slash here."""
    if typ == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    if (not xattrs and name.isascii() and linkname.isascii() and len(name) <= 100 and len(linkname) <= 100
            and 0 <= uid <= _SMALL and 0 <= gid <= _SMALL and 0 <= size <= _BIG and 0 <= mtime <= _BIG
            and 0 <= devmajor <= _SMALL and 0 <= devminor <= _SMALL):
        dev = b"%07o\0%07o\0" % (devmajor, devminor) if typ in DEVICE_TYPES else _NO_DEV
        block = b"".join((name.encode().ljust(100, b"\0"),
                          b"%07o\0%07o\0%07o\0%011o\0%011o\0        " % (mode & 0o7777, uid, gid, size, mtime),
                          typ, linkname.encode().ljust(100, b"\0"), _MAGIC_AND_NAMES, dev, _PREFIX_PAD))
        # Every byte is ASCII, so the sum stays below adler32's modulus and its low half is 1 + the sum.
        chksum = (zlib.adler32(block) & 0xFFFF) - 1
        return b"%s%06o\0 %s" % (block[:148], chksum, block[156:])
    return slow_header(name, typ=typ, mode=mode, uid=uid, gid=gid, mtime=mtime, size=size, linkname=linkname,
                       devmajor=devmajor, devminor=devminor, xattrs=xattrs)


def slow_header(name: str, *, typ: bytes, mode: int, uid: int, gid: int, mtime: int, size: int = 0,
                linkname: str = "", devmajor: int = 0, devminor: int = 0,
                xattrs: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    """Any entry, through tarfile's PAX writer (long or non-ASCII names, xattrs, big numbers)."""
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime, ti.size = typ, mode & 0o7777, uid, gid, mtime, size
    ti.linkname, ti.uname, ti.gname = linkname, "", ""
    if typ in DEVICE_TYPES:
        ti.devmajor, ti.devminor = devmajor, devminor
    if xattrs:
        # Binary values survive as surrogate escapes; tarfile then marks the record hdrcharset=BINARY.
        ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in xattrs}
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
