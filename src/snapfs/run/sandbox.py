"""RUN steps in their own namespaces, with Docker/BuildKit semantics; the builder's side.

:func:`run` resolves the user from the stage root, fixes the environment and starts
:mod:`snapfs.run.sandbox_init` (``python -I``, see that module for what happens inside) with an empty environment, so
nothing of the builder's own environment (registry credentials!) reaches the step. The step gets:

- new mount, PID, UTS and IPC namespaces (and a network namespace with only ``lo`` for ``network="none"``);
- ``/proc`` (with ``/proc/sys`` and other kernel knobs read-only, ``/proc/keys``, ``/proc/kcore`` and the like
  masked: :mod:`snapfs.run.confine`), a tmpfs ``/dev`` with the usual nodes, ``/dev/pts`` and ``/dev/shm``,
  a read-only ``/sys``, and throwaway copies of the host's ``/etc/resolv.conf`` and ``/etc/hosts`` plus an
  ``/etc/hostname``;
- the ``RUN --mount`` mounts (:class:`Mount`);
- the working directory, created if missing (mode 0755, owned by the step's user, as BuildKit does; it stays in
  the root and belongs to the step's layer);
- the root as ``/`` by pivot_root (the host's tree detached, not just hidden), Docker's default capability set
  less ``CAP_MKNOD`` and ``CAP_NET_RAW``, a seccomp filter like Docker's default profile, the user's
  supplementary groups, gid and uid, and exactly ``RunSpec.env`` plus ``PATH`` and ``HOME`` defaults.

The network is the host's by default (as ``docker build``'s default network); ``network="none"`` gives a
private network namespace with only ``lo``. ``CAP_MKNOD`` and ``CAP_NET_RAW`` stay dropped: no flag gives them
back (Docker keeps them but fences devices with a cgroup and has its own network; BuildKit's ``--security
insecure`` is not supported).

No user namespace: one that maps ids onto themselves (so the stage root's ownership stays right) keeps the
step's root the host's uid 0 for every check by owner, so ``/proc/sys`` and a cgroup tree stay writable, while
sysfs cannot be mounted for it on the host's network and a bind of the host's ``/sys`` would bring its writable
cgroup mounts along; what it would add (no capability counts against the host) the dropped capabilities and the
seccomp filter already give. A shifting map needs id-mapped mounts of the stage root: a later step.

Mount points missing from the root are created for the step and removed again afterwards when they are still
empty; :attr:`RunResult.created` lists them so the snapshot can ignore them. The step is over when its command
exits: the PID namespace dies with it and takes background processes along.
"""
from __future__ import annotations

import functools
import io
import json
import os
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from snapfs.engine.lifecycle import scratch_dir, shielded
from snapfs.engine.rootfs import RootFS, lstat_at, split_path
from snapfs.errors import BuildError, InputError, UsageError
from .users import resolve_user

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MOUNT_KINDS = ("bind", "cache", "tmpfs", "secret")
NETWORKS = ("default", "host", "none")


@dataclass(frozen=True)
class Mount:
    """A ``RUN --mount``; sources are host paths the builder prepared (and, for caches, locked)."""

    kind: str  # "bind" | "cache" | "tmpfs" | "secret"
    target: str  # absolute path inside the step
    source: str = ""  # host path: bind/cache a directory or file, secret a file; unused for tmpfs
    # None: the kind's default (bind read-only, cache read-write). A read-write bind's writes are thrown away;
    # a secret is always read-only, a tmpfs always writable.
    readonly: bool | None = None
    mode: int | None = None  # secret file (default 0400), tmpfs (default 01777), new cache directory
    uid: int = 0
    gid: int = 0
    size: int | None = None  # tmpfs size in bytes (default: the kernel's, half of RAM)


@dataclass(frozen=True)
class RunSpec:
    root: str  # the stage root directory on the host
    argv: tuple[str, ...]  # exec form: the builder already turned shell form into (*SHELL, "cmd")
    env: tuple[tuple[str, str], ...] = ()  # the whole environment (config Env + ARGs)
    workdir: str = "/"
    user: str = ""  # "", "name", "uid", "name:group", "uid:gid"; resolved in the root's /etc/passwd and group
    network: str = "default"  # "default" and "host" share the host's network; "none" has only lo
    mounts: tuple[Mount, ...] = ()
    hostname: str = "snapfs"
    stdin: bool = False  # False: the step reads /dev/null; True: it inherits the builder's stdin


