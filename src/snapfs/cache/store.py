"""Where cache entries live: a registry repository (Kaniko's ``--cache-repo``) or a local OCI layout (``oci:DIR``).

An entry is an ordinary single-layer (or layer-less) OCI image, so any registry stores it and any OCI tool can
inspect it: its config holds ``rootfs.diff_ids`` for the layer, the step in ``history``, and under
``snapfs.cache`` the step's inputs (:class:`snapfs.cache.keys.StepInputs`, secrets only as hashes) and when it
was stored. It is tagged three times (``tag_for``): by key, by local key and by slot. Blobs are verified against
their digests before anything is applied; whatever is wrong with an entry is a :class:`CacheError`, which the
session turns into a warning and a miss.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator, Protocol

from snapfs.errors import SnapfsError
from snapfs.image.blobstore import BlobStore
from snapfs.image.layout import index_json, read_layout, write_layout
from snapfs.image.model import ANNOTATION_REF_NAME, Image, Layer
from snapfs.image.reference import Reference
from snapfs.image.transports import split_transport
from snapfs.platforms import Platform
from snapfs.redact import redact_url

LOCK_FILE = ".snapfs-cache.lock"


class CacheError(SnapfsError):
    """A cache entry could not be read or written (the build goes on without it). ``unreachable``: the cache
    itself is down (no connection, TLS failure, HTTP 5xx), so the session stops asking it."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def _from_registry(name: str, exc: SnapfsError) -> CacheError:
    from snapfs.image.registry.client import RegistryConnectionError, RegistryHTTPError, RegistryTLSError

    down = isinstance(exc, (RegistryConnectionError, RegistryTLSError)) or (
        isinstance(exc, RegistryHTTPError) and exc.status >= 500)
    return CacheError(f"{name}: {exc.message}", unreachable=down)


class CacheStore(Protocol):
    name: str

    def get(self, tag: str) -> Image | None:
        """The entry tagged ``tag`` (manifest and config verified), or None; its layers may not be local yet."""

    def local_layers(self, entry: Image, store: BlobStore) -> tuple[Layer, ...]:
        """The entry's layers as verified files in ``store`` (digest and diff_id checked)."""

    def put(self, entry: Image, tags: list[str]) -> None:
        """Store ``entry`` under every tag (replacing what the tags named)."""


