"""``RUN --mount`` without mounts, for steps that run directly (an unprivileged pod, ``--isolation none``).

Without a mount namespace nothing can be mounted, so each mount is emulated by moving files into the step's
root just before it runs and out again right after:

- ``secret``: a file holding the secret, with its mode (default 0400), uid and gid, written at the target;
- ``cache``: a directory at the target (the cache directory's mode and owner) that receives the cache's
  entries, renamed in from the cache directory (copied, then removed, across filesystems) and moved back the
  same way once the step is over. The cache directory itself stays where it is, locked by the builder, so a
  concurrent build waits on the same lock; since its contents cannot be in two places, the builder locks it
  exclusively whatever ``sharing`` says;
- ``tmpfs``: an empty directory (1777) at the target, removed with what the step wrote there. It lives on
  the root's disk, so ``size=`` cannot be enforced and is refused.

Whatever the root had at a target is renamed aside (next to it, ``.snapfs-aside-<pid>-<n>``) and renamed back
afterwards, unchanged: same inode, content and times, so the snapshot sees no change there. Parent directories
made for a target are removed again when they are empty. Undoing runs to its end whatever happened (the step
failed, setting up a later mount failed, a signal arrived: the caller shields it), and fails the step when
something placed could not be removed: a secret that stayed would be snapshotted. Only a SIGKILL during the
step can stop it: the cache's entries are then lost with the root they were in (the pod, or the scratch stage
root the next build sweeps), and the cache starts empty, as a cache may.

``bind`` is refused: a read-only view of another tree needs a mount (a copy would be writable by a root step,
and copying a whole context is no mount). So is ``RUN --network=none``, which needs a network namespace.
"""
from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
from dataclasses import dataclass

from snapfs.engine.rootfs import lstat_at, open_dir_at, remove_at
from snapfs.errors import BuildError

log = logging.getLogger("snapfs.run")

KINDS = ("secret", "cache", "tmpfs")
WHERE = "when RUN steps run without namespaces (in a pod, or with --isolation none)"
NETWORK_NONE = f"RUN --network=none needs a network namespace: not supported {WHERE}"
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def refusal(kind: str, *, size: int | None = None) -> str | None:
    """Why a ``RUN --mount`` of ``kind`` cannot be emulated without namespaces; None when it can."""
    if kind == "bind":
        return (f"RUN --mount=type=bind needs a mount (a read-only view of the context or a stage): not supported "
                f"yet {WHERE}")
    if kind == "tmpfs" and size is not None:
        return f"RUN --mount=type=tmpfs,size=...: the size of a tmpfs cannot be enforced {WHERE}"
    if kind not in KINDS:
        return f"RUN --mount=type={kind} is not supported {WHERE}"
    return None


@dataclass
class _Placed:
    """One mount put in place: where (an open parent directory and a name), and what to undo."""

    target: str  # relative to the root, for messages and the snapshot's ignore list
    kind: str
    dir_fd: int
    name: str
    source: str = ""  # cache: the cache directory on the host
    aside: str | None = None  # the name the root's own entry was renamed to, in dir_fd
    made: bool = False  # something of ours may be at the target


