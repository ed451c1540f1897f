"""Where a stage's filesystem lives while it is built.

With mount privileges a stage root is an overlayfs: the base image, unpacked once into the cache under its
layer chain ID, is the read-only lower layer and the stage's changes go to an upper directory. Stages with the
same base share one unpacked copy and later builds reuse it, so no build unpacks a base it has seen before. A
finished stage is remounted read-only with its upper stacked over its lowers: that view is what
``COPY --from`` reads and what ``FROM <stage>`` builds on, again without copying a file.

Stage roots are mounted ``nodev``: a device node in an image (or one a RUN step makes) is only a file, never
a way to a host device; the RUN's own ``/dev`` is a tmpfs the sandbox fills. They are not ``nosuid``: RUN steps
use the image's setuid programs (``su``, ``sudo``, ``ping``) as under Docker, and the stage roots and cached
bases sit in 0700 directories, where no other local user can reach them. Finished stages, which nothing
executes, are read-only, ``nodev`` and ``nosuid``.

overlayfs takes at most 500 lower layers, and all their paths in one page of mount options (4 KiB): about 90
chained stages (``FROM previous``) with scratch paths of this length. A stage whose chain would not fit gets its
base image's layers unpacked into one directory instead, and its children stack on that.

Without mount privileges (an unprivileged pod) the base layers are unpacked into a plain directory, as Kaniko
does. Snapshots walk the merged view either way, so the engine sees the same tree.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

from snapfs.engine.libc import MS_NODEV, MS_NOSUID, MS_RDONLY, mount, unmount
from snapfs.engine import lifecycle
from snapfs.engine.apply import apply_layer
from snapfs.engine.rootfs import RootFS, remove_path
from snapfs.errors import BuildError
from snapfs.image.model import Image
from snapfs.progress import Transfer

log = logging.getLogger("snapfs.build")

MAX_LOWERS = 500  # overlayfs's OVL_MAX_STACK
PAGE = os.sysconf("SC_PAGESIZE")
_available: dict[str, bool] = {}


def chain_id(diff_ids: list[str]) -> str:
    """The OCI ChainID of a layer stack: it names the flattened result of exactly these layers."""
    chain = ""
    for d in diff_ids:
        chain = d if not chain else "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
    return chain or "sha256:" + hashlib.sha256(b"").hexdigest()


def _options(lowers: list[str], upper: str | None, work: str | None) -> bytes:
    opts = "lowerdir=" + ":".join(lowers)
    if upper:
        opts += f",upperdir={upper},workdir={work}"
    return os.fsencode(opts)


def fits(lowers: list[str], *, upper: str, work: str) -> bool:
    """Whether overlayfs accepts this stack in one mount (layer count, options within a page)."""
    return len(lowers) < MAX_LOWERS and len(_options(lowers, upper, work)) < PAGE  # < : freeze adds the upper


def _mount(lowers: list[str], target: str, *, upper: str | None = None, work: str | None = None) -> None:
    opts = _options(lowers, upper, work)
    flags = MS_NODEV if upper else MS_RDONLY | MS_NODEV | MS_NOSUID
    err = mount("overlay", target, "overlay", flags, opts)
    if err:
        hint = ""
        if err == errno.EINVAL and (len(lowers) > MAX_LOWERS or len(opts) >= PAGE):
            hint = (f" ({len(lowers)} lower layers in {len(opts)} bytes of options; overlayfs takes at most "
                    f"{MAX_LOWERS} layers in {PAGE} bytes)")
        raise OSError(err, f"mounting an overlay on {target}: {os.strerror(err)}{hint}")


def _umount(target: str) -> None:
    unmount(target)


def overlay_available(scratch: str) -> bool:
    """Can this process mount overlays here? (Tried once per scratch filesystem with a tiny mount.)"""
    key = str(os.stat(scratch).st_dev)
    if key not in _available:
        probe = os.path.join(scratch, ".overlay-probe")
        dirs = [os.path.join(probe, d) for d in ("l1", "l2", "m")]
        try:
            for d in dirs:
                os.makedirs(d)
            _mount(dirs[:2], dirs[2])
            _umount(dirs[2])
            _available[key] = True
        except OSError as exc:
            log.info("overlay mounts unavailable (%s): stages unpack their base layers", exc.strerror)
            _available[key] = False
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    return _available[key]


@dataclass(frozen=True)
class Unpacked:
    """What unpacking a base took: wall time and uncompressed bytes (the step line shows them)."""

    seconds: float
    size: int
    layers: int

    def __add__(self, other: Unpacked) -> Unpacked:
        return Unpacked(self.seconds + other.seconds, self.size + other.size, self.layers + other.layers)


def unpack(layers, target: str, *, keep: tuple[str, ...] = ()) -> Unpacked:
    """Apply ``layers`` (image.Layer values) onto ``target``, checking each diff_id; ``keep``: paths to spare.
    Each layer reports its progress (bytes of the compressed blob read) while it is unpacked."""
    t0 = time.perf_counter()
    size = 0
    os.makedirs(target, exist_ok=True)
    with RootFS(target, cache=True) as root:
        for layer in layers:
            with open(layer.path, "rb") as f, Transfer(f"layer {layer.digest[:19]}", total=layer.size,
                                                       verb="unpacking", done="unpacked") as progress:
                stats = apply_layer(progress.reader(f), root, keep=keep)
            if stats.diff_id != layer.diff_id:
                raise BuildError(f"layer {layer.digest}: uncompressed content does not match its diff_id")
            size += stats.bytes
    return Unpacked(time.perf_counter() - t0, size, len(layers))


def _discard(path: str) -> None:
    with contextlib.suppress(OSError):
        remove_path(path)


def cached_base(image: Image, cache_dir: str, *, shared: str | None = None) -> tuple[str, Unpacked | None]:
    """The flattened root of ``image``'s layers, unpacked once into the cache (read-only by convention), and
    what unpacking it took (None: it was in the cache). ``shared``: a cache directory this build may only read
    (a pre-warmed volume), whose roots are used first."""
    cid = chain_id([l.diff_id for l in image.layers])
    if shared:
        theirs = os.path.join(shared, "roots", cid.split(":", 1)[1])
        if os.path.isdir(theirs):  # only finished roots have this name (see the rename below)
            return theirs, None
    roots = os.path.join(cache_dir, "roots")
    path = os.path.join(roots, cid.split(":", 1)[1])
    # 0700, also when an older snapfs made it 0755: the roots keep their image's setuid files and devices.
    lifecycle.private_dir(roots)
    if os.path.isdir(path):
        return path, None
    lifecycle.sweep(roots, names=lifecycle.UNPACK_NAME)  # half-unpacked roots of killed builds
    tmp = f"{path}.tmp-{lifecycle.owner_tag()}"
    _discard(tmp)
    unpacked = None
    try:
        unpacked = unpack(image.layers, tmp)
        os.rename(tmp, path)
    except FileExistsError:  # or an OSError "not empty": another build cached it first
        _discard(tmp)
    except OSError as exc:
        _discard(tmp)
        if not os.path.isdir(path):
            raise BuildError(f"cannot cache the base root {cid}: {exc.strerror}") from None
    except BaseException:
        _discard(tmp)
        raise
    return path, unpacked


@dataclass
class StageRoot:
    """One stage's tree: ``path`` is what RUN, COPY and snapshots see."""

    path: str
    lowers: list[str] = field(default_factory=list)  # read-only layers under it (overlay mode)
    upper: str = ""
    mounted: bool = False
    frozen: bool = False
    unpacked: Unpacked | None = None  # what unpacking its base took (None: nothing was unpacked for it)

    def freeze(self) -> None:
        """The stage is done: keep a read-only view of it at ``path`` (overlay mode)."""
        if self.mounted and not self.frozen:
            _umount(self.path)
            _mount([self.upper, *self.lowers], self.path)
            self.frozen = True

    def child_lowers(self) -> list[str]:
        """Lowers for a stage built FROM this one (overlay mode, after freeze)."""
        return [self.upper, *self.lowers]

    def release(self) -> None:
        if self.mounted:
            _umount(self.path)
            self.mounted = False


