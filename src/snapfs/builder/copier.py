"""COPY and ADD: put files from the context, another stage or an image into the stage root.

Docker's rules, as BuildKit applies them:
- sources are relative to the source root (a leading ``/`` too; ``..`` cannot climb out of it); wildcards use
  Go ``filepath.Match`` per path component; a literal source that is missing or excluded by ``.dockerignore``
  is an error; a wildcard may match nothing (BuildKit's ``AllowEmptyWildcard``: nothing is copied), but the
  literal directory before its first wildcard must exist; excluded files never match;
- a source directory's *contents* are copied (``--parents`` keeps the matched path, from a ``/./`` pivot if any);
- a destination ending in ``/``, or an existing directory, receives sources under their base names; several
  sources *after wildcard expansion* need such a directory (one match and no slash: the destination is the
  file's new name); a relative destination is relative to WORKDIR;
- a source given by a symlink is followed (inside the source root); symlinks inside copied trees stay symlinks;
  hard links within one copy stay hard links;
- files keep their permission bits and mtime; owner is ``--chown`` if given, else 0:0 for the context and the
  source's owner for stages and images; ``--chmod`` replaces the permission bits of what is copied; directories
  created for the destination are 0755 and get the ``--chown`` owner.
Every destination path is resolved inside the stage root, through its own symlinks, never outside it.
"""
from __future__ import annotations

import errno
import os
import posixpath
import re
import stat
from dataclasses import dataclass

from snapfs.engine.rootfs import RootFS, lstat_at, remove_at
from snapfs.errors import BuildError
from snapfs.frontend.dockerignore import DockerIgnore, parse_dockerignore
from snapfs.limits import MAX_DEPTH

_GLOB = re.compile(r"[*?\[]")
_CHUNK = 1 << 20
KEPT_XATTR_PREFIXES = ("user.", "security.capability")


@dataclass(frozen=True)
class Source:
    """Where COPY reads from: a host directory, and whether it is the build context."""

    root: str
    from_context: bool
    ignore: DockerIgnore | None = None
    label: str = "build context"


@dataclass(frozen=True)
class _Match:
    rel: str  # relative to the source root, "" for the root itself
    keep: str  # what --parents keeps of it


def clean(path: str) -> str:
    """Relative, normalised, unable to climb out: ``/a/../../b/`` is ``b``."""
    return posixpath.normpath("/" + path).lstrip("/")


def copy(dst: RootFS, src: Source, patterns: list[str], dest: str, *, workdir: str = "/",
         owner: tuple[int, int] | None = None, chmod=None, excludes: tuple[str, ...] = (),
         parents: bool = False, what: str = "COPY") -> list[str]:
    """Copy ``patterns`` from ``src`` to ``dest`` in ``dst``; returns the paths written (relative to the root)."""
    exclude = parse_dockerignore("\n".join(excludes), file="--exclude") if excludes else None
    with RootFS(src.root) as sroot:
        matches = expand(sroot, src, patterns, exclude=exclude, what=what)
        if not matches:
            raise no_sources(patterns, src, what)
        dest_abs = posixpath.join(workdir or "/", dest)
        dest_dir = dest_is_dir(dst, dest, workdir=workdir)
        if not parents:
            check_several(len(matches), dest, dest_dir=dest_dir, what=what)
        job = _Copy(dst, sroot, src, owner, chmod, exclude)
        for m in matches:
            st = _stat_followed(sroot, m.rel)
            target = clean(dest_abs)
            if parents:
                target = clean(posixpath.join(target, m.keep))
                if stat.S_ISDIR(st.st_mode):
                    job.directory(m.rel, target, followed=True)
                    continue
                job.make_dirs(posixpath.dirname(target))
                job.entry(m.rel, target, followed=True)
            elif stat.S_ISDIR(st.st_mode):
                job.directory(m.rel, target, followed=True)
            else:
                if dest_dir:
                    target = clean(posixpath.join(target, posixpath.basename(m.rel)))
                job.make_dirs(posixpath.dirname(target))
                job.entry(m.rel, target, followed=True)
        return job.written


