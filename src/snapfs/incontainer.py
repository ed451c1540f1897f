"""In-container mode: building in place over the container's own ``/``, the way Kaniko runs in a pod.

In an ordinary Kubernetes pod there is no ``CAP_SYS_ADMIN``, no user namespace and no mount: the builder cannot
make a stage root of its own. So, like Kaniko, it uses the container's root as the stage root. This module holds
the pieces that mode needs, each usable on its own:

- :func:`detect_container`: are we inside a container (so the build root is ``/``)?
- :func:`mount_points` and :func:`ignore_list`: what the snapshot and the cleaning must leave alone: the snapfs
  directory (the builder itself, its scratch space and its credentials), ``/proc``, ``/sys``, ``/dev`` and every
  mount point of the container (service-account tokens, ``/etc/hosts``, workspace and cache volumes).
- :func:`clean_root`: empty the root between stages, except the ignored paths.
- :class:`CredentialVault`: registry credentials read into memory and removed from the filesystem before the
  first RUN step.
- :func:`run_direct`: a RUN step without namespaces (:func:`runner` picks it or the sandbox).

What is ignored, and why (compared with Kaniko's default ignore list):

- ``proc``, ``sys``, ``dev``: kernel filesystems, never part of an image (Kaniko: the same).
- the snapfs directory (default ``/snapfs``; Kaniko's is ``/kaniko``): the builder's interpreter, its scratch
  space, stage outputs kept for ``COPY --from``.
- every mount point in ``/proc/self/mountinfo`` below the root, and everything under it (Kaniko: the same). A
  mount point is ignored even when it is on the same device as ``/`` (a bind mount), which ``one_fs`` alone
  would miss.
- not ``/etc/mtab`` and not ``/tmp/apt-key-gpghome``, which Kaniko ignores by name: ``/etc/mtab`` is an ordinary
  symlink shipped by the image (never a mount in a pod), and ignoring either would make an in-container build
  differ from the same build in root-directory mode. ``/var/run`` is the caller's choice (``--ignore-var-run``),
  passed in ``extra``.
"""
from __future__ import annotations

import errno
import functools
import io
import logging
import os
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Mapping

from .credentials import KANIKO_DOCKER_CONFIG, CredentialSource, DockerConfig, config_paths
from .errors import BuildError, InputError, NotSupportedError, UsageError
from .rootfs import split_path

log = logging.getLogger("snapfs.incontainer")

DEFAULT_SNAPFS_DIR = "/snapfs"
KERNEL_DIRS = ("dev", "proc", "sys")
# A docker config.json given as an environment variable (e.g. from a Kubernetes Secret by secretKeyRef): read
# into memory and removed from the environment, so it never exists as a file a RUN step could read.
CONFIG_JSON_ENV = "SNAPFS_DOCKER_CONFIG_JSON"
MOUNTINFO = "/proc/self/mountinfo"
DIRECT_MESSAGE = "isolation not available: running RUN steps directly in the container (as Kaniko does)"
_STRAGGLER_ROUNDS = 50
_PUMP_GRACE = 5.0

# --- detection ---------------------------------------------------------------------------------------------

# Markers container runtimes leave behind: Docker's /.dockerenv, Podman/CRI-O's /run/.containerenv, the
# environment variable Kubernetes sets in every pod and the one systemd-nspawn, LXC and Podman set.
CONTAINER_FILES = ("/.dockerenv", "/run/.containerenv")
CONTAINER_ENV = ("KUBERNETES_SERVICE_HOST", "container")
# cgroup v1 paths name the runtime (cgroup v2 with a cgroup namespace shows only "0::/": no hint there).
CGROUP_HINTS = ("docker", "kubepods", "containerd", "crio", "libpod", "lxc", "buildkit")


