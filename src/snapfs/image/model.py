"""The OCI / Docker image model: descriptors, manifests, indexes and images (platforms: ``snapfs.platforms``). No IO.

An ``Image`` is a small read-only value: the config bytes, the manifest media type and a tuple of ``Layer``s
(each a blob file on disk with its digest, diff_id, size and media type). Changing an image returns a new one
(``append_layers``, ``with_config``), as go-containerregistry's ``mutate`` does. Digests of the manifest and
config are computed once, when the value is made. What we write is canonical JSON (sorted keys, compact),
so the same image always has the same digest; what we pulled keeps its original bytes, so it keeps its digest.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

from snapfs.errors import InputError
from snapfs.mediatypes import (DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, INDEX_TYPES, LAYER_TYPES,
                               MANIFEST_TYPES, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD,
                               OCI_MANIFEST)
from snapfs.platforms import Platform
from .reference import validate_digest

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
MAX_MANIFEST_BYTES = 4 << 20  # the limit registries apply; a bigger "manifest" is hostile
MAX_CONFIG_BYTES = 64 << 20


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _load_json(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{what} is not a JSON object")
    return obj


def _load_document(data: bytes, what: str) -> dict:
    """A manifest or index: one that is both would be an image to one client and an index to another
    (CVE-2021-41190), so it is refused whichever way it is read."""
    obj = _load_json(data, what)
    if "layers" in obj and "manifests" in obj:
        raise InputError(f'{what} is ambiguous: it holds both "layers" and "manifests"')
    return obj


# ------------------------------------------------------------------------------------ descriptors, manifests

@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: tuple[tuple[str, str], ...] = ()
    urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_digest(self.digest, what=f"digest in descriptor of {self.media_type or 'unknown type'}")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise InputError(f"invalid size {self.size!r} for {self.digest}")

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.urls:
            out["urls"] = list(self.urls)
        return out

    @classmethod
    def from_json(cls, obj: Any, *, what: str = "descriptor") -> Descriptor:
        if not isinstance(obj, dict):
            raise InputError(f"{what} is not a JSON object")
        plat = obj.get("platform")
        ann = obj.get("annotations") or {}
        return cls(media_type=str(obj.get("mediaType", "")), digest=str(obj.get("digest", "")),
                   size=obj.get("size", -1), platform=Platform.from_json(plat) if isinstance(plat, dict) else None,
                   annotations=tuple(sorted((str(k), str(v)) for k, v in ann.items())) if isinstance(ann, dict)
                   else (), urls=tuple(str(u) for u in obj.get("urls") or ()))


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: tuple[tuple[str, str], ...] = ()

    def to_bytes(self) -> bytes:
        obj: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type, "config": self.config.to_json(),
                               "layers": [d.to_json() for d in self.layers]}
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        return canonical_json(obj)

    @classmethod
    def from_bytes(cls, data: bytes, *, media_type: str = "") -> Manifest:
        obj = _load_document(data, "manifest")
        mt = str(obj.get("mediaType") or media_type or OCI_MANIFEST)
        if mt not in MANIFEST_TYPES:
            raise InputError(f"unsupported manifest media type {mt!r}")
        if obj.get("schemaVersion") != 2:
            raise InputError(f"unsupported manifest schemaVersion {obj.get('schemaVersion')!r}")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise InputError("manifest has no layers list")
        ann = obj.get("annotations") or {}
        return cls(media_type=mt, config=Descriptor.from_json(obj.get("config"), what="manifest config"),
                   layers=tuple(Descriptor.from_json(d, what="manifest layer") for d in layers),
                   annotations=tuple(sorted(ann.items())) if isinstance(ann, dict) else ())


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: tuple[tuple[str, str], ...] = ()

    def to_bytes(self) -> bytes:
        obj: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type,
                               "manifests": [d.to_json() for d in self.manifests]}
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        return canonical_json(obj)

    @classmethod
    def from_bytes(cls, data: bytes, *, media_type: str = "") -> Index:
        obj = _load_document(data, "image index")
        mt = str(obj.get("mediaType") or media_type or OCI_INDEX)
        manifests = obj.get("manifests")
        if not isinstance(manifests, list):
            raise InputError("image index has no manifests list")
        ann = obj.get("annotations") or {}
        return cls(media_type=mt, manifests=tuple(Descriptor.from_json(d, what="index entry") for d in manifests),
                   annotations=tuple(sorted(ann.items())) if isinstance(ann, dict) else ())

    def select(self, want: Platform) -> Descriptor | None:
        """First entry whose platform matches; entries of unknown media types are skipped, not errors."""
        for desc in self.manifests:
            if desc.media_type in MANIFEST_TYPES and desc.platform is not None and want.matches(desc.platform):
                return desc
        return None


def sniff_media_type(data: bytes, content_type: str = "") -> str:
    """The media type of a manifest or index: its ``mediaType`` field, else the HTTP type, else by shape."""
    obj = _load_document(data, "manifest")
    mt = obj.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    content_type = content_type.split(";")[0].strip()
    if content_type in MANIFEST_TYPES or content_type in INDEX_TYPES:
        return content_type
    return OCI_INDEX if "manifests" in obj else OCI_MANIFEST


# ------------------------------------------------------------------------------------------ layers, images

@dataclass(frozen=True)
class Layer:
    """A layer blob on disk: its compressed digest and size, the digest of its uncompressed tar, its type."""

    path: str
    digest: str
    diff_id: str
    size: int
    media_type: str = OCI_LAYER_GZIP

    def __post_init__(self) -> None:
        validate_digest(self.digest, what="layer digest")
        validate_digest(self.diff_id, what="layer diff_id")

    def open(self):
        return open(self.path, "rb")

    def descriptor(self) -> Descriptor:
        return Descriptor(media_type=self.media_type, digest=self.digest, size=self.size)


@dataclass(frozen=True)
class Image:
    """An image ready to be written anywhere: config bytes, layers and the manifest flavour (OCI or Docker)."""

    config_bytes: bytes
    layers: tuple[Layer, ...] = ()
    manifest_media_type: str = OCI_MANIFEST
    annotations: tuple[tuple[str, str], ...] = ()
    # The manifest exactly as pulled, so an unchanged base keeps its digest; cleared by every mutation.
    raw_manifest: bytes | None = None
    config_digest: str = field(init=False, repr=False)
    manifest_bytes: bytes = field(init=False, repr=False)
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        if self.manifest_media_type not in MANIFEST_TYPES:
            raise InputError(f"unsupported manifest media type {self.manifest_media_type!r}")
        object.__setattr__(self, "config_digest", sha256_digest(self.config_bytes))
        diff_ids = self.config().get("rootfs", {}).get("diff_ids", [])
        if list(diff_ids) != [layer.diff_id for layer in self.layers]:
            raise InputError(f"image config lists {len(diff_ids)} diff_ids that do not match its "
                             f"{len(self.layers)} layers")
        if self.raw_manifest is not None:
            manifest_bytes = self.raw_manifest
        else:
            manifest_bytes = self.manifest().to_bytes()
        object.__setattr__(self, "manifest_bytes", manifest_bytes)
        object.__setattr__(self, "digest", sha256_digest(manifest_bytes))

    @property
    def config_media_type(self) -> str:
        return DOCKER_CONFIG if self.manifest_media_type == DOCKER_MANIFEST else OCI_CONFIG

    def config(self) -> dict:
        """A fresh copy of the config as a dict (change it and pass it to ``with_config``)."""
        return _load_json(self.config_bytes, "image config")

    def config_descriptor(self) -> Descriptor:
        return Descriptor(media_type=self.config_media_type, digest=self.config_digest, size=len(self.config_bytes))

    def manifest(self) -> Manifest:
        if self.raw_manifest is not None:
            return Manifest.from_bytes(self.raw_manifest, media_type=self.manifest_media_type)
        return Manifest(media_type=self.manifest_media_type, config=self.config_descriptor(),
                        layers=tuple(layer.descriptor() for layer in self.layers), annotations=self.annotations)

    def descriptor(self, *, platform: Platform | None = None, ref_name: str | None = None) -> Descriptor:
        ann = ((ANNOTATION_REF_NAME, ref_name),) if ref_name else ()
        return Descriptor(media_type=self.manifest_media_type, digest=self.digest, size=len(self.manifest_bytes),
                          platform=platform if platform is not None else self.platform(), annotations=ann)

    def platform(self) -> Platform | None:
        cfg = self.config()
        if not cfg.get("os") or not cfg.get("architecture"):
            return None
        return Platform(os=cfg["os"], architecture=cfg["architecture"], variant=cfg.get("variant", "") or "",
                        os_version=cfg.get("os.version", "") or "")

    def blobs(self) -> Iterable[tuple[Descriptor, Layer | None]]:
        """Every blob a sink must hold: layers (with their files), then the config (bytes in the value)."""
        for layer in self.layers:
            yield layer.descriptor(), layer
        yield self.config_descriptor(), None


def image_from_manifest(manifest_bytes: bytes, config_bytes: bytes, *, blob_path: Callable[[str], str],
                        media_type: str = "") -> Image:
    """Assemble an Image read from a source; ``blob_path(digest)`` says where each layer's blob lives."""
    manifest = Manifest.from_bytes(manifest_bytes, media_type=media_type)
    if sha256_digest(config_bytes) != manifest.config.digest:
        raise InputError(f"image config does not match its digest {manifest.config.digest}")
    diff_ids = _load_json(config_bytes, "image config").get("rootfs", {}).get("diff_ids")
    if not isinstance(diff_ids, list) or len(diff_ids) != len(manifest.layers):
        raise InputError(f"image config lists {len(diff_ids or [])} diff_ids for {len(manifest.layers)} layers")
    layers = tuple(Layer(path=blob_path(d.digest), digest=d.digest, diff_id=str(diff_id), size=d.size,
                         media_type=d.media_type) for d, diff_id in zip(manifest.layers, diff_ids))
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise InputError(f"unsupported layer media type {layer.media_type!r}")
    return Image(config_bytes=config_bytes, layers=layers, manifest_media_type=manifest.media_type,
                 annotations=manifest.annotations, raw_manifest=manifest_bytes)


