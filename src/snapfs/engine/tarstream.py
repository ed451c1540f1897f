"""Reading an untrusted tar stream once, front to back: the checks layers and context archives share.

``tarfile`` parses the headers; this module bounds what a hostile stream can make it do:

- the bytes read while parsing one entry's headers (pax records, GNU long names, sparse maps) are capped at
  :data:`snapfs.limits.MAX_HEADER_BYTES`, so a header that claims gigabytes cannot fill memory;
- a negative size (base-256 or octal, in the header or a pax record) is refused, as GNU tar refuses it;
- a sparse entry's map must be ordered, inside the file and covered by the data the archive really holds;
- :class:`Budget` counts every entry at its declared size, a sparse file at its apparent size with the holes
  included, so a 1.5 KB sparse tar cannot stand for gigabytes; an entry over the cap is refused before anything
  of it is written. It also caps the number of entries and their depth.

Sparse entries (GNU old format and pax 0.0, 0.1 and 1.0, as GNU tar writes them and Go's archive/tar reads
them) are written with their holes left as holes: only the data the archive holds reaches the disk.

Errors: :class:`Refused` (the current entry; callers name the entry) and :class:`snapfs.errors.LayerError`
(the stream), both one line.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
from collections import deque
from typing import BinaryIO, Iterator

from snapfs.errors import LayerError
from snapfs.limits import MAX_DEPTH, MAX_HEADER_BYTES

CHUNK = 1 << 20


class Refused(Exception):
    """A reason to refuse the current entry; callers turn it into their error naming the archive and entry."""


class _BadHeader(Exception):
    """Raised from inside tarfile's header parsing; never a tarfile.HeaderError, which tarfile would swallow."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name, self.reason = name, reason


def display(name: str) -> str:
    """A name fit for a one-line message: control characters (or an empty name) are shown quoted."""
    return name if name and name.isprintable() else repr(name)


class HashingSource:
    """The uncompressed tar bytes: hashed and counted as tarfile reads them. The last few reads are kept so
    the block where tarfile stopped can be inspected (tarfile silently treats a corrupt or truncated header
    after the first member as the end of the archive). While a header is parsed, reads past ``header_end``
    stop the archive."""

    def __init__(self, reader: BinaryIO, what: str) -> None:
        self._reader, self._what = reader, what
        self._sha = hashlib.sha256()
        self._tail: deque[tuple[int, bytes]] = deque(maxlen=4)
        self.total = 0
        self.eof = False
        self.header_end: int | None = None

    def read(self, size: int = CHUNK) -> bytes:
        if self.header_end is not None and self.total > self.header_end:
            raise _BadHeader("", f"the headers of one entry exceed {MAX_HEADER_BYTES} bytes")
        try:
            data = self._reader.read(size if size is not None and size >= 0 else CHUNK)
        except LayerError:
            raise
        except Exception as exc:  # whatever a decompressor raises is about the data (or the disk under it)
            raise LayerError(f"{self._what}: corrupt or truncated compressed data: {exc}") from None
        if not data:
            self.eof = True
            return b""
        self._sha.update(data)
        self._tail.append((self.total, data))
        self.total += len(data)
        return data

    def window(self, offset: int, size: int) -> bytes | None:
        """Bytes at [offset, offset+size) if the recent reads cover them (clipped at the end of data)."""
        if not self._tail or offset < self._tail[0][0]:
            return None
        joined = b"".join(chunk for _, chunk in self._tail)
        start = offset - self._tail[0][0]
        return joined[start:start + size]

    def drain(self) -> None:
        """Read (and hash) what follows the end-of-archive marker: the diff_id covers the whole stream."""
        self.header_end = None
        while self.read(CHUNK):
            pass

    @property
    def diff_id(self) -> str:
        return "sha256:" + self._sha.hexdigest()


class _CheckedInfo(tarfile.TarInfo):
    """tarfile's header parser with the checks GNU tar makes and tarfile does not."""

    def _proc_member(self, tarfile_):
        if self.size < 0:
            raise _BadHeader(self.name, f"negative size {self.size} in the header")
        member = super()._proc_member(tarfile_)
        if member.size < 0:
            raise _BadHeader(member.name, f"negative size {member.size} in the header")
        if member.sparse is not None:
            _check_sparse_map(member, stored=tarfile_.offset - member.offset_data)
        return member


def _check_sparse_map(ti: tarfile.TarInfo, *, stored: int) -> None:
    end = data = 0
    for offset, size in ti.sparse:
        if size == 0 and offset >= 0:
            continue  # an empty region (GNU's header has four slots, unused ones are zero)
        if offset < end or size < 0 or offset + size > ti.size:
            raise _BadHeader(ti.name, f"invalid sparse map: region {offset}+{size} of a {ti.size}-byte file")
        end = offset + size
        data += size
    if data > stored:
        raise _BadHeader(ti.name, f"invalid sparse map: {data} bytes of data, the archive holds {stored}")


