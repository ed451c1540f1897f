"""The inside of a RUN step: a fresh interpreter that builds the namespaces and execs the command.

:mod:`snapfs.run.sandbox` starts ``python -I`` running :func:`main` with ``SPEC_FD REPORT_FD BUILDER_PID`` (this
module from the builder's own snapfs; ``python -I -m snapfs.run.sandbox_init ...`` does the same) with an empty
environment and writes the step (JSON) to SPEC_FD. Three processes follow:

- the *launcher* (this interpreter) unshares mount, PID, UTS, IPC (and net) namespaces, makes every mount private,
  forks the *reaper* and exits with its status;
- the *reaper* is PID 1 of the new PID namespace: it mounts ``/proc``, ``/dev``, ``/sys`` (masking kernel files,
  :mod:`snapfs.run.confine`), the ``/etc`` copies and the ``RUN --mount`` mounts, pivots into the root
  (chroot where pivot_root fails), loads the seccomp filter, forks the *command*, reaps
  every orphan of the step and exits as soon as the command exits; the kernel then kills whatever the step left
  running. Launcher and reaper die with their parent (PDEATHSIG), so a killed builder takes the step along;
- the *command* shrinks its capabilities to Docker's default set less MKNOD and NET_RAW, drops to the step's user
  and execs argv with exactly the step's environment.

A fresh interpreter instead of ``fork()`` in the builder: the builder may have threads, and this one has none.

Every path inside the root is walked one component at a time with ``O_NOFOLLOW`` opens, symlinks resolved inside
the root (like :class:`snapfs.engine.rootfs.RootFS`), and every mount goes onto ``/proc/self/fd/N`` of the resolved
target, never onto a path string the kernel would resolve again: an image with ``etc -> /`` or ``proc -> /tmp/x``
gets its mounts inside the root. Mount points that had to be created are reported on REPORT_FD (one JSON object
per line) so the builder removes them once the namespace is gone; the last line is ``{"ready": true}`` or
``{"error": "..."}``.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import stat
import select
import struct
import sys
from collections import deque

from snapfs.engine.libc import (MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC,
                               MS_REMOUNT, libc as _libc, mount as _mount)
from snapfs.engine.rootfs import RootFS, lstat_at, split_path
from .confine import SeccompError, SeccompFilter, mask_kernel_files

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PIVOT_ROOT_NR = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
# Docker's default set less NET_RAW and MKNOD: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
# NET_BIND_SERVICE SYS_CHROOT AUDIT_WRITE SETFCAP. The step shares the host's network, where NET_RAW would let it
# sniff other processes' traffic on lo, and its root is on the host's disk, where MKNOD would let it create the
# host's block devices (Docker stops those with a device cgroup, which snapfs does not set up).
DEFAULT_CAPS = frozenset({0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 29, 31})
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
SETUP_FAILED = 125  # the launcher's exit code when the reaper failed before the command started

_O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

DEV_NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"), ("core", "/proc/kcore"))


class SetupError(Exception):
    """A one-line reason the step could not be set up; the builder turns it into a BuildError."""


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None, what: str) -> None:
    err = _mount(source, target, fstype, flags, data)
    if err:
        raise SetupError(f"{what}: {os.strerror(err)}")


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class Root:
    """The stage root, with mount-point creation that never leaves it and a log of what was created."""

    def __init__(self, path: str, report) -> None:
        self.rfs = RootFS(path)
        self.path = path
        self.report = report

    def ensure(self, path: str, *, kind: str, owner: tuple[int, int] | None = None,
               record: bool = True) -> tuple[int, str]:
        """(parent fd, name) of ``path``, creating what is missing: directories on the way, and the final
        entry as a directory (``kind="dir"``) or an empty file (``kind="file"``). Symlinks are followed inside
        the root, the final one too. The caller closes the fd.
        """
        todo = deque(split_path(path))
        stack: list[tuple[int, str]] = [(self.rfs.fd, "")]  # (fd, path relative to the root)
        links = 0
        try:
            while todo:
                name = todo.popleft()
                if name == "..":
                    if len(stack) > 1:
                        os.close(stack.pop()[0])
                    continue
                dir_fd, rel = stack[-1]
                last = not todo
                st = lstat_at(dir_fd, name)
                if st is None:
                    self._create(dir_fd, name, "file" if last and kind == "file" else "dir", owner)
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if record:
                        self.report({"created": f"{rel}/{name}".lstrip("/"), "dev": st.st_dev, "ino": st.st_ino})
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > 40:
                        raise SetupError(f"{path}: too many levels of symbolic links")
                    target = os.readlink(name, dir_fd=dir_fd)
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop()[0])
                    todo.extendleft(reversed(split_path(target)))
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                if last:
                    if kind == "dir" and not is_dir:
                        raise SetupError(f"{path}: exists in the image and is not a directory")
                    if kind == "file" and is_dir:
                        raise SetupError(f"{path}: exists in the image and is a directory")
                    parent = stack.pop()[0]
                    return (os.dup(parent) if parent == self.rfs.fd else parent), name
                if not is_dir:
                    raise SetupError(f"{path}: a parent is not a directory")
                stack.append((os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                      dir_fd=dir_fd), f"{rel}/{name}"))
            # The path named the root itself (or climbed back to it).
            return os.dup(self.rfs.fd) if len(stack) == 1 else stack.pop()[0], "."
        finally:
            for fd, _ in stack[1:]:
                os.close(fd)

    @staticmethod
    def _create(dir_fd: int, name: str, kind: str, owner: tuple[int, int] | None) -> None:
        if kind == "dir":
            os.mkdir(name, 0o755, dir_fd=dir_fd)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        else:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o755 if kind == "dir" else 0o644)  # whatever the umask
            if owner is not None:
                os.fchown(fd, *owner)
        finally:
            os.close(fd)

    def target(self, path: str, *, kind: str) -> tuple[int, int, str]:
        """(O_PATH fd of the mount point, its parent fd, its name), created if missing."""
        parent, name = self.ensure(path, kind=kind)
        try:
            return os.open(name, _O_PATH, dir_fd=parent), parent, name
        except BaseException:
            os.close(parent)
            raise


def mount_at(root: Root, path: str, *, kind: str, source: str | None, fstype: str | None, flags: int,
             data: str | None = None, remount_ro: bool = False, what: str = "") -> None:
    """Mount onto ``path`` inside the root (resolved and created there); optionally remount it read-only."""
    what = what or f"mounting {fstype or 'bind'} at {path}"
    fd, parent, name = root.target(path, kind=kind)
    try:
        mount(source, fd_path(fd), fstype, flags, data, what)
        keep = flags & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
        # A bind mount ignores these flags until it is remounted (and a remount drops those it is not given).
        if remount_ro or (flags & MS_BIND and keep):
            # The fd still names the covered mount point; a fresh lookup of the name crosses into the new mount.
            top = os.open(name, _O_PATH, dir_fd=parent)
            ro = MS_RDONLY if remount_ro else 0
            try:
                mount(None, fd_path(top), None, MS_BIND | MS_REMOUNT | ro | keep, None,
                      f"{what} (read-only)" if remount_ro else f"{what} (flags)")
            finally:
                os.close(top)
    finally:
        os.close(fd)
        os.close(parent)


def setup_dev(root: Root) -> None:
    mount_at(root, "/dev", kind="dir", source="tmpfs", fstype="tmpfs", flags=MS_NOSUID,
             data="mode=755,size=65536k", what="mounting /dev")
    with root.rfs.at("/dev", follow=True) as (parent, name):
        dev = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        old = os.umask(0)
        try:
            for node, major, minor in DEV_NODES:
                os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor), dir_fd=dev)
            for node in ("pts", "shm"):
                os.mkdir(node, 0o755, dir_fd=dev)
        finally:
            os.umask(old)
        for node, target in DEV_LINKS:
            os.symlink(target, node, dir_fd=dev)
        for node, fstype, flags, data in (
                ("pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"),
                ("shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")):
            fd = os.open(node, _O_PATH, dir_fd=dev)
            try:
                mount(fstype, fd_path(fd), fstype, flags, data, f"mounting /dev/{node}")
            finally:
                os.close(fd)
    finally:
        os.close(dev)


def setup_sys(root: Root) -> None:
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    try:
        mount_at(root, "/sys", kind="dir", source="sysfs", fstype="sysfs", flags=flags, what="mounting /sys")
    except SetupError:
        # sysfs can be refused (a net namespace we do not own); a read-only bind of the host's is the fallback,
        # without its submounts: a read-only remount would not reach them, and the host's cgroup tree is one.
        mount_at(root, "/sys", kind="dir", source="/sys", fstype=None, flags=MS_BIND | MS_NOSUID | MS_NODEV |
                 MS_NOEXEC, remount_ro=True, what="binding /sys")


def host_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return b""


def etc_files(spec: dict) -> list[tuple[str, bytes]]:
    """Copies of the host's resolver files for the step; writes to them die with the namespace."""
    name = spec["hostname"]
    hosts = host_file("/etc/hosts")
    if hosts and not hosts.endswith(b"\n"):
        hosts += b"\n"
    if name.encode() not in hosts.split():
        hosts += f"127.0.0.1\t{name}\n".encode()
    return [("/etc/resolv.conf", host_file("/etc/resolv.conf")), ("/etc/hosts", hosts),
            ("/etc/hostname", f"{name}\n".encode())]


