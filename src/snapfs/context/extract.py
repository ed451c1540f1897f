"""Unpack a build-context archive into a directory, refusing anything that would land outside it.

A context tar is not a layer: it has no whiteouts (a ``.wh.x`` entry is an ordinary file), no device nodes worth
keeping, and its owners do not matter (COPY sets its own). The containment rules are stricter than for layers:

- names are relative; absolute names and ``..`` components are refused, never "cleaned";
- every directory on the way to an entry must be a real directory: an entry that would be written *through* a
  symlink (``x -> /`` followed by ``x/etc/passwd``) is refused, even if the symlink points inside the context;
- a symlink entry is created as it is (Docker copies symlinks as symlinks) and is never followed here;
- a hardlink must name an existing non-directory inside the archive's tree, reached without symlinks.

Every path is opened relative to a directory fd with ``O_NOFOLLOW``, so nothing outside the destination is read
or written whatever the archive holds. Directory fds are cached (entries of one directory are usually adjacent),
which keeps the cost per small file close to the syscalls it needs.

Errors are one line, ``ContextError("<source>: <entry>: <reason>")``; compressed-stream, tar-format, size, entry
count and depth checks are those of layers (:mod:`snapfs.engine.tarstream`: corrupt, truncated, negative sizes,
bombs, sparse files counted at their apparent size), reported with the source's name. A file whose data fails
half-way, or that a cap stops, is removed.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO

from snapfs.engine.apply import header_mtime_ns
from snapfs.engine.compress import open_decompressed
from snapfs.engine.rootfs import lstat_at, remove_at
from snapfs.engine.tarstream import Budget, HashingSource, check_end, members, open_tar, write_data, Refused as _Refused
from snapfs.errors import InputError, LayerError
from snapfs.limits import MAX_LAYER_BYTES, MAX_LAYER_ENTRIES

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = MAX_LAYER_BYTES  # uncompressed, sparse files at their full size; see snapfs.limits
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FD_CACHE = 64


class ContextError(InputError):
    """A build context that cannot be fetched or unpacked; the message names the source (credentials masked)."""


@dataclass(frozen=True)
class ExtractStats:
    """What an archive held: entries created, entries skipped (devices, fifos, unknown types), bytes read."""

    entries: int
    skipped: int
    bytes: int


def extract_context(archive: BinaryIO, dest: str, *, what: str, max_bytes: int | None = DEFAULT_MAX_BYTES,
                    max_entries: int | None = MAX_LAYER_ENTRIES) -> ExtractStats:
    """Unpack ``archive`` (gzip, zstd, bzip2, xz or plain tar, detected by content) into the directory ``dest``.

    ``what`` names the source in messages; ``max_bytes`` and ``max_entries`` cap the archive as for layers
    (None: no cap). Raises :class:`ContextError` for corrupt, truncated or hostile archives; what was written
    before the failure stays in ``dest`` (the caller removes its temporary dir).
    """
    try:
        source = HashingSource(open_decompressed(archive, max_bytes=max_bytes, what=what), what)
        tar = open_tar(source, what)
        with _Writer(dest, what, Budget(max_bytes=max_bytes, max_entries=max_entries)) as writer:
            if tar is None:
                log.warning("%s: the archive is empty", what)
            else:
                for ti in members(tar, source, what):
                    writer.add(ti, tar)
                check_end(tar, source, what)
            writer.finish()
    except LayerError as exc:
        raise ContextError(exc.message) from None
    except OSError as exc:
        raise ContextError(f"{what}: cannot unpack into {dest}: {exc.strerror or exc}") from None
    return ExtractStats(entries=writer.entries, skipped=writer.skipped, bytes=source.total)


def normalize_name(name: str) -> str:
    """A tar member name as a relative path ("" for the root); absolute, ``..``, empty or NUL names refused."""
    if not name:
        raise _Refused("empty name")
    if "\x00" in name:
        raise _Refused("name contains a NUL byte")
    if name.startswith("/"):
        raise _Refused("absolute name is not allowed")
    parts = [p for p in name.split("/") if p and p != "."]
    if ".." in parts:
        raise _Refused("'..' in the name is not allowed")
    return "/".join(parts)


def _display(name: str) -> str:
    return name if name and name.isprintable() else repr(name)


class _Writer:
    """Creates entries under ``dest``; every parent is walked as real directories from the root fd."""

    def __init__(self, dest: str, what: str, budget: Budget) -> None:
        self.what, self.budget = what, budget
        self.root_fd = os.open(dest, _DIR_FLAGS)
        self.fds: OrderedDict[str, int] = OrderedDict()  # LRU of open directory fds, by relative path
        self.dirs: dict[str, tuple[int, int]] = {}  # path -> (mode, mtime ns), applied at the end
        self.entries = self.skipped = 0
        self._skipped_kinds: set[str] = set()

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        os.close(self.root_fd)

    def add(self, ti: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        try:
            path = normalize_name(ti.name)
            self.budget.charge(ti, tar, path)
            self._add(path, ti, tar)
        except _Refused as exc:
            raise ContextError(f"{self.what}: {_display(ti.name)}: refused: {exc}") from None
        except tarfile.TarError as exc:
            raise ContextError(f"{self.what}: {_display(ti.name)}: corrupt or truncated archive: {exc}") from None
        except LayerError as exc:
            raise ContextError(exc.message) from None
        except OSError as exc:
            raise ContextError(f"{self.what}: {_display(ti.name)}: {exc.strerror or exc}") from None
        except (ValueError, OverflowError) as exc:
            raise ContextError(f"{self.what}: {_display(ti.name)}: invalid header value: {exc}") from None

    def _add(self, path: str, ti: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        if not path:
            if not ti.isdir():
                raise _Refused("the root entry must be a directory")
            return  # the destination is ours; its mode and times are not part of the context
        parent, _, name = path.rpartition("/")
        if ti.isdir():
            self._directory(path, parent, name, ti)
        elif ti.isreg():
            self._regular(parent, name, ti, tar)
        elif ti.issym():
            self._symlink(parent, name, ti)
        elif ti.islnk():
            self._hardlink(parent, name, ti)
        else:
            self.skipped += 1
            kind = "device node" if ti.ischr() or ti.isblk() else "fifo" if ti.isfifo() else f"type {ti.type!r}"
            if kind not in self._skipped_kinds:
                self._skipped_kinds.add(kind)
                log.warning("%s: %s: skipping %s (not kept in a build context)", self.what, path, kind)
            return
        self.entries += 1

    # directories

    def _dir_fd(self, path: str, *, create: bool) -> int:
        """The fd of directory ``path``, walked (and created when ``create``) one real directory at a time
        from its nearest cached ancestor (usually its parent: archives list a directory before its contents)."""
        if not path:
            return self.root_fd
        fd = self.fds.get(path)
        if fd is not None:
            self.fds.move_to_end(path)
            return fd
        missing = [path]
        while (up := missing[-1].rpartition("/")[0]) and up not in self.fds:
            missing.append(up)
        if up:
            self.fds.move_to_end(up)
        fd = self.fds[up] if up else self.root_fd
        for sub in reversed(missing):
            fd = self._open_child(fd, sub, create=create)
        return fd

    def _open_child(self, parent_fd: int, path: str, *, create: bool) -> int:
        """Open (or create) the directory ``path`` from its parent's fd, and cache it."""
        name = path.rpartition("/")[2]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise _Refused(f"'{_display(path)}' does not exist") from None
            os.mkdir(name, 0o700, dir_fd=parent_fd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise _Refused(f"'{_display(path)}' is a symbolic link; nothing may be written through it") from None
            raise _Refused(f"'{_display(path)}' is not a directory") from None
        self.fds[path] = fd
        if len(self.fds) > _FD_CACHE:
            _, old = self.fds.popitem(last=False)
            os.close(old)
        return fd

    def _forget(self, path: str) -> None:
        """Drop cached fds of ``path`` and below (the tree was removed or replaced)."""
        prefix = path + "/"
        for key in [k for k in self.fds if k == path or k.startswith(prefix)]:
            os.close(self.fds.pop(key))
        for key in [k for k in self.dirs if k == path or k.startswith(prefix)]:
            del self.dirs[key]

    def _clear(self, parent_fd: int, parent: str, name: str) -> None:
        """Remove whatever is at ``name`` (a later entry replaces an earlier one, as tar does)."""
        st = lstat_at(parent_fd, name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            self._forget(f"{parent}/{name}" if parent else name)
        remove_at(parent_fd, name, st)

    def _directory(self, path: str, parent: str, name: str, ti: tarfile.TarInfo) -> None:
        parent_fd = self._dir_fd(parent, create=True)
        st = lstat_at(parent_fd, name)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            remove_at(parent_fd, name, st)  # a symlink or file here is replaced, never followed
        self._dir_fd(path, create=True)
        self.dirs[path] = (ti.mode & 0o7777, header_mtime_ns(ti))

    # other entries

    def _regular(self, parent: str, name: str, ti: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        parent_fd = self._dir_fd(parent, create=True)
        self._clear(parent_fd, parent, name)
        fd = os.open(name, _NEW_FILE, 0o600, dir_fd=parent_fd)
        try:
            write_data(tar, ti, fd)
            os.fchmod(fd, ti.mode & 0o7777)
            ns = header_mtime_ns(ti)
            os.utime(fd, ns=(ns, ns))
        except BaseException:
            os.unlink(name, dir_fd=parent_fd)  # no partial file: the data failed or a cap stopped it
            raise
        finally:
            os.close(fd)

    def _symlink(self, parent: str, name: str, ti: tarfile.TarInfo) -> None:
        if not ti.linkname or "\x00" in ti.linkname:
            raise _Refused("symlink target is empty or contains a NUL byte")
        parent_fd = self._dir_fd(parent, create=True)
        self._clear(parent_fd, parent, name)
        os.symlink(ti.linkname, name, dir_fd=parent_fd)
        ns = header_mtime_ns(ti)
        os.utime(name, ns=(ns, ns), dir_fd=parent_fd, follow_symlinks=False)

    def _hardlink(self, parent: str, name: str, ti: tarfile.TarInfo) -> None:
        try:
            target = normalize_name(ti.linkname)
        except _Refused as exc:
            raise _Refused(f"hardlink target {_display(ti.linkname)}: {exc}") from None
        if not target:
            raise _Refused("hardlink to the root directory")
        t_parent, _, t_name = target.rpartition("/")
        # Our own copy: opening the link's parent below may push the target's parent out of the fd cache.
        t_fd = os.dup(self._dir_fd(t_parent, create=False))
        try:
            src = lstat_at(t_fd, t_name)
            if src is None:
                raise _Refused(f"hardlink target {_display(target)} does not exist")
            if stat.S_ISDIR(src.st_mode):
                raise _Refused(f"hardlink target {_display(target)} is a directory")
            parent_fd = self._dir_fd(parent, create=True)
            dst = lstat_at(parent_fd, name)
            if dst is not None and (dst.st_dev, dst.st_ino) == (src.st_dev, src.st_ino):
                return
            self._clear(parent_fd, parent, name)
            os.link(t_name, name, src_dir_fd=t_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
        finally:
            os.close(t_fd)

    def finish(self) -> None:
        """Directory modes and times last (deepest first): creating children changed them, and a read-only
        directory must stay writable until its children exist."""
        for path in sorted(self.dirs, key=lambda p: p.count("/"), reverse=True):
            mode, ns = self.dirs[path]
            try:
                fd = self._dir_fd(path, create=False)
            except (_Refused, OSError):
                continue  # replaced by a later entry
            os.fchmod(fd, mode)
            os.utime(fd, ns=(ns, ns))