class Placement:
    """The mounts of one step, placed in ``root`` one by one and undone together by :meth:`undo`.

    Use ``place`` for each mount, run the step, then call ``undo`` in a ``finally`` (also after a failed
    ``place``: it undoes whatever was done). The root's paths are resolved inside it, symlinks on the way
    followed there (as a mount target is), never out of it; the target itself is never followed.
    """

    def __init__(self, root: str) -> None:
        from .sandbox_init import Root

        self.root_path = os.path.realpath(root)
        self._made: list[dict] = []  # parent directories created, as the sandbox reports its mount points
        self._root = Root(root, self._made.append)
        self._placed: list[_Placed] = []

    def place(self, mount) -> None:
        """Put one ``sandbox.Mount`` (secret, cache or tmpfs) in place."""
        from .sandbox_init import SetupError

        why = refusal(mount.kind, size=mount.size)
        if why:
            raise BuildError(why)
        target = posixpath.normpath("/" + mount.target.lstrip("/"))
        parent, name = posixpath.split(target)
        if not name or name == "..":
            raise BuildError(f"RUN --mount target {mount.target!r}: cannot place a mount at the root {WHERE}")
        try:
            pfd, pname = self._root.ensure(parent, kind="dir")
        except (SetupError, OSError) as exc:
            raise BuildError(f"RUN --mount target {target}: {exc}") from None
        try:
            dir_fd = pfd if pname == "." else open_dir_at(pfd, pname)
        finally:
            if pname != ".":
                os.close(pfd)
        # Named as the snapshot names it: where the target really is once symlinks on the way were followed.
        where = os.path.relpath(os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name), self.root_path)
        entry = _Placed(where, mount.kind, dir_fd, name, source=mount.source)
        self._placed.append(entry)  # from now on undo() sees it, whatever fails below
        try:
            if lstat_at(dir_fd, name) is not None:
                aside = f".snapfs-aside-{os.getpid()}-{len(self._placed)}"
                os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                entry.aside = aside
            entry.made = True
            if mount.kind == "secret":
                _write_secret(dir_fd, name, mount)
            else:
                _make_dir(dir_fd, name, mount)
        except (OSError, RecursionError) as exc:
            raise BuildError(f"RUN --mount={mount.kind} at {target}: {getattr(exc, 'strerror', None) or exc}") \
                from None

    def undo(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Take every mount out again, last placed first, and put back what was there; remove the parents made
        for them if empty. Returns two lists of paths relative to the root: those made for the step and gone
        again, for the snapshot to ignore; and the root's own entries that were renamed aside and back, the
        same but for their ctime (ignoring those would make them look deleted). Raises :class:`BuildError` once
        all is done if something could not be undone."""
        failed: list[str] = []
        gone: list[str] = []
        restored: list[str] = []
        for e in reversed(self._placed):
            try:
                self._undo(e)
                if e.aside is not None:
                    restored.append(e.target)
                elif lstat_at(e.dir_fd, e.name) is None:
                    gone.append(e.target)
            except (OSError, RecursionError) as exc:
                failed.append(f"{e.target}: {getattr(exc, 'strerror', None) or exc}")
            finally:
                os.close(e.dir_fd)
        self._placed.clear()
        self._root.rfs.close()
        from .sandbox import _remove_created

        gone += _remove_created(self.root_path, self._made)
        if failed:
            raise BuildError("RUN --mount: could not take the mounts out of the root again: " + "; ".join(failed))
        return tuple(sorted(set(gone))), tuple(sorted(set(restored)))

    @staticmethod
    def _undo(e: _Placed) -> None:
        if e.made:
            st = lstat_at(e.dir_fd, e.name)
            if e.kind == "cache" and st is not None and stat.S_ISDIR(st.st_mode):
                _cache_out(e)
            elif st is not None:
                remove_at(e.dir_fd, e.name, st)  # the step may have replaced the file: whatever is there goes
        if e.aside is not None:
            os.rename(e.aside, e.name, src_dir_fd=e.dir_fd, dst_dir_fd=e.dir_fd)


def _write_secret(dir_fd: int, name: str, mount) -> None:
    with open(mount.source, "rb") as f:
        data = f.read()
    fd = os.open(name, _O_NEW, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchown(fd, mount.uid, mount.gid)
        os.fchmod(fd, 0o400 if mount.mode is None else mount.mode)  # after fchown, which clears set-id bits
    finally:
        os.close(fd)


def _make_dir(dir_fd: int, name: str, mount) -> None:
    """The directory at the target: empty (tmpfs) or with the cache's entries moved in."""
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    fd = open_dir_at(dir_fd, name)
    try:
        if mount.kind == "tmpfs":
            os.fchmod(fd, 0o1777 if mount.mode is None else mount.mode)
            return
        cache = os.open(mount.source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(cache)
            os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            _move_entries(cache, fd)
        finally:
            os.close(cache)
    finally:
        os.close(fd)


def _cache_out(e: _Placed) -> None:
    """After the step: the target's entries back into the cache directory (and its mode and owner), then the
    target directory goes."""
    fd = open_dir_at(e.dir_fd, e.name)
    try:
        cache = os.open(e.source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _move_entries(fd, cache)
            st = os.fstat(fd)
            os.fchown(cache, st.st_uid, st.st_gid)
            os.fchmod(cache, stat.S_IMODE(st.st_mode))
        finally:
            os.close(cache)
    finally:
        os.close(fd)
    os.rmdir(e.name, dir_fd=e.dir_fd)


def _move_entries(src: int, dst: int) -> None:
    """Every entry of directory ``src`` into directory ``dst`` (an entry of the same name there is replaced):
    renamed, or across filesystems copied and then removed."""
    for name in os.listdir(src):
        old = lstat_at(dst, name)
        if old is not None:
            remove_at(dst, name, old)
        try:
            os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
            continue
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        _copy(src, name, dst)
        remove_at(src, name)


def _copy(src: int, name: str, dst: int) -> None:
    """Copy ``name`` (a tree) from ``src`` to ``dst`` with modes, owners and times; nothing is followed.
    Hard links become separate files; fifos, sockets and device nodes are left out (a cache has none a step
    could make: it has no CAP_MKNOD)."""
    st = os.stat(name, dir_fd=src, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
        _chown(lambda: os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False))
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)
        return
    if stat.S_ISDIR(st.st_mode):
        os.mkdir(name, 0o700, dir_fd=dst)
        s, d = open_dir_at(src, name), open_dir_at(dst, name)
        try:
            for child in os.listdir(s):
                _copy(s, child, d)
            _set_meta(d, st)
        finally:
            os.close(s)
            os.close(d)
        return
    if not stat.S_ISREG(st.st_mode):
        log.debug("cache copy: leaving out %s (not a file, directory or symlink)", name)
        return
    s = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
    try:
        d = os.open(name, _O_NEW, 0o600, dir_fd=dst)
        try:
            offset = 0
            while n := os.sendfile(d, s, offset, 1 << 30):
                offset += n
            _set_meta(d, st)
        finally:
            os.close(d)
    finally:
        os.close(s)


def _set_meta(fd: int, st: os.stat_result) -> None:
    _chown(lambda: os.fchown(fd, st.st_uid, st.st_gid))
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _chown(call) -> None:
    try:
        call()
    except PermissionError:
        if os.geteuid() == 0:
            raise  # only an unprivileged builder keeps its own ids