def expand(sroot: RootFS, src: Source, patterns: list[str], *, exclude: DockerIgnore | None = None,
           what: str = "COPY") -> list[_Match]:
    """The sources ``patterns`` name, wildcards expanded, in order. A literal source must exist; a wildcard may
    match nothing (the caller refuses an instruction whose sources all matched nothing: :func:`no_sources`), but
    the literal directory before its first wildcard must exist (BuildKit lstats it)."""
    matches: list[_Match] = []
    for pattern in patterns:
        found = _match(sroot, src, pattern, exclude)
        if not found:
            literal = _literal_dir(pattern)
            if literal is None:
                raise BuildError(f"{what} failed: {pattern!r}: not found in {src.label}"
                                 + (" (or excluded by .dockerignore)" if src.ignore is not None else ""))
            if literal and not _is_dir(sroot, literal):
                raise BuildError(f"{what} failed: {pattern!r}: directory {literal!r} not found in {src.label}")
        matches.extend(found)
    return matches


def no_sources(patterns: list[str], src: Source, what: str) -> BuildError:
    """Every source was a wildcard and none matched. Docker's classic builder, Kaniko and buildah refuse this
    (the optional-file idiom ``COPY package.json yarn.lock* ./`` still works: one source matched); BuildKit
    copies nothing, which hides a wrong path (moby/buildkit#4900), so snapfs sides with the error."""
    shown = ", ".join(repr(p) for p in patterns)
    return BuildError(f"{what} failed: no source files were specified: {shown} matched nothing in {src.label}"
                      + (" (after .dockerignore)" if src.ignore is not None else ""))


def dest_is_dir(dst: RootFS, dest: str, *, workdir: str = "/") -> bool:
    """Whether COPY's ``dest`` means a directory: it ends in ``/`` (or is ``.``), or is one in the stage root."""
    return (dest.endswith("/") or dest in (".", "") or dest.endswith("/.")
            or _is_dir(dst, posixpath.join(workdir or "/", dest)))


def check_several(count: int, dest: str, *, dest_dir: bool, what: str) -> None:
    """Several sources, counted after wildcard expansion, need a directory destination (Docker's rule)."""
    if count > 1 and not dest_dir:
        raise BuildError(f"{what} failed: when using {what} with more than one source file ({count} here), "
                         f"the destination {dest!r} must be a directory and end with a /")


def escape_glob(rel: str) -> str:
    """A matched path as a pattern that matches only itself (for ADD, which copies each match on its own): the
    components holding wildcard characters get them backslash-escaped; the others are taken literally anyway."""
    return "/".join(re.sub(r"([*?\[\\])", r"\\\1", c) if _GLOB.search(c) else c for c in rel.split("/"))


def _literal_dir(pattern: str) -> str | None:
    """For a wildcard pattern, the directory before its first wildcard component ("" for the root); None for a
    literal pattern."""
    parts = clean(pattern.replace("/./", "/")).split("/")
    for i, part in enumerate(parts):
        if _GLOB.search(part):
            return "/".join(parts[:i])
    return None


def _match(sroot: RootFS, src: Source, pattern: str, exclude: DockerIgnore | None) -> list[_Match]:
    keep_from = None
    if parents_pivot := "/./" in pattern:
        head, _, tail = pattern.partition("/./")
        keep_from = clean(head)
    rel = clean(pattern.replace("/./", "/") if parents_pivot else pattern)
    if not _GLOB.search(rel):
        if sroot.lstat(rel) is None or _ignored(src, rel) or (exclude and exclude.excluded(rel)):
            return []
        found = [rel]
    else:
        found = _glob(sroot, src, rel.split("/"), "", exclude)
    out = []
    for r in found:
        keep = r[len(keep_from) + 1:] if keep_from and r.startswith(keep_from + "/") else r
        out.append(_Match(r, keep))
    return out


def _component(pattern: str) -> re.Pattern[str]:
    from snapfs.frontend.dockerignore import _component_regex

    return _component_regex(pattern)


