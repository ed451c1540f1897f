"""A build's private directories and its end: nothing is left behind, even after a kill.

Scratch directories carry their owner in their name: ``snapfs-build-<pid>.<start>.<pidns>-XXXXXXXX`` (the
process id, its start time in clock ticks since boot, so a reused pid does not pass for the owner, and the
inode of its PID namespace). Every build first sweeps the places it keeps scratch in: a directory whose owner
is gone (no such process, or another process that got the same pid) is stale, left by a build that was killed
with SIGKILL or lost its machine; its mounts are detached and it is removed. Owners in another PID namespace
cannot be seen from here, so their directories are left alone, and so is every name of another form.

Directories that hold unpacked images (cache, scratch) are created 0700 whatever the umask: base roots keep
the setuid bits and device nodes of their image, which no other local user may reach.

SIGTERM, SIGINT and SIGHUP become :class:`Interrupted` in the main thread (:func:`handle_signals`, installed by
the CLI only): the running step is killed on the way out, stage roots are unmounted and scratch is removed,
then the CLI prints one line and exits 128 + the signal number. Clean-up runs :func:`shielded`: a signal that
arrives meanwhile waits until it is done, and later signals are ignored.

A full disk: ``write()`` fails with ENOSPC without saying which file; :func:`full_place` and :func:`full_hint`
name the filesystem among the places the build writes to.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import tempfile
import time

from .libc import unmount
from .rootfs import remove_path

log = logging.getLogger("snapfs.build")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
SCRATCH_NAME = re.compile(r"^snapfs-(?:build|run)-(\d+)\.(\d+)\.(\d+)-[a-z0-9_]{8}$")
UNPACK_NAME = re.compile(r"^[0-9a-f]{64}\.tmp-(\d+)\.(\d+)\.(\d+)$")  # a base root being cached


class Interrupted(BaseException):
    """A signal asked the process to stop. A BaseException, so that no ``except Exception`` swallows it."""

    def __init__(self, signo: int) -> None:
        super().__init__(signo)
        self.signo = signo

    @property
    def exit_code(self) -> int:
        return 128 + self.signo

    @property
    def name(self) -> str:
        return signal.Signals(self.signo).name


# -- owners ------------------------------------------------------------------------------------------------


def _start_time(pid: int | str) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def owner_tag() -> str:
    """``<pid>.<start>.<pidns>`` of this process (zeros where /proc cannot say: such names are never swept)."""
    return f"{os.getpid()}.{_start_time('self') or 0}.{_pid_namespace()}"


def owner_gone(pid: int, start: int, pidns: int) -> bool:
    """True only when it is certain that the owner process no longer exists."""
    if not pid or not start or not pidns or pidns != _pid_namespace():
        return False
    return _start_time(pid) != start


# -- private directories ----------------------------------------------------------------------------------


def private_dir(path: str, *, tighten: bool = True) -> str:
    """Create ``path`` and its missing parents 0700 (the umask is not consulted); an existing ``path`` is
    made 0700 too when ``tighten``. Returns ``path``."""
    path = os.path.abspath(path)
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # mkdir's mode is filtered by the umask; 0700 must be exactly that
    if tighten and not missing:
        st = os.stat(path)
        if st.st_mode & 0o077 and st.st_uid == os.geteuid():
            os.chmod(path, st.st_mode & 0o7700)
    return path


def scratch_dir(prefix: str, parent: str | None = None) -> str:
    """A new 0700 scratch directory named after its owner (``prefix`` is ``snapfs-build-`` or ``snapfs-run-``)."""
    return tempfile.mkdtemp(prefix=f"{prefix}{owner_tag()}-", dir=parent)


def new_build_scratch(parent: str | None = None) -> str:
    """Sweep stale scratch from ``parent`` and the temp dir (where RUN steps keep theirs), then make this
    build's scratch directory. The caller removes it with :func:`remove_tree`, :func:`shielded`."""
    temp = os.path.abspath(tempfile.gettempdir())
    for place in sorted({os.path.abspath(parent or temp), temp}):
        sweep(place)
    return scratch_dir("snapfs-build-", parent)


# -- stale scratch ----------------------------------------------------------------------------------------