class LayoutCache:
    """Entries in a local OCI image layout; writers take a lock, readers see ``index.json`` replaced whole."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.name = f"oci:{self.path}"

    def get(self, tag: str) -> Image | None:
        try:
            index = index_json(self.path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, SnapfsError) as exc:
            raise CacheError(f"{self.name}: unreadable index.json: {exc}") from None
        names = {(m.get("annotations") or {}).get(ANNOTATION_REF_NAME) for m in index.get("manifests") or []}
        if tag not in names:
            return None
        try:
            return read_layout(self.path, ref_name=tag)
        except (OSError, SnapfsError) as exc:
            raise CacheError(f"{self.name}: entry {tag}: {getattr(exc, 'message', exc)}") from None

    def local_layers(self, entry: Image, store: BlobStore) -> tuple[Layer, ...]:
        out = []
        for layer in entry.layers:
            try:
                with open(layer.path, "rb") as f:
                    path = store.put_stream(f, digest=layer.digest, size=layer.size, diff_id=layer.diff_id,
                                            what=f"cached layer {layer.digest}")
            except (OSError, SnapfsError) as exc:
                raise CacheError(f"{self.name}: {getattr(exc, 'message', None) or exc}") from None
            out.append(replace(layer, path=path))
        return tuple(out)

    def put(self, entry: Image, tags: list[str]) -> None:
        os.makedirs(self.path, exist_ok=True)
        with _locked(os.path.join(self.path, LOCK_FILE)):
            for tag in tags:
                write_layout(self.path, entry, ref_name=tag)


class RegistryCache:
    """Entries in a registry repository, tagged; pulled and pushed with the build's registry settings."""

    def __init__(self, client, repository: Reference, platform: Platform) -> None:
        self.client, self.repo, self.platform = client, repository, platform
        self.name = redact_url(f"{repository.registry}/{repository.repository}")
        self._tags: dict[str, str] = {}  # entry digest -> the tag it was found by (for messages)

    def _ref(self, tag: str) -> Reference:
        return replace(self.repo, tag=tag, digest=None)

    def get(self, tag: str) -> Image | None:
        from snapfs.image.registry.client import RegistryHTTPError
        from snapfs.image.registry.pull import Puller

        try:
            entry = Puller(self.client, self._ref(tag), _NullStore()).resolve(self.platform, probe=False)
            self._tags[entry.digest] = tag
            return entry
        except RegistryHTTPError as exc:
            if exc.status == 404:
                return None
            raise _from_registry(self.name, exc) from None
        except SnapfsError as exc:
            raise _from_registry(self.name, exc) from None

    def prepare(self) -> None:
        """Find the registry's scheme and auth once, before the concurrent lookups (each would ping it)."""
        try:
            self.client.base_url(self.repo.api_host, pull=True)
        except SnapfsError as exc:
            raise _from_registry(self.name, exc) from None

    def local_layers(self, entry: Image, store: BlobStore) -> tuple[Layer, ...]:
        from snapfs.image.registry.pull import Puller

        try:
            ref = self._ref(self._tags.get(entry.digest, "snapfs-entry"))
            Puller(self.client, ref, store).download_layers(entry)
        except SnapfsError as exc:
            raise _from_registry(self.name, exc) from None
        return tuple(replace(layer, path=store.path(layer.digest)) for layer in entry.layers)

    def put(self, entry: Image, tags: list[str]) -> None:
        from snapfs.image.registry.push import push_image

        try:
            push_image(self.client, entry, [self._ref(t) for t in tags])
        except SnapfsError as exc:
            raise _from_registry(self.name, exc) from None


class _NullStore(BlobStore):
    """Manifests and configs of looked-up entries are not kept on disk: only a hit's layers are."""

    def __init__(self) -> None:
        super().__init__("/nonexistent/snapfs-entry-store")
        self._bytes: dict[str, bytes] = {}

    def has(self, digest: str, *, size: int | None = None) -> bool:
        return digest in self._bytes and (size is None or len(self._bytes[digest]) == size)

    def put_bytes(self, data: bytes, *, digest: str | None = None) -> str:
        digest = digest or "sha256:" + hashlib.sha256(data).hexdigest()
        self._bytes[digest] = data
        return digest

    def read_bytes(self, digest: str, *, limit: int, what: str = "blob") -> bytes:
        return self._bytes[digest][:limit]

    def writer(self, digest: str, *, size: int | None = None, **kw):  # the config blob, kept in memory
        return _MemoryWriter(self, digest, size)


class _MemoryWriter:
    def __init__(self, store: _NullStore, digest: str, size: int | None) -> None:
        self.store, self.digest, self.size, self.chunks, self.written = store, digest, size, [], 0

    def write(self, data) -> int:
        if self.size is not None and self.written + len(data) > self.size:
            raise CacheError(f"cache entry config {self.digest}: longer than its {self.size} bytes")
        self.chunks.append(bytes(data))
        self.written += len(data)
        return len(data)

    def commit(self) -> str:
        data = b"".join(self.chunks)
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if got != self.digest:
            raise CacheError(f"cache entry config: content digest {got} does not match {self.digest}")
        self.store._bytes[self.digest] = data
        return self.digest

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


@contextmanager
def _locked(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def open_store(spec: str, *, client_factory, platform: Platform) -> CacheStore:
    """``oci:DIR`` (a local layout) or a registry repository for ``--cache-repo``."""
    from snapfs.image.reference import parse_reference

    transport, rest = split_transport(spec)
    if transport == "oci":
        return LayoutCache(rest)
    if transport is not None:
        raise CacheError(f"--cache-repo {spec!r}: use a registry repository or oci:DIR")
    try:
        ref = parse_reference(spec)
    except SnapfsError as exc:
        raise CacheError(f"--cache-repo {spec!r}: {exc.message}") from None
    return RegistryCache(client_factory(), ref, platform)