def _glob(sroot: RootFS, src: Source, parts: list[str], prefix: str, exclude) -> list[str]:
    head, rest = parts[0], parts[1:]
    names: list[str]
    if _GLOB.search(head):
        rx = _component(head)
        try:
            fd = sroot.open_dir(prefix or ".")
        except OSError:
            return []
        try:
            names = sorted(n for n in os.listdir(fd) if rx.fullmatch(n))
        finally:
            os.close(fd)
    else:
        names = [head]
    out = []
    for name in names:
        rel = f"{prefix}/{name}" if prefix else name
        st = sroot.lstat(rel)
        if st is None or _ignored(src, rel) or (exclude and exclude.excluded(rel)):
            continue
        if not rest:
            out.append(rel)
        elif stat.S_ISDIR(st.st_mode):
            out.extend(_glob(sroot, src, rest, rel, exclude))
    return out


def _ignored(src: Source, rel: str) -> bool:
    return src.ignore is not None and rel != "" and src.ignore.excluded(rel)


def _is_dir(dst: RootFS, path: str) -> bool:
    try:
        with dst.at(path, follow=True) as (fd, name):
            st = lstat_at(fd, name)
            return st is not None and stat.S_ISDIR(st.st_mode)
    except OSError:
        return False


def _stat_followed(sroot: RootFS, rel: str) -> os.stat_result:
    with sroot.at(rel, follow=True) as (fd, name):
        st = lstat_at(fd, name)
    if st is None:
        raise BuildError(f"{rel}: dangling symlink in the source")
    return st