def empty_image(platform: Platform | None = None, *, oci: bool = True) -> Image:
    """``FROM scratch``: no layers, a minimal config for ``platform`` (default: the host)."""
    plat = platform or Platform.host()
    cfg: dict[str, Any] = {"architecture": plat.architecture, "os": plat.os, "config": {},
                           "rootfs": {"type": "layers", "diff_ids": []}}
    if plat.variant:
        cfg["variant"] = plat.variant
    return Image(config_bytes=canonical_json(cfg), manifest_media_type=OCI_MANIFEST if oci else DOCKER_MANIFEST)


def with_config(image: Image, config: Mapping) -> Image:
    """A new image with ``config`` (its ``rootfs.diff_ids`` must still match the layers)."""
    return replace(image, config_bytes=canonical_json(dict(config)), raw_manifest=None)


def _fit_layer(layer: Layer, oci: bool) -> Layer:
    # The same bytes carry a different type name in each manifest flavour.
    if oci and layer.media_type == DOCKER_LAYER_GZIP:
        return replace(layer, media_type=OCI_LAYER_GZIP)
    if not oci and layer.media_type == OCI_LAYER_GZIP:
        return replace(layer, media_type=DOCKER_LAYER_GZIP)
    return layer


def convert(image: Image, *, oci: bool) -> Image:
    """The same image under an OCI or a Docker manifest (layer bytes unchanged, types renamed)."""
    mt = OCI_MANIFEST if oci else DOCKER_MANIFEST
    if image.manifest_media_type == mt:
        return image
    if not oci and any(layer.media_type in (OCI_LAYER_ZSTD, OCI_LAYER) for layer in image.layers):
        raise InputError("a Docker manifest cannot carry zstd or uncompressed layers; use an OCI manifest")
    return replace(image, layers=tuple(_fit_layer(layer, oci) for layer in image.layers), manifest_media_type=mt,
                   raw_manifest=None)


