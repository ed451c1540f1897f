"""OCI image layouts (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``): write and read.

Writing puts every blob first (each verified on the way in) and replaces ``index.json`` last with an atomic
rename, so a reader never sees an index naming a blob that is not there, and an interrupted write leaves the
previous index intact. Reading verifies the manifest and config digests; ``validate_image`` recomputes every
layer's digest, size and diff_id (go-containerregistry's ``validate`` pass), which tests run on what we write.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

from snapfs.errors import InputError
from snapfs.mediatypes import INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX
from snapfs.platforms import Platform
from .blobstore import BlobStore, file_digest, uncompressed_digest
from .model import (ANNOTATION_REF_NAME, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Descriptor, Image, Index, Manifest,
                    canonical_json, image_from_manifest, sniff_media_type)

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
_LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}


@contextmanager
def atomic_file(path: str, *, suffix: str = "") -> Iterator:
    """A binary file that appears at ``path`` (mode 0644, synced) only if the block completes; else nothing."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write(path: str, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def is_layout(path: str) -> bool:
    return os.path.isfile(os.path.join(path, LAYOUT_FILE)) and os.path.isfile(os.path.join(path, INDEX_FILE))


def _read_index(path: str) -> Index | None:
    try:
        with open(os.path.join(path, INDEX_FILE), "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_MANIFEST_BYTES:
        raise InputError(f"{path}: index.json is too large")
    try:
        return Index.from_bytes(data)
    except InputError as exc:
        raise InputError(f"{path}: {exc.message}") from None


def write_layout(path: str, image: Image, *, ref_name: str | None = None, replace_all: bool = False) -> Descriptor:
    """Add ``image`` to the layout at ``path`` (created if needed); returns its index entry.

    An existing entry with the same ``ref_name`` (or, without a name, the same digest) is replaced; with
    ``replace_all`` the index will hold only this image.
    """
    os.makedirs(path, exist_ok=True)
    store = BlobStore(path)
    for desc, layer in image.blobs():
        if layer is not None:
            store.put_file(layer.path, digest=desc.digest, size=desc.size, what=f"layer {desc.digest}")
    store.put_bytes(image.config_bytes, digest=image.config_digest)
    store.put_bytes(image.manifest_bytes, digest=image.digest)
    layout_file = os.path.join(path, LAYOUT_FILE)
    if not os.path.isfile(layout_file):
        atomic_write(layout_file, canonical_json(_LAYOUT_VERSION))
    entry = image.descriptor(ref_name=ref_name)
    old = None if replace_all else _read_index(path)
    kept: list[Descriptor] = []
    for desc in old.manifests if old else ():
        same = desc.annotation(ANNOTATION_REF_NAME) == ref_name if ref_name else (
            desc.digest == entry.digest and not desc.annotation(ANNOTATION_REF_NAME))
        if not same:
            kept.append(desc)
    index = Index(media_type=OCI_INDEX, manifests=tuple(kept) + (entry,),
                  annotations=old.annotations if old else ())
    atomic_write(os.path.join(path, INDEX_FILE), index.to_bytes())
    return entry


def _pick(path: str, store: BlobStore, descs: tuple[Descriptor, ...], *, ref_name: str | None,
          platform: Platform | None, depth: int = 0) -> Descriptor:
    if depth > 4:
        raise InputError(f"{path}: image indexes nested too deeply")
    if ref_name is not None:
        named = [d for d in descs if d.annotation(ANNOTATION_REF_NAME) == ref_name]
        if not named:
            names = sorted({d.annotation(ANNOTATION_REF_NAME) or "" for d in descs} - {""})
            raise InputError(f"{path}: no image named {ref_name!r} in the layout (names: {', '.join(names) or 'none'})")
        descs = tuple(named)
    candidates = [d for d in descs if d.media_type in MANIFEST_TYPES or d.media_type in INDEX_TYPES]
    if not candidates:
        raise InputError(f"{path}: the layout holds no image")
    if len(candidates) > 1:
        want = platform or Platform.host()
        matching = [d for d in candidates if d.platform is not None and want.matches(d.platform)]
        if not matching:
            raise InputError(f"{path}: {len(candidates)} images in the layout and none for {want}; "
                             "name one with PATH:REF")
        candidates = matching[:1]
    chosen = candidates[0]
    if chosen.media_type in INDEX_TYPES:
        data = store.read_bytes(chosen.digest, limit=MAX_MANIFEST_BYTES, what="image index")
        nested = Index.from_bytes(data)
        return _pick(path, store, nested.manifests, ref_name=None, platform=platform or Platform.host(),
                     depth=depth + 1)
    return chosen


def read_layout(path: str, *, ref_name: str | None = None, platform: Platform | None = None) -> Image:
    """The image in the layout at ``path`` (by ``org.opencontainers.image.ref.name`` if given)."""
    if not os.path.isdir(path):
        raise InputError(f"{path}: OCI layout directory does not exist")
    if not os.path.isfile(os.path.join(path, LAYOUT_FILE)):
        raise InputError(f"{path}: not an OCI image layout (no oci-layout file)")
    index = _read_index(path)
    if index is None:
        raise InputError(f"{path}: not an OCI image layout (no index.json)")
    store = BlobStore(path)
    desc = _pick(path, store, index.manifests, ref_name=ref_name, platform=platform)
    manifest_bytes = store.read_bytes(desc.digest, limit=MAX_MANIFEST_BYTES, what="manifest")
    media_type = sniff_media_type(manifest_bytes, desc.media_type)
    if media_type not in MANIFEST_TYPES:
        raise InputError(f"{path}: unsupported manifest media type {media_type!r}")
    manifest = Manifest.from_bytes(manifest_bytes, media_type=media_type)
    config_bytes = store.read_bytes(manifest.config.digest, limit=MAX_CONFIG_BYTES, what="image config")
    image = image_from_manifest(manifest_bytes, config_bytes, blob_path=store.path, media_type=media_type)
    for layer in image.layers:
        try:
            size = os.stat(layer.path).st_size
        except FileNotFoundError:
            raise InputError(f"{path}: layer blob {layer.digest} is missing") from None
        if size != layer.size:
            raise InputError(f"{path}: layer blob {layer.digest} has {size} bytes, the manifest says {layer.size}")
    return image


def validate_image(image: Image, *, check_diff_ids: bool = True) -> None:
    """Recompute every layer's digest and size (and diff_id): raise InputError on the first mismatch."""
    for layer in image.layers:
        digest, size = file_digest(layer.path)
        if digest != layer.digest or size != layer.size:
            raise InputError(f"layer {layer.digest}: file has digest {digest} and {size} bytes "
                             f"(expected {layer.size})")
        if check_diff_ids:
            diff_id = uncompressed_digest(layer.path)
            if diff_id != layer.diff_id:
                raise InputError(f"layer {layer.digest}: diff_id {diff_id} does not match {layer.diff_id}")


def split_layout_spec(spec: str) -> tuple[str, str | None]:
    """``PATH[:REF]`` -> ``(path, ref)``; a colon is a separator only if PATH alone is not a directory."""
    if os.path.isdir(spec) or ":" not in spec:
        return spec, None
    path, _, ref = spec.rpartition(":")
    return path, ref or None


def index_json(path: str) -> dict:
    """The raw index.json of a layout (for tests and tools)."""
    with open(os.path.join(path, INDEX_FILE), "rb") as f:
        return json.load(f)
