# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernel: the rootfs walker and the sorted-merge diff of two snapshots.

Same API and byte-for-byte the same results as ``snapfs.engine._pure`` (the test oracle). The walk runs without the
GIL and produces three compact buffers instead of one Python object per file:

- ``records``: one fixed-size row per entry (``rows.RECORD``: 96 bytes),
- ``names``: the entries' paths relative to the root, concatenated (no separators),
- ``extras``: symlink targets and xattrs, only for entries that have them (``rows.encode_extra``).

Entries come in component order (a depth-first walk with each directory's names sorted bytewise), so a
directory is immediately followed by its whole subtree and two snapshots can be merged in one pass. The walk
keeps its own stack (no recursion: a deep tree costs heap and one fd per level, never the C stack) and stops
at ``limits.MAX_DEPTH`` levels with a one-line error.
"""
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort, realloc
from libc.string cimport memcmp, memcpy, strcmp, strlen

from .errors import InputError
from .limits import MAX_DEPTH
from .engine.rows import add_xattrs, fd_room, long_path_xattrs, too_deep

cdef extern from "<errno.h>":
    int errno
    enum:
        ENOENT
        ENOTDIR
        ENODATA
        ENOTSUP
        ERANGE
        E2BIG

cdef extern from "<sys/types.h>":
    ctypedef long ssize_t

cdef extern from "<time.h>":
    cdef struct timespec:
        long tv_sec
        long tv_nsec

cdef extern from "<sys/stat.h>" nogil:
    ctypedef struct struct_stat "struct stat":
        unsigned long st_dev
        unsigned long st_ino
        unsigned int st_mode
        unsigned long st_nlink
        unsigned int st_uid
        unsigned int st_gid
        unsigned long st_rdev
        long st_size
        timespec st_mtim
        timespec st_ctim
    int fstatat(int dirfd, const char *path, struct_stat *buf, int flags)
    int fstat(int fd, struct_stat *buf)
    bint S_ISDIR(unsigned int m)
    bint S_ISLNK(unsigned int m)
    bint S_ISREG(unsigned int m)

cdef extern from "<fcntl.h>" nogil:
    int openat(int dirfd, const char *path, int flags)
    enum:
        O_RDONLY
        O_DIRECTORY
        O_NOFOLLOW
        O_CLOEXEC
        AT_SYMLINK_NOFOLLOW

cdef extern from "<unistd.h>" nogil:
    ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t size)
    int close(int fd)
    int dup(int fd)

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR
    struct dirent:
        char d_name[256]
    DIR *fdopendir(int fd)
    int dirfd(DIR *d)
    dirent *readdir(DIR *d)
    int closedir(DIR *d)

cdef extern from "<sys/xattr.h>" nogil:
    ssize_t llistxattr(const char *path, char *lst, size_t size)
    ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size)

# The row layout; must match rows.RECORD ("<QqqQQQQQIIIIIIII").
ctypedef struct Rec:
    uint64_t size
    int64_t mtime_ns
    int64_t ctime_ns
    uint64_t ino
    uint64_t dev
    uint64_t rdev
    uint64_t name_off
    uint64_t extra_off
    uint32_t mode
    uint32_t uid
    uint32_t gid
    uint32_t nlink
    uint32_t name_len
    uint32_t extra_len
    uint32_t flags
    uint32_t reserved

DEF S_IFMT = 0o170000
DEF S_IFDIR = 0o040000
DEF S_IFREG = 0o100000
DEF S_IFLNK = 0o120000
DEF S_IFCHR = 0o020000
DEF S_IFBLK = 0o060000
DEF PATH_BUF = 8192
DEF PATH_MAX = 4096
DEF XATTR_BUF = 65536
DEF FLAG_MOUNTPOINT = 1
DEF TOO_DEEP = -1

ctypedef struct Buf:
    char *data
    size_t len
    size_t cap

ctypedef struct Walker:
    Buf recs
    Buf names
    Buf extras
    uint64_t root_dev
    int one_fs
    char **ignore
    size_t nignore
    size_t rootlen
    size_t max_depth
    char *path  # the current entry's full path, grown as needed (deep trees exceed PATH_MAX)
    size_t pathcap
    int err_errno  # TOO_DEEP: an entry nested deeper than max_depth
    char err_what[64]
    char err_path[PATH_BUF]


# One directory on the walk's explicit stack: its fd and its sorted names, visited one at a time.
ctypedef struct Level:
    int fd
    char *names
    char **order
    size_t n
    size_t next
    size_t plen


cdef int buf_reserve(Buf *b, size_t extra) noexcept nogil:
    cdef size_t cap
    cdef char *p
    if b.len + extra <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 65536
    while cap < b.len + extra:
        cap *= 2
    p = <char *> realloc(b.data, cap)
    if p == NULL:
        return -1
    b.data = p
    b.cap = cap
    return 0


cdef int buf_put(Buf *b, const void *src, size_t n) noexcept nogil:
    if buf_reserve(b, n) < 0:
        return -1
    memcpy(b.data + b.len, src, n)
    b.len += n
    return 0


cdef int cmp_cstr(const void *a, const void *b) noexcept nogil:
    return strcmp((<char **> a)[0], (<char **> b)[0])


cdef int fail(Walker *w, const char *what, int err) noexcept nogil:
    cdef size_t n = strlen(what)
    if n > 63:
        n = 63
    memcpy(w.err_what, what, n)
    w.err_what[n] = 0
    w.err_errno = err
    n = strlen(w.path)
    if n > PATH_BUF - 1:
        n = PATH_BUF - 1
    memcpy(w.err_path, w.path, n)
    w.err_path[n] = 0
    return -1


cdef bint ignored(Walker *w, const char *rel) noexcept nogil:
    cdef size_t lo = 0, hi = w.nignore, mid
    cdef int c
    while lo < hi:
        mid = (lo + hi) // 2
        c = strcmp(w.ignore[mid], rel)
        if c == 0:
            return True
        if c < 0:
            lo = mid + 1
        else:
            hi = mid
    return False


cdef bint keep_xattr(const char *name) noexcept nogil:
    # Only what image layers carry: file capabilities and user attributes; never trusted.* or ACLs.
    if strcmp(name, b"security.capability") == 0:
        return True
    return memcmp(name, b"user.", 5) == 0


cdef int put_link(Walker *w, const char *link, ssize_t linklen, Rec *r) noexcept nogil:
    """A symlink's extra blob: u32 target length + target (xattrs are added by the xattr pass)."""
    cdef uint32_t u32 = <uint32_t> linklen
    r.extra_off = w.extras.len
    if buf_put(&w.extras, &u32, 4) < 0 or (u32 and buf_put(&w.extras, link, u32) < 0):
        return fail(w, b"out of memory", 12)
    r.extra_len = <uint32_t> (w.extras.len - r.extra_off)
    return 0


cdef ssize_t xattr_blob(const char *full, Buf *out, char *xnames, char *xval) noexcept nogil:
    """Append ``u32 0`` then (u16 name len, name, u32 value len, value) per kept xattr, names sorted
    (listxattr order is not stable across filesystems). Returns bytes appended, 0 if none, -errno on error."""
    cdef ssize_t lsz, vsz
    cdef uint32_t u32 = 0
    cdef uint16_t u16
    cdef char *names[256]
    cdef size_t nnames = 0, i, start = out.len, nlen
    cdef char *p
    lsz = llistxattr(full, xnames, XATTR_BUF)
    if lsz < 0:
        if errno == ENOTSUP or errno == ENOENT:
            return 0
        return -errno
    p = xnames
    while p < xnames + lsz and nnames < 256:
        if keep_xattr(p):
            names[nnames] = p
            nnames += 1
        p += strlen(p) + 1
    if nnames == 0:
        return 0
    if nnames > 1:
        qsort(names, nnames, sizeof(char *), cmp_cstr)
    if buf_put(out, &u32, 4) < 0:
        return -12
    for i in range(nnames):
        vsz = lgetxattr(full, names[i], xval, XATTR_BUF)
        if vsz < 0:
            if errno == ENODATA:
                continue
            return -errno
        nlen = strlen(names[i])
        u16 = <uint16_t> nlen
        u32 = <uint32_t> vsz
        if (buf_put(out, &u16, 2) < 0 or buf_put(out, names[i], nlen) < 0
                or buf_put(out, &u32, 4) < 0 or buf_put(out, xval, vsz) < 0):
            return -12
    return <ssize_t> (out.len - start)


cdef int read_level(Walker *w, Level *L, int fd, size_t plen) noexcept nogil:
    """Fill ``L`` with the sorted names of the directory open at ``fd`` (which ``L`` then owns)."""
    cdef DIR *d
    cdef dirent *de
    cdef Buf nbuf
    cdef size_t n = 0, i, off, nl
    cdef int rfd
    L.fd = fd
    L.names = NULL
    L.order = NULL
    L.n = L.next = 0
    L.plen = plen
    nbuf.data = NULL
    nbuf.len = nbuf.cap = 0
    # Read through a duplicate: the level keeps ``fd`` for fstatat/openat of its entries, without the
    # stream's 32 KiB buffer, so a deep stack costs one fd and the names per level.
    rfd = dup(fd)
    d = fdopendir(rfd) if rfd >= 0 else NULL
    if d == NULL:
        if rfd >= 0:
            close(rfd)
        return fail(w, b"opendir", errno)
    # Read the whole directory first: siblings must be visited in sorted order.
    while True:
        de = readdir(d)
        if de == NULL:
            break
        if de.d_name[0] == 46 and (de.d_name[1] == 0 or (de.d_name[1] == 46 and de.d_name[2] == 0)):
            continue
        nl = strlen(de.d_name) + 1
        if buf_put(&nbuf, de.d_name, nl) < 0:
            closedir(d)
            free(nbuf.data)
            return fail(w, b"out of memory", 12)
        n += 1
    closedir(d)
    L.names = nbuf.data
    if n:
        L.order = <char **> malloc(n * sizeof(char *))
        if L.order == NULL:
            return fail(w, b"out of memory", 12)
        off = 0
        for i in range(n):
            L.order[i] = nbuf.data + off
            off += strlen(nbuf.data + off) + 1
        qsort(L.order, n, sizeof(char *), cmp_cstr)
    L.n = n
    return 0


cdef void drop_level(Level *L) noexcept nogil:
    close(L.fd)
    free(L.order)
    free(L.names)


cdef int walk_tree(Walker *w, int rootfd) noexcept nogil:
    """Record every entry below the directory open at ``rootfd``, depth first with sorted siblings.

    Iterative, with an explicit stack of at most ``max_depth + 1`` levels: no recursion, so a deep tree
    costs heap memory and one fd per level, and one deeper than ``max_depth`` is refused (TOO_DEEP)."""
    cdef Level *stack = <Level *> malloc((w.max_depth + 1) * sizeof(Level))
    cdef Level *L
    cdef size_t depth = 0, nl, reclen, need
    cdef struct_stat st
    cdef Rec r
    cdef char link[PATH_BUF]
    cdef ssize_t linklen
    cdef int cfd, rc = 0
    cdef const char *name
    cdef const char *rel
    cdef char *grown
    if stack == NULL:
        close(rootfd)
        return fail(w, b"out of memory", 12)
    if read_level(w, &stack[0], rootfd, w.rootlen) < 0:
        drop_level(&stack[0])
        free(stack)
        return -1
    depth = 1
    while depth:
        L = &stack[depth - 1]
        if L.next == L.n:
            drop_level(L)
            depth -= 1
            continue
        name = L.order[L.next]
        L.next += 1
        nl = strlen(name)
        need = L.plen + 1 + nl + 1
        if need > w.pathcap:
            grown = <char *> realloc(w.path, need * 2)
            if grown == NULL:
                rc = fail(w, b"out of memory", 12)
                break
            w.path = grown
            w.pathcap = need * 2
        w.path[L.plen] = 47  # '/'
        memcpy(w.path + L.plen + 1, name, nl + 1)
        rel = w.path + w.rootlen + 1
        if w.nignore and ignored(w, rel):
            continue
        if depth > w.max_depth:
            rc = fail(w, b"too deep", TOO_DEEP)
            break
        if fstatat(L.fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0:
            if errno == ENOENT:
                continue  # vanished while we walked: it is simply not in this snapshot
            rc = fail(w, b"stat", errno)
            break
        r.size = <uint64_t> st.st_size
        r.mtime_ns = <int64_t> st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec
        r.ctime_ns = <int64_t> st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec
        r.ino = st.st_ino
        r.dev = st.st_dev
        r.rdev = st.st_rdev
        r.mode = st.st_mode
        r.uid = st.st_uid
        r.gid = st.st_gid
        r.nlink = <uint32_t> st.st_nlink
        r.flags = 0
        r.reserved = 0
        r.extra_off = 0
        r.extra_len = 0
        reclen = L.plen + 1 + nl - w.rootlen - 1
        r.name_off = w.names.len
        r.name_len = <uint32_t> reclen
        if buf_put(&w.names, rel, reclen) < 0:
            rc = fail(w, b"out of memory", 12)
            break
        if S_ISLNK(st.st_mode):
            linklen = readlinkat(L.fd, name, link, PATH_BUF)
            if linklen < 0:
                rc = fail(w, b"readlink", errno)
                break
            if put_link(w, link, linklen, &r) < 0:
                rc = -1
                break
        if S_ISDIR(st.st_mode) and w.one_fs and st.st_dev != w.root_dev:
            r.flags = FLAG_MOUNTPOINT
        if buf_put(&w.recs, &r, sizeof(Rec)) < 0:
            rc = fail(w, b"out of memory", 12)
            break
        if S_ISDIR(st.st_mode) and r.flags == 0:
            cfd = openat(L.fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if cfd < 0:
                if errno == ENOENT:
                    continue
                rc = fail(w, b"open directory", errno)
                break
            # depth <= max_depth here, so the stack has room for this level.
            if read_level(w, &stack[depth], cfd, L.plen + 1 + nl) < 0:
                drop_level(&stack[depth])
                rc = -1
                break
            depth += 1
    while depth:
        depth -= 1
        drop_level(&stack[depth])
    free(stack)
    return rc


def walk(root, *, one_fs=True, ignore=(), xattrs=True, max_depth=MAX_DEPTH):
    """Walk ``root`` (never following symlinks) and return ``(records, names, extras, root_dev, root_ino)``.

    ``ignore`` holds paths relative to the root (no leading slash) whose entries and subtrees are skipped.
    With ``one_fs`` a directory on another device is recorded (flagged as a mount point) but not entered.
    An entry more than ``max_depth`` components below the root is an InputError naming the path's start.
    """
    cdef Walker *w
    cdef bytes broot = root.encode("utf-8", "surrogateescape") if isinstance(root, str) else bytes(root)
    cdef list ign = sorted(set(p.encode("utf-8", "surrogateescape") if isinstance(p, str) else bytes(p)
                               for p in ignore))
    cdef struct_stat st
    cdef int fd, rc
    cdef size_t i
    broot = broot.rstrip(b"/") or b"/"
    if max_depth < 1:
        raise ValueError("max_depth must be at least 1")
    fd_room(max_depth)
    w = <Walker *> malloc(sizeof(Walker))
    if w == NULL:
        raise MemoryError()
    w.recs.data = w.names.data = w.extras.data = NULL
    w.recs.len = w.names.len = w.extras.len = 0
    w.recs.cap = w.names.cap = w.extras.cap = 0
    w.ignore = NULL
    w.nignore = len(ign)
    w.one_fs = 1 if one_fs else 0
    w.max_depth = max_depth
    w.pathcap = len(broot) + PATH_BUF
    w.path = <char *> malloc(w.pathcap)
    try:
        if w.path == NULL:
            raise MemoryError()
        if w.nignore:
            w.ignore = <char **> malloc(w.nignore * sizeof(char *))
            for i in range(w.nignore):
                w.ignore[i] = <char *> (<bytes> ign[i])
        # "/" walks as "" + "/name", so the root prefix never doubles its slash.
        w.rootlen = 0 if broot == b"/" else len(broot)
        memcpy(w.path, <char *> broot, w.rootlen)
        w.path[w.rootlen] = 0
        fd = openat(-100, <char *> broot, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0:
            raise InputError(f"{root}: cannot open directory: {_strerror(errno)}")
        fstat(fd, &st)
        w.root_dev = st.st_dev
        with nogil:
            rc = walk_tree(w, fd)
        if rc < 0:
            if w.err_errno == TOO_DEEP:
                raise too_deep(broot, w.path[w.rootlen + 1:strlen(w.path)], max_depth)
            what = w.err_what.decode()
            path = w.err_path.decode("utf-8", "surrogateescape")
            raise InputError(f"{path}: {what} failed: {_strerror(w.err_errno)}")
        recs = w.recs.data[:w.recs.len] if w.recs.len else b""
        names = w.names.data[:w.names.len] if w.names.len else b""
        extras = w.extras.data[:w.extras.len] if w.extras.len else b""
    finally:
        free(w.recs.data)
        free(w.names.data)
        free(w.extras.data)
        free(w.ignore)
        free(w.path)
        free(w)
    if xattrs:
        recs, extras = add_xattrs(broot, recs, names, extras, scan=_xattr_range)
    return recs, names, extras, st.st_dev, st.st_ino


def _xattr_range(broot, const unsigned char[:] recs, const unsigned char[:] names, size_t lo, size_t hi):
    """Kept xattrs of regular files and directories ``lo <= i < hi``: a list of ``(i, blob)``.

    A separate pass so that it can run on several threads: on ext4 listing xattrs costs as much as the
    walk itself, and only regular files and directories can carry the ones images keep."""
    cdef const Rec *rb = <const Rec *> &recs[0] if len(recs) else NULL
    cdef const unsigned char *nb = &names[0] if len(names) else NULL
    cdef bytes prefix = broot if broot != b"/" else b""
    cdef size_t plen = len(prefix), i, k
    cdef char *full = <char *> malloc(PATH_BUF)
    cdef char *xnames = <char *> malloc(XATTR_BUF)
    cdef char *xval = <char *> malloc(XATTR_BUF)
    cdef Buf out
    cdef ssize_t got
    cdef uint32_t ft
    cdef uint64_t *found = NULL
    cdef size_t nfound = 0, capfound = 0
    cdef Buf longs
    cdef uint64_t v
    cdef int err = 0
    cdef list res = []
    longs.data = NULL
    longs.len = longs.cap = 0
    out.data = NULL
    out.len = out.cap = 0
    if full == NULL or xnames == NULL or xval == NULL:
        free(full); free(xnames); free(xval)
        raise MemoryError()
    memcpy(full, <char *> prefix, plen)
    full[plen] = 47
    try:
        with nogil:
            for i in range(lo, hi):
                ft = rb[i].mode & S_IFMT
                if ft != S_IFREG and ft != S_IFDIR:
                    continue
                if plen + 1 + rb[i].name_len + 1 >= PATH_MAX:
                    # Too long for a path syscall: read below through directory fds, after this loop.
                    v = i
                    if buf_put(&longs, &v, 8) < 0:
                        err = 12
                        break
                    continue
                memcpy(full + plen + 1, nb + rb[i].name_off, rb[i].name_len)
                full[plen + 1 + rb[i].name_len] = 0
                got = xattr_blob(full, &out, xnames, xval)
                if got < 0:
                    err = <int> -got
                    break
                if got > 0:
                    if nfound + 2 > capfound:
                        capfound = capfound * 2 if capfound else 64
                        found = <uint64_t *> realloc(found, capfound * sizeof(uint64_t))
                        if found == NULL:
                            err = 12
                            break
                    found[nfound] = i
                    found[nfound + 1] = <uint64_t> got
                    nfound += 2
        if err:
            raise InputError(f"{full.decode('utf-8', 'surrogateescape')}: listing xattrs failed: "
                             f"{_strerror(err)}")
        k = 0
        for i in range(0, nfound, 2):
            res.append((found[i], out.data[k:k + found[i + 1]]))
            k += found[i + 1]
        if longs.len:
            idx = []
            for i in range(0, longs.len, 8):
                memcpy(&v, longs.data + i, 8)
                idx.append(<Py_ssize_t> v)
            res = sorted(res + long_path_xattrs(broot, recs, names, idx))
        return res
    finally:
        free(full); free(xnames); free(xval); free(out.data); free(found); free(longs.data)


def _strerror(int err):
    import os
    return os.strerror(err)


# ---- diff -----------------------------------------------------------------------------------------------

cdef inline int cmp_path(const unsigned char *a, size_t al, const unsigned char *b, size_t bl) noexcept nogil:
    """Component order: bytewise, except that '/' sorts before every other byte."""
    cdef size_t i, n = al if al < bl else bl
    cdef unsigned int ca, cb
    for i in range(n):
        ca = a[i]
        cb = b[i]
        if ca != cb:
            if ca == 47:
                return -1
            if cb == 47:
                return 1
            return -1 if ca < cb else 1
    if al == bl:
        return 0
    return -1 if al < bl else 1


cdef inline bint is_under(const unsigned char *p, size_t pl, const unsigned char *d, size_t dl) noexcept nogil:
    return pl > dl and p[dl] == 47 and memcmp(p, d, dl) == 0


# Reason bits, shared with rows.REASONS.
DEF R_TYPE = 1
DEF R_MODE = 2
DEF R_OWNER = 4
DEF R_SIZE = 8
DEF R_MTIME = 16
DEF R_CTIME = 32
DEF R_INODE = 64
DEF R_LINK = 128
DEF R_RDEV = 256
DEF R_NLINK = 512
DEF R_HASH = 1024


cdef uint32_t compare(const Rec *o, const Rec *n, const unsigned char *oext, const unsigned char *next_,
                      bint same_tree, int64_t racy_ns) noexcept nogil:
    """Stat-first comparison; returns reason bits, or R_HASH alone when only content can decide."""
    cdef uint32_t why = 0
    cdef uint32_t ot = o.mode & S_IFMT
    if ot != (n.mode & S_IFMT):
        return R_TYPE
    if (o.mode & 0o7777) != (n.mode & 0o7777):
        why |= R_MODE
    if o.uid != n.uid or o.gid != n.gid:
        why |= R_OWNER
    if o.extra_len != n.extra_len or memcmp(oext + o.extra_off, next_ + n.extra_off, o.extra_len) != 0:
        why |= R_LINK
    if ot == S_IFDIR:
        # A directory's size and times change with its children, which are compared themselves; a new
        # inode in the same tree means it was removed and recreated (an opaque candidate).
        if same_tree and o.ino != n.ino:
            why |= R_INODE
        return why
    if (ot == S_IFCHR or ot == S_IFBLK) and o.rdev != n.rdev:
        why |= R_RDEV
    if o.size != n.size:
        why |= R_SIZE
    if o.mtime_ns != n.mtime_ns:
        why |= R_MTIME
    if o.nlink != n.nlink:
        why |= R_NLINK
    if same_tree:
        if o.ctime_ns != n.ctime_ns:
            why |= R_CTIME
        if o.ino != n.ino:
            why |= R_INODE
    if why or ot != S_IFREG:
        return why
    if same_tree:
        # Racy: written within the old snapshot's timestamp granularity, stat cannot tell a later write.
        if racy_ns and (o.mtime_ns >= racy_ns or o.ctime_ns >= racy_ns):
            return R_HASH
    elif o.mtime_ns % 1000000000 == 0 and o.size:
        # Whole-second mtimes (as after a tar extraction) across trees: equal stat proves little.
        return R_HASH
    return 0


def diff_rows(old, new, *, bint same_tree, int64_t racy_ns=0):
    """Merge two snapshots' rows; return a list of ``(kind, old_index, new_index, reasons)``.

    ``old``/``new`` are ``(records, names, extras)``. kind: 0 added, 1 deleted, 2 modified; a deleted
    directory yields one row and its subtree is skipped; a type change yields one "modified" row and the old
    subtree (if any) is skipped. Rows whose reason is exactly R_HASH need a content comparison.
    """
    cdef const unsigned char[:] orec = old[0]
    cdef const unsigned char[:] onam = old[1]
    cdef const unsigned char[:] oext = old[2]
    cdef const unsigned char[:] nrec = new[0]
    cdef const unsigned char[:] nnam = new[1]
    cdef const unsigned char[:] next_ = new[2]
    cdef size_t on = len(old[0]) // sizeof(Rec), nn = len(new[0]) // sizeof(Rec)
    cdef size_t i = 0, j = 0, k
    cdef const Rec *o
    cdef const Rec *n
    cdef const unsigned char *op
    cdef const unsigned char *np
    cdef const unsigned char *onb = &onam[0] if len(old[1]) else NULL
    cdef const unsigned char *nnb = &nnam[0] if len(new[1]) else NULL
    cdef const unsigned char *oeb = &oext[0] if len(old[2]) else <const unsigned char *> b""
    cdef const unsigned char *neb = &next_[0] if len(new[2]) else <const unsigned char *> b""
    cdef const Rec *ob = <const Rec *> &orec[0] if on else NULL
    cdef const Rec *nb = <const Rec *> &nrec[0] if nn else NULL
    cdef int c
    cdef uint32_t why
    cdef list out = []
    # Collected in a C buffer without the GIL, turned into Python tuples at the end.
    cdef Buf res
    cdef uint64_t row[4]
    res.data = NULL
    res.len = res.cap = 0
    try:
        with nogil:
            while i < on or j < nn:
                if i < on and j < nn:
                    o = ob + i
                    n = nb + j
                    c = cmp_path(onb + o.name_off, o.name_len, nnb + n.name_off, n.name_len)
                elif i < on:
                    c = -1
                else:
                    c = 1
                if c < 0:
                    o = ob + i
                    row[0] = 1; row[1] = i; row[2] = 0; row[3] = 0
                    buf_put(&res, row, sizeof(row))
                    op = onb + o.name_off
                    i += 1
                    while i < on and is_under(onb + ob[i].name_off, ob[i].name_len, op, o.name_len):
                        i += 1
                elif c > 0:
                    row[0] = 0; row[1] = 0; row[2] = j; row[3] = 0
                    buf_put(&res, row, sizeof(row))
                    j += 1
                else:
                    why = compare(o, n, oeb, neb, same_tree, racy_ns)
                    if why:
                        row[0] = 2; row[1] = i; row[2] = j; row[3] = why
                        buf_put(&res, row, sizeof(row))
                    op = onb + o.name_off
                    i += 1
                    j += 1
                    if why == R_TYPE and (o.mode & S_IFMT) == S_IFDIR:
                        while i < on and is_under(onb + ob[i].name_off, ob[i].name_len, op, o.name_len):
                            i += 1
        for k in range(0, res.len, sizeof(row)):
            memcpy(row, res.data + k, sizeof(row))
            out.append((<int> row[0], <Py_ssize_t> row[1], <Py_ssize_t> row[2], <int> row[3]))
    finally:
        free(res.data)
    return out


def racy_rows(const unsigned char[:] recs, int64_t threshold):
    """Indices of regular files whose mtime or ctime is at or after ``threshold`` (ns)."""
    cdef size_t n = recs.shape[0] // sizeof(Rec), i
    cdef const Rec *rb = <const Rec *> &recs[0] if n else NULL
    cdef Buf res
    cdef uint64_t v
    cdef list out = []
    res.data = NULL
    res.len = res.cap = 0
    try:
        with nogil:
            for i in range(n):
                if (rb[i].mode & S_IFMT) == S_IFREG and (rb[i].mtime_ns >= threshold or rb[i].ctime_ns >= threshold):
                    v = i
                    buf_put(&res, &v, 8)
        for i in range(0, res.len, 8):
            memcpy(&v, res.data + i, 8)
            out.append(<Py_ssize_t> v)
        return out
    finally:
        free(res.data)


def check_rows(const unsigned char[:] recs, const unsigned char[:] names, const unsigned char[:] extras):
    """'' if the rows are well formed (offsets in bounds, strictly increasing component order), else why."""
    cdef size_t n = recs.shape[0] // sizeof(Rec), i
    cdef const Rec *rb = <const Rec *> &recs[0] if n else NULL
    cdef const unsigned char *nb = &names[0] if names.shape[0] else <const unsigned char *> b""
    cdef size_t nl = names.shape[0], el = extras.shape[0]
    if recs.shape[0] % sizeof(Rec):
        return "record size"
    for i in range(n):
        if rb[i].name_len == 0 or rb[i].name_off + rb[i].name_len > nl:
            return f"name bounds at row {i}"
        if rb[i].extra_off + rb[i].extra_len > el:
            return f"extra bounds at row {i}"
        if i and cmp_path(nb + rb[i - 1].name_off, rb[i - 1].name_len, nb + rb[i].name_off, rb[i].name_len) >= 0:
            return f"order at row {i}"
    return ""
