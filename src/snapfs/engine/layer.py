"""Turn a diff into an OCI layer: a sorted PAX tar, compressed, hashed in the same streaming pass.

What a layer holds: every added or modified entry with its metadata (mode incl. setuid/setgid/sticky, numeric
uid/gid, mtime in whole seconds, symlink target, device numbers, ``user.*`` and ``security.capability``
xattrs as ``SCHILY.xattr`` PAX records; no user or group names), the parent directories of those entries
(so the layer carries their metadata), ``.wh.<name>`` whiteouts for deletions, and ``<dir>/.wh..wh..opq`` for a
directory whose new contents are written whole when that is smaller than whiteouts plus changes. Hard links
within the layer are kept: the first path of an inode is a file, later ones are links to it (names relative
to the layer root, as Docker writes them). Sockets are skipped. Paths are sorted in component order.
"""
from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass

from snapfs.errors import InputError, LayerError
from snapfs.limits import MAX_DEPTH
from snapfs.mediatypes import layer_media_type
from .changes import Diff
from .compress import BlockWriter, DigestWriter, ThreadedDigest, check_compression, compressing_writer
from .rootfs import TreeView
from .rows import Entry, path_key, row_at
from .snapshot import PathIndex, Snapshot
from .tarheader import header

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_BLOCK = 512
_READ = 1 << 20


@dataclass(frozen=True)
class LayerBlob:
    """A finished layer blob on disk: what a manifest and an image config need to reference it."""

    path: str
    digest: str
    diff_id: str
    size: int
    media_type: str
    compression: str
    entries: int
    whiteouts: int
    opaque_dirs: int


@dataclass(frozen=True)
class _Item:
    """One tar entry to write: a tree entry (``entry``), a whiteout or an opaque marker (``entry is None``)."""

    path: str
    entry: Entry | None


