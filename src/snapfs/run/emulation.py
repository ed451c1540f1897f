"""Can this machine run a RUN step's binaries? Native architectures, or binfmt_misc emulation (qemu-user).

A step for a foreign platform (``--custom-platform linux/arm64`` on an amd64 host) execs the image's binaries;
the kernel runs them only through a ``binfmt_misc`` handler registered for that architecture, as
``docker run --privileged tonistiigi/binfmt --install arm64`` or Debian's ``qemu-user-binfmt`` register. The
builder asks before any step runs, so a build that cannot work fails with a message, not with
``exec format error`` halfway through.

Handlers are files in ``/proc/sys/fs/binfmt_misc``: ``status`` says whether the mechanism is on, and each
entry (``qemu-aarch64``, ``qemu-arm``, ...) starts with ``enabled`` or ``disabled``. An entry without the ``F``
flag opens its interpreter inside the step's root (where it is usually missing): it is reported, not trusted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from snapfs.errors import BuildError
from snapfs.platforms import Platform

BINFMT_DIR = "/proc/sys/fs/binfmt_misc"
# Our architecture names -> qemu's (the word binfmt entries are named after).
QEMU_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "arm": "arm", "386": "i386", "ppc64le": "ppc64le",
             "s390x": "s390x", "riscv64": "riscv64", "mips64le": "mips64el", "mips64": "mips64",
             "loong64": "loongarch64"}
# What a CPU runs natively besides its own architecture (an x86-64 kernel runs i386 programs).
_ALSO_NATIVE = {"amd64": frozenset({"386"})}


@dataclass(frozen=True)
class Handler:
    """One enabled binfmt_misc entry: its name, interpreter and flags."""

    name: str
    interpreter: str
    flags: str

    @property
    def fixed(self) -> bool:
        """``F``: the kernel opened the interpreter when it was registered, so it works inside any root."""
        return "F" in self.flags


def runs_natively(platform: Platform, host: Platform) -> bool:
    return platform.architecture == host.architecture or platform.architecture in _ALSO_NATIVE.get(
        host.architecture, frozenset())


def find_handler(architecture: str, *, binfmt_dir: str = BINFMT_DIR) -> Handler | None:
    """The enabled binfmt_misc entry that runs ``architecture`` programs, or None (binfmt_misc not mounted,
    switched off, or no entry for it). An entry counts when one of its name's dash-separated words is qemu's
    name of the architecture (``qemu-aarch64``, ``aarch64``, ``qemu-aarch64-static``)."""
    qemu = QEMU_ARCH.get(architecture, architecture)
    try:
        with open(os.path.join(binfmt_dir, "status")) as f:
            if f.read().strip() != "enabled":
                return None
        names = sorted(os.listdir(binfmt_dir))
    except OSError:
        return None
    for name in names:
        if name in ("status", "register") or qemu not in name.lower().split("-"):
            continue
        try:
            with open(os.path.join(binfmt_dir, name)) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        if not lines or lines[0].strip() != "enabled":
            continue
        fields = dict(line.partition(" ")[::2] for line in lines[1:])
        return Handler(name, fields.get("interpreter", "").strip(), fields.get("flags:", "").strip())
    return None


def check_can_run(platform: Platform, *, host: Platform | None = None, binfmt_dir: str = BINFMT_DIR,
                  stage: str = "") -> Handler | None:
    """Raise BuildError unless RUN steps for ``platform`` can run here; returns the emulator used (None:
    native). ``stage`` names the stage in the message."""
    host = host or Platform.host()
    if platform.os != "linux":
        raise BuildError(f"{stage}RUN steps for {platform} cannot run on a Linux builder")
    if runs_natively(platform, host):
        return None
    handler = find_handler(platform.architecture, binfmt_dir=binfmt_dir)
    qemu = QEMU_ARCH.get(platform.architecture, platform.architecture)
    if handler is None:
        raise BuildError(f"{stage}RUN steps for {platform} need emulation on this {host.architecture} host, and "
                         f"{binfmt_dir} has no enabled handler for {qemu} (install one, e.g. `docker run "
                         f"--privileged --rm tonistiigi/binfmt --install {platform.architecture}` or Debian's "
                         f"qemu-user-binfmt)")
    if not handler.fixed:
        raise BuildError(f"{stage}RUN steps for {platform}: the binfmt_misc handler {handler.name} lacks the F "
                         f"flag, so its interpreter {handler.interpreter or '(unknown)'} would be looked for inside "
                         "the image; register it with F (qemu-user-static's --persistent yes, tonistiigi/binfmt)")
    return handler


__all__ = ["BINFMT_DIR", "Handler", "check_can_run", "find_handler", "runs_natively"]