class _Copy:
    """One COPY's state: hard links seen, paths written."""

    def __init__(self, dst: RootFS, sroot: RootFS, src: Source, owner, chmod, exclude) -> None:
        self.dst, self.sroot, self.src, self.owner, self.chmod, self.exclude = dst, sroot, src, owner, chmod, exclude
        self.links: dict[tuple[int, int], str] = {}
        self.written: list[str] = []

    def _owner_of(self, st: os.stat_result) -> tuple[int, int]:
        if self.owner is not None:
            return self.owner
        return (0, 0) if self.src.from_context else (st.st_uid, st.st_gid)

    def _mode_of(self, st: os.stat_result) -> int:
        if self.chmod is not None:
            return self.chmod.apply(st.st_mode, is_dir=stat.S_ISDIR(st.st_mode))
        return stat.S_IMODE(st.st_mode)

    def make_dirs(self, path: str) -> None:
        """Create missing directories of the destination: 0755, owned by --chown (or root)."""
        parts = [p for p in path.split("/") if p]
        for i in range(len(parts)):
            sub = "/".join(parts[:i + 1])
            with self.dst.at(sub, follow=True, make_parents=True) as (fd, name):
                st = lstat_at(fd, name)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    continue
                if st is not None:
                    remove_at(fd, name, st)
                os.mkdir(name, 0o755, dir_fd=fd)
                uid, gid = self.owner or (0, 0)
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
                os.chmod(name, 0o755, dir_fd=fd, follow_symlinks=False)
                self.written.append(sub)

    def directory(self, rel: str, target: str, *, followed: bool) -> None:
        """Copy the contents of source dir ``rel`` into ``target``. The destination directory itself never takes
        the source directory's metadata (as in BuildKit): an existing one is left as it is, a missing one is
        created like any destination parent (0755, owned by --chown or root)."""
        if target:
            self.make_dirs(target)
        self._children(rel, target, base=rel)

    def _excluded(self, child: str, base: str) -> bool:
        """--exclude patterns match relative to the source being copied (and to the source root)."""
        return _excluded(self.exclude, child, base)

    def _listing(self, rel: str) -> list[str]:
        fd = self.sroot.open_dir(rel or ".")
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def _children(self, rel: str, target: str, *, base: str) -> None:
        # An explicit stack, not recursion: a source tree thousands of levels deep gets the depth-limit error,
        # not a RecursionError. A frame: [source dir, target dir, names, next index, stat to finish it with].
        stack: list[list] = [[rel, target, self._listing(rel), 0, None]]
        while stack:
            frame = stack[-1]
            rel, target, names, k, dir_st = frame
            if k == len(names):
                stack.pop()
                if dir_st is not None:
                    self._finish_dir(target, dir_st)
                continue
            frame[3] = k + 1
            name = names[k]
            child = f"{rel}/{name}" if rel else name
            if _ignored(self.src, child) or self._excluded(child, base):
                if self.src.ignore is None or not self.src.ignore.may_descend(child):
                    continue
            dest = f"{target}/{name}" if target else name
            if dest.count("/") >= MAX_DEPTH:
                head = "/".join(dest.split("/")[:4])
                raise BuildError(f"/{head}/...: directory tree nested deeper than {MAX_DEPTH} levels (snapfs's "
                                 "depth limit)")
            st = self.sroot.lstat(child)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                self._put_dir(dest, st)
                stack.append([child, dest, self._listing(child), 0, st])
            elif not (_ignored(self.src, child) or self._excluded(child, base)):
                self.entry(child, dest, followed=False)

    def _put_dir(self, target: str, st: os.stat_result) -> None:
        with self.dst.at(target, make_parents=True) as (fd, name):
            cur = lstat_at(fd, name)
            if cur is not None and not stat.S_ISDIR(cur.st_mode):
                remove_at(fd, name, cur)
                cur = None
            if cur is None:
                os.mkdir(name, 0o700, dir_fd=fd)
            uid, gid = self._owner_of(st)
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
        self.written.append(target)

    def _finish_dir(self, target: str, st: os.stat_result) -> None:
        # Mode and mtime last: a read-only source dir must still receive its children first.
        with self.dst.at(target) as (fd, name):
            os.chmod(name, self._mode_of(st), dir_fd=fd, follow_symlinks=False)
            os.utime(name, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=fd, follow_symlinks=False)

    def entry(self, rel: str, target: str, *, followed: bool) -> None:
        """Copy one non-directory entry ``rel`` to ``target``."""
        with self.sroot.at(rel, follow=followed) as (sfd, sname):
            st = lstat_at(sfd, sname)
            if st is None:
                raise BuildError(f"{rel}: vanished from the {self.src.label} while copying")
            if stat.S_ISDIR(st.st_mode):
                raise BuildError(f"{rel}: unexpected directory")  # only reachable through a racing swap
            if stat.S_ISSOCK(st.st_mode):
                return
            with self.dst.at(target, make_parents=True) as (dfd, dname):
                cur = lstat_at(dfd, dname)
                if cur is not None:
                    remove_at(dfd, dname, cur)
                self._put(sfd, sname, st, dfd, dname, target)
        self.written.append(target)

    def _put(self, sfd: int, sname: str, st: os.stat_result, dfd: int, dname: str, target: str) -> None:
        uid, gid = self._owner_of(st)
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFREG:
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                with self.dst.at(self.links[key]) as (lfd, lname):
                    os.link(lname, dname, src_dir_fd=lfd, dst_dir_fd=dfd, follow_symlinks=False)
                return
            self.links[key] = target
            inp = os.open(sname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
            try:
                out = os.open(dname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=dfd)
                try:
                    _copy_data(inp, out, st.st_size)
                    os.fchown(out, uid, gid)
                    os.fchmod(out, self._mode_of(st))
                    _copy_xattrs(inp, out)
                    os.utime(out, ns=(st.st_mtime_ns, st.st_mtime_ns))
                finally:
                    os.close(out)
            finally:
                os.close(inp)
            return
        if fmt == stat.S_IFLNK:
            os.symlink(os.readlink(sname, dir_fd=sfd), dname, dir_fd=dfd)
        elif fmt in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK):
            os.mknod(dname, fmt | 0o600, st.st_rdev, dir_fd=dfd)
        else:
            return
        os.chown(dname, uid, gid, dir_fd=dfd, follow_symlinks=False)
        if fmt != stat.S_IFLNK:
            os.chmod(dname, self._mode_of(st), dir_fd=dfd, follow_symlinks=False)
        os.utime(dname, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)


def _copy_data(inp: int, out: int, size: int) -> None:
    left = size
    while left > 0:
        try:
            n = os.copy_file_range(inp, out, min(left, 1 << 30))
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = os.sendfile(out, inp, None, min(left, _CHUNK))
        if n == 0:
            break
        left -= n


def _copy_xattrs(src_fd: int, dst_fd: int) -> None:
    """Copy the xattrs images keep (``user.*``, file capabilities) between two open regular files."""
    try:
        names = os.listxattr(src_fd)
    except OSError:
        return
    for name in names:
        if name.startswith(KEPT_XATTR_PREFIXES):
            try:
                os.setxattr(dst_fd, name, os.getxattr(src_fd, name))
            except OSError:
                pass