def detect_container(*, env: Mapping[str, str] | None = None, fs_root: str = "/") -> bool:
    """Whether this process runs inside a container, judged by (in order):

    1. ``/.dockerenv`` (Docker) or ``/run/.containerenv`` (Podman, CRI-O) exists;
    2. ``KUBERNETES_SERVICE_HOST`` (every Kubernetes pod) or ``container`` (systemd-nspawn, LXC, Podman) is set;
    3. ``/proc/1/cgroup`` names a container runtime (cgroup v1 paths: ``/kubepods/...``, ``/docker/...``).

    None is proof, and a development machine may itself be a container: detection alone must never make a
    build clean ``/``. :func:`build_in_place` adds the executor image's marker file for that decision.
    ``fs_root`` lets tests point the file checks at a fake tree.
    """
    env = os.environ if env is None else env
    for path in CONTAINER_FILES:
        if os.path.lexists(os.path.join(fs_root, path.lstrip("/"))):
            return True
    if any(env.get(name) for name in CONTAINER_ENV):
        return True
    cgroup = _read_text(os.path.join(fs_root, "proc/1/cgroup"))
    return any(hint in line for line in cgroup.splitlines() for hint in CGROUP_HINTS)


# The executor image (deploy/Dockerfile) ships this file in its snapfs directory: only there does snapfs
# build over "/" without being told to.
EXECUTOR_MARKER = ".snapfs-executor"


def build_in_place(snapfs_dir: str = DEFAULT_SNAPFS_DIR, *, env: Mapping[str, str] | None = None,
                   fs_root: str = "/") -> bool:
    """Whether a build without an explicit mode should use ``/`` as its root: inside a container *and* running
    from the executor image (``<snapfs_dir>/.snapfs-executor`` exists). A developer's machine that happens to
    be a container (``/.dockerenv``) keeps building in scratch directories."""
    marker = os.path.join(fs_root, snapfs_dir.lstrip("/"), EXECUTOR_MARKER)
    return os.path.isfile(marker) and detect_container(env=env, fs_root=fs_root)


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 16).decode("utf-8", "replace")
    except OSError:
        return ""


# --- what to leave alone -----------------------------------------------------------------------------------

def _unescape(field_text: str) -> str:
    """A mountinfo path field: the kernel writes space, tab, newline and backslash as ``\\ooo`` octal."""
    if "\\" not in field_text:
        return field_text
    raw = os.fsencode(field_text)
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 4 <= len(raw) and all(0x30 <= b <= 0x37 for b in raw[i + 1:i + 4]):
            out.append(int(raw[i + 1:i + 4], 8) & 0xFF)
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def mount_points(mountinfo_text: str) -> tuple[str, ...]:
    """The absolute mount points in ``/proc/self/mountinfo`` text, ``/`` excluded; sorted, without duplicates.

    A line is ``ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS``; the mount
    point is the fifth field, with octal escapes (``\\040`` for a space). Malformed lines are skipped.
    """
    out = set()
    for line in mountinfo_text.split("\n"):  # not splitlines(): a path may hold \x1c or \x85 unescaped
        fields = line.split(" ")
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        point = _unescape(fields[4])
        if not point.startswith("/"):
            continue
        norm = "/" + "/".join(split_path(point))
        if norm != "/":
            out.add(norm)
    return tuple(sorted(out))