def sweep(directory: str, *, names: re.Pattern = SCRATCH_NAME) -> list[str]:
    """Unmount and remove the entries of ``directory`` matching ``names`` (groups: pid, start, pidns) whose
    owner is gone; returns their paths."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in entries:
        m = names.match(name)
        if m is None:
            continue
        pid, start, ns = (int(m.group(i)) for i in (1, 2, 3))
        if not owner_gone(pid, start, ns):
            continue
        path = os.path.join(directory, name)
        if not unmount_below(path):
            log.warning("stale scratch %s: cannot unmount everything below it; left in place", path)
            continue
        remove_tree(path)
        log.info("removed stale scratch %s (its build, pid %d, is gone)", path, pid)
        removed.append(path)
    return removed


def _mount_points() -> list[str]:
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return []
    # Field 5 is the mount point, with space, tab, newline and backslash escaped as octal.
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split(" ")[4])
            for line in lines if line.count(" ") >= 4]


def mounts_below(path: str) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    path = os.path.realpath(path)
    found = [m for m in _mount_points() if m == path or m.startswith(path + "/")]
    return sorted(set(found), key=lambda m: (-m.count("/"), m))


def unmount_below(path: str) -> bool:
    """Unmount everything at or below ``path`` (detaching what is busy); True when nothing is left mounted."""
    for _ in range(8):  # stacked mounts on one point come off one at a time
        points = mounts_below(path)
        if not points:
            return True
        for point in points:
            unmount(point)
    return not mounts_below(path)


def remove_tree(path: str) -> None:
    """Remove a scratch tree, unmounting first whatever is still mounted below it (a stage root a signal
    caught between its mount and its bookkeeping): deleting through a mount would reach what it shows. A step
    that was just killed may still be letting go of its files: retry a few times rather than leave a directory
    behind."""
    if not unmount_below(path):
        log.warning("scratch directory %s: cannot unmount everything below it; left in place", path)
        return
    for delay in (0, 0.05, 0.2, 0.5):
        time.sleep(delay)
        with contextlib.suppress(OSError):
            remove_path(path)  # not shutil.rmtree: a RUN step may have nested a tree thousands of levels deep
        if not os.path.lexists(path):
            return
    log.warning("could not remove scratch directory %s", path)


# -- full disks -------------------------------------------------------------------------------------------


def full_place(exc: OSError, places) -> str | None:
    """For a full disk reported without a file name (``write()`` says ENOSPC, not which file): the one of
    ``places`` (directories the operation writes to) whose filesystem has the fewest bytes left, with that
    filesystem's size. None for any other error, or when ``exc`` names its file already."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or exc.filename:
        return None
    best, seen = None, set()
    for place in places:
        p = place
        while p and not os.path.exists(p):  # an output that was not created yet: its parent's filesystem
            p = os.path.dirname(p.rstrip("/"))
        try:
            st, vfs = os.stat(p), os.statvfs(p)
        except OSError:
            continue
        if st.st_dev in seen or not vfs.f_blocks:
            continue
        seen.add(st.st_dev)
        free = vfs.f_bavail * vfs.f_frsize  # absolute: the partial file may be gone already, freeing its share
        if best is None or free < best[0]:
            best = (free, place, vfs.f_blocks * vfs.f_frsize)
    if best is None:
        return None
    free, place, size = best
    return f"{place} (a filesystem of {_human(size)}, {_human(free)} free now)"


def full_hint(places) -> str:
    """``"; <place> is full (...)"`` when one of ``places`` is on a filesystem that has (next to) no room
    left, else "": a failed step's own message (a RUN's, from inside the image) cannot name the host path."""
    for place in places:
        try:
            vfs = os.statvfs(place)
        except OSError:
            continue
        size, free = vfs.f_blocks * vfs.f_frsize, vfs.f_bfree * vfs.f_frsize
        if size and free < min(1 << 20, size // 100):
            return f"; {place} is full (a filesystem of {_human(size)}, {_human(free)} free)"
    return ""


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# -- signals ----------------------------------------------------------------------------------------------

_shield = {"depth": 0, "pending": 0}


def _on_signal(signo: int, _frame) -> None:
    for s in SIGNALS:  # the first signal wins; clean-up is not interrupted again
        signal.signal(s, signal.SIG_IGN)
    if _shield["depth"]:
        _shield["pending"] = signo
        return
    raise Interrupted(signo)


def handle_signals() -> None:
    """Turn SIGTERM, SIGINT and SIGHUP into :class:`Interrupted` (main thread only)."""
    for s in SIGNALS:
        signal.signal(s, _on_signal)


@contextlib.contextmanager
def shielded():
    """Run clean-up to its end: a signal that arrives meanwhile is raised once the block is done."""
    _shield["depth"] += 1
    try:
        yield
    finally:
        _shield["depth"] -= 1
        if not _shield["depth"] and _shield["pending"]:
            signo, _shield["pending"] = _shield["pending"], 0
            raise Interrupted(signo)
