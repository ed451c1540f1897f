"""A directory treated as the root of a filesystem: every path is resolved inside it.

This is ``openat2(RESOLVE_IN_ROOT)`` done by hand, because the syscall is not reachable from Python and not every
kernel we run on has it: a path is walked one component at a time with ``O_PATH | O_NOFOLLOW`` opens relative to
the previous directory's fd, symlinks met on the way are read and their targets spliced into the walk (an absolute
target restarts at the root) and ``..`` is clamped at the root like in a chroot. A layer or a build step can
therefore never reach outside the root, whatever symlinks an earlier layer planted. The final component is not
followed unless asked, so callers act on the symlink itself, never on what it points to.

Errors are ``OSError`` with the errno the kernel would give (``ENOENT``, ``ENOTDIR``, ``ELOOP``); callers add the
context (layer and entry name).

``TreeView`` is the other reading of a path, the one snapshots and layers need: no symlink is followed at any
component, so a path below a symlink is simply not in the tree (as the walker records it).
"""
from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict, deque
from contextlib import contextmanager
from typing import Iterator

MAX_SYMLINKS = 40  # Linux's MAXSYMLINKS: same limit, same ELOOP, as a real path walk
_WALK_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def split_path(path: str) -> list[str]:
    """Components of ``path`` without empty ones and ``.``; ``..`` is kept for the walk to clamp."""
    parts = path.split("/")
    if "" in parts or "." in parts:  # the per-component filter only when needed: deep paths are long
        parts = [c for c in parts if c and c != "."]
    return parts


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """``lstat`` of ``name`` in ``dir_fd``, or None when it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove_at(dir_fd: int, name: str, st: os.stat_result | None = None) -> bool:
    """Remove ``name`` (a file, a symlink itself or a whole tree) from ``dir_fd``; False if it did not exist."""
    st = st or lstat_at(dir_fd, name)
    if st is None:
        return False
    if stat.S_ISDIR(st.st_mode):
        remove_tree(dir_fd, name)
    else:
        os.unlink(name, dir_fd=dir_fd)
    return True


def remove_path(path: str) -> bool:
    """``remove_at`` by path: scratch, caches and failed outputs of any depth (``shutil.rmtree`` recurses and
    ends in RecursionError on a tree a RUN step nested a few thousand levels deep). False if it did not exist."""
    parent, name = os.path.split(os.path.normpath(path))
    try:
        dir_fd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return False
    try:
        return remove_at(dir_fd, name)
    finally:
        os.close(dir_fd)


def remove_tree(dir_fd: int, name: str) -> None:
    """Remove the directory ``name`` in ``dir_fd`` with everything below it, however deep it goes.

    No recursion and one fd at a time (shutil.rmtree recurses and holds an fd per level, so a tree a few
    thousand levels deep ends in RecursionError or EMFILE). Nothing is followed: symlinks are unlinked
    themselves, each level is opened ``O_NOFOLLOW`` from its parent, and the way back up is ``..`` checked
    against the identity recorded on the way down.
    """
    fd = open_dir_at(dir_fd, name)
    try:
        # One frame per level: (st_dev, st_ino, name in its parent, subdirectories still to remove).
        frames = [(*_identity(fd), name, _unlink_files(fd))]
        while True:
            pending = frames[-1][3]
            if pending:
                sub = pending.pop()
                try:
                    child = open_dir_at(fd, sub)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    os.unlink(sub, dir_fd=fd)  # not a directory any more
                    continue
                os.close(fd)
                fd = child
                frames.append((*_identity(fd), sub, _unlink_files(fd)))
                continue
            done = frames.pop()
            if not frames:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            if _identity(fd) != frames[-1][:2]:
                raise OSError(errno.EBUSY, "directory moved while its tree was being removed", done[2])
            os.rmdir(done[2], dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _unlink_files(fd: int) -> list[str]:
    """Unlink every non-directory in the directory ``fd``; the names of its subdirectories."""
    with os.scandir(fd) as it:
        entries = list(it)  # listed first: unlinking while the directory is being read may skip entries
    subdirs = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            subdirs.append(entry.name)
        else:
            os.unlink(entry.name, dir_fd=fd)
    return subdirs


def open_dir_at(dir_fd: int, name: str) -> int:
    """A readable fd of the directory ``name`` in ``dir_fd``; a symlink there is refused (ENOTDIR/ELOOP)."""
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


class RootFS:
    """An open root directory; resolves paths inside it. Use as a context manager or call ``close()``."""

    def __init__(self, path: str | os.PathLike, *, cache: bool = False) -> None:
        self.path = os.fspath(path)
        # A readable fd (not O_PATH) so the root's own metadata can be changed through it.
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # Parent directories reached by plain directory steps (no symlink, no ".."), by components: a layer's
        # entries come grouped by directory, so most lookups then cost one dup instead of one open per
        # component. Whoever removes or replaces a directory must call invalidate().
        self._cache: OrderedDict[tuple[str, ...], int] | None = OrderedDict() if cache else None

    def invalidate(self) -> None:
        """Forget cached directory fds (after anything that removed or replaced a directory)."""
        if self._cache:
            for fd in self._cache.values():
                os.close(fd)
            self._cache.clear()

    def close(self) -> None:
        self.invalidate()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RootFS:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def resolve(self, path: str, *, follow: bool = False, make_parents: bool = False) -> tuple[int, str]:
        """(parent dir fd, final name) of ``path`` inside the root; the caller closes the fd.

        The final component is followed only when ``follow`` is true. ``make_parents`` creates missing
        intermediate directories (mode 0755, owned by root when running as root). A path that names the root
        itself gives (a dup of the root fd, ".").
        """
        parts = split_path(path)
        cache = self._cache
        plain = cache is not None and not follow and ".." not in parts and len(parts) > 1
        if plain:
            hit = cache.get(tuple(parts[:-1]))
            if hit is not None:
                cache.move_to_end(tuple(parts[:-1]))
                return os.dup(hit), parts[-1]
            # Tars list a directory before its contents: the parent is usually one plain step below a cached
            # directory, and taking that step keeps a deep tree linear instead of a walk from the root per entry.
            up = cache.get(tuple(parts[:-2])) if len(parts) > 2 else None
            if up is not None:
                kind, fd = _step(up, parts[-2], create=make_parents)
                if kind == "dir":
                    self._remember(tuple(parts[:-1]), fd)
                    return fd, parts[-1]
        todo = deque(parts)
        stack = [self.fd]  # fds of the directories walked so far; stack[0] is the root and is never closed
        names: list[str] = []
        expansions = 0
        try:
            while todo:
                name = todo.popleft()
                if name == "..":
                    if len(stack) > 1:  # clamped at the root, like a chroot
                        os.close(stack.pop())
                        names.pop()
                    continue
                last = not todo
                if last and not follow:
                    if plain and not expansions:
                        self._remember(tuple(parts[:-1]), stack[-1])
                    return self._take(stack, name)
                kind, fd = _step(stack[-1], name, create=make_parents and not last)
                if kind == "dir":
                    stack.append(fd)
                    names.append(name)
                elif kind == "link":
                    expansions += 1
                    if expansions > MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                    target = os.readlink(name, dir_fd=stack[-1])
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                        names.clear()
                    todo.extendleft(reversed(split_path(target)))
                elif last:  # followed final component that is not a directory (or does not exist)
                    return self._take(stack, name)
                else:
                    code = errno.ENOENT if kind == "missing" else errno.ENOTDIR
                    raise OSError(code, os.strerror(code), path)
            # The path named a directory itself (the root, or via "..", or a followed symlink): hand back its
            # parent and name so callers can treat it like any other entry.
            if len(stack) == 1:
                return self._take(stack, ".")
            os.close(stack.pop())
            return self._take(stack, names.pop())
        except BaseException:
            for fd in stack[1:]:
                os.close(fd)
            raise

    def _remember(self, key: tuple[str, ...], fd: int) -> None:
        self._cache[key] = os.dup(fd)
        if len(self._cache) > 64:
            os.close(self._cache.popitem(last=False)[1])

    @staticmethod
    def _take(stack: list[int], name: str) -> tuple[int, str]:
        """Keep the top fd for the caller, close the rest; the root fd is dup'ed so the caller may close it."""
        for fd in stack[1:-1]:
            os.close(fd)
        top = stack[-1]
        return (os.dup(top) if len(stack) == 1 else top), name

    @contextmanager
    def at(self, path: str, *, follow: bool = False, make_parents: bool = False) -> Iterator[tuple[int, str]]:
        """``resolve`` with the parent fd closed on exit."""
        dir_fd, name = self.resolve(path, follow=follow, make_parents=make_parents)
        try:
            yield dir_fd, name
        finally:
            os.close(dir_fd)

    def lstat(self, path: str) -> os.stat_result | None:
        """``lstat`` inside the root; None when the path (or a parent) does not exist."""
        try:
            with self.at(path) as (dir_fd, name):
                return lstat_at(dir_fd, name)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def remove(self, path: str) -> bool:
        """Remove a file, symlink or whole tree inside the root; False if it did not exist."""
        try:
            with self.at(path) as (dir_fd, name):
                if name == ".":
                    raise OSError(errno.EBUSY, "refusing to remove the root", path)
                return remove_at(dir_fd, name)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def open_dir(self, path: str) -> int:
        """A readable fd of the directory ``path`` (not followed if it is a symlink); the caller closes it."""
        with self.at(path) as (dir_fd, name):
            return os.dup(dir_fd) if name == "." else open_dir_at(dir_fd, name)