@dataclass(frozen=True)
class RunResult:
    exit_code: int  # the command's status, 128 + signal number when killed, 127 when not found
    seconds: float
    created: tuple[str, ...] = field(default=())  # mount points (relative to root) made for the step and removed
    # Without namespaces (run_direct): entries of the root renamed aside for a mount and back, changed only in
    # their ctime, which the snapshot would otherwise take for a change.
    restored: tuple[str, ...] = field(default=())


def run(spec: RunSpec, *, stdout: IO[Any] | None = None, stderr: IO[Any] | None = None) -> RunResult:
    """Run one step isolated; its output goes to ``stdout``/``stderr`` (default: ours). A non-zero exit is a
    result, not an error; failing to set the step up is a :class:`BuildError`.
    """
    payload = _payload(spec)
    started = time.monotonic()
    scratch = scratch_dir("snapfs-run-")  # 0700, owner in the name: a later build sweeps it if we are killed
    payload["scratch"] = scratch
    created: list[dict] = []
    try:
        code, error = _spawn(payload, created, stdin=spec.stdin, stdout=stdout, stderr=stderr)
    finally:
        removed = _remove_created(payload["root"], created)
        try:
            os.rmdir(scratch)
        except OSError:
            pass
    if error is not None:
        raise BuildError(f"RUN {_show(spec.argv)}: {error}")
    return RunResult(exit_code=code, seconds=time.monotonic() - started, created=removed)


@functools.cache
def isolation_available() -> bool:
    """Whether this process may create the namespaces :func:`run` needs (False in an unprivileged pod)."""
    if not sys.platform.startswith("linux"):
        return False
    probe = ("import ctypes, os, sys\n"
             "libc = ctypes.CDLL(None, use_errno=True)\n"
             "if libc.unshare(0x00020000 | 0x20000000 | 0x04000000 | 0x08000000): sys.exit(1)\n"
             "if libc.mount(None, b'/', None, 16384 | (1 << 18), None): sys.exit(1)\n"
             "pid = os.fork()\n"
             "if pid == 0:\n"
             "    os._exit(1 if libc.mount(b'proc', b'/proc', b'proc', 14, None) else 0)\n"
             "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n")
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", probe], env={}, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def step_environment(env: tuple[tuple[str, str], ...] | list, home: str) -> list[tuple[str, str]]:
    """The step's environment: ``env`` as given plus ``PATH`` and ``HOME`` when it has none."""
    out = [(k, v) for k, v in env]
    names = {k for k, _ in out}
    if "PATH" not in names:
        out.append(("PATH", DEFAULT_PATH))
    if "HOME" not in names:
        out.append(("HOME", home or "/"))
    return out


def _payload(spec: RunSpec) -> dict:
    """Validate the spec and turn it into what sandbox_init reads."""
    try:
        st = os.stat(spec.root)
    except OSError as exc:
        raise InputError(f"stage root {spec.root}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"stage root {spec.root}: not a directory")
    if not spec.argv or not spec.argv[0]:
        raise BuildError("RUN: empty command")
    if spec.network not in NETWORKS:
        raise UsageError(f"RUN --network={spec.network}: expected one of {', '.join(NETWORKS)}")
    for text in (*spec.argv, spec.workdir, spec.hostname, *(x for kv in spec.env for x in kv)):
        if "\0" in text:
            raise BuildError(f"RUN {_show(spec.argv)}: NUL byte in {text!r}")
    if any(not k or "=" in k for k, _ in spec.env):
        raise BuildError(f"RUN {_show(spec.argv)}: invalid environment variable name")
    mounts = []
    for m in spec.mounts:
        if m.kind not in MOUNT_KINDS:
            raise UsageError(f"RUN --mount type={m.kind}: expected one of {', '.join(MOUNT_KINDS)}")
        if not m.target.startswith("/") or not split_path(m.target) or ".." in split_path(m.target):
            raise UsageError(f"RUN --mount type={m.kind} target={m.target}: target must be an absolute path "
                             "below /")
        if m.kind != "tmpfs" and not m.source:
            raise UsageError(f"RUN --mount type={m.kind} target={m.target}: no source")
        mounts.append({"kind": m.kind, "target": m.target, "source": os.path.abspath(m.source) if m.source else "",
                       "readonly": _readonly(m), "mode": m.mode, "uid": m.uid, "gid": m.gid, "size": m.size})
    user = resolve_user(spec.root, spec.user)
    workdir = "/" + "/".join(split_path(spec.workdir or "/"))
    return {"root": os.path.realpath(spec.root), "argv": list(spec.argv),
            "env": step_environment(spec.env, user.home), "workdir": workdir, "uid": user.uid, "gid": user.gid,
            "groups": list(user.groups), "network": spec.network, "hostname": spec.hostname or "snapfs",
            "mounts": mounts}


def _readonly(m: Mount) -> bool:
    if m.kind in ("secret", "tmpfs"):
        return m.kind == "secret"
    return m.kind == "bind" if m.readonly is None else m.readonly


# The init process runs the same snapfs as the builder: ``-I`` drops PYTHONPATH, and the interpreter's
# site-packages may hold another one (an editable install of another checkout).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_INIT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from snapfs.run.sandbox_init import main; "
         "sys.exit(main(sys.argv))")