class Scratch:
    """A tmpfs only this mount namespace sees: throwaway copies and overlay upper layers live there."""

    def __init__(self, path: str) -> None:
        mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=700", "mounting the scratch tmpfs")
        self.path = path
        self.n = 0

    def new(self, prefix: str) -> str:
        self.n += 1
        return os.path.join(self.path, f"{prefix}{self.n}")

    def file(self, data: bytes, *, mode: int, uid: int, gid: int) -> str:
        path = self.new("f")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        return path


def setup_mount(root: Root, scratch: Scratch, m: dict) -> None:
    kind, target, source = m["kind"], m["target"], m["source"]
    what = f"RUN --mount type={kind} target={target}"
    if kind == "tmpfs":
        opts = f"mode={m['mode'] if m['mode'] is not None else 0o1777:o},uid={m['uid']},gid={m['gid']}"
        if m["size"]:
            opts += f",size={m['size']}"
        mount_at(root, target, kind="dir", source="tmpfs", fstype="tmpfs", flags=MS_NOSUID | MS_NODEV, data=opts,
                 what=what)
        return
    if kind == "secret":
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise SetupError(f"{what}: reading the secret: {exc.strerror}") from None
        copy = scratch.file(data, mode=m["mode"] if m["mode"] is not None else 0o400, uid=m["uid"], gid=m["gid"])
        mount_at(root, target, kind="file", source=copy, fstype=None, flags=MS_BIND | MS_NOSUID | MS_NODEV,
                 remount_ro=True, what=what)
        return
    try:
        st = os.stat(source)
    except OSError as exc:
        raise SetupError(f"{what}: source {source}: {exc.strerror}") from None
    is_dir = stat.S_ISDIR(st.st_mode)
    if kind == "cache" and is_dir and m["mode"] is not None and not os.listdir(source):
        os.chown(source, m["uid"], m["gid"])  # a fresh cache directory gets the owner and mode asked for
        os.chmod(source, m["mode"])
    if kind == "bind" and not m["readonly"]:
        # Writes to a read-write bind are the step's own and are thrown away: an overlay (directory) or a copy
        # (file) on the scratch tmpfs keeps the source untouched.
        if is_dir:
            base = scratch.new("o")
            os.mkdir(base)
            os.mkdir(f"{base}/upper")
            os.mkdir(f"{base}/work")
            os.symlink(source, f"{base}/lower")
            data = f"lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work"
            mount_at(root, target, kind="dir", source="overlay", fstype="overlay", flags=MS_NODEV, data=data,
                     what=what)
        else:
            copy = scratch.new("c")
            shutil.copy2(source, copy)
            os.chown(copy, st.st_uid, st.st_gid)
            mount_at(root, target, kind="file", source=copy, fstype=None, flags=MS_BIND | MS_NODEV, what=what)
        return
    # nodev: a device node in a bound image or stage, or one a step made in a cache, never opens a host device.
    mount_at(root, target, kind="dir" if is_dir else "file", source=source, fstype=None,
             flags=MS_BIND | MS_REC | MS_NODEV, remount_ro=bool(m["readonly"]), what=what)


def lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
        flags = struct.unpack("16sH22x", ifr)[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def setup(spec: dict, report) -> None:
    """Everything between the new namespaces and the chroot; runs as PID 1 of the step."""
    root = Root(spec["root"], report)
    try:
        scratch = Scratch(spec["scratch"])
        mount_at(root, "/proc", kind="dir", source="proc", fstype="proc", flags=MS_NOSUID | MS_NODEV | MS_NOEXEC,
                 what="mounting /proc")
        setup_dev(root)
        setup_sys(root)
        mask_kernel(root)
        for path, data in etc_files(spec):
            copy = scratch.file(data, mode=0o644, uid=0, gid=0)
            mount_at(root, path, kind="file", source=copy, fstype=None, flags=MS_BIND, what=f"mounting {path}")
        for m in sorted(spec["mounts"], key=lambda m: len(split_path(m["target"]))):
            setup_mount(root, scratch, m)
        if spec["network"] == "none":
            lo_up()
        socket.sethostname(spec["hostname"])
        # WORKDIR: created like BuildKit does, owned by the step's user, and kept (it is part of the layer).
        parent, _ = root.ensure(spec["workdir"], kind="dir", owner=(spec["uid"], spec["gid"]), record=False)
        os.close(parent)
        seccomp = SeccompFilter()  # libseccomp comes from the host: load it before the image is "/"
    except SeccompError as exc:
        raise SetupError(str(exc)) from None
    finally:
        root.rfs.close()
    try:
        enter_root(spec["root"])
        try:
            os.chdir(spec["workdir"])
        except OSError as exc:
            raise SetupError(f"changing to the working directory {spec['workdir']}: {exc.strerror}") from None
        seccomp.load()  # last: it refuses mount and pivot_root
    except SeccompError as exc:
        raise SetupError(str(exc)) from None
    finally:
        seccomp.release()


def mask_kernel(root: Root) -> None:
    """Read-only and masked kernel files (sandbox_confine) below the step's fresh /proc and /sys."""
    tops: dict[str, int] = {}
    try:
        for top in ("/proc", "/sys"):
            with root.rfs.at(top, follow=True) as (parent, name):
                # A fresh lookup of the name crosses into the mount just made there.
                tops[top] = os.open(name, _O_PATH | os.O_DIRECTORY, dir_fd=parent)
        mask_kernel_files(mount, tops)
    finally:
        for fd in tops.values():
            os.close(fd)


def enter_root(path: str) -> None:
    """Make ``path`` the step's ``/``: pivot_root where possible, so the host's tree is not merely hidden (as a
    chroot leaves it, escapable by a root step) but detached from the namespace; chroot otherwise.
    """
    nr = PIVOT_ROOT_NR.get(os.uname().machine)
    if nr is not None:
        # pivot_root needs the new root to be a mount point: bind it onto itself, submounts included.
        mount(path, path, None, MS_BIND | MS_REC, None, "binding the stage root")
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # a fresh lookup: the new mount
        try:
            os.fchdir(fd)
        finally:
            os.close(fd)
        # pivot_root(".", "."): the old root ends up stacked on the new one and is detached right away.
        if _libc.syscall(nr, b".", b".") == 0:
            _check(_libc.umount2(b".", MNT_DETACH), "detaching the host's root")
            os.chdir("/")
            return
    os.chroot(path)
    os.chdir("/")


def drop_capabilities() -> None:
    """Shrink the bounding set to :data:`DEFAULT_CAPS`; exec then drops the rest even for root."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 40
    for cap in range(last + 1):
        if cap not in DEFAULT_CAPS and _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if err != errno.EINVAL:
                raise SetupError(f"dropping capability {cap}: {os.strerror(err)}")


def exec_command(spec: dict) -> None:
    """In the command process: drop to the user, restore default signal handling, exec. Never returns."""
    argv, env = spec["argv"], dict(spec["env"])
    try:
        drop_capabilities()
        os.setgroups(spec["groups"])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
        os.umask(0o022)
        for sig in signal.valid_signals():
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                try:
                    signal.signal(sig, signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        where = "executable file not found in $PATH" if "/" not in argv[0] else "no such file or directory"
        _die(f"snapfs: exec {argv[0]!r}: {where}", 127)
    except PermissionError:
        _die(f"snapfs: exec {argv[0]!r}: permission denied", 126)
    except OSError as exc:
        _die(f"snapfs: exec {argv[0]!r}: {exc.strerror}", 126)
    except BaseException as exc:  # never fall back into the reaper's code
        _die(f"snapfs: exec {argv[0]!r}: {exc}", 126)


def _die(message: str, code: int) -> None:
    try:
        os.write(2, message.encode("utf-8", "replace") + b"\n")
    finally:
        os._exit(code)


def wait_status_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal number."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def reaper(spec: dict, report_fd: int, lifeline: int) -> None:
    """PID 1 of the step. Never returns."""
    _libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    # Not dumpable: the step (fewer capabilities) cannot open /proc/1/exe, /proc/1/mem and the like.
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    # getppid() is 0 across the PID namespace boundary; EOF on the lifeline says the launcher died already.
    if select.select([lifeline], [], [], 0)[0]:
        os._exit(SETUP_FAILED)
    os.close(lifeline)

    def report(msg: dict) -> None:
        os.write(report_fd, (json.dumps(msg) + "\n").encode())

    try:
        setup(spec, report)
    except SetupError as exc:
        report({"error": str(exc)})
        os._exit(SETUP_FAILED)
    except OSError as exc:
        report({"error": f"setting up the step: {exc}"})
        os._exit(SETUP_FAILED)
    except BaseException as exc:  # a bug; still one line for the builder, never a traceback on the step's stderr
        report({"error": f"internal error setting up the step: {exc!r}"})
        os._exit(SETUP_FAILED)
    report({"ready": True})
    os.close(report_fd)
    child = os.fork()
    if child == 0:
        exec_command(spec)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(SETUP_FAILED)
        except InterruptedError:
            continue
        if pid == child:
            # Exiting kills every other process of the namespace: the step is over.
            os._exit(wait_status_code(status))


def main(argv: list[str]) -> int:
    spec_fd, report_fd, builder = int(argv[1]), int(argv[2]), int(argv[3])
    # If the builder dies, so does the launcher, and with it (PDEATHSIG again) the reaper and the whole step.
    _libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != builder:
        return SETUP_FAILED
    for fd in (spec_fd, report_fd):
        os.set_inheritable(fd, False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the builder decides what an interrupt does
    with os.fdopen(spec_fd, "rb") as f:
        spec = json.loads(f.read())
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC
    if spec["network"] == "none":
        flags |= CLONE_NEWNET
    try:
        _check(_libc.unshare(flags), "creating namespaces (unshare)")
        mount(None, "/", None, MS_REC | MS_PRIVATE, None, "making mounts private")
    except SetupError as exc:
        os.write(report_fd, (json.dumps({"error": str(exc)}) + "\n").encode())
        return SETUP_FAILED
    lifeline, keep = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(keep)
        reaper(spec, report_fd, lifeline)
    os.close(lifeline)
    os.close(report_fd)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return wait_status_code(status)
        except InterruptedError:
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv))