def read_mount_points(path: str = MOUNTINFO) -> tuple[str, ...]:
    """:func:`mount_points` of this process's mount table (empty when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "surrogateescape")
    except OSError as exc:
        log.warning("cannot read %s (%s): mount points are not ignored", path, exc.strerror)
        return ()
    return mount_points(text)


def _relative(path: str, root: str) -> str | None:
    """``path`` (absolute, in the caller's filesystem) relative to ``root``; None when outside or the root."""
    parts, base = split_path(os.path.normpath(path)), split_path(os.path.normpath(root))
    if parts[:len(base)] != base or len(parts) == len(base):
        return None
    return "/".join(parts[len(base):])


def _minimal(paths) -> tuple[str, ...]:
    """Sorted, without duplicates and without entries inside another entry."""
    out: list[str] = []
    for p in sorted(set(paths), key=lambda s: split_path(s)):
        if not any(p == q or p.startswith(q + "/") for q in out):
            out.append(p)
    return tuple(sorted(out))


def ignore_list(root: str = "/", snapfs_dir: str = DEFAULT_SNAPFS_DIR, extra=(), *,
                mounts: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Paths relative to ``root`` that in-container mode never snapshots, cleans or overwrites.

    ``snapfs_dir`` and ``mounts`` (default: this process's mount points) are paths of the caller's filesystem:
    those below ``root`` are kept, made relative. ``extra`` are paths inside the image (``--ignore-path``,
    ``var/run``), absolute or relative. ``proc``, ``sys`` and ``dev`` are always in. Entries inside another
    entry are dropped, so the result suits ``snapshot.take(ignore=...)`` and :func:`clean_root`.
    """
    mounts = read_mount_points() if mounts is None else mounts
    out = list(KERNEL_DIRS)
    for path in (snapfs_dir, *mounts):
        rel = _relative(path, root)
        if rel is not None:
            out.append(rel)
    for path in extra:
        rel = "/".join(c for c in split_path(os.path.normpath("/" + path)))
        if rel:
            out.append(rel)
    return _minimal(out)


# --- cleaning between stages -------------------------------------------------------------------------------

def clean_root(root: str, ignore, *, mounts: tuple[str, ...] | None = None) -> int:
    """Remove everything below ``root`` except the ``ignore`` paths (relative to ``root``), what is inside them
    and the directories leading to them; return how many entries were removed.

    Kaniko's ``DeleteFilesystem``, made careful: directories are opened by fd with ``O_NOFOLLOW``, so a symlink
    is removed as a link and never followed; a directory on another device than its parent (a mount point
    missing from ``ignore``) and every mount point in ``mounts`` (default: this process's mount table) is left
    alone, never entered; a symlink on the way to an ignored path is kept as it is. What cannot be removed
    (busy, read-only) is logged and left. Cleaning the real ``/`` needs an ``ignore`` from :func:`ignore_list`
    (it must hold ``proc``): anything else is refused.
    """
    keep = set()
    for p in ignore:
        rel = "/".join(split_path(os.path.normpath("/" + str(p))))
        if rel:
            keep.add(rel)
    mounts = read_mount_points() if mounts is None else mounts
    for m in mounts:
        rel = _relative(m, root)
        if rel is not None:
            keep.add(rel)
    if os.path.realpath(root) == "/" and not {"proc", "sys", "dev"} <= keep:
        raise UsageError("refusing to clean / without proc, sys and dev in the ignore list (use ignore_list())")
    ancestors = {"/".join(split_path(p)[:i]) for p in keep for i in range(1, len(split_path(p)))}
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"build root {root}: {exc.strerror}") from None
    try:
        return _clean_dir(fd, "", os.fstat(fd).st_dev, keep, ancestors)
    finally:
        os.close(fd)


def _clean_dir(fd: int, rel: str, dev: int, keep: set[str], ancestors: set[str]) -> int:
    removed = 0
    for name in sorted(os.listdir(fd)):
        path = f"{rel}/{name}" if rel else name
        if path in keep:
            continue
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if path in ancestors:
            if not stat.S_ISDIR(st.st_mode):
                log.debug("clean: keeping %s (a non-directory on the way to an ignored path)", path)
                continue
            if st.st_dev != dev:
                log.debug("clean: not entering %s (another filesystem)", path)
                continue
            sub = _open_dir(fd, name, path)
            if sub is not None:
                try:
                    removed += _clean_dir(sub, path, dev, keep, ancestors)
                finally:
                    os.close(sub)
            continue
        removed += _remove(fd, name, path, st, dev)
    return removed


def _open_dir(fd: int, name: str, path: str) -> int | None:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except OSError as exc:
        log.warning("clean: cannot open %s: %s", path, exc.strerror)
        return None


def _remove(fd: int, name: str, path: str, st: os.stat_result, dev: int) -> int:
    """Remove one entry (a whole tree for a directory); the count of entries removed."""
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(name, dir_fd=fd)
            return 1
        except OSError as exc:
            log.warning("clean: cannot remove %s: %s", path, exc.strerror)
            return 0
    if st.st_dev != dev:
        log.warning("clean: leaving %s alone: it is a mount point (another filesystem)", path)
        return 0
    sub = _open_dir(fd, name, path)
    if sub is None:
        return 0
    removed = 0
    try:
        for child in os.listdir(sub):
            try:
                cst = os.stat(child, dir_fd=sub, follow_symlinks=False)
            except FileNotFoundError:
                continue
            removed += _remove(sub, child, f"{path}/{child}", cst, dev)
    finally:
        os.close(sub)
    try:
        os.rmdir(name, dir_fd=fd)
        removed += 1
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:  # not empty: something inside was kept, and logged already
            log.warning("clean: cannot remove %s: %s", path, exc.strerror)
    return removed


# --- credentials -------------------------------------------------------------------------------------------

PR_SET_DUMPABLE = 4


def _make_undumpable() -> bool:
    """Make this process non-dumpable: its ``/proc/PID/{environ,mem,maps}`` become readable only with
    ``CAP_SYS_PTRACE`` (which a default pod lacks), and ptrace/process_vm_readv by a root RUN step fail."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@dataclass
class CredentialVault:
    """Registry credentials held in memory only.

    What protects them from RUN steps that run as root in the same container without namespaces:

    - the ``config.json`` files are parsed and then *unlinked* before the first RUN step: a file that no longer
      exists cannot be read (moving it into a 0700 directory would not help: the step is root and has
      ``CAP_DAC_OVERRIDE``);
    - a config given in ``$SNAPFS_DOCKER_CONFIG_JSON`` is parsed from memory and removed from the environment;
      RUN steps never get the builder's environment anyway;
    - the builder is made non-dumpable, so ``/proc/<builder>/environ`` and ``/proc/<builder>/mem`` need
      ``CAP_SYS_PTRACE``, which a default pod does not have.

    A file on a read-only mount (a Kubernetes Secret volume) cannot be unlinked: it is listed in ``exposed`` and
    a warning says so. Pass the config in ``$SNAPFS_DOCKER_CONFIG_JSON`` (``secretKeyRef``), or copy it into an
    ``emptyDir``, to keep it from RUN steps.
    """

    config: DockerConfig = field(default_factory=DockerConfig)
    removed: tuple[str, ...] = ()
    exposed: tuple[str, ...] = ()
    undumpable: bool = False
    _source: CredentialSource | None = field(default=None, repr=False)

    @property
    def credentials(self) -> CredentialSource:
        """For ``RegistryClient(credentials=...)``: lookups answered from the in-memory config."""
        if self._source is None:
            self._source = CredentialSource(self.config)
        return self._source

    @classmethod
    def seal(cls, *, snapfs_dir: str = DEFAULT_SNAPFS_DIR, docker_config_dir: str | None = None,
             env: dict | None = None, undumpable: bool = True) -> CredentialVault:
        """Read the docker config into memory and remove every candidate ``config.json`` from the filesystem.

        Candidates: ``$SNAPFS_DOCKER_CONFIG_JSON`` (wins), then the lookup order of ``credentials.config_paths``
        (``$DOCKER_CONFIG``, ``~/.docker``, ``/kaniko/.docker``), ``docker_config_dir`` and
        ``<snapfs_dir>/.docker``; the first that exists is used, all of them are removed. ``env`` defaults to
        ``os.environ`` (the variable is deleted from it).
        """
        env = os.environ if env is None else env
        paths: list[str] = []
        for p in (*config_paths(env),
                  *([os.path.join(docker_config_dir, "config.json")] if docker_config_dir else []),
                  os.path.join(snapfs_dir, ".docker", "config.json"),
                  os.path.join(KANIKO_DOCKER_CONFIG, "config.json")):
            if p not in paths:
                paths.append(p)
        config = None
        text = env.pop(CONFIG_JSON_ENV, None)
        if text:
            config = _config_from_text(text)
        removed, exposed = [], []
        for path in paths:
            if not os.path.isfile(path):
                continue
            if config is None:
                config = DockerConfig.from_file(path)
            try:
                os.unlink(path)
                removed.append(path)
            except OSError as exc:
                exposed.append(path)
                log.warning("cannot remove the registry credentials %s (%s): RUN steps can read them. Give the "
                            "config in $%s or put the file on a writable volume (emptyDir) instead",
                            path, exc.strerror, CONFIG_JSON_ENV)
        sealed = _make_undumpable() if undumpable else False
        if removed:
            log.info("registry credentials read into memory; removed %s", ", ".join(removed))
        return cls(config=config or DockerConfig(), removed=tuple(removed), exposed=tuple(exposed),
                   undumpable=sealed)


def _config_from_text(text: str) -> DockerConfig:
    """Parse a config.json held in memory (through an anonymous memfd: it never touches a filesystem)."""
    fd = os.memfd_create("snapfs-docker-config", os.MFD_CLOEXEC)
    try:
        os.write(fd, text.encode("utf-8", "surrogateescape"))
        cfg = DockerConfig.from_file(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return DockerConfig(path=f"${CONFIG_JSON_ENV}", auths=cfg.auths, cred_helpers=cfg.cred_helpers,
                        creds_store=cfg.creds_store)


def hide_credentials(snapfs_dir: str = DEFAULT_SNAPFS_DIR, docker_config_dir: str | None = None) -> CredentialVault:
    """:meth:`CredentialVault.seal` with the defaults: call once, before the first RUN step."""
    return CredentialVault.seal(snapfs_dir=snapfs_dir, docker_config_dir=docker_config_dir)


# --- RUN without isolation ---------------------------------------------------------------------------------

@functools.cache
def announce_direct() -> None:
    """Say once per process that RUN steps run without isolation."""
    log.warning(DIRECT_MESSAGE)


def runner(isolation: str = "auto") -> Callable[..., Any]:
    """The function that runs RUN steps (``sandbox.run`` or :func:`run_direct`) for ``BuildOptions.isolation``:
    ``namespaces`` requires the sandbox, ``none`` never uses it, ``auto`` uses it when this process may."""
    from . import sandbox

    if isolation not in ("auto", "namespaces", "none"):
        raise UsageError(f"unknown isolation {isolation!r} (choose auto, namespaces or none)")
    if isolation == "none" or (isolation == "auto" and not sandbox.isolation_available()):
        announce_direct()
        return run_direct
    if not sandbox.isolation_available():
        raise NotSupportedError("isolation=namespaces: this process may not create mount and PID namespaces "
                                "(an unprivileged container?); use isolation none or auto")
    return sandbox.run


def run_direct(spec, *, stdout: IO[Any] | None = None, stderr: IO[Any] | None = None):
    """Run one RUN step as Kaniko does: no namespaces, no mounts, in the container's own root.

    The step runs in a new session (``setsid``), as the user of ``spec.user`` resolved in the root's own
    ``/etc/passwd``/``group`` (supplementary groups, gid, uid), in ``spec.workdir`` (created 0755, owned by the
    user, like the sandbox does), with exactly ``spec.env`` plus ``PATH``/``HOME`` defaults, umask 022 and
    default signal handling; its stdin is ``/dev/null`` unless ``spec.stdin``. When the command exits, its
    process group and every process still in its session are killed. ``spec.root`` is ``/`` in real use; any
    other root is entered with ``chroot`` (``CAP_SYS_CHROOT``, which a default pod has), for tests.

    ``RUN --mount`` and ``--network=none`` need namespaces: :class:`NotSupportedError`. Returns a
    ``sandbox.RunResult`` (127 when the command is not found, 126 when it cannot be executed, 128 + N when
    killed by signal N); failing to set the step up is a :class:`BuildError`.
    """
    from .sandbox import RunResult, step_environment
    from .sandbox_init import Root, SetupError
    from .users import resolve_user

    if spec.mounts:
        kinds = ", ".join(sorted({m.kind for m in spec.mounts}))
        raise NotSupportedError(f"RUN --mount (type={kinds}) needs mount namespaces, which this container does "
                                "not allow: it is not available when RUN steps run directly")
    if spec.network == "none":
        raise NotSupportedError("RUN --network=none needs a network namespace, which this container does not "
                                "allow")
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

    started = time.monotonic()
    out_arg, out_sink = _stream(stdout)
    err_arg, err_sink = _stream(stderr)
    kwargs: dict[str, Any] = dict(env=env, stdin=None if spec.stdin else subprocess.DEVNULL, stdout=out_arg,
                                  stderr=err_arg, close_fds=True, start_new_session=True, restore_signals=True)
    if root == "/":
        # Everything in the child happens in C (_posixsubprocess): safe in a builder that has threads.
        kwargs.update(cwd=workdir, umask=0o022, user=user.uid, group=user.gid, extra_groups=list(user.groups))
    else:
        kwargs.update(preexec_fn=functools.partial(_enter, root, workdir, user.uid, user.gid, user.groups))
    try:
        proc = subprocess.Popen(list(spec.argv), **kwargs)
    except FileNotFoundError:
        where = "executable file not found in $PATH" if "/" not in spec.argv[0] else "no such file or directory"
        return _failed(spec, stderr, f"snapfs: exec {spec.argv[0]!r}: {where}", 127, started)
    except PermissionError:
        return _failed(spec, stderr, f"snapfs: exec {spec.argv[0]!r}: permission denied", 126, started)
    except subprocess.SubprocessError as exc:  # the preexec step failed (chroot, chdir, setuid)
        raise BuildError(f"RUN {_show(spec.argv)}: setting up the step: {exc}") from None
    except OSError as exc:
        return _failed(spec, stderr, f"snapfs: exec {spec.argv[0]!r}: {exc.strerror}", 126, started)
    pumps = [threading.Thread(target=_pump, args=(pipe, sink), daemon=True)
             for pipe, sink in ((proc.stdout, out_sink), (proc.stderr, err_sink)) if pipe is not None]
    for t in pumps:
        t.start()
    try:
        # Wait without reaping: while the leader is a zombie its pid (the session and group id) cannot be reused.
        while True:
            try:
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                break
            except InterruptedError:
                continue
    finally:
        # The step is over when its command exits: whatever it left running goes too.
        kill_session(proc.pid)
        status = proc.wait()
    for t in pumps:
        t.join(_PUMP_GRACE)  # a daemon that escaped the session may hold the pipe; do not wait for it forever
    code = 128 - status if status < 0 else status
    return RunResult(exit_code=code, seconds=time.monotonic() - started, created=())


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


def _stream(sink) -> tuple[Any, Any]:
    if sink is None:
        return None, None
    try:
        return sink.fileno(), None
    except (AttributeError, OSError, io.UnsupportedOperation):
        return subprocess.PIPE, sink


def _pump(pipe, sink) -> None:
    text = isinstance(sink, io.TextIOBase)
    with pipe:
        while chunk := pipe.read1(1 << 16):
            sink.write(chunk.decode("utf-8", "replace") if text else chunk)


def _show(argv) -> str:
    text = " ".join(argv)
    return text if len(text) <= 200 else text[:197] + "..."
