"""RUN steps without isolation, as Kaniko runs them: in an unprivileged pod there are no namespaces to make.

The step gets its own session, the user and groups from the stage's own passwd/group, its workdir (created),
exactly the step's environment, umask 022, stdin from /dev/null, and the container's capabilities less
``CAP_NET_RAW`` and ``CAP_MKNOD``. What else it may touch is the container runtime's business (its masked
``/proc``, its capability set, its seccomp profile); snapfs adds no seccomp filter here: without
``CAP_SYS_ADMIN`` one needs ``no_new_privs``, which would break setuid binaries (``su``, ``sudo``) in steps.
When its command exits, its process group and everything left in its session are killed, and orphans it left
to us are reaped. Exit codes follow ``sandbox.run``: 127 not found, 126 not executable, 128+N when killed by
signal N.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
import signal
import stat
import subprocess
import threading
import time
from typing import IO, Any, Callable

from snapfs.engine.libc import libc
from snapfs.engine.lifecycle import shielded
from snapfs.engine.rootfs import split_path
from snapfs.errors import BuildError, InputError, NotSupportedError, UsageError
from . import mountless
from .sandbox import pump_output, stream_target

log = logging.getLogger("snapfs.incontainer")

# One line per way of getting here, each true of where the step runs.
DIRECT_MESSAGE = "isolation not available: running RUN steps directly in the container (as Kaniko does)"
UNAVAILABLE_MESSAGE = ("isolation not available: RUN steps run without namespaces or seccomp, chrooted into "
                       "the stage root on this machine")
NONE_MESSAGE = ("isolation none: RUN steps run without namespaces or seccomp, chrooted into the stage root on "
                "this machine with the builder's capabilities less NET_RAW and MKNOD: they can reach its "
                "processes, network and kernel")
_STRAGGLER_ROUNDS = 50
# Taken from every step, as in the sandbox: raw sockets would let a step sniff the network it shares (a pod's
# lo carries its sidecars' traffic), device nodes would let it reach the node's disks.
STEP_DROPPED_CAPS = {13: "CAP_NET_RAW", 27: "CAP_MKNOD"}
PR_CAPBSET_READ, PR_CAPBSET_DROP = 23, 24
_PUMP_GRACE = 5.0


UNCONFINED_MESSAGE = ("this container has no seccomp filter: RUN steps may make any syscall the container's "
                      "capabilities allow (run the pod with seccompProfile: RuntimeDefault)")


@functools.cache
def announce_direct(message: str = DIRECT_MESSAGE) -> None:
    """Say once per process (and message) that RUN steps run without isolation; in a container, also when the
    runtime gave it no seccomp filter, since snapfs adds none there."""
    log.warning(message)
    if message == DIRECT_MESSAGE and not seccomp_confined():
        log.warning(UNCONFINED_MESSAGE)


def seccomp_confined(status: str = "/proc/self/status") -> bool:
    """Whether a seccomp filter is on this process (``Seccomp: 2``); True when the kernel does not say."""
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("Seccomp:"):
                    return line.split()[1] != "0"
    except OSError:
        pass
    return True


def runner(isolation: str = "auto") -> Callable[..., Any]:
    """The function that runs RUN steps (``sandbox.run`` or :func:`run_direct`) for ``BuildOptions.isolation``:
    ``namespaces`` requires the sandbox, ``none`` never uses it, ``auto`` uses it when this process may."""
    from . import sandbox

    if isolation not in ("auto", "namespaces", "none"):
        raise UsageError(f"unknown isolation {isolation!r} (choose auto, namespaces or none)")
    if isolation == "none":
        announce_direct(NONE_MESSAGE)
        return run_direct
    if isolation == "auto" and not sandbox.isolation_available():
        announce_direct(UNAVAILABLE_MESSAGE)
        return run_direct
    if not sandbox.isolation_available():
        raise NotSupportedError("isolation=namespaces: this process may not create mount and PID namespaces "
                                "(an unprivileged container?); use isolation none or auto")
    return sandbox.run


def run_direct(spec, *, stdout: IO[Any] | None = None, stderr: IO[Any] | None = None):
    """Run one RUN step as Kaniko does: no namespaces, no mount(2), in the container's own root.

    The step runs in a new session (``setsid``), as the user of ``spec.user`` resolved in the root's own
    ``/etc/passwd``/``group`` (supplementary groups, gid, uid), in ``spec.workdir`` (created 0755, owned by the
    user, like the sandbox does), with exactly ``spec.env`` plus ``PATH``/``HOME`` defaults, umask 022,
    default signal handling and without ``CAP_NET_RAW`` and ``CAP_MKNOD`` (:func:`_popen_without_caps`); its
    stdin is ``/dev/null`` unless ``spec.stdin``. When the command exits, its process group and every process
    still in its session are killed. ``spec.root`` is ``/`` in real use; any
    other root is entered with ``chroot`` (``CAP_SYS_CHROOT``, which a default pod has), for tests.

    ``RUN --mount`` secrets, caches and tmpfs are emulated by :mod:`snapfs.run.mountless` (moved into the
    root just before the command, out again when it is over, also when it failed or a signal came); bind
    mounts and ``--network=none`` need namespaces: :class:`NotSupportedError`, before anything is done.
    Returns a ``sandbox.RunResult`` (127 when the command is not found, 126 when it cannot be executed,
    128 + N when killed by signal N; ``created``: the paths the mounts made and removed again, ``restored``:
    the root's entries moved aside for them and put back); failing to set the step up, or to take its mounts
    out again, is a :class:`BuildError`.
    """
    from .sandbox import step_environment
    from .sandbox_init import Root, SetupError
    from .users import resolve_user

    for m in spec.mounts:
        why = mountless.refusal(m.kind, size=m.size)
        if why:
            raise NotSupportedError(why)
    if spec.network == "none":
        raise NotSupportedError(mountless.NETWORK_NONE)
    if spec.network not in ("default", "host"):
        raise UsageError(f"RUN --network={spec.network}: expected one of default, host, none")
    if not spec.argv or not spec.argv[0]:
        raise BuildError("RUN: empty command")
    for text in (*spec.argv, spec.workdir, *(x for kv in spec.env for x in kv)):
        if "\0" in text:
            raise BuildError(f"RUN {_show(spec.argv)}: NUL byte in {text!r}")
    if any(not k or "=" in k for k, _ in spec.env):
        raise BuildError(f"RUN {_show(spec.argv)}: invalid environment variable name")
    try:
        st = os.stat(spec.root)
    except OSError as exc:
        raise InputError(f"stage root {spec.root}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"stage root {spec.root}: not a directory")
    root = os.path.realpath(spec.root)
    user = resolve_user(root, spec.user)
    env = dict(step_environment(spec.env, user.home))
    workdir = "/" + "/".join(split_path(spec.workdir or "/"))
    try:
        r = Root(root, lambda msg: None)
        try:
            parent, _ = r.ensure(workdir, kind="dir", owner=(user.uid, user.gid), record=False)
            os.close(parent)
        finally:
            r.rfs.close()
    except (SetupError, OSError) as exc:
        raise BuildError(f"RUN {_show(spec.argv)}: working directory {workdir}: {exc}") from None
    if not spec.mounts:
        return _execute(spec, root, user, env, workdir, stdout, stderr)
    # The mounts, emulated: placed just before the step, taken out right after, whatever happens in between.
    placement = mountless.Placement(root)
    try:
        with shielded():
            for m in spec.mounts:
                placement.place(m)
        result = _execute(spec, root, user, env, workdir, stdout, stderr)
    finally:
        with shielded():
            created, restored = placement.undo()
    return dataclasses.replace(result, created=created, restored=restored)


def _execute(spec, root: str, user, env: dict, workdir: str, stdout, stderr):
    """Start the step's command and wait for it; then end its session (see :func:`run_direct`)."""
    from .sandbox import RunResult

    started = time.monotonic()
    out_arg, out_sink = stream_target(stdout)
    err_arg, err_sink = stream_target(stderr)
    kwargs: dict[str, Any] = dict(env=env, stdin=None if spec.stdin else subprocess.DEVNULL, stdout=out_arg,
                                  stderr=err_arg, close_fds=True, start_new_session=True, restore_signals=True)
    if root == "/":
        # Everything in the child happens in C (_posixsubprocess): safe in a builder that has threads.
        kwargs.update(cwd=workdir, umask=0o022, user=user.uid, group=user.gid, extra_groups=list(user.groups))
    else:
        kwargs.update(preexec_fn=functools.partial(_enter, root, workdir, user.uid, user.gid, user.groups))
    proc = None
    try:
        # A signal while the step starts waits until its pid is known: the finally below must see it to kill the
        # session (the step can already run, and hold our stdout, before Popen returns to this thread).
        with shielded():
            try:
                proc = _popen_without_caps(list(spec.argv), kwargs)
            except FileNotFoundError:
                where = "executable file not found in $PATH" if "/" not in spec.argv[0] else "no such file or directory"
                return _failed(spec, stderr, f"snapfs: exec {spec.argv[0]!r}: {where}", 127, started)
            except PermissionError:
                return _failed(spec, stderr, f"snapfs: exec {spec.argv[0]!r}: permission denied", 126, started)
            except subprocess.SubprocessError as exc:  # the preexec step failed (chroot, chdir, setuid)
                raise BuildError(f"RUN {_show(spec.argv)}: setting up the step: {exc}") from None
            except OSError as exc:
                return _failed(spec, stderr, f"snapfs: exec {spec.argv[0]!r}: {exc.strerror}", 126, started)
        pumps = [threading.Thread(target=pump_output, args=(pipe, sink), daemon=True)
                 for pipe, sink in ((proc.stdout, out_sink), (proc.stderr, err_sink)) if pipe is not None]
        for t in pumps:
            t.start()
        # Wait without reaping: while the leader is a zombie its pid (the session and group id) cannot be reused.
        while True:
            try:
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                break
            except InterruptedError:
                continue
    finally:
        if proc is not None:
            # The step is over when its command exits: whatever it left running goes too.
            kill_session(proc.pid)
            status = proc.wait()
    for t in pumps:
        t.join(_PUMP_GRACE)  # a daemon that escaped the session may hold the pipe; do not wait for it forever
    code = 128 - status if status < 0 else status
    return RunResult(exit_code=code, seconds=time.monotonic() - started, created=())


def _popen_without_caps(argv: list[str], kwargs: dict) -> subprocess.Popen:
    """``Popen`` from a short-lived thread whose capability bounding set lacks :data:`STEP_DROPPED_CAPS`.

    The bounding set is per thread and a child inherits its forking thread's, so the step cannot gain those
    capabilities while the builder's own threads keep theirs (it may still need them, e.g. to unpack a device
    node of a base image). Dropping needs ``CAP_SETPCAP``, which a default container has; without it the step
    keeps what the container gives, as under Kaniko, and a warning says so once.
    """
    box: dict[str, Any] = {}

    def spawn() -> None:
        try:
            kept = _drop_bounding(STEP_DROPPED_CAPS)
            if kept:
                _warn_kept(", ".join(sorted(kept)))
            box["proc"] = subprocess.Popen(argv, **kwargs)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=spawn, name="snapfs-run-spawn")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["proc"]


