"""Run one stage: unpack its base, execute its instructions, snapshot, write layers, keep the config.

A step that can change files (RUN, COPY, ADD, WORKDIR) is followed by a snapshot and a diff against the
previous snapshot; a non-empty diff becomes a layer, an empty one an ``empty_layer`` history entry, as does
every metadata-only instruction. With ``single_snapshot`` the stage takes one snapshot at its end.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from . import imageconfig, instructions as ins
from .changes import diff
from .copier import Source, copy, write_inline
from .errors import BuildError, NotSupportedError, SnapfsError
from .image import Image, Layer
from .instruction_values import parse_chmod
from .layer import write_layer
from .rootfs import RootFS
from .snapshot import Snapshot, take

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


@dataclass(frozen=True)
class StageOptions:
    layer_dir: str  # where finished layer blobs go (content-addressed names)
    compression: str = "gzip"
    level: int | None = None
    snapshot_mode: str = "full"  # full | redo | time
    single_snapshot: bool = False
    epoch: int | None = None  # SOURCE_DATE_EPOCH / --reproducible: clamp layer mtimes
    created: str = ""  # the timestamp written into history entries
    ignore_paths: tuple[str, ...] = ()
    docker_media_types: bool = False


def commit(state: StageState, opts: StageOptions, *, index: int, created_by: str, run_time: float = 0.0,
           extra_ignore: tuple[str, ...] = ()) -> StepTiming:
    """Snapshot after a step that may have changed files; write its layer (or note an empty one)."""
    if opts.single_snapshot:
        state.pending_history.append(created_by)
        return StepTiming(index, created_by, run=run_time)
    return _snapshot_layer(state, opts, index=index, created_by=[created_by], run_time=run_time,
                           extra_ignore=extra_ignore)


def finish_stage(state: StageState, opts: StageOptions, *, index: int) -> None:
    """With single_snapshot, the one layer of the stage is taken now."""
    if opts.single_snapshot and state.pending_history:
        history, state.pending_history = state.pending_history, []
        state.timings.append(_snapshot_layer(state, opts, index=index, created_by=history))


def _snapshot_layer(state: StageState, opts: StageOptions, *, index: int, created_by: list[str],
                    run_time: float = 0.0, extra_ignore: tuple[str, ...] = ()) -> StepTiming:
    t0 = time.perf_counter()
    new = take(state.root, ignore=opts.ignore_paths + extra_ignore, quiescent=True)
    mode = "full" if opts.snapshot_mode == "full" else "stat"
    d = diff(state.snapshot, new, mode=mode)
    state.snapshot = new
    t1 = time.perf_counter()
    if not d.changes:
        for text in created_by:
            state.config.history.append(imageconfig.history_entry(text, created=opts.created, empty_layer=True))
        return StepTiming(index, created_by[-1], run=run_time, snapshot=t1 - t0)
    tmp = os.path.join(opts.layer_dir, f"layer-{os.getpid()}-{index}.tmp")
    blob = write_layer(d, tmp, compression=opts.compression, level=opts.level, epoch=opts.epoch)
    final = os.path.join(opts.layer_dir, blob.digest.split(":", 1)[1])
    os.replace(tmp, final)
    media = blob.media_type
    if opts.docker_media_types and opts.compression == "gzip":
        media = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    state.layers.append(Layer(final, blob.digest, blob.diff_id, blob.size, media))
    for text in created_by[:-1]:
        state.config.history.append(imageconfig.history_entry(text, created=opts.created, empty_layer=True))
    state.config.history.append(imageconfig.history_entry(created_by[-1], created=opts.created,
                                                          empty_layer=False))
    t2 = time.perf_counter()
    log.debug("layer %s: %d changes, %d bytes", blob.digest, len(d.changes), blob.size)
    return StepTiming(index, created_by[-1], run=run_time, snapshot=t1 - t0, layer=t2 - t1, layer_size=blob.size,
                      empty=False)


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
    return commit(state, opts, index=index, created_by=created_by)


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
    with RootFS(state.root) as root:
        for inline in instruction.inline:
            target = dest.rstrip("/") + "/" + inline.name if dest.endswith("/") or several else dest
            mode = chmod.apply(0o100644, is_dir=False) if chmod else 0o644
            write_inline(root, imageconfig.resolve_workdir(workdir, target).lstrip("/"), inline.data.encode(),
                         owner=owner, mode=mode, mtime_ns=None if opts.epoch is None else opts.epoch * 10**9)
        if staged is not None:
            for s in staged:
                # An extracted archive or a cloned repository always lands inside the destination directory.
                d = dest + "/" if (s.into_dir or several) and not dest.endswith("/") else dest
                copy(root, s.source, [s.pattern], d, workdir=workdir, owner=owner, chmod=chmod,
                     excludes=instruction.excludes, what=what)
        elif instruction.sources:
            copy(root, source, list(instruction.sources), dest, workdir=workdir, owner=owner,
                 chmod=chmod, excludes=instruction.excludes, parents=parents, what=what)
    return commit(state, opts, index=index, created_by=created_by, run_time=time.perf_counter() - t)


def refuse(message: str) -> SnapfsError:
    return NotSupportedError(f"{message} is not supported yet")
