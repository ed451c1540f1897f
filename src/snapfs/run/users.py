"""Users and groups of an image, read from the image's own ``/etc/passwd`` and ``/etc/group``.

The host's NSS (``pwd``, ``grp``) describes the wrong machine: a RUN step's ``USER app`` and a ``COPY --chown``
name users of the stage root. Both files are read through :class:`RootFS`, so a hostile ``/etc/passwd`` symlink
resolves inside the root, and their size is bounded.

The rules are Docker's (runc's ``GetExecUser``):

- the user is a name or a numeric uid; a numeric uid absent from passwd is allowed (gid 0, HOME ``/``), a name
  absent from passwd is an error, except ``root``, which is uid 0 with or without a passwd file (an image
  ``FROM scratch`` has none; BuildKit's fast path and buildah both take ``root`` as 0);
- without ``:group`` the primary gid comes from passwd and the supplementary groups are every group that lists
  the user by name; with ``:group`` (a name, ``root``, or a number that need not exist) that group is the only one.

File owners (``COPY/ADD --chown``: :func:`resolve_chown`; the directory ``WORKDIR`` creates under ``USER``:
:func:`resolve_owner`) follow BuildKit's file operations (``llb.WithUser`` and the solver's ``readUser``): a
number or ``root`` needs no file, and a lone one gives gid = uid (``--chown=1000`` is 1000:1000 whatever passwd
says); a lone name gives the user's primary gid; an empty user (``:staff``) is uid 0. Where BuildKit silently
falls back to 0 for a name it cannot find, ``--chown`` is an error (as in buildah: a typo must not make root-owned
files), while ``WORKDIR`` falls back as BuildKit and buildah both do: its owner is only a default.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from typing import Iterator, NamedTuple

from snapfs.engine.rootfs import RootFS
from snapfs.errors import BuildError, InputError

MAX_DB_SIZE = 8 << 20  # passwd/group files past this are refused, not parsed
MAX_ID = 2**32 - 2  # (uid_t)-1 is "no change" to the kernel, never a real id
DEFAULT_HOME = "/"
ROOT = "root"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class User:
    """Who a RUN step runs as: the ids to switch to and the HOME it gets by default."""

    uid: int
    gid: int
    groups: tuple[int, ...]  # every group the process is in, primary gid first
    home: str
    name: str  # "" for a numeric uid that is not in passwd


class PasswdEntry(NamedTuple):
    name: str
    uid: int
    gid: int
    home: str


class GroupEntry(NamedTuple):
    name: str
    gid: int
    members: tuple[str, ...]


def resolve_user(root: str | os.PathLike | RootFS, spec: str) -> User:
    """The :class:`User` for a Dockerfile ``USER`` value (``""``, ``name``, ``uid``, ``user:group``)."""
    user_arg, _, group_arg = (spec or "").partition(":")
    user_arg = user_arg or "0"  # ":group" alone keeps root, as runc does
    with _opened(root) as rfs:
        passwd = _read_passwd(rfs)
        uid = _numeric(user_arg)
        entry = next((e for e in passwd if e.name == user_arg or (uid is not None and e.uid == uid)), None)
        if entry is None and user_arg == ROOT:
            entry = PasswdEntry(ROOT, 0, 0, DEFAULT_HOME)
        if entry is None:
            if uid is None:
                raise BuildError(f"unable to find user {user_arg}: no matching entries in passwd file")
            entry = PasswdEntry("", uid, 0, DEFAULT_HOME)
        if group_arg:
            gid = _group_id(rfs, group_arg)
            return User(entry.uid, gid, (gid,), entry.home or DEFAULT_HOME, entry.name)
        groups = [entry.gid]
        if entry.name:
            for g in _read_group(rfs):
                if entry.name in g.members and g.gid not in groups:
                    groups.append(g.gid)
        return User(entry.uid, entry.gid, tuple(groups), entry.home or DEFAULT_HOME, entry.name)


def resolve_chown(root: str | os.PathLike | RootFS, spec: str) -> tuple[int, int]:
    """(uid, gid) for ``COPY --chown=user[:group]``; a name missing from the image's files is an error."""
    user_arg, sep, group_arg = spec.partition(":")
    if not (user_arg or group_arg) or (sep and not group_arg):
        raise BuildError(f"invalid --chown value {spec!r}: expected user[:group]")
    return _file_owner(root, user_arg, group_arg, strict=True)


