"""Run one stage: unpack its base, execute its instructions, snapshot, write layers, keep the config.

A step that can change files (RUN, COPY, ADD, WORKDIR) is followed by a snapshot and a diff against the
previous snapshot; a non-empty diff becomes a layer, an empty one an ``empty_layer`` history entry, as does
every metadata-only instruction. With ``single_snapshot`` the stage takes one snapshot at its end.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace

from snapfs.engine.changes import diff
from snapfs.engine.layer import write_layer
from snapfs.engine.rootfs import RootFS, lstat_at, open_dir_at
from snapfs.engine.snapshot import Snapshot, patch, take
from snapfs.errors import BuildError, NotSupportedError, SnapfsError
from snapfs.frontend import instructions as ins
from snapfs.frontend.values import parse_chmod
from snapfs.image.model import Image, Layer
from snapfs.mediatypes import layer_media_type
from . import imageconfig
from .copier import Source, check_several, copy, dest_is_dir, write_inline

log = logging.getLogger("snapfs.build")

# Kaniko's --ignore-var-run (default on) leaves these out of every snapshot.
VAR_RUN = ("var/run", "run")


@dataclass(frozen=True)
class StepTiming:
    index: int
    instruction: str
    run: float = 0.0
    snapshot: float = 0.0
    layer: float = 0.0
    layer_size: int = 0
    empty: bool = True


@dataclass
class StageState:
    """What a stage has produced so far: its root, config, new layers and timings."""

    root: str
    base: Image
    config: imageconfig.StageConfig
    layers: list[Layer] = field(default_factory=list)
    timings: list[StepTiming] = field(default_factory=list)
    snapshot: Snapshot | None = None
    pending_history: list[str] = field(default_factory=list)  # single-snapshot: steps waiting for the layer
    upper: str = ""  # overlay mode: the upper directory, where every change of the stage lands
    # Overlay mode: every path the stage has changed so far. A file a step created and a later step deleted
    # leaves no trace in the upper directory (there is nothing below to hide), so it must be looked at again.
    upper_seen: set = field(default_factory=set)


@dataclass(frozen=True)
class StageOptions:
    layer_dir: str  # where finished layer blobs go (content-addressed names)
    compression: str = "gzip"
    compression_level: int | None = None
    snapshot_mode: str = "full"  # full | redo | time
    single_snapshot: bool = False
    epoch: int | None = None  # SOURCE_DATE_EPOCH / --reproducible: clamp layer mtimes
    created: str = ""  # the timestamp written into history entries
    ignore_paths: tuple[str, ...] = ()
    docker_media_types: bool = False


def commit(state: StageState, opts: StageOptions, *, index: int, created_by: str, run_time: float = 0.0,
           extra_ignore: tuple[str, ...] = (), touched: list[str] | None = None,
           unchanged: tuple[str, ...] = ()) -> StepTiming:
    """Snapshot after a step that may have changed files; write its layer (or note an empty one).

    ``touched`` lists every path the step may have changed (COPY knows what it wrote); then only those are
    read again. Otherwise an overlay stage reads its upper directory, and a plain one walks the whole root.
    ``unchanged``: paths the step could not reach (a RUN mount's target, moved aside and back by the builder),
    whose new ctime alone is not a change of this step.
    """
    if opts.single_snapshot:
        state.pending_history.append(created_by)
        return StepTiming(index, created_by, run=run_time)
    return _snapshot_layer(state, opts, index=index, created_by=[created_by], run_time=run_time,
                           extra_ignore=extra_ignore, touched=touched, unchanged=unchanged)


def finish_stage(state: StageState, opts: StageOptions, *, index: int) -> None:
    """With single_snapshot, the one layer of the stage is taken now."""
    if opts.single_snapshot and state.pending_history:
        history, state.pending_history = state.pending_history, []
        state.timings.append(_snapshot_layer(state, opts, index=index, created_by=history))


def _snapshot_layer(state: StageState, opts: StageOptions, *, index: int, created_by: list[str],
                    run_time: float = 0.0, extra_ignore: tuple[str, ...] = (),
                    touched: list[str] | None = None, unchanged: tuple[str, ...] = ()) -> StepTiming:
    t0 = time.perf_counter()
    ignore = opts.ignore_paths + extra_ignore
    subtrees: list[str] = []
    if touched is None and state.upper and not opts.single_snapshot:
        paths, subtrees = upper_changes(state.upper)
        touched = sorted(set(paths) | state.upper_seen)
    if state.upper and touched is not None:
        state.upper_seen.update(touched)
    if touched is None:
        new = take(state.root, ignore=ignore, quiescent=True)
    else:
        new = patch(state.snapshot, paths=touched, subtrees=subtrees, ignore=ignore, quiescent=True)
    mode = "full" if opts.snapshot_mode == "full" else "stat"
    d = diff(state.snapshot, new, mode=mode)
    if unchanged:
        keep = set(unchanged)
        d = replace(d, changes=tuple(c for c in d.changes
                                     if not (c.kind == "modified" and c.reasons == "ctime" and c.path in keep)))
    state.snapshot = new
    t1 = time.perf_counter()
    if not d.changes:
        for text in created_by:
            state.config.history.append(imageconfig.history_entry(text, created=opts.created, empty_layer=True))
        return StepTiming(index, created_by[-1], run=run_time, snapshot=t1 - t0)
    tmp = os.path.join(opts.layer_dir, f"layer-{os.getpid()}-{index}.tmp")
    blob = write_layer(d, tmp, compression=opts.compression, level=opts.compression_level, epoch=opts.epoch,
                       durable=False)
    final = os.path.join(opts.layer_dir, blob.digest.split(":", 1)[1])
    os.replace(tmp, final)
    media = layer_media_type(opts.compression, oci=not opts.docker_media_types)
    state.layers.append(Layer(final, blob.digest, blob.diff_id, blob.size, media))
    for text in created_by[:-1]:
        state.config.history.append(imageconfig.history_entry(text, created=opts.created, empty_layer=True))
    state.config.history.append(imageconfig.history_entry(created_by[-1], created=opts.created,
                                                          empty_layer=False))
    t2 = time.perf_counter()
    log.debug("layer %s: %d changes, %d bytes", blob.digest, len(d.changes), blob.size)
    return StepTiming(index, created_by[-1], run=run_time, snapshot=t1 - t0, layer=t2 - t1, layer_size=blob.size,
                      empty=False)


def apply_cached(state: StageState, opts: StageOptions, layers, *, index: int, created_by: str) -> StepTiming:
    """A cache hit: apply the stored layer (verified by the cache) to the stage root, as if the step had run,
    and read again the paths the layer names (whiteouts name what they delete, opaque markers the directories
    to read in full), so that the next step's diff starts from the snapshot the step itself would have left. A
    step whose result was "no change" has no layer and leaves an empty-layer history entry, as it did when run."""
    from snapfs.engine.apply import apply_layer

    t0 = time.perf_counter()
    if not layers:
        state.config.history.append(imageconfig.history_entry(created_by, created=opts.created, empty_layer=True))
        return StepTiming(index, created_by)
    paths: list[str] = []
    subtrees: list[str] = []

    def note(path: str, _ti) -> None:
        parent, _, base = path.rpartition("/")
        if base == ".wh..wh..opq":
            subtrees.append(parent)
        elif base.startswith(".wh."):
            paths.append(f"{parent}/{base[4:]}" if parent else base[4:])
        elif path:
            paths.append(path)

    with RootFS(state.root) as root:
        for layer in layers:
            with open(layer.path, "rb") as f:
                stats = apply_layer(f, root, keep=opts.ignore_paths, on_entry=note)
            if stats.diff_id != layer.diff_id:
                raise BuildError(f"cached layer {layer.digest}: uncompressed content does not match its diff_id")
    if state.upper:
        state.upper_seen.update(paths)
    state.snapshot = patch(state.snapshot, paths=paths, subtrees=subtrees, ignore=opts.ignore_paths,
                           quiescent=True)
    media = layer_media_type(opts.compression, oci=not opts.docker_media_types)
    for layer in layers:
        state.layers.append(Layer(layer.path, layer.digest, layer.diff_id, layer.size, media))
    state.config.history.append(imageconfig.history_entry(created_by, created=opts.created, empty_layer=False))
    size = sum(layer.size for layer in layers)
    return StepTiming(index, created_by, snapshot=time.perf_counter() - t0, layer_size=size, empty=False)


def upper_changes(upper: str) -> tuple[list[str], list[str]]:
    """Paths an overlay's upper directory says changed: everything in it (whiteouts are deletions), and the
    opaque directories, whose lower contents are hidden and must be read again in full."""
    from snapfs.engine import backend
    from snapfs.engine.rows import decode, row_count

    recs, names, extras, _, _ = backend.get().walk(upper, xattrs=False)
    paths, opaque = [], []
    for i in range(row_count(recs)):
        e = decode(recs, names, extras, i)
        paths.append(e.path)
        if e.is_dir:
            try:
                if os.getxattr(os.path.join(upper, e.path), "trusted.overlay.opaque",
                               follow_symlinks=False) == b"y":
                    opaque.append(e.path)
            except OSError:
                pass
    return paths, opaque


def metadata_step(state: StageState, opts: StageOptions, instruction, *, index: int, describe) -> StepTiming:
    """A config-only instruction: ``describe(config)`` gives its history text once applied (None: no entry)."""
    imageconfig.apply_instruction(state.config, instruction)
    created_by = describe(state.config.config)
    if created_by is not None:
        state.config.history.append(imageconfig.history_entry(created_by, created=opts.created, empty_layer=True))
    return StepTiming(index, created_by or instruction.node.keyword)


def workdir_step(state: StageState, opts: StageOptions, instruction: ins.Workdir, *, index: int,
                 describe, owner: tuple[int, int]) -> StepTiming:
    """WORKDIR sets the config and creates the directory (owned by the current USER), as BuildKit does."""
    imageconfig.apply_instruction(state.config, instruction)
    created_by = describe(state.config.config)
    path = state.config.workdir()
    with RootFS(state.root) as root:
        st = root.lstat(path)
        if st is None:
            parts = [p for p in path.split("/") if p]
            for i in range(len(parts)):
                sub = "/".join(parts[:i + 1])
                with root.at(sub, follow=True, make_parents=True) as (fd, name):
                    try:
                        os.mkdir(name, 0o755, dir_fd=fd)
                    except FileExistsError:
                        continue
                    os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)
    return commit(state, opts, index=index, created_by=created_by, touched=[path])


def make_volume_dirs(state: StageState) -> None:
    """Before a RUN: create every missing directory of the config's ``Volumes`` (this stage's VOLUME lines and
    the base image's), so they land in the RUN's layer. That is where Docker's classic builder and buildah put
    them (a RUN sees each volume as a mount point, which they create); Kaniko creates them at the VOLUME line and
    adds them to the next command's snapshot; BuildKit creates none. Root-owned, 0755, parents too, whatever the
    USER; symlinks on the way are followed inside the root; a path that exists, directory or not, is left as it
    is. With no RUN after it, a VOLUME changes only the config, as with the classic builder and buildah."""
    volumes = state.config.inner.get("Volumes") or {}
    if volumes:
        with RootFS(state.root) as root:
            for path in volumes:
                _make_volume_dir(root, path)


def _make_volume_dir(root: RootFS, path: str) -> None:
    """Create ``path`` if missing (a relative path counts from ``/``, as in buildah)."""
    try:
        with root.at(path, follow=True) as (fd, name):
            if name == "." or lstat_at(fd, name) is not None:
                return
    except FileNotFoundError:
        pass  # a parent is missing too
    except NotADirectoryError:
        raise BuildError(f"cannot create the directory of VOLUME {path}: a parent is not a directory") from None
    # Only a missing volume creates its parents (0755, root-owned), so the walk that checked created nothing.
    with root.at(path, follow=True, make_parents=True) as (fd, name):
        os.mkdir(name, 0o700, dir_fd=fd)
        new = open_dir_at(fd, name)
        try:
            if os.geteuid() == 0:
                os.fchown(new, 0, 0)  # not the parent's group, even under a setgid parent
            os.fchmod(new, 0o755)  # whatever the umask
        finally:
            os.close(new)


def copy_step(state: StageState, opts: StageOptions, instruction, *, index: int, created_by: str,
              source: Source, owner: tuple[int, int] | None, staged: list | None = None) -> StepTiming:
    """COPY / ADD: inline heredoc files, then the sources (``staged`` for ADD: already made local)."""
    t = time.perf_counter()
    chmod = parse_chmod(instruction.chmod) if instruction.chmod else None
    parents = getattr(instruction, "parents", False)
    what = "COPY" if isinstance(instruction, ins.Copy) else "ADD"
    workdir = state.config.workdir()
    dest = instruction.dest
    several = len(instruction.sources) + len(instruction.inline) > 1
    touched: list[str] = []
    with RootFS(state.root) as root:
        for inline in instruction.inline:
            target = dest.rstrip("/") + "/" + inline.name if dest.endswith("/") or several else dest
            mode = chmod.apply(0o100644, is_dir=False) if chmod else 0o644
            path = imageconfig.resolve_workdir(workdir, target).lstrip("/")
            data = inline.data.encode("utf-8", "surrogateescape")  # the Dockerfile's bytes, as BuildKit writes them
            write_inline(root, path, data, owner=owner, mode=mode,
                         mtime_ns=None if opts.epoch is None else opts.epoch * 10**9)
            touched.append(path)
        if staged is not None:
            # ADD's sources counted after wildcard expansion, as COPY's are: one match may be renamed.
            several = len(staged) + len(instruction.inline) > 1
            if several:
                check_several(len(staged) + len(instruction.inline), dest, what=what,
                              dest_dir=dest_is_dir(root, dest, workdir=workdir))
            for s in staged:
                # An extracted archive or a cloned repository always lands inside the destination directory.
                d = dest + "/" if (s.into_dir or several) and not dest.endswith("/") else dest
                touched += copy(root, s.source, [s.pattern], d, workdir=workdir, owner=owner, chmod=chmod,
                                excludes=instruction.excludes, what=what)
        elif instruction.sources:
            touched += copy(root, source, list(instruction.sources), dest, workdir=workdir, owner=owner,
                            chmod=chmod, excludes=instruction.excludes, parents=parents, what=what)
    # Only what the copy wrote can have changed (a symlink it resolved through is unchanged itself).
    return commit(state, opts, index=index, created_by=created_by, run_time=time.perf_counter() - t,
                  touched=_resolved(state.root, touched))


def _resolved(root: str, paths: list[str]) -> list[str]:
    """The copier reports destination paths as written, and a destination may reach its target through a
    symlink inside the root; report the real location (resolved inside the root) of each."""
    out = []
    with RootFS(root) as r:
        for p in paths:
            try:
                with r.at(p) as (fd, name):
                    real = os.path.relpath(os.path.join(os.readlink(f"/proc/self/fd/{fd}"), name), root)
            except OSError:
                real = p
            out.append(p)
            if real != p and not real.startswith(".."):
                out.append(real)
    return out


def refuse(message: str) -> SnapfsError:
    return NotSupportedError(f"{message} is not supported yet")
