"""Pulling an image: resolve the reference (mirrors, maps), pick the platform, download verified blobs.

Everything lands in a content-addressed ``BlobStore``: manifests and configs by digest, layers streamed to a temp
file and published only after size, digest and diff_id all check out. A tag is resolved with a ``HEAD`` first,
so when the manifest it names is already cached the second pull of a base downloads nothing.
"""
from __future__ import annotations

import contextlib
import logging
import time

import httpx

from snapfs.errors import InputError, RegistryError
from snapfs.image.blobstore import BlobMismatch, BlobStore
from snapfs.image.model import (MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Image, Index, Layer, Manifest,
                                image_from_manifest, sha256_digest, sniff_media_type)
from snapfs.image.reference import DEFAULT_REGISTRY, Reference, split_registry_spec, validate_digest
from snapfs.mediatypes import INDEX_TYPES, MANIFEST_ACCEPT, MANIFEST_TYPES
from snapfs.platforms import Platform
from snapfs.progress import Transfer
from .client import (RegistryClient, RegistryConnectionError, RegistryHTTPError, describe_transport_error, pull_scope,
                     read_limited, run_parallel)

log = logging.getLogger("snapfs.registry")


def candidates(ref: Reference, client: RegistryClient) -> list[Reference]:
    """Where to look for ``ref``: mirrors (docker.io) or mapped registries first, then the original."""
    opts = client.options
    out: list[Reference] = []
    specs = [target for orig, target in opts.registry_maps if split_registry_spec(orig)[0] == ref.registry]
    if ref.registry == DEFAULT_REGISTRY:
        specs += list(opts.registry_mirrors)
    for spec in specs:
        host, prefix = split_registry_spec(spec)
        out.append(ref.with_registry(host, prefix=prefix))
    if not out or not opts.skip_default_registry_fallback:
        out.append(ref)
    return out


def _is_transient(exc: Exception) -> bool:
    return bool(getattr(exc, "transient", False)) or isinstance(exc, BlobMismatch)


def pull_image(client: RegistryClient, ref: Reference, store: BlobStore, *,
               platform: Platform | None = None) -> Image:
    """Pull ``ref`` for ``platform`` (default: the host) into ``store``; the returned Image's layers are files
    in ``store``. Retried as a whole ``image_download_retry`` more times on transient failures."""
    want = platform or Platform.host()
    attempts = client.options.image_download_retry + 1
    started = time.monotonic()
    for attempt in range(attempts):
        try:
            image, downloaded = _pull_from_candidates(client, ref, store, want)
            if downloaded:
                log.info("pulled %s (%s, %d layers) in %.1fs", ref, image.digest, len(image.layers),
                         time.monotonic() - started)
            else:
                log.info("%s: cached (%s, %d layers), nothing to download", ref, image.digest, len(image.layers))
            return image
        except RegistryError as exc:
            if attempt + 1 >= attempts or not _is_transient(exc):
                raise
            delay = getattr(exc, "retry_after", None) or client.backoff(attempt)
            log.warning("pull of %s failed (%s); attempt %d of %d in %.1fs", ref, exc.message, attempt + 2,
                        attempts, delay)
            client.sleep(delay)
    raise AssertionError("unreachable")


def _pull_from_candidates(client: RegistryClient, ref: Reference, store: BlobStore,
                          want: Platform) -> tuple[Image, bool]:
    """The image, and whether any manifest or blob had to be downloaded."""
    places = candidates(ref, client)
    for i, cand in enumerate(places):
        try:
            puller = Puller(client, cand, store)
            return puller.pull(want), puller.downloaded
        except RegistryError as exc:
            if i + 1 == len(places):
                raise
            log.warning("pull from %s failed (%s); falling back to %s", cand.registry, exc.message,
                        places[i + 1].registry)
    raise AssertionError("unreachable")


