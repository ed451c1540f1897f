"""Unpack OCI image layers onto a directory: whiteouts, opaque directories, hardlinks and all metadata.

A layer is a tar stream, optionally compressed; it is read once, sequentially, and its uncompressed bytes are
hashed on the way so the diff_id comes for free. ``tarfile`` is used only to parse headers and read member data;
every path is resolved by :class:`snapfs.rootfs.RootFS`, so symlinks planted by earlier layers cannot lead
outside the root, and nothing is ever created, changed or removed through a symlink.

Hostile or broken layers stop with one line, ``LayerError("<layer>: <entry>: <reason>")``: ``..`` or absolute
names, hardlinks to nowhere or to directories, malformed whiteouts, a root entry that is not a directory, bad
device numbers, corrupt or truncated tars and decompression bombs. Names are never "cleaned" into something else.

Whiteouts follow the OCI image spec: ``<dir>/.wh.<name>`` deletes ``<dir>/<name>`` from the lower layers and
``<dir>/.wh..wh..opq`` hides everything the lower layers had in ``<dir>``. Both apply only to lower layers, so
the paths this layer writes are remembered and spared, which makes the result independent of where the markers
sit in the tar.

Metadata is applied through fds this module opened itself with ``O_NOFOLLOW``, or with ``*at`` calls that do not
follow the final component: chown first (it clears setuid bits), then chmod, then xattrs (``user.*`` and
``security.capability``, on files and directories only), then times; directory times are set last.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import tarfile
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import BinaryIO, Callable, Iterable, Iterator

from .compress import open_decompressed
from .errors import InputError, LayerError
from .rootfs import RootFS, lstat_at, open_dir_at, remove_at

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 << 30  # uncompressed; far above real layers, far below a full disk
CHUNK = 1 << 20
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# aufs bookkeeping that old Docker layers carry; Docker skips them (and everything beneath them).
AUFS_METADATA = frozenset({".wh..wh.plnk", ".wh..wh.aufs", ".wh..wh.orph"})
MAX_DEV_MAJOR = (1 << 12) - 1  # Linux dev_t: 12-bit major, 20-bit minor
MAX_DEV_MINOR = (1 << 20) - 1
_XATTR_PREFIX = "SCHILY.xattr."
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

OnEntry = Callable[[str, tarfile.TarInfo], None]


@dataclass(frozen=True)
class ApplyStats:
    """What one layer did: entries applied (files, dirs, links, nodes), whiteouts and opaque markers applied,
    uncompressed tar bytes read, and the diff_id (sha256 of those bytes)."""

    entries: int
    whiteouts: int
    bytes: int
    diff_id: str


class _Refused(Exception):
    """A reason to refuse the current entry; turned into a LayerError naming the layer and the entry."""


def apply_layer(layer: str | os.PathLike | BinaryIO, root: str | os.PathLike | RootFS, *,
                max_bytes: int | None = DEFAULT_MAX_BYTES, same_owner: bool | None = None,
                on_entry: OnEntry | None = None, keep: tuple[str, ...] = ()) -> ApplyStats:
    """Extract one layer (a path or a binary file object; gzip, zstd, bzip2, xz or plain) onto ``root``.

    ``same_owner`` (default: running as root) applies the headers' numeric uid/gid (names are ignored).
    ``on_entry(path, tarinfo)`` is called after each entry is applied, whiteouts included, with the normalized
    path relative to the root ("" for the root); skipped entries (aufs metadata, unknown types) are not reported.
    ``max_bytes`` caps the uncompressed size (None: no cap). ``keep`` lists paths (relative to the root) the
    layer must leave alone, as when unpacking over a container's own root: entries at or below them are
    skipped, whiteouts and opaque directories spare them, and a non-directory never replaces a directory that
    holds one of them.
    """
    if same_owner is None:
        same_owner = os.geteuid() == 0
    with _open_layer(layer) as (fileobj, what), _open_root(root) as rootfs:
        source = _HashingSource(open_decompressed(fileobj, max_bytes=max_bytes, what=what), what)
        applier = _Applier(rootfs, what=what, same_owner=same_owner, on_entry=on_entry, keep=keep)
        tar = _open_tar(source, what)
        if tar is not None:
            for tarinfo in _members(tar, what):
                applier.apply(tarinfo, tar)
            _check_end(tar, source, what)
        applier.finish()
        source.drain()
        return ApplyStats(entries=applier.entries, whiteouts=applier.whiteouts, bytes=source.total,
                          diff_id=source.diff_id)


def apply_layers(layers: Iterable[str | os.PathLike | BinaryIO], root: str | os.PathLike | RootFS,
                 **kw) -> list[ApplyStats]:
    """Apply ``layers`` in order (lowest first) onto ``root``; keyword arguments as for :func:`apply_layer`."""
    with _open_root(root) as rootfs:
        return [apply_layer(layer, rootfs, **kw) for layer in layers]


# --- reading -------------------------------------------------------------------------------------------------

@contextmanager
def _open_layer(layer) -> Iterator[tuple[BinaryIO, str]]:
    if isinstance(layer, (str, os.PathLike)):
        path = os.fspath(layer)
        try:
            fileobj = open(path, "rb")
        except OSError as exc:
            raise InputError(f"{path}: cannot read layer: {exc.strerror or exc}") from None
        with fileobj:
            yield fileobj, path
    else:
        name = getattr(layer, "name", None)
        yield layer, name if isinstance(name, str) and name else "layer"


@contextmanager
def _open_root(root) -> Iterator[RootFS]:
    if isinstance(root, RootFS):
        yield root
        return
    try:
        rootfs = RootFS(root, cache=True)
    except OSError as exc:
        raise InputError(f"{os.fspath(root)}: cannot open root directory: {exc.strerror or exc}") from None
    with rootfs:
        yield rootfs


class _HashingSource:
    """The uncompressed tar bytes: hashed and counted as tarfile reads them. The last few reads are kept so
    the block where tarfile stopped can be inspected (tarfile silently treats a corrupt or truncated header
    after the first member as the end of the archive)."""

    def __init__(self, reader: BinaryIO, what: str) -> None:
        self._reader, self._what = reader, what
        self._sha = hashlib.sha256()
        self._tail: deque[tuple[int, bytes]] = deque(maxlen=4)
        self.total = 0
        self.eof = False

    def read(self, size: int = CHUNK) -> bytes:
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
        while self.read(CHUNK):
            pass

    @property
    def diff_id(self) -> str:
        return "sha256:" + self._sha.hexdigest()


def _open_tar(source: _HashingSource, what: str) -> tarfile.TarFile | None:
    try:
        return tarfile.open(fileobj=source, mode="r|", encoding="utf-8", errors="surrogateescape")
    except tarfile.ReadError as exc:
        if source.total == 0 and source.eof:
            return None  # a zero-byte layer is an empty layer, as Docker treats it
        raise LayerError(f"{what}: not a valid tar: {exc}") from None
    except tarfile.TarError as exc:
        raise LayerError(f"{what}: not a valid tar: {exc}") from None


def _members(tar: tarfile.TarFile, what: str) -> Iterator[tarfile.TarInfo]:
    while True:
        try:
            tarinfo = tar.next()
        except tarfile.TarError as exc:
            raise LayerError(f"{what}: corrupt or truncated tar at offset {tar.offset}: {exc}") from None
        if tarinfo is None:
            return
        tar.members.clear()  # streaming: tarfile would otherwise keep every header of the layer in memory
        yield tarinfo


def _check_end(tar: tarfile.TarFile, source: _HashingSource, what: str) -> None:
    """The archive must end at a zero block or exactly at a header boundary, not in a broken header."""
    block = source.window(tar.offset, tarfile.BLOCKSIZE)
    if block is None or (not block and source.eof):
        return
    if len(block) < tarfile.BLOCKSIZE:
        raise LayerError(f"{what}: truncated tar: the stream ends inside the header at offset {tar.offset}")
    if block.count(0) != len(block):
        raise LayerError(f"{what}: corrupt tar header at offset {tar.offset}")


# --- names ---------------------------------------------------------------------------------------------------

def _normalize(name: str, *, what: str = "name") -> str:
    """A tar name as a relative path ("" for the root); ``..``, absolute, empty or NUL names are refused."""
    if not name:
        raise _Refused(f"empty {what}")
    if "\x00" in name:
        raise _Refused(f"{what} contains a NUL byte")
    if name.startswith("/"):
        raise _Refused(f"absolute {what} is not allowed")
    parts = [p for p in name.split("/") if p and p != "."]
    if ".." in parts:
        raise _Refused(f"'..' in {what} is not allowed")
    return "/".join(parts)


def _display(name: str) -> str:
    """A name fit for a one-line message: control characters (or an empty name) are shown quoted."""
    return name if name and name.isprintable() else repr(name)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


# --- applying ------------------------------------------------------------------------------------------------

class _Applier:
    """Applies the entries of one layer; remembers what this layer wrote so whiteouts spare it."""

    def __init__(self, root: RootFS, *, what: str, same_owner: bool, on_entry: OnEntry | None,
                 keep: tuple[str, ...] = ()) -> None:
        self.root, self.what, self.same_owner, self.on_entry = root, what, same_owner, on_entry
        self.written: set[str] = set()
        self.above_written: set[str] = set()  # strict ancestors of written paths
        self.dir_mtimes: dict[str, int] = {}
        self.entries = self.whiteouts = 0
        # Kept paths count as written by this layer, so whiteouts and opaque directories spare them.
        self.keep = frozenset(p.strip("/") for p in keep if p.strip("/"))
        for k in self.keep:
            self._mark_written(k)
        self.keep_above = frozenset(self.above_written)

    def apply(self, ti: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        try:
            path = _normalize(ti.name)
            applied = self._apply(path, ti, tar)
        except _Refused as exc:
            raise LayerError(f"{self.what}: {_display(ti.name)}: {exc}") from None
        except tarfile.TarError as exc:
            raise LayerError(f"{self.what}: {_display(ti.name)}: corrupt or truncated tar data: {exc}") from None
        except OSError as exc:
            raise LayerError(f"{self.what}: {_display(ti.name)}: {exc.strerror or exc}") from None
        except (ValueError, OverflowError) as exc:
            raise LayerError(f"{self.what}: {_display(ti.name)}: invalid header value: {exc}") from None
        if applied and self.on_entry is not None:
            self.on_entry(path, ti)  # outside the try: the caller's errors are not the layer's

    def _apply(self, path: str, ti: tarfile.TarInfo, tar: tarfile.TarFile) -> bool:
        """Apply one entry; False when it is skipped."""
        parts = path.split("/")
        if parts[0] in AUFS_METADATA or parts[-1] in AUFS_METADATA:
            log.debug("%s: skipping aufs metadata %s", self.what, path)
            return False
        if any(p.startswith(WHITEOUT_PREFIX) for p in parts[:-1]):
            raise _Refused("a whiteout name cannot be a directory")
        if self.keep and self._kept(path, ti):
            return False
        if parts[-1].startswith(WHITEOUT_PREFIX):
            self._whiteout(path.rpartition("/")[0], parts[-1])
            self.whiteouts += 1
            return True
        if not path:
            self._root_entry(ti)
        elif ti.isdir():
            self._directory(path, ti)
        elif ti.isreg():
            self._regular(path, ti, tar)
        elif ti.issym():
            self._symlink(path, ti)
        elif ti.islnk():
            self._hardlink(path, ti)
        elif ti.isfifo() or ti.ischr() or ti.isblk():
            self._node(path, ti)
        else:
            log.warning("%s: %s: skipping entry of unsupported type %r", self.what, path, ti.type)
            return False
        self._mark_written(path)
        self.entries += 1
        return True

    def _kept(self, path: str, ti: tarfile.TarInfo) -> bool:
        """Whether the entry must be skipped because it would touch a kept path."""
        probe = path
        while probe:
            if probe in self.keep:
                return True
            probe = probe.rpartition("/")[0]
        if path in self.keep_above and not ti.isdir():
            log.warning("%s: %s: skipped: it would replace a directory holding %s", self.what, path,
                        ", ".join(sorted(k for k in self.keep if k.startswith(path + "/"))))
            return True
        return False

    def finish(self) -> None:
        """Directory mtimes last: creating their children changed them."""
        for path, ns in self.dir_mtimes.items():
            try:
                fd = self.root.open_dir(path)
            except OSError:
                continue  # replaced or removed by a later entry of this layer
            try:
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)

    def _mark_written(self, path: str) -> None:
        self.written.add(path)
        parent = path
        while parent:
            parent = parent.rpartition("/")[0]
            if parent in self.above_written:
                break
            self.above_written.add(parent)

    # whiteouts

    def _whiteout(self, parent: str, base: str) -> None:
        if base == OPAQUE_MARKER:
            self._prune(parent)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            raise _Refused(f"unsupported whiteout {base!r}")
        victim = base[len(WHITEOUT_PREFIX):]
        if victim in ("", ".", ".."):
            raise _Refused(f"invalid whiteout {base!r}: it must name an entry")
        path = _join(parent, victim)
        if path in self.written:
            return  # whiteouts only hide lower layers
        if path in self.above_written:
            self._prune(path)
            return
        try:
            with self.root.at(path) as (dir_fd, name):
                self._remove(dir_fd, name)
        except (FileNotFoundError, NotADirectoryError):
            pass  # deleting what is not there is not an error

    def _prune(self, dir_path: str) -> None:
        """Remove everything under ``dir_path`` that this layer did not write (opaque directory)."""
        try:
            fd = self.root.open_dir(dir_path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return  # no directory there (or a symlink): nothing of the lower layers to hide
            raise
        try:
            self._prune_fd(fd, dir_path)
        finally:
            os.close(fd)

    def _prune_fd(self, fd: int, prefix: str) -> None:
        with os.scandir(fd) as it:
            names = [entry.name for entry in it]
        for name in names:
            path = _join(prefix, name)
            if path in self.keep:
                continue  # a kept path is not the layer's to hide, nor anything below it
            if path not in self.written and path not in self.above_written:
                self._remove(fd, name)
                continue
            try:
                child = open_dir_at(fd, name)
            except OSError:
                continue  # this layer's own non-directory: kept
            try:
                self._prune_fd(child, path)  # a directory this layer wrote still hides lower contents
            finally:
                os.close(child)

    # entries

    def _root_entry(self, ti: tarfile.TarInfo) -> None:
        if not ti.isdir():
            raise _Refused("the root entry must be a directory")
        self._fd_metadata(self.root.fd, ti)
        self.dir_mtimes[""] = header_mtime_ns(ti)

    def _directory(self, path: str, ti: tarfile.TarInfo) -> None:
        with self.root.at(path, make_parents=True) as (dir_fd, name):
            st = lstat_at(dir_fd, name)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                self._remove(dir_fd, name, st)  # a symlink here is replaced, never followed
                st = None
            if st is None:
                os.mkdir(name, 0o700, dir_fd=dir_fd)
            fd = open_dir_at(dir_fd, name)
            try:
                self._fd_metadata(fd, ti)
            finally:
                os.close(fd)
        self.dir_mtimes[path] = header_mtime_ns(ti)

    def _regular(self, path: str, ti: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        with self.root.at(path, make_parents=True) as (dir_fd, name):
            self._remove(dir_fd, name)
            fd = os.open(name, _NEW_FILE, 0o600, dir_fd=dir_fd)
            try:
                _copy_data(tar.extractfile(ti), fd)
                self._fd_metadata(fd, ti)  # after the data: writing clears setuid and file capabilities
                ns = header_mtime_ns(ti)
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)

    def _symlink(self, path: str, ti: tarfile.TarInfo) -> None:
        if not ti.linkname or "\x00" in ti.linkname:
            raise _Refused("symlink target is empty or contains a NUL byte")
        with self.root.at(path, make_parents=True) as (dir_fd, name):
            self._remove(dir_fd, name)
            os.symlink(ti.linkname, name, dir_fd=dir_fd)
            self._chown_at(dir_fd, name, ti)
            ns = header_mtime_ns(ti)
            os.utime(name, ns=(ns, ns), dir_fd=dir_fd, follow_symlinks=False)

    def _hardlink(self, path: str, ti: tarfile.TarInfo) -> None:
        target = _normalize(ti.linkname, what="hardlink target")
        if not target:
            raise _Refused("hardlink to the root directory")
        try:
            src_fd, src_name = self.root.resolve(target)
        except (FileNotFoundError, NotADirectoryError):
            raise _Refused(f"hardlink target {_display(target)} does not exist") from None
        try:
            src = lstat_at(src_fd, src_name)
            if src is None:
                raise _Refused(f"hardlink target {_display(target)} does not exist")
            if stat.S_ISDIR(src.st_mode):
                raise _Refused(f"hardlink target {_display(target)} is a directory")
            with self.root.at(path, make_parents=True) as (dir_fd, name):
                dst = lstat_at(dir_fd, name)
                if dst is not None and (dst.st_dev, dst.st_ino) == (src.st_dev, src.st_ino):
                    return  # already that inode (a link to itself, or repeated)
                self._remove(dir_fd, name, dst)
                os.link(src_name, name, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(src_fd)
        # The link shares its target's inode, whose metadata came from the target's own entry.

    def _node(self, path: str, ti: tarfile.TarInfo) -> None:
        if ti.isfifo():
            kind, device = stat.S_IFIFO, 0
        else:
            if not (0 <= ti.devmajor <= MAX_DEV_MAJOR and 0 <= ti.devminor <= MAX_DEV_MINOR):
                raise _Refused(f"bad device number {ti.devmajor}:{ti.devminor}")
            kind = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
            device = os.makedev(ti.devmajor, ti.devminor)
        with self.root.at(path, make_parents=True) as (dir_fd, name):
            self._remove(dir_fd, name)
            try:
                os.mknod(name, kind | 0o600, device, dir_fd=dir_fd)
            except PermissionError:
                raise _Refused("cannot create device node: permission denied (needs root or CAP_MKNOD)") from None
            self._chown_at(dir_fd, name, ti)
            # Safe without an fd: the name is the node we just made, and chmod here never follows symlinks.
            os.chmod(name, ti.mode & 0o7777, dir_fd=dir_fd, follow_symlinks=False)
            ns = header_mtime_ns(ti)
            os.utime(name, ns=(ns, ns), dir_fd=dir_fd, follow_symlinks=False)

    def _remove(self, dir_fd: int, name: str, st: os.stat_result | None = None) -> bool:
        """remove_at, forgetting cached directory fds when a directory goes (it may be a cached parent)."""
        st = st or lstat_at(dir_fd, name)
        if st is None:
            return False
        remove_at(dir_fd, name, st)
        if stat.S_ISDIR(st.st_mode):
            self.root.invalidate()
        return True

    # metadata: through fds we opened ourselves, or *at calls that never follow the final symlink

    def _fd_metadata(self, fd: int, ti: tarfile.TarInfo) -> None:
        if self.same_owner:
            try:
                os.fchown(fd, ti.uid, ti.gid)
            except PermissionError:
                raise self._cannot_chown(ti) from None
        os.fchmod(fd, ti.mode & 0o7777)  # after chown, which clears setuid/setgid
        self._xattrs(fd, ti)

    def _chown_at(self, dir_fd: int, name: str, ti: tarfile.TarInfo) -> None:
        if self.same_owner:
            try:
                os.chown(name, ti.uid, ti.gid, dir_fd=dir_fd, follow_symlinks=False)
            except PermissionError:
                raise self._cannot_chown(ti) from None

    @staticmethod
    def _cannot_chown(ti: tarfile.TarInfo) -> _Refused:
        return _Refused(f"cannot change owner to {ti.uid}:{ti.gid}: permission denied "
                        "(run as root or pass same_owner=False)")

    def _xattrs(self, fd: int, ti: tarfile.TarInfo) -> None:
        # The entry defines the kept xattrs completely (as an upper overlay directory would): an existing
        # directory loses the ones the layer no longer lists.
        wanted = {k[len(_XATTR_PREFIX):] for k in ti.pax_headers if k.startswith(_XATTR_PREFIX)}
        try:
            present = os.listxattr(fd)
        except OSError:
            present = []
        for name in present:
            if (name.startswith("user.") or name == "security.capability") and name not in wanted:
                os.removexattr(fd, name)
        for key, value in ti.pax_headers.items():
            if not key.startswith(_XATTR_PREFIX):
                continue
            name = key[len(_XATTR_PREFIX):]
            if not (name.startswith("user.") or name == "security.capability"):
                log.debug("%s: %s: skipping xattr %s", self.what, ti.name, name)
                continue
            try:
                # tarfile decoded the value as UTF-8 with surrogateescape; this gives the raw bytes back.
                os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                log.warning("%s: %s: xattr %s not supported here; skipped", self.what, ti.name, name)


def _copy_data(src, fd: int) -> None:
    while chunk := src.read(CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


def header_mtime_ns(ti: tarfile.TarInfo) -> int:
    """The header's mtime in ns; the PAX string is used when present, as a float would lose the nanoseconds."""
    raw = ti.pax_headers.get("mtime")
    if raw is not None:
        try:
            return int(Decimal(raw).scaleb(9))
        except (ArithmeticError, ValueError):
            pass
    if isinstance(ti.mtime, int):
        return ti.mtime * 1_000_000_000
    return int(ti.mtime * 1e9)
