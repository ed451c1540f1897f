"""A content-addressed blob directory (``ROOT/blobs/sha256/<hex>``): the pull cache and OCI layouts' blob store.

A blob only ever appears under its digest name after its bytes were verified: writers stream into a private temp
file next to the target, check size and digest (and optionally the diff_id of the decompressed bytes), then
``rename`` into place. Rename is atomic and two writers of the same digest write the same bytes, so concurrent
pulls into one cache are safe without locks; a crash leaves only ``.tmp-*`` files, which ``clean`` removes.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from typing import BinaryIO

from snapfs.engine.compress import DigestWriter, open_decompressed
from snapfs.engine.lifecycle import private_dir
from snapfs.errors import InputError, RegistryError, SnapfsError
from .reference import digest_parts, validate_digest

_CHUNK = 1 << 20
_STALE_TMP_SECONDS = 24 * 3600
_SYNC_EVERY = 32 << 20


def _quiet_fdatasync(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError:  # the writer may have been aborted and closed meanwhile; commit() syncs for real
        pass


class BlobMismatch(RegistryError):
    """Bytes that do not match the digest, size or diff_id they were announced with."""


def file_digest(path: str) -> tuple[str, int]:
    """sha256 digest and size of a file, streamed."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return "sha256:" + sha.hexdigest(), size


def uncompressed_digest(path: str) -> str:
    """sha256 of a layer blob's decompressed bytes (its diff_id), streamed."""
    sha = hashlib.sha256()
    with open(path, "rb") as raw, open_decompressed(raw, what=os.path.basename(path)) as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


class BlobWriter:
    """A file-like sink for one blob; ``commit()`` verifies and publishes it, ``abort()`` throws it away."""

    def __init__(self, store: BlobStore, *, digest: str, size: int | None, diff_id: str | None, what: str) -> None:
        self._store, self.expected, self._size, self._diff_id, self._what = store, digest, size, diff_id, what
        algo, _ = digest_parts(digest)
        directory = os.path.join(store.root, "blobs", algo)
        store.make_dir(directory)
        fd, self.tmp_path = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        self._file = os.fdopen(fd, "wb")
        self._digest = DigestWriter(self._file) if algo == "sha256" else None
        self._sha512 = hashlib.sha512() if algo == "sha512" else None
        self.written = 0
        self._done = False
        self._synced_at = 0
        self._syncer: threading.Thread | None = None

    def write(self, data) -> int:
        if self._size is not None and self.written + len(data) > self._size:
            raise BlobMismatch(f"{self._what}: more bytes than the expected {self._size}")
        if self._digest is not None:
            self._digest.write(data)
        else:
            self._sha512.update(data)
            self._file.write(data)
        self.written += len(data)
        if self.written - self._synced_at >= _SYNC_EVERY and (self._syncer is None or not self._syncer.is_alive()):
            # Flush to disk in the background while the download goes on, so the fsync before publishing
            # finds little left to write (a synchronous fsync of a 1 GB blob at the end costs seconds).
            self._synced_at = self.written
            self._file.flush()
            self._syncer = threading.Thread(target=_quiet_fdatasync, args=(self._file.fileno(),), daemon=True)
            self._syncer.start()
        return len(data)

    def commit(self) -> str:
        """Verify size, digest and diff_id, then publish under the digest name; returns the blob's path."""
        try:
            self._file.flush()
            if self._syncer is not None:
                self._syncer.join()
            os.fsync(self._file.fileno())
            self._file.close()
            if self._size is not None and self.written != self._size:
                raise BlobMismatch(f"{self._what}: got {self.written} bytes, expected {self._size}")
            got = self._digest.digest if self._digest is not None else "sha512:" + self._sha512.hexdigest()
            if got != self.expected:
                raise BlobMismatch(f"{self._what}: content digest {got} does not match {self.expected}")
            if self._diff_id is not None:
                try:
                    diff_id = uncompressed_digest(self.tmp_path)
                except SnapfsError as exc:
                    raise BlobMismatch(f"{self._what}: cannot decompress: {exc.message}") from None
                except (OSError, EOFError, ValueError) as exc:
                    raise BlobMismatch(f"{self._what}: cannot decompress: {exc}") from None
                if diff_id != self._diff_id:
                    raise BlobMismatch(f"{self._what}: uncompressed digest {diff_id} does not match diff_id "
                                       f"{self._diff_id}")
            path = self._store.own_path(self.expected)
            os.chmod(self.tmp_path, 0o644)
            os.replace(self.tmp_path, path)
            self._done = True
            return path
        finally:
            if not self._done:
                self.abort()

    def abort(self) -> None:
        self._done = True
        if self._syncer is not None:
            self._syncer.join()
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()


