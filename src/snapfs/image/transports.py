"""Where a built image goes, and where a base image comes from: the façade over remote, layout and tarball.

``check_destinations`` is what the builder calls before its first step: push access to every ``--destination``
(Kaniko's permission check), so a wrong password or an unreachable registry fails in seconds, not after the build.
``write_outputs`` is what it calls at the end: the push to every ``--destination`` first (unless ``--no-push``),
then the local outputs (``--tar-path``, ``--oci-layout-path``) and the digest files, so a failed push leaves
nothing behind that looks like a finished build. ``load_image`` opens a base image from a registry reference,
``oci:DIR[:REF]`` or ``docker-archive:FILE[:TAG]``, so a build can run with no registry.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from snapfs.engine.rootfs import remove_path
from snapfs.errors import InputError, RegistryError
from snapfs.image.registry.client import RegistryClient, RegistryConnectionError, RegistryOptions
from snapfs.image.registry.pull import pull_image
from snapfs.image.registry.push import check_push_access, push_image
from .blobstore import BlobStore
from .layout import atomic_write, read_layout, split_layout_spec, write_layout
from snapfs.platforms import Platform
from .model import Image
from .reference import Reference, parse_reference
from .tarball import read_tarball, write_tarball
from .warmrefs import WarmRefs

log = logging.getLogger("snapfs.outputs")

# The one table of local transports: prefix -> the kind of source it names (a registry reference has none).
LOCAL_TRANSPORTS = {"oci:": "oci", "oci-layout://": "oci", "docker-archive:": "docker-archive",
                    "tarball:": "docker-archive"}


def split_transport(spec: str) -> tuple[str | None, str]:
    """``oci:DIR[:REF]`` -> ``("oci", "DIR[:REF]")``, ``docker-archive:FILE[:TAG]`` (or ``tarball:``) ->
    ``("docker-archive", ...)``; a registry reference -> ``(None, spec)``."""
    for prefix, kind in LOCAL_TRANSPORTS.items():
        if spec.startswith(prefix):
            return kind, spec[len(prefix):]
    return None, spec


@dataclass(frozen=True)
class OutputOptions:
    """Kaniko's output flags. ``destinations`` may be given as strings (``"reg/app:1"``): they are parsed here."""

    destinations: tuple[Reference, ...] = ()
    no_push: bool = False
    tar_path: str | None = None
    oci_layout_path: str | None = None
    digest_file: str | None = None
    image_name_with_digest_file: str | None = None
    image_name_tag_with_digest_file: str | None = None
    check_push_access: bool = True  # False: --skip-push-permission-check

    def __post_init__(self) -> None:
        if isinstance(self.destinations, (str, Reference)):  # one destination, not a sequence of characters
            object.__setattr__(self, "destinations", (self.destinations,))
        parsed = tuple(parse_reference(d) if isinstance(d, str) else d for d in self.destinations)
        object.__setattr__(self, "destinations", parsed)

    @property
    def pushes(self) -> bool:
        return bool(self.destinations) and not self.no_push


def write_digest_files(digest: str, destinations: Sequence[Reference], *, digest_file: str | None = None,
                       image_name_with_digest_file: str | None = None,
                       image_name_tag_with_digest_file: str | None = None) -> None:
    """Kaniko's digest files: the bare digest; ``name@digest`` lines; ``name:tag@digest`` lines."""
    if digest_file:
        atomic_write(os.path.abspath(digest_file), digest.encode())
    if image_name_with_digest_file:
        lines = "".join(f"{d.name}@{digest}\n" for d in destinations)
        atomic_write(os.path.abspath(image_name_with_digest_file), lines.encode())
    if image_name_tag_with_digest_file:
        lines = "".join(f"{d.name}:{d.tag or 'latest'}@{digest}\n" for d in destinations)
        atomic_write(os.path.abspath(image_name_tag_with_digest_file), lines.encode())