def overlay_stage(workdir: str, name: str, lowers: list[str], *, layers=()) -> StageRoot:
    """A writable overlay over ``lowers`` (top first) at ``workdir/name``; ``layers`` (the base image's) are
    unpacked into one lower instead when the stack is too deep for one overlay mount."""
    base = os.path.join(workdir, name)
    upper, work, merged = (os.path.join(base, d) for d in ("upper", "work", "root"))
    for d in (upper, work, merged):
        os.makedirs(d)
    unpacked = None
    if not lowers:  # scratch: overlay needs a lower, an empty one will do
        empty = os.path.join(base, "empty")
        os.makedirs(empty)
        lowers = [empty]
    elif not fits(lowers, upper=upper, work=work):
        flat = os.path.join(base, "flat")
        log.info("%s: %d stacked layers are too many for one overlay; unpacking its %d image layers into one",
                 name, len(lowers), len(layers))
        unpacked = unpack(layers, flat)
        lowers = [flat]
    _mount(lowers, merged, upper=upper, work=work)
    return StageRoot(merged, list(lowers), upper, mounted=True, unpacked=unpacked)


def plain_stage(workdir: str, name: str, layers) -> StageRoot:
    """No mounts: the base layers unpacked into a directory."""
    path = os.path.join(workdir, name, "root")
    unpacked = unpack(layers, path)
    return StageRoot(path, unpacked=unpacked if layers else None)