def write_inline(dst: RootFS, target: str, data: bytes, *, owner: tuple[int, int] | None, mode: int,
                 mtime_ns: int | None = None) -> None:
    """A heredoc source (``COPY <<EOF /dest``): a new regular file."""
    with dst.at(target, make_parents=True) as (fd, name):
        cur = lstat_at(fd, name)
        if cur is not None:
            remove_at(fd, name, cur)
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        try:
            os.write(out, data)
            uid, gid = owner or (0, 0)
            os.fchown(out, uid, gid)
            os.fchmod(out, mode)
            if mtime_ns is not None:
                os.utime(out, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(out)


def source_table(src: Source, patterns: list[str], *, excludes: tuple[str, ...] = (),
                 what: str = "COPY") -> tuple[tuple[str, tuple[str, ...]], ...]:
    """What a COPY of ``patterns`` from ``src`` reads, for its cache key: every entry (after wildcards,
    ``.dockerignore`` and ``--exclude``) as (path, (type, mode, owner, size, content)). Content is the SHA-256
    of a file's data, a symlink's target or a device's numbers; the owner is left out for the context, whose
    files are always copied as 0:0. Same rules as :func:`copy`, whose walk this follows."""
    exclude = parse_dockerignore("\n".join(excludes), file="--exclude") if excludes else None
    out: list[tuple[str, tuple[str, ...]]] = []
    with RootFS(src.root) as sroot:
        matches = expand(sroot, src, patterns, exclude=exclude, what=what)
        if not matches:
            raise no_sources(patterns, src, what)
        for m in matches:
            st = _stat_followed(sroot, m.rel)
            out.append((m.rel, _record(sroot, src, m.rel, st, followed=True)))
            if not stat.S_ISDIR(st.st_mode):
                continue
            base, stack = m.rel, [m.rel]
            while stack:
                rel = stack.pop()
                fd = sroot.open_dir(rel or ".")
                try:
                    names = sorted(os.listdir(fd))
                finally:
                    os.close(fd)
                for name in names:
                    child = f"{rel}/{name}" if rel else name
                    skipped = _ignored(src, child) or _excluded(exclude, child, base)
                    if skipped and (src.ignore is None or not src.ignore.may_descend(child)):
                        continue
                    if child.count("/") >= MAX_DEPTH:
                        raise BuildError(f"{child[:200]}...: source tree nested deeper than {MAX_DEPTH} levels")
                    cst = sroot.lstat(child)
                    if cst is None:
                        continue
                    if stat.S_ISDIR(cst.st_mode):
                        stack.append(child)
                        if not skipped:
                            out.append((child, _record(sroot, src, child, cst, followed=False)))
                    elif not skipped:
                        out.append((child, _record(sroot, src, child, cst, followed=False)))
    return tuple(out)


def _excluded(exclude: DockerIgnore | None, child: str, base: str) -> bool:
    if exclude is None:
        return False
    inner = child[len(base) + 1:] if base and child.startswith(base + "/") else child
    return exclude.excluded(inner) or exclude.excluded(child)


def _record(sroot: RootFS, src: Source, rel: str, st: os.stat_result, *, followed: bool) -> tuple[str, ...]:
    import hashlib

    fmt = stat.S_IFMT(st.st_mode)
    owner = "" if src.from_context else f"{st.st_uid}:{st.st_gid}"
    size = str(st.st_size) if fmt == stat.S_IFREG else ""
    content = ""
    if fmt == stat.S_IFREG:
        h = hashlib.sha256()
        with sroot.at(rel, follow=followed) as (fd, name):
            f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        with os.fdopen(f, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        content = h.hexdigest()
    elif fmt == stat.S_IFLNK:
        with sroot.at(rel) as (fd, name):
            content = os.readlink(name, dir_fd=fd)
    elif fmt in (stat.S_IFBLK, stat.S_IFCHR):
        content = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    return (oct(fmt), oct(stat.S_IMODE(st.st_mode)), owner, size, content)