def _step(dir_fd: int, name: str, *, create: bool) -> tuple[str, int]:
    """Look at one component: ("dir", fd) | ("link", -1) | ("other", -1) | ("missing", -1)."""
    try:
        return "dir", os.open(name, _WALK_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            return "missing", -1
        _make_dir(dir_fd, name)
        return "dir", os.open(name, _WALK_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    return ("link" if stat.S_ISLNK(st.st_mode) else "other"), -1


def _make_dir(dir_fd: int, name: str) -> None:
    """An implicit parent: 0755 whatever the umask, and root-owned even under a setgid parent."""
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    fd = open_dir_at(dir_fd, name)
    try:
        if os.geteuid() == 0:
            os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)


_VIEW_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


class TreeView:
    """Read-only access to a tree's entries exactly as the walker records them.

    Every component is opened with ``O_NOFOLLOW`` relative to its parent's fd, so an entry below a symlink (or
    below a file) simply does not exist, whatever the symlink points to: reading a snapshot's paths again after
    a step replaced ``/d`` with a link to a host directory never reaches the host. Paths longer than
    ``PATH_MAX`` work. The parent chain of the last lookup is kept, so lookups in component order cost one
    open per new component (at most one fd per level of the deepest path looked up).
    """

    def __init__(self, root: str | bytes | os.PathLike) -> None:
        self.root = os.fsencode(root)
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._names: list[bytes] = []
        self._fds: list[int] = []

    def close(self) -> None:
        self._trim(0)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TreeView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _trim(self, keep: int) -> None:
        while len(self._fds) > keep:
            os.close(self._fds.pop())
            self._names.pop()

    def parent(self, rel: str | bytes) -> tuple[int, bytes] | None:
        """(fd of the directory holding ``rel``, its last name), or None when a parent is missing or not a
        directory. The fd is borrowed: it stays valid until the next lookup or ``close``."""
        parts = [p for p in os.fsencode(rel).split(b"/") if p and p != b"."]
        if not parts or b".." in parts:
            raise ValueError(f"not a relative entry path: {rel!r}")
        dirs = parts[:-1]
        k = 0
        while k < len(dirs) and k < len(self._names) and self._names[k] == dirs[k]:
            k += 1
        self._trim(k)
        for name in dirs[k:]:
            try:
                fd = os.open(name, _VIEW_FLAGS, dir_fd=self._fds[-1] if self._fds else self.fd)
            except OSError as exc:
                if exc.errno in _ABSENT:
                    return None
                raise
            self._fds.append(fd)
            self._names.append(name)
        return (self._fds[-1] if self._fds else self.fd), parts[-1]

    def lstat(self, rel: str | bytes) -> os.stat_result | None:
        """The entry's own stat (a symlink is not followed), or None when the walker would not see it."""
        at = self.parent(rel)
        if at is None:
            return None
        try:
            return os.stat(at[1], dir_fd=at[0], follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _ABSENT:
                return None
            raise

    def open(self, rel: str | bytes, flags: int = os.O_RDONLY) -> int:
        """Open the entry itself (``O_NOFOLLOW`` added); FileNotFoundError when it is not in the tree."""
        at = self.parent(rel)
        if at is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fsdecode(rel))
        return os.open(at[1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=at[0])

    def readlink(self, rel: str | bytes) -> bytes:
        at = self.parent(rel)
        if at is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fsdecode(rel))
        return os.readlink(at[1], dir_fd=at[0])

    def fd_path(self, rel: str | bytes) -> bytes | None:
        """A short path naming the entry through its parent's fd (``/proc/self/fd/N/name``), for calls that
        take no dir fd (xattrs); the final name is not followed by ``follow_symlinks=False`` callers."""
        at = self.parent(rel)
        return None if at is None else b"/proc/self/fd/%d/%s" % at
