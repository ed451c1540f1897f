"""What a RUN step may not touch even as root: masked kernel files and the seccomp filter (sandbox only).

Both follow what container runtimes do by default (runc's masked and read-only paths, Docker's default seccomp
profile in intent), so a step cannot reconfigure or read secrets of the host kernel it shares:

- :func:`mask_kernel_files` runs in the step's mount namespace before ``pivot_root``: ``/proc/sys``,
  ``/proc/sysrq-trigger``, ``/proc/irq``, ``/proc/bus`` and ``/proc/fs`` become read-only binds of themselves
  (``kernel/core_pattern`` names a program the host kernel runs as root on a crash); ``/proc/kcore``,
  ``/proc/keys``, ``/proc/timer_list`` and the like get ``/dev/null`` bound over them, ``/proc/acpi``,
  ``/proc/scsi``, ``/sys/firmware`` and the like an empty read-only tmpfs. Entries this kernel lacks are skipped.
- :class:`SeccompFilter` is built by the step's PID 1 before ``pivot_root`` and loaded after it, so the
  command and everything it starts inherit it: a libseccomp filter (default: allow) that answers ``EPERM`` to
  the syscalls in :data:`DENIED` (kernel modules, kexec, keyrings, bpf, perf, userfaultfd, io_uring, file
  handles, clock and swap control, mounts), to namespace flags of ``clone``/``unshare`` and to unsafe
  ``personality`` flags; ``ENOSYS`` to ``clone3`` (its flags live in memory a filter cannot read, so libc falls
  back to ``clone``); and kills the process on a syscall of a foreign ABI (i386 ``int 0x80``, x32), which
  would bypass the rules. PID 1 still holds ``CAP_SYS_ADMIN`` when it loads the filter, so it needs no
  ``no_new_privs``, and setuid binaries (``su``, ``sudo``) keep working in the step. ``ptrace`` stays allowed,
  as in Docker on kernels from 4.8: the step has no ``CAP_SYS_PTRACE`` and its PID namespace holds only its own
  processes (PID 1 is not dumpable).

Both fail closed: a mask that cannot be mounted or a filter that cannot be built stops the step with one line.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat

READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
MASKED = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/timer_stats", "/proc/latency_stats",
          "/proc/sched_debug", "/proc/acpi", "/proc/asound", "/proc/scsi", "/sys/firmware",
          "/sys/devices/virtual/powercap")

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
_O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def mask_kernel_files(mount, tops: dict[str, int]) -> None:
    """Apply :data:`READ_ONLY` and :data:`MASKED` below the step's fresh ``/proc`` and ``/sys`` mounts, whose
    O_PATH fds ``tops`` maps from "/proc" and "/sys". ``mount(source, target, fstype, flags, data, what)``
    raises on failure."""
    null = os.stat("/dev/null")
    if not stat.S_ISCHR(null.st_mode) or null.st_rdev != os.makedev(1, 3):
        raise OSError(errno.ENODEV, "/dev/null of the host is not the null device")
    for path in READ_ONLY:
        with _opened(tops, path) as (fd, parent, name):
            if fd is None:
                continue
            what = f"making {path} read-only"
            mount(f"/proc/self/fd/{fd}", f"/proc/self/fd/{fd}", None, MS_BIND | MS_REC, None, what)
            # The fd still names the covered entry; a fresh lookup of the name finds the new bind.
            top = os.open(name, _O_PATH, dir_fd=parent)
            try:
                mount(None, f"/proc/self/fd/{top}", None,
                      MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None, what)
            finally:
                os.close(top)
    for path in MASKED:
        with _opened(tops, path) as (fd, parent, name):
            if fd is None:
                continue
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                mount("tmpfs", f"/proc/self/fd/{fd}", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      "mode=555,size=4k", f"masking {path}")
            else:
                mount("/dev/null", f"/proc/self/fd/{fd}", None, MS_BIND, None, f"masking {path}")


class _opened:
    """(O_PATH fd, parent fd, name) of a kernel path below the root, or (None, ...) when this kernel lacks it.
    Components are opened without following symlinks: inside a fresh procfs or sysfs none of these are links."""

    def __init__(self, tops: dict[str, int], path: str) -> None:
        self.fds: list[int] = []
        self.tops, self.path = tops, path

    def __enter__(self):
        top, *parents, name = self.path.strip("/").split("/")
        fd = self.tops["/" + top]
        try:
            for part in parents:
                fd = os.open(part, _O_PATH | os.O_DIRECTORY, dir_fd=fd)
                self.fds.append(fd)
            target = os.open(name, _O_PATH, dir_fd=fd)
        except FileNotFoundError:
            return None, None, name
        self.fds.append(target)
        return target, fd, name

    def __exit__(self, *exc) -> None:
        for fd in self.fds:
            os.close(fd)


# -- seccomp ----------------------------------------------------------------------------------------------

# Refused outright (EPERM). Most also need a capability the step lacks; the filter keeps them shut should a
# capability check have a hole, and closes the ones open to any uid (keyrings, userfaultfd, io_uring, perf,
# name_to_handle_at). Names this architecture lacks are skipped.
DENIED = (
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "create_module",
    "get_kernel_syms", "query_module", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "open_by_handle_at",
    "name_to_handle_at", "reboot", "swapon", "swapoff", "syslog", "acct", "settimeofday", "stime",
    "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64", "adjtimex", "mount", "umount",
    "umount2", "pivot_root", "setns", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
    "mount_setattr", "iopl", "ioperm", "vm86", "vm86old", "lookup_dcookie", "quotactl", "quotactl_fd",
    "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl", "vhangup", "fanotify_init", "kcmp",
)
# clone's first argument and unshare's: any of these bits makes a namespace (CLONE_NEWTIME shares its value
# with the exit-signal bits of clone, so it is checked for unshare only).
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
CLONE_NEWTIME = 0x00000080
# personality(2) flags Docker's profile does not allow; 0xffffffff (the query) has bit 31 set and stays allowed.
UNSAFE_PERSONALITY = (0x0040000, 0x0100000, 0x0200000, 0x0400000, 0x0800000, 0x8000000)  # ADDR_NO_RANDOMIZE,
# MMAP_PAGE_ZERO, ADDR_COMPAT_LAYOUT, READ_IMPLIES_EXEC, ADDR_LIMIT_32BIT, ADDR_LIMIT_3GB

SCMP_ACT_KILL_PROCESS, SCMP_ACT_ALLOW = 0x80000000, 0x7FFF0000
SCMP_FLTATR_ACT_BADARCH, SCMP_FLTATR_CTL_NNP = 2, 3
SCMP_CMP_MASKED_EQ = 7


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class SeccompError(Exception):
    """The filter could not be built or loaded; one line."""


def _libseccomp() -> ctypes.CDLL:
    try:  # by soname: find_library would spawn ldconfig
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        raise SeccompError("libseccomp.so.2 not found (Debian: apt-get install libseccomp2)") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    return lib


class SeccompFilter:
    """The step's filter, built while the host's libseccomp is reachable (before ``pivot_root``: a library
    loaded afterwards would come from the image) and :meth:`load`-ed once no more mounts are needed."""

    def __init__(self) -> None:
        self.lib = lib = _libseccomp()
        self.ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        if not self.ctx:
            raise SeccompError("seccomp: seccomp_init failed")
        try:
            # A syscall of another ABI than the filter's own (i386 int 0x80, x32) is killed, not allowed.
            self._ok(lib.seccomp_attr_set(self.ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS),
                     "setting the foreign-ABI action")
            # no_new_privs would break setuid binaries in the step; loading without it needs CAP_SYS_ADMIN,
            # which the reaper holds.
            self._ok(lib.seccomp_attr_set(self.ctx, SCMP_FLTATR_CTL_NNP, 0), "clearing no_new_privs")
            eperm = scmp_act_errno(errno.EPERM)
            for name in DENIED:
                self._rule(name, eperm)
            self._rule("clone", eperm, *((b, b) for b in NAMESPACE_FLAGS))
            self._rule("unshare", eperm, *((b, b) for b in (*NAMESPACE_FLAGS, CLONE_NEWTIME)))
            self._rule("personality", eperm, *((b, b | 0x80000000) for b in UNSAFE_PERSONALITY))
            self._rule("clone3", scmp_act_errno(errno.ENOSYS))
        except BaseException:
            self.release()
            raise

    def _rule(self, name: str, action: int, *masked: tuple[int, int]) -> None:
        """Refuse ``name`` always, or (with ``masked``) when any (bits, mask) pair of its first argument
        matches: ``arg0 & mask == bits``."""
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # no such syscall on this architecture: nothing to refuse
            return
        if not masked:
            self._ok(self.lib.seccomp_rule_add_array(self.ctx, action, nr, 0, None), f"rule for {name}")
        for bits, mask in masked:
            cmp = _ArgCmp(0, SCMP_CMP_MASKED_EQ, mask, bits)
            self._ok(self.lib.seccomp_rule_add_array(self.ctx, action, nr, 1, ctypes.byref(cmp)),
                     f"rule for {name}")

    def load(self) -> None:
        """Install the filter in this process; every child and exec inherits it. Releases the context."""
        try:
            self._ok(self.lib.seccomp_load(self.ctx), "loading the filter")
        finally:
            self.release()

    def release(self) -> None:
        if self.ctx:
            self.lib.seccomp_release(self.ctx)
            self.ctx = None

    @staticmethod
    def _ok(rc: int, what: str) -> None:
        if rc < 0:
            raise SeccompError(f"seccomp: {what}: {os.strerror(-rc)}")