def _spawn(payload: dict, created: list[dict], *, stdin: bool, stdout, stderr) -> tuple[int, str | None]:
    """Start sandbox_init, feed it the spec, collect its report, wait. (exit code, setup error or None)."""
    spec_r, spec_w = os.pipe()
    rep_r, rep_w = os.pipe()
    pumps: list[threading.Thread] = []
    proc = None
    try:
        # A signal while the launcher starts waits until it is known, so that the handler below can end it.
        with shielded():
            try:
                out_arg, out_pump = stream_target(stdout)
                err_arg, err_pump = stream_target(stderr)
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", _INIT, _PACKAGE_ROOT, str(spec_r), str(rep_w), str(os.getpid())],
                    env={}, cwd="/", pass_fds=(spec_r, rep_w), close_fds=True,
                    stdin=None if stdin else subprocess.DEVNULL, stdout=out_arg, stderr=err_arg)
            except OSError as exc:
                for fd in (spec_r, spec_w, rep_r, rep_w):
                    os.close(fd)
                raise BuildError(f"cannot start the sandbox: {exc.strerror}") from None
            os.close(spec_r)
            os.close(rep_w)
        for pipe, sink in ((proc.stdout, out_pump), (proc.stderr, err_pump)):
            if pipe is not None:
                t = threading.Thread(target=pump_output, args=(pipe, sink), daemon=True)
                t.start()
                pumps.append(t)
        with os.fdopen(spec_w, "wb") as f:
            try:
                f.write(json.dumps(payload).encode())
            except BrokenPipeError:
                pass  # the child died early; its status and report say why
        error, ready = None, False
        with os.fdopen(rep_r, "rb") as f:
            for line in f:
                msg = json.loads(line)
                if "created" in msg:
                    created.append(msg)
                elif "error" in msg:
                    error = msg["error"]
                ready = ready or bool(msg.get("ready"))
        code = proc.wait()
        for t in pumps:
            t.join()
    except BaseException:
        # The reaper has PDEATHSIG=SIGKILL: killing the launcher ends the whole step.
        if proc is not None:
            proc.kill()
            proc.wait()
        raise
    if code < 0:  # the launcher itself was killed
        code = 128 - code
    if error is None and not ready:
        error = f"the sandbox exited with status {code} before starting the command"
    return code, error


def stream_target(sink) -> tuple[Any, Any]:
    """(what Popen gets, what a pump thread writes to) for an output destination."""
    if sink is None:
        return None, None
    try:
        return sink.fileno(), None
    except (AttributeError, OSError, io.UnsupportedOperation):
        return subprocess.PIPE, sink


def pump_output(pipe, sink) -> None:
    text = isinstance(sink, io.TextIOBase)
    with pipe:
        while chunk := pipe.read1(1 << 16):
            sink.write(chunk.decode("utf-8", "replace") if text else chunk)


def _remove_created(root: str, created: list[dict]) -> tuple[str, ...]:
    """Remove the mount points the sandbox made, deepest first, if they are still the same empty entries."""
    removed = []
    try:
        rfs = RootFS(root)
    except OSError:
        return ()
    with rfs:
        for msg in reversed(created):
            rel = msg["created"]
            try:
                with rfs.at(rel) as (dir_fd, name):
                    st = lstat_at(dir_fd, name)
                    if st is None or (st.st_dev, st.st_ino) != (msg["dev"], msg["ino"]):
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        os.rmdir(name, dir_fd=dir_fd)
                    elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                        os.unlink(name, dir_fd=dir_fd)
                    else:
                        continue
            except OSError:  # not empty any more (the step wrote below it): it is the step's now
                continue
            removed.append(rel)
    return tuple(sorted(removed))


def _show(argv: tuple[str, ...]) -> str:
    text = " ".join(argv)
    return text if len(text) <= 200 else text[:197] + "..."
