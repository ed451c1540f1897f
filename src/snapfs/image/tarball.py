"""docker-archive tarballs (``docker save`` format, loadable by ``docker load`` and skopeo): write and read.

The archive holds ``manifest.json`` (``[{"Config", "RepoTags", "Layers"}]``), the config as ``<hex>.json`` and
each layer blob as ``<hex>.tar[.gz|.zst]``, written as they are (``docker load`` and skopeo decompress layers
themselves). Entries are deterministic (mtime 0, root-owned, sorted metadata) and the archive appears under its
name only when complete. Reading copies each layer into a blob store, verifying it against the config's diff_ids.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from typing import Sequence

from snapfs.engine.compress import DigestWriter, detect
from snapfs.errors import InputError
from snapfs.mediatypes import (DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD,
                               OCI_MANIFEST)
from .blobstore import BlobStore, uncompressed_digest
from .layout import atomic_file
from .model import MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Image, Layer, canonical_json
from .reference import DEFAULT_REGISTRY, Reference, digest_parts, parse_reference

_SUFFIX = {OCI_LAYER: ".tar", OCI_LAYER_ZSTD: ".tar.zst"}


def familiar_name(ref: Reference) -> str:
    """``docker.io/library/busybox:1`` -> ``busybox:1`` (how docker itself writes RepoTags)."""
    name = ref.name
    if ref.registry == DEFAULT_REGISTRY:
        name = ref.repository[len("library/"):] if ref.repository.startswith("library/") else ref.repository
    return f"{name}:{ref.tag or 'latest'}"


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o644, 0, 0
    info.uname = info.gname = ""
    return info


def write_tarball(path: str, image: Image, *, tags: Sequence[Reference | str] = ()) -> None:
    """Write ``image`` as a docker-archive at ``path`` (atomically: a temp file renamed at the end)."""
    refs = [t if isinstance(t, Reference) else parse_reference(t) for t in tags]
    repo_tags = [familiar_name(r) for r in refs if not r.digest or r.tag]
    _, config_hex = digest_parts(image.config_digest)
    layer_names: list[str] = []
    for layer in image.layers:
        _, hexpart = digest_parts(layer.digest)
        layer_names.append(hexpart + _SUFFIX.get(layer.media_type, ".tar.gz"))
    manifest = [{"Config": f"{config_hex}.json", "RepoTags": repo_tags, "Layers": layer_names}]
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with atomic_file(path, suffix=".tar") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_info(f"{config_hex}.json", len(image.config_bytes)), io.BytesIO(image.config_bytes))
            written = set()
            for layer, name in zip(image.layers, layer_names):
                if name in written:
                    continue
                written.add(name)
                size = os.stat(layer.path).st_size
                if size != layer.size:
                    raise InputError(f"layer {layer.digest}: file has {size} bytes, expected {layer.size}")
                with layer.open() as f:
                    tar.addfile(_info(name, size), f)  # tarfile copies in blocks: constant memory
            data = canonical_json(manifest)
            tar.addfile(_info("manifest.json", len(data)), io.BytesIO(data))


def _member_bytes(tar: tarfile.TarFile, name: str, *, limit: int, path: str) -> bytes:
    try:
        f = tar.extractfile(name)
    except KeyError:
        f = None
    if f is None:
        raise InputError(f"{path}: {name} is missing from the archive")
    data = f.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{path}: {name} is too large")
    return data


def read_tarball(path: str, store: BlobStore, *, tag: str | None = None) -> Image:
    """The image in a docker-archive (``docker save`` output); its layers are copied into ``store``."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: image tarball does not exist")
    try:
        tar = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"{path}: not a tar archive ({exc})") from None
    with tar:
        try:
            entries = json.loads(_member_bytes(tar, "manifest.json", limit=MAX_MANIFEST_BYTES, path=path))
        except ValueError:
            raise InputError(f"{path}: manifest.json is not valid JSON") from None
        if not isinstance(entries, list) or not entries:
            raise InputError(f"{path}: manifest.json lists no image")
        entry = _choose(entries, tag, path)
        config_bytes = _member_bytes(tar, str(entry.get("Config", "")), limit=MAX_CONFIG_BYTES, path=path)
        config = json.loads(config_bytes)
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        names = entry.get("Layers") or []
        if len(names) != len(diff_ids):
            raise InputError(f"{path}: {len(names)} layers but the config lists {len(diff_ids)} diff_ids")
        layers = [_import_layer(tar, str(name), str(diff_id), store, path) for name, diff_id in zip(names, diff_ids)]
    oci = any(layer.media_type != DOCKER_LAYER_GZIP for layer in layers)
    if oci:
        layers = [Layer(path=x.path, digest=x.digest, diff_id=x.diff_id, size=x.size,
                        media_type=OCI_LAYER_GZIP if x.media_type == DOCKER_LAYER_GZIP else x.media_type)
                  for x in layers]
    return Image(config_bytes=config_bytes, layers=tuple(layers),
                 manifest_media_type=OCI_MANIFEST if oci else DOCKER_MANIFEST)


def _choose(entries: list, tag: str | None, path: str) -> dict:
    if tag is None:
        if len(entries) > 1:
            raise InputError(f"{path}: the archive holds {len(entries)} images; name one with PATH:TAG")
        return entries[0]
    want = {tag}
    try:
        want.add(familiar_name(parse_reference(tag)))
    except InputError:
        pass
    for entry in entries:
        if want & set(entry.get("RepoTags") or []):
            return entry
    raise InputError(f"{path}: no image tagged {tag!r} in the archive")


def _import_layer(tar: tarfile.TarFile, name: str, diff_id: str, store: BlobStore, path: str) -> Layer:
    try:
        member = tar.extractfile(name)
    except KeyError:
        member = None
    if member is None:
        raise InputError(f"{path}: layer {name} is missing from the archive")
    os.makedirs(os.path.join(store.root, "blobs"), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-import-", dir=os.path.join(store.root, "blobs"))
    try:
        with os.fdopen(fd, "wb") as out:
            dw = DigestWriter(out)
            head = member.read(1 << 20)
            kind = detect(head[:6])
            while head:
                dw.write(head)
                head = member.read(1 << 20)
        got_diff = dw.digest if kind == "none" else uncompressed_digest(tmp)
        if got_diff != diff_id:
            raise InputError(f"{path}: layer {name} has diff_id {got_diff}, the config says {diff_id}")
        blob = store.put_file(tmp, digest=dw.digest, size=dw.size)
    finally:
        os.unlink(tmp)
    media_type = {"gzip": DOCKER_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}.get(kind)
    if media_type is None:
        raise InputError(f"{path}: layer {name} is {kind}-compressed, which images cannot carry")
    return Layer(path=blob, digest=dw.digest, diff_id=diff_id, size=dw.size, media_type=media_type)


__all__ = ["familiar_name", "read_tarball", "write_tarball"]
