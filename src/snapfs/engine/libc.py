"""The C library calls snapfs makes through ctypes (mount, umount2, unshare, prctl), declared once.

Only ``ctypes`` is imported here: the RUN sandbox's init process uses this module too and must start fast.
"""
from __future__ import annotations

import ctypes
import errno
import os

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.unshare.argtypes = [ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2


def _enc(s: str | bytes | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | bytes | None, target: str | bytes, fstype: str | bytes | None, flags: int,
          data: str | bytes | None) -> int:
    """mount(2); returns 0, or the errno of the failure."""
    return 0 if libc.mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)) == 0 else ctypes.get_errno()


def unmount(target: str | bytes) -> None:
    """Unmount ``target``; a busy mount is detached (the kernel frees it when unused), an unmounted one skipped."""
    path = _enc(target)
    if libc.umount2(path, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
        libc.umount2(path, MNT_DETACH)
