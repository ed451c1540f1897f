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

A RUN step without namespaces is :func:`snapfs.run.direct.run_direct` (:func:`snapfs.run.direct.runner` picks it
or the sandbox).

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
import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Mapping

from snapfs.engine.rootfs import split_path
from snapfs.errors import InputError, UsageError
from snapfs.image.registry.credentials import KANIKO_DOCKER_CONFIG, CredentialSource, DockerConfig, config_paths

log = logging.getLogger("snapfs.incontainer")

DEFAULT_SNAPFS_DIR = "/snapfs"
KERNEL_DIRS = ("dev", "proc", "sys")
# A docker config.json given as an environment variable (e.g. from a Kubernetes Secret by secretKeyRef): read
# into memory and removed from the environment, so it never exists as a file a RUN step could read.
CONFIG_JSON_ENV = "SNAPFS_DOCKER_CONFIG_JSON"
MOUNTINFO = "/proc/self/mountinfo"

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
        from snapfs.engine.libc import libc

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
