"""``snapfs pull`` and ``snapfs push``: crane-like helpers over the registry client, also used by tests.

``add_registry_arguments`` / ``registry_options`` define Kaniko's registry flags once, for these commands and for
the builder's command line.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile

from snapfs.errors import UsageError
from snapfs.image.blobstore import BlobStore
from snapfs.image.layout import write_layout
from snapfs.platforms import Platform
from snapfs.image.reference import parse_reference, split_registry_spec
from snapfs.image.registry.client import RegistryClient, RegistryOptions
from snapfs.image.registry.pull import pull_image
from snapfs.image.registry.push import push_image
from snapfs.image.transports import is_local_spec, load_image, write_digest_files

_SIZE_SUFFIX = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(text: str) -> int:
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = _SIZE_SUFFIX.get(text[-1:], 1)
    try:
        value = int(text[:-1] if text[-1:] in _SIZE_SUFFIX else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return value * mult


def add_registry_arguments(parser: argparse.ArgumentParser, *, direction: str | None = None) -> None:
    """Kaniko's registry flags. ``direction`` ("pull" or "push") is the one way a helper command talks to
    registries: there ``--insecure`` and ``--skip-tls-verify`` (and their ``-pull`` forms) apply to it."""
    g = parser.add_argument_group("registry")
    if direction:
        plain, verify = "allow plain HTTP to the registry", "do not verify the registry's TLS certificate"
        help_ = {"--insecure": plain, "--insecure-pull": f"same as --insecure ({direction} only talks one way)",
                 "--skip-tls-verify": verify,
                 "--skip-tls-verify-pull": f"same as --skip-tls-verify ({direction} only talks one way)"}
    else:
        help_ = {"--insecure": "allow plain HTTP when pushing", "--insecure-pull": "allow plain HTTP when pulling",
                 "--skip-tls-verify": "do not verify TLS certificates when pushing",
                 "--skip-tls-verify-pull": "do not verify TLS certificates when pulling"}
    g.add_argument("--insecure", action="store_true", help=help_["--insecure"])
    g.add_argument("--insecure-pull", action="store_true", help=help_["--insecure-pull"])
    g.add_argument("--insecure-registry", action="append", default=[], metavar="R",
                   help="allow plain HTTP for registry R (repeatable)")
    g.add_argument("--skip-tls-verify", action="store_true", help=help_["--skip-tls-verify"])
    g.add_argument("--skip-tls-verify-pull", action="store_true", help=help_["--skip-tls-verify-pull"])
    g.add_argument("--skip-tls-verify-registry", action="append", default=[], metavar="R",
                   help="do not verify the TLS certificate of registry R (repeatable)")
    g.add_argument("--registry-certificate", action="append", default=[], metavar="R=CA.pem",
                   help="trust this CA for registry R")
    g.add_argument("--registry-client-cert", action="append", default=[], metavar="R=CERT,KEY",
                   help="present this client certificate to registry R")
    g.add_argument("--registry-mirror", action="append", default=[], metavar="M", help="mirror for docker.io")
    g.add_argument("--registry-map", action="append", default=[], metavar="ORIG=NEW[;ORIG2=NEW2]",
                   help="pull images of registry ORIG from NEW")
    g.add_argument("--skip-default-registry-fallback", action="store_true",
                   help="do not fall back to the original registry when mirrors or maps fail")
    g.add_argument("--push-retry", type=int, default=0, metavar="N", help="extra attempts of a failed push")
    g.add_argument("--image-download-retry", type=int, default=0, metavar="N",
                   help="extra attempts of a failed image download")
    g.add_argument("--chunk-size", type=_size, default=None, metavar="SIZE",
                   help="upload blobs larger than SIZE in chunks of SIZE (default 64M)")


def _pair(flag: str, value: str) -> tuple[str, str]:
    key, sep, rest = value.partition("=")
    if not sep or not key or not rest:
        raise UsageError(f"{flag} expects REGISTRY=VALUE, got {value!r}")
    return split_registry_spec(key)[0], rest


def registry_options(args: argparse.Namespace, *, direction: str | None = None) -> RegistryOptions:
    """The client options the flags ask for. With ``direction`` (``snapfs pull``/``push``), the plain-HTTP and
    TLS-verification flags of either spelling apply to that direction, as crane and skopeo users expect."""
    certs = tuple(_pair("--registry-certificate", v) for v in args.registry_certificate)
    client_certs = []
    for v in args.registry_client_cert:
        reg, files = _pair("--registry-client-cert", v)
        cert, sep, key = files.partition(",")
        if not sep or not cert or not key:
            raise UsageError(f"--registry-client-cert expects REGISTRY=CERT,KEY, got {v!r}")
        client_certs.append((reg, cert, key))
    maps = []
    for v in args.registry_map:
        # Kaniko's form: ORIG=NEW;ORIG2=NEW2 (pairs split at ";"); a part without "=" is one more NEW for the
        # ORIG before it (ORIG=NEW;NEW2, snapfs's earlier form).
        orig = None
        for part in (p for p in v.split(";") if p):
            if "=" in part or orig is None:
                orig, target = _pair("--registry-map", part)
            else:
                target = part
            maps.append((orig, target))
    for _, t in maps:
        split_registry_spec(t)
    for m in args.registry_mirror:
        split_registry_spec(m)
    extra = {}
    if args.chunk_size:
        extra = {"chunk_size": args.chunk_size, "monolithic_max": args.chunk_size}
    if args.push_retry < 0 or args.image_download_retry < 0:
        raise UsageError("--push-retry and --image-download-retry must not be negative")
    insecure, insecure_pull = args.insecure, args.insecure_pull
    skip, skip_pull = args.skip_tls_verify, args.skip_tls_verify_pull
    if direction == "pull":
        insecure_pull, skip_pull = insecure or insecure_pull, skip or skip_pull
    elif direction == "push":
        insecure, skip = insecure or insecure_pull, skip or skip_pull
    return RegistryOptions(
        insecure=insecure, insecure_pull=insecure_pull,
        insecure_registries=tuple(split_registry_spec(r)[0] for r in args.insecure_registry),
        skip_tls_verify=skip, skip_tls_verify_pull=skip_pull,
        skip_tls_verify_registries=tuple(split_registry_spec(r)[0] for r in args.skip_tls_verify_registry),
        registry_certificates=certs, registry_client_certs=tuple(client_certs),
        registry_mirrors=tuple(args.registry_mirror), registry_maps=tuple(maps),
        skip_default_registry_fallback=args.skip_default_registry_fallback,
        push_retry=args.push_retry, image_download_retry=args.image_download_retry, **extra)


def _logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose >= 2 else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # httpx logs every request at INFO; only worth seeing when debugging.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose >= 3 else logging.WARNING)
    from snapfs import progress

    progress.configure("bar" if sys.stderr.isatty() else "log")  # bars on a terminal; lines with -v in a log


def _cmd_pull(args: argparse.Namespace) -> int:
    _logging(args)
    ref = parse_reference(args.ref)
    platform = Platform.parse(args.platform) if args.platform else None
    # With no cache the layout itself is the blob store: blobs land once, directly where they belong.
    # A cache is private like the builder's (0700); a layout written in place is the user's and keeps the umask.
    # The same store `snapfs build --cache-dir DIR` reads its bases from (DIR/blobs).
    store = BlobStore(os.path.join(args.cache_dir, "blobs"), private=True) if args.cache_dir else \
        BlobStore(args.oci_layout)
    with RegistryClient(registry_options(args, direction="pull")) as client:
        image = pull_image(client, ref, store, platform=platform)
    write_layout(args.oci_layout, image, ref_name=ref.tag or None)
    print(image.digest)
    return 0


def _source_spec(src: str) -> str:
    if is_local_spec(src):
        return src
    path = src if os.path.exists(src) or ":" not in src else src.rpartition(":")[0]
    if os.path.isfile(path):
        return "docker-archive:" + src
    return "oci:" + src


def _cmd_push(args: argparse.Namespace) -> int:
    _logging(args)
    dests = [parse_reference(r) for r in args.ref]
    with contextlib.ExitStack() as stack:
        # A docker archive's layers must be unpacked somewhere; a layout's blobs are used in place.
        store_dir = args.cache_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="snapfs-push-"))
        client = stack.enter_context(RegistryClient(registry_options(args, direction="push")))
        image, _ = load_image(_source_spec(args.source), store=BlobStore(store_dir, private=True),
                              client=client)
        digest = push_image(client, image, dests)
    write_digest_files(digest, dests, digest_file=args.digest_file)
    print(digest)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("pull", help="pull an image into an OCI layout")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--oci-layout", required=True, metavar="DIR", help="OCI image layout to write")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="platform to pick from an index (default: host)")
    p.add_argument("--cache-dir", metavar="DIR", help="pull through the blob store of `snapfs build --cache-dir DIR`")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logs (-vv: debug, -vvv: HTTP)")
    add_registry_arguments(p, direction="pull")
    p.set_defaults(func=_cmd_pull)

    q = subparsers.add_parser("push", help="push an OCI layout or docker archive to registries")
    q.add_argument("source", metavar="SOURCE", help="OCI layout DIR[:REF] or docker-archive FILE[:TAG]")
    q.add_argument("ref", metavar="REF", nargs="+", help="destination(s)")
    q.add_argument("--digest-file", metavar="FILE", help="write the pushed image's digest to FILE")
    q.add_argument("--cache-dir", metavar="DIR", help="where layers of a docker archive are unpacked")
    q.add_argument("-v", "--verbose", action="count", default=0, help="more logs (-vv: debug, -vvv: HTTP)")
    add_registry_arguments(q, direction="push")
    q.set_defaults(func=_cmd_push)
