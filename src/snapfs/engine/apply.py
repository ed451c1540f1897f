"""Unpack OCI image layers onto a directory: whiteouts, opaque directories, hardlinks and all metadata.

A layer is a tar stream, optionally compressed; it is read once, sequentially, and its uncompressed bytes are
hashed on the way so the diff_id comes for free. ``tarfile`` is used only to parse headers and read member data;
every path is resolved by :class:`snapfs.engine.rootfs.RootFS`, so symlinks planted by earlier layers cannot lead
outside the root, and nothing is ever created, changed or removed through a symlink.

Absolute names (``/usr/bin/x``) and absolute hardlink targets are taken relative to the root, as Docker and
containerd do. Hostile or broken layers stop with one line, ``LayerError("<layer>: <entry>: <reason>")``: names
with a ``..`` component, hardlinks to nowhere or to directories, malformed whiteouts, a root entry that is not a
directory, bad device numbers, negative sizes, corrupt or truncated tars, entries deeper than
:data:`snapfs.limits.MAX_DEPTH`, and layers past their caps (decompression bombs, sparse files claiming more
than the cap: see :mod:`snapfs.engine.tarstream`). An entry refused by a cap is refused before anything of it is
written, and a file whose data fails half-way is removed. Names are never "cleaned" into something else.

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
import logging
import os
import stat
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import BinaryIO, Callable, Iterable, Iterator

from snapfs.errors import InputError, LayerError
from snapfs.limits import MAX_LAYER_BYTES, MAX_LAYER_ENTRIES
from .compress import open_decompressed
from .rootfs import RootFS, lstat_at, open_dir_at, remove_at
from .tarstream import Budget, HashingSource, Refused, check_end, display, members, open_tar, write_data

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = MAX_LAYER_BYTES  # see snapfs.limits for why
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# aufs bookkeeping that old Docker layers carry; Docker skips them (and everything beneath them).
AUFS_METADATA = frozenset({".wh..wh.plnk", ".wh..wh.aufs", ".wh..wh.orph"})
MAX_DEV_MAJOR = (1 << 12) - 1  # Linux dev_t: 12-bit major, 20-bit minor
MAX_DEV_MINOR = (1 << 20) - 1
_XATTR_PREFIX = "SCHILY.xattr."
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
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


def apply_layer(layer: str | os.PathLike | BinaryIO, root: str | os.PathLike | RootFS, *,
                max_bytes: int | None = DEFAULT_MAX_BYTES, max_entries: int | None = MAX_LAYER_ENTRIES,
                same_owner: bool | None = None, on_entry: OnEntry | None = None,
                keep: tuple[str, ...] = ()) -> ApplyStats:
    """Extract one layer (a path or a binary file object; gzip, zstd, bzip2, xz or plain) onto ``root``.

    ``same_owner`` (default: running as root) applies the headers' numeric uid/gid (names are ignored).
    ``on_entry(path, tarinfo)`` is called after each entry is applied, whiteouts included, with the normalized
    path relative to the root ("" for the root); skipped entries (aufs metadata, unknown types) are not reported.
    ``max_bytes`` caps the uncompressed size, sparse files counted at their apparent size, and ``max_entries``
    the number of entries (None: no cap; the defaults and why are in :mod:`snapfs.limits`). ``keep`` lists
    paths (relative to the root) the layer must leave alone, as when unpacking over a container's own root:
    entries at or below them are skipped, whiteouts and opaque directories spare them, and a non-directory
    never replaces a directory that holds one of them.
    """
    if same_owner is None:
        same_owner = os.geteuid() == 0
    with _open_layer(layer) as (fileobj, what), _open_root(root) as rootfs:
        source = HashingSource(open_decompressed(fileobj, max_bytes=max_bytes, what=what), what)
        budget = Budget(max_bytes=max_bytes, max_entries=max_entries)
        applier = _Applier(rootfs, what=what, same_owner=same_owner, on_entry=on_entry, keep=keep, budget=budget)
        tar = open_tar(source, what)
        if tar is not None:
            for tarinfo in members(tar, source, what):
                applier.apply(tarinfo, tar)
            check_end(tar, source, what)
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


# --- names ---------------------------------------------------------------------------------------------------

def _normalize(name: str, *, what: str = "name") -> str:
    """A tar name as a path relative to the root ("" for the root itself); an absolute name is taken relative
    to the root, as Docker and containerd take it. Names with ``..``, empty or NUL names are refused."""
    if not name:
        raise Refused(f"empty {what}")
    if "\x00" in name:
        raise Refused(f"{what} contains a NUL byte")
    parts = name.split("/")
    if "" in parts or "." in parts:
        parts = [p for p in parts if p and p != "."]
    if ".." in parts:
        raise Refused(f"'..' in {what} is not allowed")
    return "/".join(parts)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


# --- applying ------------------------------------------------------------------------------------------------

class _Applier:
    """Applies the entries of one layer; remembers what this layer wrote so whiteouts spare it."""

    def __init__(self, root: RootFS, *, what: str, same_owner: bool, on_entry: OnEntry | None,
                 keep: tuple[str, ...] = (), budget: Budget | None = None) -> None:
        self.root, self.what, self.same_owner, self.on_entry = root, what, same_owner, on_entry
        self.budget = budget or Budget(max_bytes=None, max_entries=None)
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
            self.budget.charge(ti, tar, path)
            applied = self._apply(path, ti, tar)
        except Refused as exc:
            raise LayerError(f"{self.what}: {display(ti.name)}: {exc}") from None
        except tarfile.TarError as exc:
            raise LayerError(f"{self.what}: {display(ti.name)}: corrupt or truncated tar data: {exc}") from None
        except OSError as exc:
            raise LayerError(f"{self.what}: {display(ti.name)}: {exc.strerror or exc}") from None
        except (ValueError, OverflowError) as exc:
            raise LayerError(f"{self.what}: {display(ti.name)}: invalid header value: {exc}") from None
        if applied and self.on_entry is not None:
            self.on_entry(path, ti)  # outside the try: the caller's errors are not the layer's

    def _apply(self, path: str, ti: tarfile.TarInfo, tar: tarfile.TarFile) -> bool:
        """Apply one entry; False when it is skipped."""
        parts = path.split("/")
        if parts[0] in AUFS_METADATA or parts[-1] in AUFS_METADATA:
            log.debug("%s: skipping aufs metadata %s", self.what, path)
            return False
        if "/" + WHITEOUT_PREFIX in "/" + path.rpartition("/")[0]:  # a parent component named .wh.*
            raise Refused("a whiteout name cannot be a directory")
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
            raise Refused(f"unsupported whiteout {base!r}")
        victim = base[len(WHITEOUT_PREFIX):]
        if victim in ("", ".", ".."):
            raise Refused(f"invalid whiteout {base!r}: it must name an entry")
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
        # Depth first without recursion, holding one fd: back up through "..", checked against the identity
        # recorded on the way down. Frames: ((st_dev, st_ino), path, names not yet looked at).
        frames: list = [(_identity(fd), dir_path, None)]
        try:
            while frames:
                ident, prefix, names = frames[-1]
                if names is None:
                    names = iter(os.listdir(fd))
                    frames[-1] = (ident, prefix, names)
                name = next(names, None)
                if name is None:
                    frames.pop()
                    if frames:
                        parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
                        os.close(fd)
                        fd = parent
                        if _identity(fd) != frames[-1][0]:
                            raise OSError(errno.EBUSY, "directory moved while it was being pruned", prefix)
                    continue
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
                os.close(fd)
                fd = child  # a directory this layer wrote still hides lower contents
                frames.append((_identity(fd), path, None))
        finally:
            os.close(fd)

    # entries

    def _root_entry(self, ti: tarfile.TarInfo) -> None:
        if not ti.isdir():
            raise Refused("the root entry must be a directory")
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
                write_data(tar, ti, fd)
                self._fd_metadata(fd, ti)  # after the data: writing clears setuid and file capabilities
                ns = header_mtime_ns(ti)
                os.utime(fd, ns=(ns, ns))
            except BaseException:
                os.unlink(name, dir_fd=dir_fd)  # no partial file: the data failed or a cap stopped it
                raise
            finally:
                os.close(fd)

    def _symlink(self, path: str, ti: tarfile.TarInfo) -> None:
        if not ti.linkname or "\x00" in ti.linkname:
            raise Refused("symlink target is empty or contains a NUL byte")
        with self.root.at(path, make_parents=True) as (dir_fd, name):
            self._remove(dir_fd, name)
            os.symlink(ti.linkname, name, dir_fd=dir_fd)
            self._chown_at(dir_fd, name, ti)
            ns = header_mtime_ns(ti)
            os.utime(name, ns=(ns, ns), dir_fd=dir_fd, follow_symlinks=False)

    def _hardlink(self, path: str, ti: tarfile.TarInfo) -> None:
        target = _normalize(ti.linkname, what="hardlink target")
        if not target:
            raise Refused("hardlink to the root directory")
        try:
            src_fd, src_name = self.root.resolve(target)
        except (FileNotFoundError, NotADirectoryError):
            raise Refused(f"hardlink target {display(target)} does not exist") from None
        try:
            src = lstat_at(src_fd, src_name)
            if src is None:
                raise Refused(f"hardlink target {display(target)} does not exist")
            if stat.S_ISDIR(src.st_mode):
                raise Refused(f"hardlink target {display(target)} is a directory")
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
                raise Refused(f"bad device number {ti.devmajor}:{ti.devminor}")
            kind = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
            device = os.makedev(ti.devmajor, ti.devminor)
        with self.root.at(path, make_parents=True) as (dir_fd, name):
            self._remove(dir_fd, name)
            try:
                os.mknod(name, kind | 0o600, device, dir_fd=dir_fd)
            except PermissionError:
                raise Refused("cannot create device node: permission denied (needs root or CAP_MKNOD)") from None
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
    def _cannot_chown(ti: tarfile.TarInfo) -> Refused:
        return Refused(f"cannot change owner to {ti.uid}:{ti.gid}: permission denied "
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
