"""``snapfs warm``: Kaniko's warmer. Fills a build cache directory with base images before the builds that use it.

Each image is pulled into ``<cache-dir>/blobs``, the blob store ``snapfs build --cache-dir`` reads its bases from,
and its flattened root is unpacked into ``<cache-dir>/roots``, where a build's stage overlays find it: a later
build needs no pull and no unpack. What each tag named is recorded in ``<cache-dir>/refs.json``, so a build can
still use a warmed tag when its registry is unreachable (with a warning; see :mod:`snapfs.image.warmrefs`). The
directory may then be mounted read-only into many builds.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile

from snapfs.engine import lifecycle
from snapfs.errors import InputError, NotSupportedError, SnapfsError, UsageError
from snapfs.image.blobstore import BlobStore
from snapfs.image.reference import Reference, parse_reference
from snapfs.image.registry.client import RegistryClient
from snapfs.image.registry.pull import pull_image
from snapfs.image.warmrefs import WarmRefs
from snapfs.platforms import Platform
from .build import setup_logging
from .registry import add_registry_arguments, registry_options

log = logging.getLogger("snapfs.warm")

# Go-style booleans (``--force=true``) are rewritten by cli.main with build's rule; these are warm's own.
BOOLEAN_FLAGS = ("--force", "--insecure", "--insecure-pull", "--skip-tls-verify", "--skip-tls-verify-pull",
                 "--skip-default-registry-fallback", "--log-timestamp")
_MAX_IMAGES_FILE = 1 << 20


def default_cache_dir(snapfs_dir: str | None = None) -> str:
    """The cache directory ``snapfs build`` uses without ``--cache-dir``: ``<snapfs-dir>/cache`` when it runs
    from the executor image in a container, else ``$SNAPFS_CACHE_DIR`` or ``~/.cache/snapfs``."""
    from snapfs.builder import incontainer
    from snapfs.builder.pipeline import default_cache_dir as outside

    snapfs_dir = snapfs_dir or os.environ.get("SNAPFS_DIR") or incontainer.DEFAULT_SNAPFS_DIR
    return os.path.join(snapfs_dir, "cache") if incontainer.build_in_place(snapfs_dir) else outside()


def _images(args: argparse.Namespace) -> list[Reference]:
    """Every reference asked for, in order, without duplicates; a bad one is a usage error before any pull."""
    texts = list(args.image)
    if args.images_file:
        try:
            with open(args.images_file, "rb") as f:
                data = f.read(_MAX_IMAGES_FILE + 1)
        except OSError as exc:
            raise InputError(f"{args.images_file}: cannot read --images-file: {exc.strerror}") from None
        if len(data) > _MAX_IMAGES_FILE:
            raise InputError(f"{args.images_file}: --images-file larger than {_MAX_IMAGES_FILE} bytes")
        lines = data.decode("utf-8", "replace").splitlines()
        texts += [t.strip() for t in lines if t.strip() and not t.strip().startswith("#")]
    if not texts:
        raise UsageError("warm: give at least one --image (or --images-file)")
    refs: list[Reference] = []
    for text in texts:
        try:
            ref = parse_reference(text)
        except InputError as exc:
            raise UsageError(exc.message) from None
        if ref not in refs:
            refs.append(ref)
    return refs


def _warm_one(client: RegistryClient, ref: Reference, *, cache_dir: str, store: BlobStore, platform: Platform,
              force: bool) -> None:
    from snapfs.builder import stageroot

    if force:
        _pull_again(client, ref, cache_dir=cache_dir, store=store, platform=platform)
    image = pull_image(client, ref, store, platform=platform)
    root, _ = stageroot.cached_base(image, cache_dir)
    WarmRefs(cache_dir).record(ref, platform, image.digest)
    log.info("warmed %s: %s, %d layers, root %s", ref, image.digest, len(image.layers), root)


def _pull_again(client: RegistryClient, ref: Reference, *, cache_dir: str, store: BlobStore,
                platform: Platform) -> None:
    """``--force``: download the image into a fresh store, replace the cached blobs with the verified copies and
    unpack its root again, so a damaged cache entry is repaired."""
    from snapfs.builder import stageroot

    fresh_dir = tempfile.mkdtemp(prefix=f"snapfs-warm-{lifecycle.owner_tag()}-", dir=cache_dir)
    try:
        fresh = BlobStore(fresh_dir, private=True)
        image = pull_image(client, ref, fresh, platform=platform)
        blobs = os.path.join(fresh_dir, "blobs")
        for algo in os.listdir(blobs):
            store.make_dir(os.path.join(store.root, "blobs", algo))
            for name in os.listdir(os.path.join(blobs, algo)):
                if not name.startswith(".tmp-"):
                    os.replace(os.path.join(blobs, algo, name), os.path.join(store.root, "blobs", algo, name))
        old = os.path.join(cache_dir, "roots", stageroot.chain_id([l.diff_id for l in image.layers]).split(":")[1])
        if os.path.isdir(old):  # renamed first: no build finds a half-removed root under the name
            aside = f"{old}.tmp-{lifecycle.owner_tag()}"
            os.rename(old, aside)
            lifecycle.remove_tree(aside)
    finally:
        with lifecycle.shielded():
            lifecycle.remove_tree(fresh_dir)


def cmd_warm(args: argparse.Namespace) -> int:
    setup_logging(args.verbosity, args.log_format, args.log_timestamp)
    for flag in ("dockerfile", "build_arg"):
        if getattr(args, flag):
            raise NotSupportedError(f"warm: --{flag.replace('_', '-')} is not supported yet: list the base "
                                    "images with --image or --images-file")
    refs = _images(args)
    platform = Platform.parse(args.custom_platform) if args.custom_platform else Platform.host()
    cache_dir = os.path.abspath(args.cache_dir or default_cache_dir())
    # 0700 as in snapfs build: unpacked roots keep their setuid files and device nodes.
    lifecycle.private_dir(cache_dir, tighten=False)
    store = BlobStore(os.path.join(cache_dir, "blobs"), private=True)
    failed: list[SnapfsError] = []
    with RegistryClient(registry_options(args, direction="pull")) as client:
        for ref in refs:  # every image is tried; the job fails if any could not be cached
            try:
                _warm_one(client, ref, cache_dir=cache_dir, store=store, platform=platform, force=args.force)
            except SnapfsError as exc:
                if len(refs) > 1:
                    log.error("%s: not warmed: %s", ref, exc.message)
                failed.append(exc)
    if failed:
        first = failed[0]
        if len(refs) > 1:
            first.with_context(detail=f"{len(failed)} of {len(refs)} images not warmed; the first: {first.message}",
                               file=None, line=0, step=0)
        raise first
    print(f"warmed {len(refs)} image{'s' if len(refs) != 1 else ''} into {cache_dir}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("warm", help="pull base images into a build cache directory (Kaniko's warmer)",
                              description="Fill --cache-dir with base images, pulled and unpacked, so builds "
                                          "using it need no pull.")
    p.add_argument("-i", "--image", action="append", default=[], metavar="REF",
                   help="an image to cache (repeatable)")
    p.add_argument("--images-file", default=None, metavar="FILE", help="images to cache, one reference per line")
    p.add_argument("-c", "--cache-dir", default=None, metavar="DIR",
                   help="the cache directory (default: the one snapfs build uses without --cache-dir)")
    p.add_argument("-f", "--force", action="store_true", help="download and unpack again images already cached")
    p.add_argument("--custom-platform", default=None, metavar="OS/ARCH[/VARIANT]",
                   help="platform to pick from an index (default: the host's)")
    p.add_argument("-d", "--dockerfile", default=None, help=argparse.SUPPRESS)  # Kaniko's: refused, not built
    p.add_argument("--build-arg", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbosity", default="info",
                   choices=("panic", "fatal", "error", "warn", "info", "debug", "trace"))
    p.add_argument("--log-format", default="text", choices=("text", "color", "json"))
    p.add_argument("--log-timestamp", action="store_true")
    add_registry_arguments(p, direction="pull")
    for flag in BOOLEAN_FLAGS:  # the negative form that cli.main writes for --flag=false
        p.add_argument(f"--no-snapfs-{flag[2:]}", dest=flag[2:].replace("-", "_"), action="store_false",
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_warm)