def resolve_owner(root: str | os.PathLike | RootFS, spec: str) -> tuple[int, int]:
    """(uid, gid) that ``WORKDIR`` gives the directories it creates under ``USER spec``: BuildKit's rules, a
    name missing from the image's files counting as 0 (the next RUN reports an unknown user)."""
    user_arg, _, group_arg = (spec or "").partition(":")
    return _file_owner(root, user_arg, group_arg, strict=False)


def _file_owner(root, user_arg: str, group_arg: str, *, strict: bool) -> tuple[int, int]:
    uid = _id_of(user_arg) if user_arg else 0  # ":group" alone: uid 0, as BuildKit marshals an empty name
    gid = uid
    with _opened(root) as rfs:
        if uid is None:
            entry = next((e for e in _read_passwd(rfs) if e.name == user_arg), None)
            if entry is not None:
                uid, gid = entry.uid, entry.gid
            elif strict:
                raise BuildError(f"unable to find user {user_arg}: no matching entries in passwd file")
            else:
                log.warning("user %s is not in the image's /etc/passwd: directories are created as 0:0", user_arg)
                uid = gid = 0
        if group_arg:
            found = _id_of(group_arg)
            if found is None:
                found = next((g.gid for g in _read_group(rfs) if g.name == group_arg), None)
            if found is not None:
                gid = found
            elif strict:
                raise BuildError(f"unable to find group {group_arg}: no matching entries in group file")
            else:
                log.warning("group %s is not in the image's /etc/group: keeping gid %d", group_arg, gid)
    return uid, gid


def _group_id(rfs: RootFS, group_arg: str) -> int:
    gid = _id_of(group_arg)
    if gid is not None:
        return gid
    for g in _read_group(rfs):
        if g.name == group_arg:
            return g.gid
    raise BuildError(f"unable to find group {group_arg}: no matching entries in group file")


def _id_of(value: str) -> int | None:
    """A numeric id, or 0 for ``root``, which needs no passwd or group file; None for any other name."""
    return 0 if value == ROOT else _numeric(value)


def _numeric(value: str) -> int | None:
    if not value.isascii() or not value.isdigit():
        return None
    n = int(value)
    if n > MAX_ID:
        raise BuildError(f"user or group id {value} is out of range")
    return n


def _read_passwd(rfs: RootFS) -> list[PasswdEntry]:
    out = []
    for fields in _records(rfs, "/etc/passwd", 7):
        uid, gid = _numeric(fields[2]), _numeric(fields[3])
        if fields[0] and uid is not None and gid is not None:
            out.append(PasswdEntry(fields[0], uid, gid, fields[5]))
    return out


def _read_group(rfs: RootFS) -> list[GroupEntry]:
    out = []
    for fields in _records(rfs, "/etc/group", 4):
        gid = _numeric(fields[2])
        if fields[0] and gid is not None:
            out.append(GroupEntry(fields[0], gid, tuple(m for m in fields[3].split(",") if m)))
    return out


def _records(rfs: RootFS, path: str, nfields: int) -> Iterator[list[str]]:
    """The colon-separated lines of a file inside the root with exactly ``nfields`` fields; others are skipped."""
    data = read_small_file(rfs, path, limit=MAX_DB_SIZE)
    if data is None:
        return
    for line in data.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) == nfields:
            yield fields


def read_small_file(rfs: RootFS, path: str, *, limit: int) -> bytes | None:
    """Content of a regular file inside the root (symlinks resolved inside it); None if missing."""
    try:
        with rfs.at(path, follow=True) as (dir_fd, name):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BuildError(f"{path} in the image: too many levels of symbolic links") from None
        raise BuildError(f"cannot read {path} in the image: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BuildError(f"{path} in the image is not a regular file")
        if st.st_size > limit:
            raise BuildError(f"{path} in the image is too large ({st.st_size} bytes, limit {limit})")
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 16):
            total += len(chunk)
            if total > limit:
                raise BuildError(f"{path} in the image is too large (limit {limit} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class _opened:
    """Use a RootFS as given, or open (and close) one for a path."""

    def __init__(self, root: str | os.PathLike | RootFS) -> None:
        self._given = root if isinstance(root, RootFS) else None
        self._path = None if self._given else os.fspath(root)
        self._own: RootFS | None = None

    def __enter__(self) -> RootFS:
        if self._given is not None:
            return self._given
        try:
            self._own = RootFS(self._path)
        except OSError as exc:
            raise InputError(f"root directory {self._path}: {exc.strerror}") from None
        return self._own

    def __exit__(self, *exc) -> None:
        if self._own is not None:
            self._own.close()