def write_outputs(image: Image, options: OutputOptions, *, client: RegistryClient | None = None,
                  mount_from: Sequence[Reference] = ()) -> str:
    """Write ``image`` everywhere ``options`` says; returns its manifest digest.

    The push comes first: when it fails, no layout, tarball or digest file is written."""
    if options.pushes:
        if client is None:
            raise InputError("write_outputs: pushing needs a registry client")
        push_image(client, image, options.destinations, mount_from=mount_from)
    # What this call creates is removed again if a later local output fails (a full disk under the layout must
    # not leave the tarball of a build that reported failure); what existed before is left as it was.
    created = [p for p in (options.tar_path, options.oci_layout_path) if p and not os.path.lexists(p)]
    try:
        if options.tar_path:
            write_tarball(options.tar_path, image, tags=options.destinations)
            log.info("wrote docker archive %s", options.tar_path)
        if options.oci_layout_path:
            name = options.destinations[0].tag if options.destinations else None
            write_layout(options.oci_layout_path, image, ref_name=name)
            log.info("wrote OCI layout %s", options.oci_layout_path)
        write_digest_files(image.digest, options.destinations, digest_file=options.digest_file,
                           image_name_with_digest_file=options.image_name_with_digest_file,
                           image_name_tag_with_digest_file=options.image_name_tag_with_digest_file)
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):
                remove_path(path)
        raise
    return image.digest


def check_destinations(options: OutputOptions, registry: RegistryOptions, *,
                       credentials: Callable | None = None) -> None:
    """Before the first step: fail now if any destination refuses a push (skipped with --no-push or
    --skip-push-permission-check). At most one retry per request: the point is to fail fast."""
    if not options.pushes or not options.check_push_access:
        return
    quick = replace(registry, request_retries=min(registry.request_retries, 1))
    with RegistryClient(quick, credentials=credentials) as client:
        for dest in options.destinations:
            check_push_access(client, dest)


def is_local_spec(spec: str) -> bool:
    """Does ``spec`` name an image on this machine (an OCI layout or a docker archive), not in a registry?"""
    return split_transport(spec)[0] is not None


def load_image(spec: str, *, store: BlobStore, client: RegistryClient | None = None,
               platform: Platform | None = None,
               warm_refs: WarmRefs | None = None) -> tuple[Image, Reference | None]:
    """A base image from ``spec``: a registry reference, ``oci:DIR[:REF]`` or ``docker-archive:FILE[:TAG]``.

    Returns the image and, for registry images, the resolved reference (used for cross-repository mounts).
    Registry layers and tarball layers land in ``store``; layout layers stay in the layout. A tag whose
    registry cannot be reached is taken from ``warm_refs`` (what ``snapfs warm`` recorded) when it is there.
    """
    kind, rest = split_transport(spec)
    if kind == "oci":
        path, ref = split_layout_spec(rest.removeprefix("//"))  # oci://DIR as oci:DIR
        return read_layout(path, ref_name=ref, platform=platform), None
    if kind == "docker-archive":
        path, tag = (rest, None) if os.path.isfile(rest) or ":" not in rest else rest.split(":", 1)
        return read_tarball(path, store, tag=tag), None
    ref = parse_reference(spec)
    if client is None:
        raise InputError(f"{spec}: pulling needs a registry client")
    try:
        return pull_image(client, ref, store, platform=platform), ref
    except RegistryConnectionError as exc:
        digest = warm_refs.lookup(ref, platform or Platform.host()) if warm_refs is not None else None
        if digest is None:
            raise
        try:  # every blob is in the store: no request is made
            image = pull_image(client, ref.with_digest(digest), store, platform=platform)
        except RegistryError:
            raise exc from None
        log.warning("%s: registry unreachable (%s); using %s as snapfs warm recorded it: the tag was not "
                    "re-checked", ref, exc.message, digest)
        return image, ref