class Puller:
    """One pull of one reference from one registry."""

    def __init__(self, client: RegistryClient, ref: Reference, store: BlobStore) -> None:
        self.client, self.ref, self.store = client, ref, store
        self.host = ref.api_host
        self.scopes = (pull_scope(ref.repository),)
        self.probe = True  # HEAD a tag first: its digest may already be in the store
        self.downloaded = False  # any manifest or blob fetched (a HEAD that finds the cache does not count)

    def _get(self, path: str, *, method: str = "GET", headers: dict | None = None, ok=(200,), what: str = ""):
        return self.client.request(method, f"/v2/{self.ref.repository}{path}", host=self.host, scopes=self.scopes,
                                   pull=True, headers=headers, ok=ok, what=what or str(self.ref))

    # ------------------------------------------------------------- manifests

    def _manifest(self, identifier: str, *, expect: str | None) -> tuple[bytes, str]:
        """Manifest bytes and media type for a tag or digest; cached by digest, verified against it."""
        if expect and self.store.has(expect):
            data = self.store.read_bytes(expect, limit=MAX_MANIFEST_BYTES, what="cached manifest")
            return data, sniff_media_type(data)
        accept = {"Accept": ", ".join(MANIFEST_ACCEPT)}
        if expect is None and self.probe:
            try:
                head = self._get(f"/manifests/{identifier}", method="HEAD", headers=accept, ok=(200, 404))
            except RegistryHTTPError as exc:
                if exc.status in (401, 403):
                    raise
                head = None  # some registries do not answer HEAD for manifests: a GET will tell
            if head is not None:
                head.close()
                if head.status_code == 404:
                    raise RegistryHTTPError(f"{self.ref}: manifest unknown (HTTP 404)", status=404)
            digest = head.headers.get("docker-content-digest", "") if head is not None else ""
            if digest.startswith("sha256:") and self.store.has(digest):
                validate_digest(digest)
                log.debug("%s resolves to cached %s", self.ref, digest)
                return self._manifest(digest, expect=digest)
        retries = self.client.options.request_retries
        for attempt in range(retries + 1):
            try:
                return self._fetch_manifest(identifier, expect=expect, accept=accept)
            except (RegistryConnectionError, BlobMismatch) as exc:
                if attempt >= retries:
                    raise type(exc)(f"{exc.message} (after {attempt + 1} attempts)") from None
                self.client.sleep(self.client.backoff(attempt))
        raise AssertionError("unreachable")

    def _fetch_manifest(self, identifier: str, *, expect: str | None, accept: dict) -> tuple[bytes, str]:
        self.downloaded = True
        resp = self._get(f"/manifests/{identifier}", headers=accept, ok=(200, 404))
        if resp.status_code == 404:
            resp.close()
            raise RegistryHTTPError(f"{self.ref}: manifest unknown (HTTP 404)", status=404)
        content_type = resp.headers.get("content-type", "")
        header_digest = resp.headers.get("docker-content-digest", "")
        data = read_limited(resp, limit=MAX_MANIFEST_BYTES, what=f"manifest of {self.ref}")
        got = sha256_digest(data)
        # A tag has no digest of its own to check against: the registry's header is the best witness we have.
        want = expect or (header_digest if header_digest.startswith("sha256:") else None)
        if want and got != want:
            raise BlobMismatch(f"manifest of {self.ref}: content digest {got} does not match {want}")
        try:  # checked before it is cached: a hostile document must not wait in the store for the next pull
            media_type = sniff_media_type(data, content_type)
        except InputError as exc:
            raise RegistryError(f"{self.ref}: {exc.message}") from None
        self.store.put_bytes(data, digest=got)
        return data, media_type

    def pull(self, want: Platform) -> Image:
        image = self.resolve(want)
        self.download_layers(image)
        return image

    def resolve(self, want: Platform, *, probe: bool = True) -> Image:
        """The image (manifest and config fetched and verified) without its layers: they are files-to-be in the
        store until :meth:`download_layers`. ``probe=False``: no HEAD first (a store that keeps nothing)."""
        self.probe = probe
        data, media_type = self._manifest(self.ref.identifier, expect=self.ref.digest)
        if media_type in INDEX_TYPES:
            index = Index.from_bytes(data, media_type=media_type)
            desc = index.select(want)
            if desc is None:
                have = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
                raise InputError(f"{self.ref}: no image for platform {want} (available: {have})")
            log.debug("%s: picked %s for %s", self.ref, desc.digest, want)
            data, media_type = self._manifest(desc.digest, expect=desc.digest)
        if media_type not in MANIFEST_TYPES:
            raise RegistryError(f"{self.ref}: unsupported manifest media type {media_type!r}")
        manifest = Manifest.from_bytes(data, media_type=media_type)
        config = manifest.config
        if self.store.has(config.digest, size=config.size):
            config_bytes = self.store.read_bytes(config.digest, limit=MAX_CONFIG_BYTES, what="cached config")
        else:
            if config.size > MAX_CONFIG_BYTES:
                raise RegistryError(f"{self.ref}: image config of {config.size} bytes is too large")
            self._download(config.digest, size=config.size, diff_id=None, what=f"config of {self.ref}")
            config_bytes = self.store.read_bytes(config.digest, limit=MAX_CONFIG_BYTES, what="config")
        image = image_from_manifest(data, config_bytes, blob_path=self.store.path, media_type=media_type)
        plat = image.platform()
        if plat is not None and not self.ref.digest and not want.matches(plat):
            log.warning("%s is for %s, not the requested %s", self.ref, plat, want)
        return image

    def download_layers(self, image: Image) -> None:
        self._download_layers(image.layers)

    # ------------------------------------------------------------- blobs

    def _download_layers(self, layers: tuple[Layer, ...]) -> None:
        missing, seen = [], set()
        for layer in layers:
            if layer.digest not in seen and not self.store.has(layer.digest, size=layer.size):
                missing.append(layer)
                seen.add(layer.digest)
        if not missing:
            return
        log.info("%s: downloading %d of %d layers", self.ref, len(missing), len(layers))

        def one(layer: Layer) -> None:
            self._download(layer.digest, size=layer.size, diff_id=layer.diff_id, what=f"layer {layer.digest}")

        run_parallel(one, missing, workers=self.client.options.parallel, name="snapfs-pull")

    def _download(self, digest: str, *, size: int, diff_id: str | None, what: str) -> str:
        """Stream one blob into the store; a broken, short or corrupt body is fetched again (bounded)."""
        retries = self.client.options.request_retries
        for attempt in range(retries + 1):
            try:
                return self._download_once(digest, size=size, diff_id=diff_id, what=what)
            except (RegistryConnectionError, BlobMismatch) as exc:
                if attempt >= retries:
                    raise type(exc)(f"{exc.message} (after {attempt + 1} attempts)") from None
                delay = self.client.backoff(attempt)
                log.info("%s: %s; retrying in %.1fs", what, exc.message, delay)
                self.client.sleep(delay)
        raise AssertionError("unreachable")

    def _download_once(self, digest: str, *, size: int, diff_id: str | None, what: str) -> str:
        if self.store.has(digest, size=size):
            return self.store.path(digest)
        self.downloaded = True
        resp = self._get(f"/blobs/{digest}", what=what)
        with contextlib.closing(resp), self.store.writer(digest, size=size, diff_id=diff_id, what=what) as writer, \
                Transfer(what.replace(digest, digest[:19]), total=size) as progress:
            try:
                for chunk in resp.iter_bytes(1 << 20):
                    writer.write(chunk)
                    progress.update(len(chunk))
            except httpx.TransportError as exc:
                raise RegistryConnectionError(f"{what}: download broke after {writer.written} bytes: "
                                              f"{describe_transport_error(exc)}") from None
            return writer.commit()