def append_layers(image: Image, layers: Sequence[Layer], *, history: Sequence[Mapping] | None = None,
                  created: str | None = None) -> Image:
    """A new image: ``image`` plus ``layers`` on top (like ``mutate.Append``).

    ``history`` gives one entry per new layer (default ``{"created_by": "snapfs"}``); ``created`` (RFC 3339)
    also becomes each entry's time and the image's. A zstd or uncompressed layer turns a Docker-typed base into
    an OCI image, since Docker manifests cannot name those.
    """
    if history is not None and len(history) != len(layers):
        raise InputError(f"append_layers: {len(history)} history entries for {len(layers)} layers")
    oci = image.manifest_media_type == OCI_MANIFEST or any(
        layer.media_type in (OCI_LAYER_ZSTD, OCI_LAYER) for layer in layers)
    base = convert(image, oci=oci)
    cfg = base.config()
    rootfs = cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs.setdefault("type", "layers")
    rootfs["diff_ids"] = list(rootfs.get("diff_ids", [])) + [layer.diff_id for layer in layers]
    entries = cfg.setdefault("history", [])
    for i in range(len(layers)):
        entry = dict(history[i]) if history is not None else {"created_by": "snapfs"}
        entry.pop("empty_layer", None)
        if created and "created" not in entry:
            entry["created"] = created
        entries.append(entry)
    if created:
        cfg["created"] = created
    return replace(base, config_bytes=canonical_json(cfg),
                   layers=base.layers + tuple(_fit_layer(layer, oci) for layer in layers), raw_manifest=None)