def source_date_epoch() -> int | None:
    """``SOURCE_DATE_EPOCH`` from the environment, if set (an invalid value is an error, not ignored)."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return None
    try:
        epoch = int(value)
    except ValueError:
        raise InputError(f"SOURCE_DATE_EPOCH must be an integer number of seconds, got {value!r}") from None
    if epoch < 0:
        raise InputError(f"SOURCE_DATE_EPOCH must not be negative, got {value}")
    return epoch


def write_layer(d: Diff, out_path: str, *, compression: str = "gzip", level: int | None = None,
                epoch: int | None = None, opaque: bool = True, durable: bool = True) -> LayerBlob:
    """Write the layer for ``d`` to ``out_path`` (atomically) and return its descriptor values.

    ``epoch`` clamps every mtime (``--reproducible`` / ``SOURCE_DATE_EPOCH``) so the same trees give
    byte-identical layers. ``opaque=False`` never writes opaque markers. ``durable=False`` skips the fsync
    (a build's own layers: they are made durable where the image is written).
    """
    level = check_compression(compression, level)
    items, n_wh, n_opq = plan_entries(d, opaque=opaque)
    tmp = f"{out_path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as raw:
            blob = DigestWriter(raw)
            comp = compressing_writer(compression, level, blob)
            # 1 MiB blocks, hashed on a thread of their own while the next ones are read and compressed.
            tar = ThreadedDigest(comp)
            blocks = BlockWriter(tar)
            try:
                with TreeView(d.new.root) as view:
                    _write_tar(blocks, items, view, epoch)
                blocks.flush()
            finally:
                tar.close()
            comp.close()
            raw.flush()
            if durable:
                os.fsync(raw.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        _unlink(tmp)
        raise
    digest = tar.digest if compression == "none" else blob.digest
    return LayerBlob(out_path, digest, tar.digest, blob.size, layer_media_type(compression), compression,
                     len(items), n_wh, n_opq)


# ---- planning: which entries, in which order ------------------------------------------------------------

def plan_entries(d: Diff, *, opaque: bool = True) -> tuple[list[_Item], int, int]:
    """The sorted tar entries for ``d``: changes, whiteouts, opaque subtrees and the parents they need."""
    new = d.new
    for c in d.changes:
        # Never deeper than the applier accepts (a snapshot loaded from a file was not walked under the limit).
        if c.path.count("/") >= MAX_DEPTH:
            raise LayerError(f"{c.path[:100]}...: deeper than {MAX_DEPTH} levels (snapfs's depth limit)")
    index = PathIndex(new)
    opaque_dirs = _choose_opaque(d, index) if opaque else set()
    items: dict[str, _Item] = {}
    n_wh = 0
    for c in d.changes:
        if _under_any(c.path, opaque_dirs):
            continue
        if c.kind == "deleted":
            parent, name = _split(c.path)
            wh = _join(parent, WHITEOUT + name)
            items[wh] = _Item(wh, None)
            n_wh += 1
        elif c.entry is not None and not stat.S_ISSOCK(c.entry.mode):
            items[c.path] = _Item(c.path, c.entry)
    for dpath in opaque_dirs:
        i = index.find(dpath)
        items[dpath] = _Item(dpath, new.entry(i))
        marker = _join(dpath, OPAQUE)
        items[marker] = _Item(marker, None)
        for j in index.subtree(i):
            e = new.entry(j)
            if not stat.S_ISSOCK(e.mode):
                items[e.path] = _Item(e.path, e)
    # Parents carry their current metadata, and must precede their children in the tar.
    for path in list(items):
        parent = _split(path)[0]
        while parent and parent not in items:
            i = index.find(parent)
            if i is None:
                raise LayerError(f"{parent}: parent of {path} is missing from the new tree")
            items[parent] = _Item(parent, new.entry(i))
            parent = _split(parent)[0]
    # An entry below a symlink would let an extractor write through the link: never put one in a layer.
    for path in items:
        parent = _split(path)[0]
        pe = items[parent].entry if parent else None
        if parent and (pe is None or not pe.is_dir):
            raise LayerError(f"{path}: refusing a layer entry whose parent {parent} is not a directory")
    ordered = sorted(items.values(), key=lambda it: path_key(os.fsencode(it.path)))
    return ordered, n_wh, len(opaque_dirs)


def _choose_opaque(d: Diff, index: PathIndex) -> set[str]:
    """Directories to write whole behind an opaque marker: those where that is smaller than the alternative."""
    deleted_under: dict[str, int] = {}
    for c in d.changes:
        if c.kind == "deleted":
            parent = _split(c.path)[0]
            if parent:
                deleted_under[parent] = deleted_under.get(parent, 0) + 1
    candidates = sorted(set(deleted_under) | {c.path for c in d.changes if c.replaced_dir},
                        key=lambda p: path_key(os.fsencode(p)))
    chosen: set[str] = set()
    for dpath in candidates:
        if _under_any(dpath, chosen):
            continue
        i = index.find(dpath)
        if i is None or not stat.S_ISDIR(d.new.entry(i).mode):
            continue
        prefix = dpath + "/"
        plain = sum(_cost(c.entry) for c in d.changes if c.path.startswith(prefix))
        opaque_cost = _BLOCK + sum(_cost_row(d.new, j) for j in index.subtree(i))
        if opaque_cost < plain:
            chosen.add(dpath)
    return chosen


def _cost(e: Entry | None) -> int:
    if e is None:
        return _BLOCK  # a whiteout
    return _BLOCK + (-(-e.size // _BLOCK) * _BLOCK if e.is_reg else 0)


def _cost_row(snap: Snapshot, j: int) -> int:
    size, mode = _size_mode(snap, j)
    return _BLOCK + (-(-size // _BLOCK) * _BLOCK if stat.S_ISREG(mode) else 0)


def _size_mode(snap: Snapshot, j: int) -> tuple[int, int]:
    r = row_at(snap.records, j)
    return r.size, r.mode


# ---- writing --------------------------------------------------------------------------------------------

def _write_tar(out: BlockWriter, items: list[_Item], view: TreeView, epoch: int | None) -> None:
    first_of_inode: dict[tuple[int, int], str] = {}
    buf = bytearray(_READ)
    for it in items:
        e = it.entry
        if e is None:
            out.write(_whiteout_header(it.path, epoch))
            continue
        mtime = e.mtime_ns // 1_000_000_000
        if epoch is not None and mtime > epoch:
            mtime = epoch
        if e.is_reg and e.nlink > 1:
            key = (e.dev, e.ino)
            target = first_of_inode.get(key)
            if target is not None:
                out.write(_header(e, it.path, mtime, link_to=target))
                continue
            first_of_inode[key] = it.path
        out.write(_header(e, it.path, mtime))
        if e.is_reg and e.size:
            _copy_content(out, view, e, buf)
    out.write(b"\0" * (2 * _BLOCK))


def _header(e: Entry, path: str, mtime: int, *, link_to: str | None = None) -> bytes:
    fmt = stat.S_IFMT(e.mode)
    kw = {"mode": e.mode, "uid": e.uid, "gid": e.gid, "mtime": mtime, "xattrs": e.xattrs}
    if link_to is not None:
        return header(path, typ=tarfile.LNKTYPE, linkname=link_to, **kw)
    if fmt == stat.S_IFREG:
        return header(path, typ=tarfile.REGTYPE, size=e.size, **kw)
    if fmt == stat.S_IFDIR:
        return header(path, typ=tarfile.DIRTYPE, **kw)
    if fmt == stat.S_IFLNK:
        return header(path, typ=tarfile.SYMTYPE, linkname=e.link or "", **kw)
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        return header(path, typ=tarfile.CHRTYPE if fmt == stat.S_IFCHR else tarfile.BLKTYPE,
                      devmajor=os.major(e.rdev), devminor=os.minor(e.rdev), **kw)
    if fmt == stat.S_IFIFO:
        return header(path, typ=tarfile.FIFOTYPE, **kw)
    raise LayerError(f"{path}: unsupported file type {oct(fmt)}")


def _whiteout_header(path: str, epoch: int | None) -> bytes:
    return header(path, typ=tarfile.REGTYPE, mode=0, uid=0, gid=0, mtime=epoch or 0)


def _copy_content(out: BlockWriter, view: TreeView, e: Entry, buf: bytearray) -> None:
    # Opened component by component without following any symlink: a file is read only where the snapshot
    # saw it, never through a link a later change planted in one of its parents.
    full = os.path.join(os.fsdecode(view.root), e.path)
    try:
        fd = view.open(e.path)
    except OSError as exc:
        raise InputError(f"{full}: cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino, st.st_size) != (e.dev, e.ino, e.size):
            raise InputError(f"{full}: changed while the layer was written (snapshot is stale)")
        left, view = e.size, memoryview(buf)
        while left:
            n = os.readv(fd, [view[:min(left, _READ)]])
            if n == 0:
                raise InputError(f"{full}: shrank while the layer was written")
            out.write(view[:n])
            left -= n
        pad = -e.size % _BLOCK
        if pad:
            out.write(b"\0" * pad)
    finally:
        os.close(fd)


def _split(path: str) -> tuple[str, str]:
    head, _, tail = path.rpartition("/")
    return head, tail


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _under_any(path: str, dirs: set[str]) -> bool:
    if not dirs:
        return False
    parent = _split(path)[0]
    while parent:
        if parent in dirs:
            return True
        parent = _split(parent)[0]
    return False


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