class BlobStore:
    """``ROOT/blobs/<algo>/<hex>``: lookups by digest, verified writes. A ``private`` store (the pull cache)
    creates its directories 0700; an OCI layout's keeps the umask's modes, it is the user's output.

    A ``fallback`` store (a pre-warmed cache mounted read-only) is only read: ``has`` and ``path`` find its
    blobs, every write lands in this store."""

    def __init__(self, root: str, *, private: bool = False, fallback: BlobStore | None = None) -> None:
        self.root = os.path.abspath(root)
        self.private = private
        self.fallback = fallback

    def make_dir(self, directory: str) -> None:
        if self.private:
            private_dir(directory, tighten=False)
        else:
            os.makedirs(directory, exist_ok=True)

    def own_path(self, digest: str) -> str:
        """Where this store keeps (or will write) ``digest``, whatever the fallback holds."""
        algo, hexpart = digest_parts(digest)
        return os.path.join(self.root, "blobs", algo, hexpart)

    def path(self, digest: str) -> str:
        own = self.own_path(digest)
        if self.fallback is not None and not os.path.exists(own):
            theirs = self.fallback.path(digest)
            if os.path.exists(theirs):
                return theirs
        return own

    def has(self, digest: str, *, size: int | None = None) -> bool:
        try:
            st = os.stat(self.own_path(digest))
        except FileNotFoundError:
            if self.fallback is None:
                return False
            try:
                return self.fallback.has(digest, size=size)
            except OSError:  # a shared cache this user may not read is no cache
                return False
        return size is None or st.st_size == size

    def writer(self, digest: str, *, size: int | None = None, diff_id: str | None = None,
               what: str | None = None) -> BlobWriter:
        validate_digest(digest)
        if diff_id is not None:
            validate_digest(diff_id, what="diff_id")
        return BlobWriter(self, digest=digest, size=size, diff_id=diff_id, what=what or f"blob {digest}")

    def put_bytes(self, data: bytes, *, digest: str | None = None) -> str:
        """Store small bytes (manifests, configs); returns their digest."""
        digest = digest or "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has(digest, size=len(data)):
            with self.writer(digest, size=len(data)) as w:
                w.write(data)
                w.commit()
        return digest

    def put_stream(self, src: BinaryIO, *, digest: str, size: int | None = None, diff_id: str | None = None,
                   what: str | None = None) -> str:
        """Copy a stream in, verifying it; returns the blob's path."""
        if self.has(digest, size=size):
            return self.path(digest)
        with self.writer(digest, size=size, diff_id=diff_id, what=what) as w:
            while chunk := src.read(_CHUNK):
                w.write(chunk)
            return w.commit()

    def put_file(self, src_path: str, *, digest: str, size: int | None = None, what: str | None = None) -> str:
        """Add a file under ``digest``: hard-linked when possible (same filesystem), else copied; verified."""
        if self.has(digest, size=size):
            return self.path(digest)
        target = self.own_path(digest)
        self.make_dir(os.path.dirname(target))
        if os.path.abspath(src_path) == target:
            return target
        got, got_size = file_digest(src_path)
        if got != digest or (size is not None and got_size != size):
            raise BlobMismatch(f"{what or src_path}: content digest {got} ({got_size} bytes) does not match "
                               f"{digest}")
        tmp = target + f".tmp-link-{os.getpid()}-{threading.get_ident()}"
        try:
            os.link(src_path, tmp)
        except OSError:
            with open(src_path, "rb") as f:
                return self.put_stream(f, digest=digest, size=size, what=what)
        os.replace(tmp, target)
        return target

    def read_bytes(self, digest: str, *, limit: int, what: str = "blob") -> bytes:
        """Read a small blob and check its digest (it may have been tampered with on disk)."""
        path = self.path(digest)
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise InputError(f"{what} {digest} is missing") from None
        if len(data) > limit:
            raise InputError(f"{what} {digest} is larger than {limit} bytes")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest and digest.startswith("sha256:"):
            raise InputError(f"{what} {digest} is corrupt (content digest differs)")
        return data

    def clean(self, *, older_than: float = _STALE_TMP_SECONDS) -> int:
        """Remove temp files left by crashed writers; returns how many."""
        removed = 0
        now = time.time()
        base = os.path.join(self.root, "blobs")
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-") or ".tmp-link-" in name:
                    p = os.path.join(dirpath, name)
                    try:
                        if now - os.stat(p).st_mtime >= older_than:
                            os.unlink(p)
                            removed += 1
                    except FileNotFoundError:
                        pass
        return removed

    def copy_to(self, other: BlobStore, digest: str, *, size: int | None = None) -> str:
        return other.put_file(self.path(digest), digest=digest, size=size)


def copy_blob(src_path: str, dst: BlobStore, digest: str, *, size: int | None = None) -> str:
    """Add the blob at ``src_path`` to ``dst`` (link or verified copy)."""
    return dst.put_file(src_path, digest=digest, size=size)


__all__ = ["BlobMismatch", "BlobStore", "BlobWriter", "copy_blob", "file_digest", "uncompressed_digest"]