def _drop_bounding(caps: dict[int, str]) -> set[str]:
    """Drop ``caps`` from the calling thread's bounding set; the names of those still in it afterwards."""
    kept = set()
    for cap, name in caps.items():
        if libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1 and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            kept.add(name)
    return kept


@functools.cache
def _warn_kept(names: str) -> None:
    log.warning("RUN steps keep %s: this container does not allow dropping capabilities (no CAP_SETPCAP)", names)


def _enter(root: str, workdir: str, uid: int, gid: int, groups: tuple[int, ...]) -> None:
    """In the child, for a root other than ``/``: chroot, chdir, drop to the user (in that order)."""
    os.chroot(root)
    os.chdir(workdir)
    os.setgroups(list(groups))
    os.setgid(gid)
    os.setuid(uid)
    os.umask(0o022)


def _failed(spec, stderr, message: str, code: int, started: float):
    from .sandbox import RunResult

    data = (message + "\n").encode("utf-8", "replace")
    if stderr is None:
        os.write(2, data)
    else:
        try:
            stderr.write(data.decode() if isinstance(stderr, io.TextIOBase) else data)
        except (OSError, ValueError):
            pass
    return RunResult(exit_code=code, seconds=time.monotonic() - started, created=())


def session_members(sid: int, *, zombies: bool = False, proc_dir: str = "/proc") -> list[tuple[int, int]]:
    """(pid, ppid) of the processes whose session or process group is ``sid``: the live ones, or with
    ``zombies=True`` the dead ones not yet reaped."""
    out = []
    try:
        names = os.listdir(proc_dir)
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"{proc_dir}/{name}/stat", "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        fields = text.rsplit(")", 1)[-1].split()
        if len(fields) < 4 or (fields[0] in ("Z", "X")) != zombies:
            continue
        if int(fields[2]) == sid or int(fields[3]) == sid:
            out.append((int(name), int(fields[1])))
    return out


def kill_session(sid: int) -> int:
    """SIGKILL the process group ``sid`` and every process left in session ``sid`` until none is left alive,
    then reap those that became our children (in a pod the builder is PID 1 and inherits orphans). Returns how
    many were found alive after the group was killed. A process that left the session (``setsid`` of its own)
    escapes, as it would with Kaniko."""
    me = os.getpid()
    killed: set[int] = set()
    try:
        os.killpg(sid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for _ in range(_STRAGGLER_ROUNDS):
        alive = [pid for pid, _ in session_members(sid) if pid != me]
        if not alive:
            break
        for pid in alive:
            killed.add(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
    for pid, ppid in session_members(sid, zombies=True):
        if ppid == me and pid != sid:  # the leader is the caller's to reap (Popen.wait)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    return len(killed)


def _show(argv) -> str:
    text = " ".join(argv)
    return text if len(text) <= 200 else text[:197] + "..."