def _bad_header(what: str, exc: _BadHeader) -> LayerError:
    return LayerError(f"{what}: {display(exc.name)}: {exc.reason}" if exc.name else f"{what}: {exc.reason}")


def open_tar(source: HashingSource, what: str) -> tarfile.TarFile | None:
    """A streaming TarFile over ``source``; None for a zero-byte stream (an empty layer, as Docker treats it)."""
    source.header_end = source.total + MAX_HEADER_BYTES
    try:
        return tarfile.open(fileobj=source, mode="r|", encoding="utf-8", errors="surrogateescape",
                            tarinfo=_CheckedInfo)
    except _BadHeader as exc:
        raise _bad_header(what, exc) from None
    except tarfile.ReadError as exc:
        if source.total == 0 and source.eof:
            return None
        raise LayerError(f"{what}: not a valid tar: {exc}") from None
    except (tarfile.TarError, ValueError, OverflowError) as exc:  # int() of a malformed sparse map
        raise LayerError(f"{what}: not a valid tar: {exc}") from None
    finally:
        source.header_end = None


def members(tar: tarfile.TarFile, source: HashingSource, what: str) -> Iterator[tarfile.TarInfo]:
    """The members in order, each header checked as it is parsed; tarfile keeps none of them in memory."""
    while True:
        try:
            _skip_to_next_header(tar)
            source.header_end = source.total + MAX_HEADER_BYTES
            tarinfo = tar.next()
        except _BadHeader as exc:
            raise _bad_header(what, exc) from None
        except (tarfile.TarError, ValueError, OverflowError) as exc:
            raise LayerError(f"{what}: corrupt or truncated tar at offset {tar.offset}: {exc}") from None
        finally:
            source.header_end = None
        if tarinfo is None:
            return
        tar.members.clear()
        yield tarinfo


def _skip_to_next_header(tar: tarfile.TarFile) -> None:
    """Skip the unread data of the previous member as tarfile.next() would, so the header budget that follows
    counts header bytes only."""
    if tar.firstmember is None and tar.offset and tar.offset != tar.fileobj.tell():
        tar.fileobj.seek(tar.offset - 1)
        if not tar.fileobj.read(1):
            raise tarfile.ReadError("unexpected end of data")


def check_end(tar: tarfile.TarFile, source: HashingSource, what: str) -> None:
    """The archive must end at a zero block or exactly at a header boundary, not in a broken header."""
    block = source.window(tar.offset, tarfile.BLOCKSIZE)
    if block is None or (not block and source.eof):
        return
    if len(block) < tarfile.BLOCKSIZE:
        raise LayerError(f"{what}: truncated tar: the stream ends inside the header at offset {tar.offset}")
    if block.count(0) != len(block):
        raise LayerError(f"{what}: corrupt tar header at offset {tar.offset}")


class Budget:
    """What one archive may write: ``max_bytes`` of uncompressed tar, counted with every sparse file expanded
    to its apparent size, and ``max_entries`` entries (None: no cap); entries at most MAX_DEPTH deep."""

    def __init__(self, *, max_bytes: int | None, max_entries: int | None) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.entries = 0
        self._holes = 0  # apparent bytes of the sparse files so far that the stream does not hold

    def charge(self, ti: tarfile.TarInfo, tar: tarfile.TarFile, path: str) -> None:
        """Refuse the entry (before anything of it is written) if it breaks a cap; ``path`` is its normalized
        name."""
        self.entries += 1
        if self.max_entries is not None and self.entries > self.max_entries:
            raise Refused(f"more than {self.max_entries} entries in one archive")
        depth = path.count("/") + 1 if path else 0
        if depth > MAX_DEPTH:
            raise Refused(f"{depth} levels deep; the limit is {MAX_DEPTH}")
        if not ti.isreg():
            return
        holes = max(0, ti.size - (tar.offset - ti.offset_data)) if ti.sparse is not None else 0
        if self.max_bytes is not None and tar.offset + self._holes + holes > self.max_bytes:
            raise Refused(f"its {ti.size} bytes would take the archive past the limit of {self.max_bytes} "
                          "bytes (uncompressed, sparse files at their full size)")
        self._holes += holes


def write_data(tar: tarfile.TarFile, ti: tarfile.TarInfo, fd: int) -> None:
    """Write the member's data into the new, empty file ``fd``; a sparse member's holes stay holes."""
    if not ti.size:
        return
    src = tar.extractfile(ti)
    if ti.sparse is None:
        while chunk := src.read(CHUNK):
            _write_all(fd, chunk)
        return
    src = src.raw  # unbuffered: a read-ahead must not run into the next region and then seek back
    for offset, size in ti.sparse:  # ordered and inside the file: checked when the header was parsed
        if not size:
            continue
        src.seek(offset)
        os.lseek(fd, offset, os.SEEK_SET)
        while size > 0:
            chunk = src.read(min(size, CHUNK))
            if not chunk:
                raise tarfile.ReadError("unexpected end of data")
            _write_all(fd, chunk)
            size -= len(chunk)
    os.ftruncate(fd, ti.size)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
