"""What changed between two snapshots.

The diff contract
-----------------
- **Order**: changes come in component order of their paths (bytewise, '/' first), which puts every directory
  before anything below it. Applying them in order never needs a parent that comes later.
- **Kinds**: ``added`` (path only in the new tree), ``deleted`` (only in the old tree), ``modified`` (in both,
  and different by the rules below). ``entry`` is the new state (``None`` for deletions), ``old`` the old one.
- **Removed trees give one deletion**: when a directory is gone, only the directory is reported, never its
  descendants.
- **Type changes**: an entry whose type changed (a directory that becomes a file, a file that becomes a
  symlink, ...) is one ``modified`` change with reason ``type``; when the old entry was a directory, its old
  descendants are not reported (the new entry replaces the whole tree). When the new entry is a directory, its
  children are reported as ``added``.
- **Directories**: their size, mtime and ctime are ignored (they change with their children, which are compared
  themselves); mode, owner and xattrs are compared, and between snapshots of the same tree a new inode marks a
  directory that was removed and recreated (``replaced``, a candidate for an opaque whiteout).
- **Parents of changed entries** are not reported unless they changed themselves; a layer writer that wants
  them (to carry their metadata) adds them.
- **Stat first**: type, permission bits, uid, gid, symlink target, xattrs, device number, size, mtime (ns) and
  link count; between two snapshots of the same tree also ctime and inode, which catch ``cp -p``, ``tar x`` and
  ``touch -d`` rewrites. Content is hashed (xxh3-128) only where stat cannot decide: racy entries (times within
  the old snapshot's timestamp granularity, see ``snapshot``) and, between two different trees, same-size
  regular files whose mtimes have no sub-second part (as after a tar extraction).
- **Modes**: ``full`` (default) follows all of the above and is always correct; ``stat`` (Kaniko's ``redo``)
  never reads content.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from snapfs.errors import InputError, UsageError
from . import backend
from .rootfs import TreeView
from .rows import ADDED, DELETED, R_HASH, R_INODE, R_TYPE, Entry, reasons_text
from .snapshot import Snapshot, content_hash_at, take

log = logging.getLogger(__name__)

MODES = ("full", "stat")
_KINDS = {ADDED: "added", DELETED: "deleted", 2: "modified"}


@dataclass(frozen=True)
class Change:
    kind: str
    path: str
    entry: Entry | None
    old: Entry | None
    reasons: str = ""

    @property
    def replaced_dir(self) -> bool:
        """A directory removed and recreated (same path, new inode): its old children are all gone."""
        return self.kind == "modified" and self.entry is not None and self.entry.is_dir and "inode" in self.reasons


@dataclass(frozen=True)
class Diff:
    old: Snapshot
    new: Snapshot
    changes: tuple[Change, ...]

    def counts(self) -> dict[str, int]:
        out = {"added": 0, "modified": 0, "deleted": 0}
        for c in self.changes:
            out[c.kind] += 1
        return out


def diff(old: Snapshot, new: Snapshot, *, mode: str = "full", kernel=None) -> Diff:
    """Compare two snapshots under the contract above."""
    if mode not in MODES:
        raise UsageError(f"unknown diff mode {mode!r} (choose full or stat)")
    kernel = kernel or backend.get()
    same = old.same_tree(new)
    rows = kernel.diff_rows(old.rows, new.rows, same_tree=same, racy_ns=old.racy_ns if same else 0)
    changes = []
    views = _Views()
    try:
        for kind, oi, ni, why in rows:
            o = old.entry(oi) if kind != ADDED else None
            n = new.entry(ni) if kind != DELETED else None
            if why == R_HASH:
                if mode == "stat" or _same_content(views, old, new, oi, o, n, same):
                    continue
            path = (n or o).path
            text = reasons_text(why) if kind == 2 else ""
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s: %s%s", _KINDS[kind], path, f" ({text})" if text else "")
            changes.append(Change(_KINDS[kind], path, n, o, text))
    finally:
        views.close()
    return Diff(old, new, tuple(changes))


def diff_trees(old_root: str, new_root: str, *, mode: str = "full", one_fs: bool = True,
               ignore: tuple[str, ...] = (), kernel=None) -> Diff:
    """Diff two live directory trees."""
    for root in (old_root, new_root):
        if not os.path.isdir(root):
            raise InputError(f"{root}: not a directory")
    old = take(old_root, one_fs=one_fs, ignore=ignore, kernel=kernel)
    new = take(new_root, one_fs=one_fs, ignore=ignore, kernel=kernel)
    return diff(old, new, mode=mode, kernel=kernel)


class _Views:
    """One ``TreeView`` per root, opened on the first content comparison (most diffs need none)."""

    def __init__(self) -> None:
        self._open: dict[str, TreeView] = {}

    def __getitem__(self, root: str) -> TreeView:
        if root not in self._open:
            self._open[root] = TreeView(root)
        return self._open[root]

    def close(self) -> None:
        for v in self._open.values():
            v.close()


def _same_content(views: _Views, old: Snapshot, new: Snapshot, oi: int, o: Entry, n: Entry,
                  same_tree: bool) -> bool:
    # Read as the walker saw the trees: a path that now lies below a symlink is not followed.
    try:
        new_hash = content_hash_at(views[new.root], n.path)
        if same_tree:
            old_hash = old.hashes.get(oi)
            return old_hash is not None and old_hash == new_hash
        return content_hash_at(views[old.root], o.path) == new_hash
    except OSError:
        return False  # unreadable or gone since the walk: report it, the layer writer will say why


__all__ = ["Change", "Diff", "MODES", "R_INODE", "R_TYPE", "diff", "diff_trees"]
