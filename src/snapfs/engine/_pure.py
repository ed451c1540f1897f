"""Pure-Python twin of the compiled kernel (``_fast.pyx``): same functions, byte-identical results.

It is the test oracle for the Cython code and the fallback where the extension cannot be built; it is about
ten times slower. Keep the two in step: the test suite runs every kernel test against both.
"""
from __future__ import annotations

import errno
import os
import stat

from snapfs.errors import InputError
from snapfs.limits import MAX_DEPTH
from .rows import (FLAG_MOUNTPOINT, add_xattrs, encode_extra, fd_room, iter_rows, long_path_xattrs, path_key, row_at,
                   row_count, stat_row, too_deep)

_KEEP_PREFIX = b"user."
_KEEP_EXACT = b"security.capability"
_PATH_MAX = 4096


def _xattrs(full: bytes) -> list[tuple[bytes, bytes]]:
    try:
        names = os.listxattr(full, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENOENT):
            return []
        raise
    out = []
    for name in names:
        b = name.encode("utf-8", "surrogateescape")
        if b == _KEEP_EXACT or b.startswith(_KEEP_PREFIX):
            try:
                out.append((b, os.getxattr(full, name, follow_symlinks=False)))
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
    return out


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def walk(root, *, one_fs=True, ignore=(), xattrs=True, max_depth=MAX_DEPTH):
    """See ``snapfs._fast.walk``."""
    broot = os.fsencode(root).rstrip(b"/") or b"/"
    ign = {os.fsencode(p) for p in ignore}
    recs, names, extras = bytearray(), bytearray(), bytearray()
    if max_depth < 1:
        raise ValueError("max_depth must be at least 1")
    fd_room(max_depth)
    try:
        fd = os.open(broot, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{root}: cannot open directory: {os.strerror(exc.errno)}") from None
    st = os.fstat(fd)
    root_dev, prefix = st.st_dev, (b"" if broot == b"/" else broot)

    def fail(rel: bytes, what: str, exc: OSError) -> InputError:
        return InputError(f"{os.fsdecode(prefix + b'/' + rel)}: {what} failed: {os.strerror(exc.errno)}")

    def level(dfd: int, rel_dir: bytes) -> list:
        """[fd, rel_dir, sorted names, next index]: one directory on the explicit stack (no recursion)."""
        try:
            # Bytewise order, as the compiled walker sorts (str order differs for undecodable names).
            return [dfd, rel_dir, sorted(os.fsencode(n) for n in os.listdir(dfd)), 0]
        except OSError as exc:
            os.close(dfd)
            raise fail(rel_dir, "opendir", exc) from None

    stack = [level(fd, b"")]
    try:
        while stack:
            top = stack[-1]
            dfd, rel_dir, children, k = top
            if k == len(children):
                os.close(stack.pop()[0])
                continue
            top[3] = k + 1
            name = children[k]
            rel = rel_dir + b"/" + name if rel_dir else name
            if rel in ign:
                continue
            if len(stack) > max_depth:
                raise too_deep(broot, rel, max_depth)
            try:
                s = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise fail(rel, "stat", exc) from None
            extra = encode_extra(os.readlink(name, dir_fd=dfd), []) if stat.S_ISLNK(s.st_mode) else b""
            flags = FLAG_MOUNTPOINT if stat.S_ISDIR(s.st_mode) and one_fs and s.st_dev != root_dev else 0
            recs.extend(stat_row(s, name_off=len(names), name_len=len(rel), extra_off=len(extras) if extra else 0,
                                 extra_len=len(extra), flags=flags))
            names.extend(rel)
            extras.extend(extra)
            if stat.S_ISDIR(s.st_mode) and not flags:
                try:
                    cfd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise fail(rel, "open directory", exc) from None
                stack.append(level(cfd, rel))  # depth-first: a directory's subtree follows it immediately
    finally:
        for lv in stack:
            os.close(lv[0])
    recs, names, extras = bytes(recs), bytes(names), bytes(extras)
    if xattrs:
        recs, extras = add_xattrs(broot, recs, names, extras, scan=_xattr_range)
    return (recs, names, extras, st.st_dev, st.st_ino)


def _xattr_range(broot: bytes, recs: bytes, names: bytes, lo: int, hi: int) -> list[tuple[int, bytes]]:
    """See ``snapfs._fast._xattr_range``: kept xattrs of regular files and directories in ``[lo, hi)``."""
    prefix = b"" if broot == b"/" else broot
    out, longs = [], []
    for i in range(lo, hi):
        r = row_at(recs, i)
        mode, noff, nlen = r.mode, r.name_off, r.name_len
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            continue
        if len(prefix) + 1 + nlen + 1 >= _PATH_MAX:
            longs.append(i)  # too long for a path syscall: read through directory fds below
            continue
        full = prefix + b"/" + names[noff:noff + nlen]
        try:
            found = _xattrs(full)
        except OSError as exc:
            raise InputError(f"{os.fsdecode(full)}: listing xattrs failed: {os.strerror(exc.errno)}") from None
        if found:
            out.append((i, encode_extra(b"", found)))
    if longs:
        out = sorted(out + long_path_xattrs(broot, recs, names, longs))
    return out


_FMT = stat.S_IFMT
R_TYPE, R_MODE, R_OWNER, R_SIZE, R_MTIME, R_CTIME, R_INODE, R_LINK, R_RDEV, R_NLINK, R_HASH = (
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _rows(snap):
    recs, names, extras = snap
    out = []
    for r in iter_rows(recs):
        out.append((names[r.name_off:r.name_off + r.name_len], r.mode, r.uid, r.gid, r.size, r.mtime_ns, r.ctime_ns,
                    r.ino, r.rdev, r.nlink, extras[r.extra_off:r.extra_off + r.extra_len]))
    return out


def _compare(o, n, same_tree: bool, racy_ns: int) -> int:
    _, omode, ouid, ogid, osize, omt, oct_, oino, ordev, onl, oext = o
    _, nmode, nuid, ngid, nsize, nmt, nct, nino, nrdev, nnl, next_ = n
    ot = _FMT(omode)
    if ot != _FMT(nmode):
        return R_TYPE
    why = 0
    if omode & 0o7777 != nmode & 0o7777:
        why |= R_MODE
    if ouid != nuid or ogid != ngid:
        why |= R_OWNER
    if oext != next_:
        why |= R_LINK
    if ot == stat.S_IFDIR:
        if same_tree and oino != nino:
            why |= R_INODE
        return why
    if ot in (stat.S_IFCHR, stat.S_IFBLK) and ordev != nrdev:
        why |= R_RDEV
    if osize != nsize:
        why |= R_SIZE
    if omt != nmt:
        why |= R_MTIME
    if onl != nnl:
        why |= R_NLINK
    if same_tree:
        if oct_ != nct:
            why |= R_CTIME
        if oino != nino:
            why |= R_INODE
    if why or ot != stat.S_IFREG:
        return why
    if same_tree:
        if racy_ns and (omt >= racy_ns or oct_ >= racy_ns):
            return R_HASH
    elif omt % 1_000_000_000 == 0 and osize:
        return R_HASH
    return 0


def _under(path: bytes, parent: bytes) -> bool:
    return len(path) > len(parent) and path[len(parent)] == 0x2F and path.startswith(parent)


def diff_rows(old, new, *, same_tree, racy_ns=0):
    """See ``snapfs._fast.diff_rows``."""
    o_rows, n_rows = _rows(old), _rows(new)
    out, i, j, on, nn = [], 0, 0, len(o_rows), len(n_rows)
    while i < on or j < nn:
        if i < on and j < nn:
            ok, nk = path_key(o_rows[i][0]), path_key(n_rows[j][0])
            c = -1 if ok < nk else (1 if ok > nk else 0)
        else:
            c = -1 if i < on else 1
        if c < 0:
            out.append((1, i, 0, 0))
            op = o_rows[i][0]
            i += 1
            while i < on and _under(o_rows[i][0], op):
                i += 1
        elif c > 0:
            out.append((0, 0, j, 0))
            j += 1
        else:
            o = o_rows[i]
            why = _compare(o, n_rows[j], same_tree, racy_ns)
            if why:
                out.append((2, i, j, why))
            i += 1
            j += 1
            if why == R_TYPE and stat.S_ISDIR(o[1]):
                while i < on and _under(o_rows[i][0], o[0]):
                    i += 1
    return out


def racy_rows(recs: bytes, threshold: int) -> list[int]:
    """See ``snapfs._fast.racy_rows``."""
    return [i for i, r in enumerate(iter_rows(recs))
            if stat.S_ISREG(r.mode) and (r.mtime_ns >= threshold or r.ctime_ns >= threshold)]


def check_rows(recs: bytes, names: bytes, extras: bytes) -> str:
    """See ``snapfs._fast.check_rows``."""
    try:
        row_count(recs)
    except ValueError:
        return "record size"
    prev = None
    for i, r in enumerate(iter_rows(recs)):
        noff, eoff, nlen, elen = r.name_off, r.extra_off, r.name_len, r.extra_len
        if nlen == 0 or noff + nlen > len(names):
            return f"name bounds at row {i}"
        if eoff + elen > len(extras):
            return f"extra bounds at row {i}"
        key = path_key(names[noff:noff + nlen])
        if prev is not None and prev >= key:
            return f"order at row {i}"
        prev = key
    return ""
