"""Streaming compression for layers and archives, with digests taken while the bytes flow.

Writers: ``gzip`` (python-isal, multi-threaded igzip; deterministic header: no name, mtime 0), ``zstd``
(python-zstandard with worker threads; output does not depend on the worker count) and ``none``.
Readers detect gzip, zstd, bzip2, xz or plain tar by magic bytes and can cap the decompressed size so a
decompression bomb stops with a clear error instead of filling the disk.
"""
from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import os
from typing import BinaryIO

import zstandard
from isal import igzip, igzip_threaded

from snapfs.errors import LayerError, UsageError

COMPRESSIONS = ("gzip", "zstd", "none")
DEFAULT_LEVELS = {"gzip": 1, "zstd": 3, "none": 0}
# isal has levels 0-3; gzip's 0-9 scale is folded onto them (1 stays "fastest that still compresses well").
_ISAL_LEVEL = {0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3, 8: 3, 9: 3}
_GZIP_BLOCK = 1 << 20


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def check_compression(kind: str, level: int | None) -> int:
    """Validate a compression choice; returns the effective level."""
    if kind not in COMPRESSIONS:
        raise UsageError(f"unknown compression {kind!r} (choose gzip, zstd or none)")
    if level is None:
        return DEFAULT_LEVELS[kind]
    if kind == "gzip" and not 0 <= level <= 9:
        raise UsageError(f"gzip level must be 0-9, got {level}")
    if kind == "zstd" and not 1 <= level <= 22:
        raise UsageError(f"zstd level must be 1-22, got {level}")
    return level


class DigestWriter:
    """Forwards bytes to ``out`` (or nowhere) while counting them and taking their sha256."""

    __slots__ = ("_out", "_sha", "size")

    def __init__(self, out: BinaryIO | None = None) -> None:
        self._out = out
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self._sha.update(data)
        n = len(data)
        self.size += n
        if self._out is not None:
            self._out.write(data)
        return n

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self._sha.hexdigest()


class ThreadedDigest:
    """Like DigestWriter (with no output), but hashes on its own thread: the uncompressed stream's sha256 then
    overlaps with reading files and compressing. Writes must be immutable bytes (BlockWriter's are)."""

    def __init__(self, inner) -> None:
        import queue
        import threading

        self._inner = inner
        self._sha = hashlib.sha256()
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="snapfs-sha256", daemon=True)
        self._thread.start()
        self.size = 0

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self._sha.update(data)  # releases the GIL for large buffers

    def write(self, data: bytes) -> int:
        self._queue.put(data)
        self.size += len(data)
        return self._inner.write(data)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    @property
    def digest(self) -> str:
        return "sha256:" + self._sha.hexdigest()


class _Passthrough:
    __slots__ = ("_out",)

    def __init__(self, out) -> None:
        self._out = out

    def write(self, data) -> int:
        return self._out.write(data)

    def close(self) -> None:
        pass


class _ZstdWriter:
    """zstandard's stream writer closes its target on close(); we only want the frame finished."""

    __slots__ = ("_w",)

    def __init__(self, out, level: int) -> None:
        cctx = zstandard.ZstdCompressor(level=level, threads=_threads(), write_checksum=False)
        self._w = cctx.stream_writer(out, closefd=False, write_return_read=True)

    def write(self, data) -> int:
        return self._w.write(data)

    def close(self) -> None:
        self._w.flush(zstandard.FLUSH_FRAME)
        self._w.close()


class BlockWriter:
    """Passes bytes on in fixed-size blocks whatever the write sizes: the compressed output then depends only
    on the input bytes (igzip_threaded compresses each write as its own block), and hashing sees few large
    updates instead of one per tar header. ``flush()`` passes on the last, short block."""

    __slots__ = ("_inner", "_buf", "_size")

    def __init__(self, inner, size: int = _GZIP_BLOCK) -> None:
        self._inner, self._buf, self._size = inner, bytearray(), size

    def write(self, data) -> int:
        n = len(data)
        buf = self._buf
        if len(buf) + n < self._size:
            buf += data
            return n
        view, pos = memoryview(data), 0
        if buf:
            pos = self._size - len(buf)
            buf += view[:pos]
            self._inner.write(bytes(buf))
            buf.clear()
        while n - pos >= self._size:
            self._inner.write(bytes(view[pos:pos + self._size]))  # a copy: callers reuse their buffers
            pos += self._size
        buf += view[pos:]
        return n

    def flush(self) -> None:
        if self._buf:
            self._inner.write(bytes(self._buf))
            self._buf.clear()


class _Blocks(BlockWriter):
    __slots__ = ()

    def close(self) -> None:
        self.flush()
        self._inner.close()


def compressing_writer(kind: str, level: int, out):
    """A writer compressing into ``out``; call ``close()`` to finish the stream (``out`` stays open)."""
    if kind == "none":
        return _Passthrough(out)
    if kind == "gzip":
        return _Blocks(igzip_threaded.open(out, "wb", compresslevel=_ISAL_LEVEL[level], threads=_threads(),
                                           block_size=_GZIP_BLOCK), _GZIP_BLOCK)
    if kind == "zstd":
        return _Blocks(_ZstdWriter(out, level), _GZIP_BLOCK)
    raise UsageError(f"unknown compression {kind!r}")


def detect(head: bytes) -> str:
    """Name the compression of a stream from its first bytes."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    return "none"


class _Limited(io.RawIOBase):
    """Caps the bytes a decompressor may produce."""

    def __init__(self, raw, limit: int | None, what: str) -> None:
        self._raw, self._limit, self._what, self.total = raw, limit, what, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self._raw.read(len(buf))
        n = len(data)
        self.total += n
        if self._limit is not None and self.total > self._limit:
            raise LayerError(f"{self._what}: decompressed size exceeds the limit of {self._limit} bytes")
        buf[:n] = data
        return n


def open_decompressed(fileobj: BinaryIO, *, max_bytes: int | None = None, what: str = "layer") -> BinaryIO:
    """A buffered reader of ``fileobj``'s decompressed bytes, the format detected by magic."""
    buffered = fileobj if hasattr(fileobj, "peek") else io.BufferedReader(fileobj, 1 << 16)
    kind = detect(buffered.peek(6)[:6])
    if kind == "gzip":
        raw = igzip.IGzipFile(fileobj=buffered, mode="rb")
    elif kind == "zstd":
        raw = zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True, closefd=False)
    elif kind == "bzip2":
        raw = bz2.BZ2File(buffered, "rb")
    elif kind == "xz":
        raw = lzma.LZMAFile(buffered, "rb")
    else:
        raw = buffered
    return io.BufferedReader(_Limited(raw, max_bytes, what), 1 << 20)
