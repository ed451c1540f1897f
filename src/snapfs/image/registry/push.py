"""Pushing an image: blobs first (skip, mount or upload, streamed from disk), the manifest last.

A blob the registry already has is skipped (``HEAD``); one in the base image's repository is mounted; anything
else is uploaded in one streamed ``PUT`` (small blobs) or in ``PATCH`` chunks whose returned ``Range`` we check
against what we sent (registries append whatever arrives). A broken session is resumed from the offset the
registry reports, or restarted. Only when every blob of every destination is in place are the manifests put,
so a failed push never leaves a tag pointing at an incomplete image.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Sequence
from urllib.parse import urljoin

from snapfs.errors import RegistryError
from snapfs.image.model import Descriptor, Image, Layer
from snapfs.image.reference import Reference
from snapfs.progress import Transfer
from .client import (RegistryClient, RegistryConnectionError, RegistryHTTPError, file_body, pull_scope, push_scope,
                     retry_after_seconds, run_parallel)

log = logging.getLogger("snapfs.registry")

_RANGE_RE = re.compile(r"^(?:bytes=)?0-(\d+)$")

# How registries refuse a manifest PUT to an existing immutable tag (the phrases Kaniko knows, lower case):
# Artifact Registry, ECR; and ECR's distribution-style error code with the word.
_IMMUTABLE_TAG = ("the repository has enabled tag immutability",
                  "cannot be overwritten because the repository is immutable")


class _Broken(RegistryError):
    """An upload session that failed in a way a new attempt may fix."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


def push_image(client: RegistryClient, image: Image, destinations: Sequence[Reference], *,
               mount_from: Sequence[Reference] = ()) -> str:
    """Push ``image`` to every destination (tag or digest references); returns the manifest digest.

    Blobs go to all destinations before any manifest, so a failure anywhere tags nothing. The whole blob phase of
    a destination is retried ``push_retry`` more times.
    """
    if not destinations:
        raise RegistryError("push: no destination")
    started = time.monotonic()
    for dest in destinations:
        attempts = client.options.push_retry + 1
        for attempt in range(attempts):
            try:
                pusher = BlobPusher(client, dest, mount_from=mount_from)
                pusher.push_blobs(image)
                log.info("%s: blobs in place (%s)", dest, ", ".join(f"{v} {k}" for k, v in pusher.stats.items()))
                break
            except RegistryError as exc:
                transient = isinstance(exc, (_Broken, RegistryConnectionError)) or getattr(exc, "transient", False)
                if attempt + 1 >= attempts or not transient:
                    raise
                delay = getattr(exc, "retry_after", None) or client.backoff(attempt)
                log.warning("push to %s failed (%s); attempt %d of %d in %.1fs", dest, exc.message, attempt + 2,
                            attempts, delay)
                client.sleep(delay)
    for dest in destinations:
        try:
            put_manifest(client, dest, image.manifest_bytes, media_type=image.manifest_media_type,
                         digest=image.digest)
        except RegistryHTTPError as exc:
            if not (client.options.push_ignore_immutable_tag_errors and is_immutable_tag_error(exc)):
                raise
            log.warning("%s: not tagged, the tag is immutable and exists (--push-ignore-immutable-tag-errors): %s",
                        dest, exc.message)
    log.info("pushed %s to %d destination(s) in %.1fs", image.digest, len(destinations), time.monotonic() - started)
    return image.digest


def is_immutable_tag_error(exc: RegistryHTTPError) -> bool:
    """Whether a registry refused a manifest because its tag is immutable and already set."""
    text = exc.message.lower()
    return exc.status < 500 and (any(p in text for p in _IMMUTABLE_TAG) or
                                 ("tag_invalid" in text and "immutable" in text))


def check_push_access(client: RegistryClient, dest: Reference) -> None:
    """Kaniko's push permission check: the push token (where the registry uses tokens) and an upload session
    opened then cancelled. That needs the same rights as a real push and leaves nothing behind."""
    scopes = (push_scope(dest.repository),)
    try:
        resp = client.request("POST", f"/v2/{dest.repository}/blobs/uploads/", host=dest.api_host, scopes=scopes,
                              pull=False, ok=(202,), what=str(dest))
    except RegistryError as exc:
        why = exc.message.removeprefix(f"{dest}: ")
        raise RegistryError(f"cannot push to {dest} (checked before the first step): {why}",
                            exit_code=exc.exit_code) from None
    resp.close()
    location = resp.headers.get("location")
    if location:
        try:
            client.request("DELETE", urljoin(str(resp.request.url), location), host=dest.api_host, scopes=scopes,
                           pull=False, ok=(200, 202, 204, 404), retries=0, what=str(dest)).close()
        except RegistryError as exc:  # an abandoned session expires on its own; the access is what we checked
            log.debug("%s: could not cancel the test upload: %s", dest, exc.message)
    log.info("%s: push access checked", dest)


def put_manifest(client: RegistryClient, dest: Reference, data: bytes, *, media_type: str, digest: str) -> None:
    """``PUT`` the manifest under the destination's tag (or digest) and check the digest the registry reports."""
    resp = client.request("PUT", f"/v2/{dest.repository}/manifests/{dest.tag or dest.digest or digest}",
                          host=dest.api_host, scopes=(push_scope(dest.repository),), pull=False,
                          headers={"Content-Type": media_type}, body=data, ok=(200, 201, 202), what=str(dest))
    resp.close()
    got = resp.headers.get("docker-content-digest")
    if got and got != digest:
        raise RegistryError(f"{dest}: registry stored the manifest as {got}, expected {digest}")
    log.info("pushed %s@%s", dest.name, digest)


class BlobPusher:
    """Uploads the blobs of images to one destination repository."""

    def __init__(self, client: RegistryClient, dest: Reference, *, mount_from: Sequence[Reference] = ()) -> None:
        self.client, self.dest = client, dest
        self.host = dest.api_host
        self.repo = dest.repository
        self.mount_from = [m for m in mount_from if m.api_host == self.host and m.repository != self.repo]
        self.scopes = (push_scope(self.repo),) + tuple(pull_scope(m.repository) for m in self.mount_from)
        self.stats = {"exists": 0, "mounted": 0, "uploaded": 0}

    def _req(self, method: str, url: str, *, ok, headers: dict | None = None, body=None, retries: int | None = None,
             what: str = ""):
        return self.client.request(method, url, host=self.host, scopes=self.scopes, pull=False, headers=headers,
                                   body=body, ok=ok, retries=retries, what=what or str(self.dest))

    def push_blobs(self, image: Image) -> None:
        jobs, seen = [], set()
        for desc, layer in image.blobs():
            if desc.digest not in seen:  # an image may repeat a layer; upload it once
                seen.add(desc.digest)
                jobs.append((desc, layer))
        config_bytes = image.config_bytes

        def one(job: tuple[Descriptor, Layer | None]) -> None:
            desc, layer = job
            self.push_blob(desc, path=layer.path if layer else None, data=None if layer else config_bytes)

        layers, config = jobs[:-1], jobs[-1]
        run_parallel(one, layers, workers=self.client.options.parallel, name="snapfs-push")
        one(config)  # last, so a registry never holds a config whose layers are missing

    def exists(self, desc: Descriptor) -> bool:
        resp = self._req("HEAD", f"/v2/{self.repo}/blobs/{desc.digest}", ok=(200, 404))
        resp.close()
        if resp.status_code != 200:
            return False
        length = resp.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) != desc.size:
            log.warning("%s: registry has %s with %s bytes, the manifest says %d", self.dest, desc.digest, length,
                        desc.size)
        return True

    def push_blob(self, desc: Descriptor, *, path: str | None = None, data: bytes | None = None) -> str:
        """Make the blob present in the destination repository; returns "exists", "mounted" or "uploaded"."""
        what = f"{self.dest.name}: blob {desc.digest}"
        if self.exists(desc):
            self.stats["exists"] += 1
            log.debug("%s already present", what)
            return "exists"
        location = None
        for src in self.mount_from:
            try:
                resp = self._req("POST", f"/v2/{self.repo}/blobs/uploads/?mount={desc.digest}&from={src.repository}",
                                 ok=(201, 202), what=what)
            except RegistryHTTPError as exc:
                if exc.transient:
                    raise
                # Mounting is an optimisation: no read access to the source, or no mount support, means upload.
                log.debug("%s: cannot mount from %s (%s); uploading", what, src.repository, exc.message)
                continue
            resp.close()
            if resp.status_code == 201:
                self.stats["mounted"] += 1
                log.debug("%s mounted from %s", what, src.repository)
                return "mounted"
            location = self._location(resp)  # 202: the registry opened an ordinary upload instead
            break
        with Transfer(f"{self.dest.name}: blob {desc.digest[:19]}", total=desc.size, verb="uploading",
                      done="uploaded") as progress:
            return self._upload(desc, location, path=path, data=data, what=what, progress=progress)

    def _upload(self, desc: Descriptor, location: str | None, *, path: str | None, data: bytes | None, what: str,
                progress: Transfer) -> str:
        restarts = 0
        while True:
            try:
                if location is None:
                    location = self._start()
                if path is not None and desc.size > self.client.options.monolithic_max:
                    self._chunked(location, desc, path, what=what, progress=progress)
                else:
                    self._monolithic(location, desc, path=path, data=data, what=what, progress=progress)
                self.stats["uploaded"] += 1
                return "uploaded"
            except (_Broken, RegistryConnectionError) as exc:
                restarts += 1
                if restarts > self.client.options.upload_restarts:
                    inner = exc.message.removeprefix(f"{what}: ")
                    # Still "broken" (transient): --push-retry may try the whole push again.
                    raise _Broken(f"{what}: upload failed after {restarts} attempts: {inner}") from None
                delay = getattr(exc, "delay", None)
                delay = self.client.backoff(restarts - 1) if delay is None else delay
                log.info("%s: %s; new upload session in %.1fs", what, exc.message, delay)
                self.client.sleep(delay)
                location = None

    # ------------------------------------------------------------- upload steps

    def _location(self, resp) -> str:
        loc = resp.headers.get("location")
        if not loc:
            raise _Broken(f"{self.dest.name}: upload response without a Location")
        return urljoin(str(resp.request.url), loc)

    def _start(self) -> str:
        resp = self._req("POST", f"/v2/{self.repo}/blobs/uploads/", ok=(202,))
        resp.close()
        return self._location(resp)

    def _send(self, method: str, url: str, *, headers: dict, body, ok, what: str):
        """An upload request: not retried in place (a broken session is handled by the caller)."""
        try:
            return self._req(method, url, ok=ok, headers=headers, body=body, retries=0, what=what)
        except RegistryHTTPError as exc:
            if exc.status in (400, 404, 416) or exc.transient:
                # 400 digest invalid (corrupted in transit), 404/416 a session the registry dropped: start over.
                raise _Broken(exc.message, delay=exc.retry_after) from None
            raise

    def _commit(self, location: str, desc: Descriptor, *, headers: dict, body, what: str) -> None:
        sep = "&" if "?" in location else "?"
        resp = self._send("PUT", f"{location}{sep}digest={desc.digest}", headers=headers, body=body, ok=(201, 204),
                          what=what)
        resp.close()
        got = resp.headers.get("docker-content-digest")
        if got and got != desc.digest:
            raise _Broken(f"{what}: registry computed digest {got}")

    def _monolithic(self, location: str, desc: Descriptor, *, path: str | None, data: bytes | None,
                    what: str, progress: Transfer) -> None:
        body = data if data is not None else file_body(path, 0, desc.size, sent=progress.at)
        self._commit(location, desc, headers={"Content-Type": "application/octet-stream",
                                              "Content-Length": str(desc.size)}, body=body, what=what)

    def _status(self, location: str, what: str) -> int | None:
        """Bytes the registry holds for a session, or None if the session is gone."""
        try:
            resp = self._req("GET", location, ok=(204, 200, 404), retries=0, what=what)
        except (RegistryError, RegistryConnectionError):
            return None
        resp.close()
        if resp.status_code == 404:
            return None
        m = _RANGE_RE.match(resp.headers.get("range", ""))
        # "0-0" means 0 bytes or 1 byte; assume 0: resending a byte is caught by the digest check at commit.
        return int(m.group(1)) + 1 if m and int(m.group(1)) > 0 else 0

    def _chunked(self, location: str, desc: Descriptor, path: str, *, what: str, progress: Transfer) -> None:
        chunk = self.client.options.chunk_size
        offset = 0
        resumes = 0
        while offset < desc.size:
            n = min(chunk, desc.size - offset)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(n),
                       "Content-Range": f"{offset}-{offset + n - 1}"}
            try:
                body = file_body(path, offset, n, sent=progress.at)
                resp = self._send("PATCH", location, headers=headers, body=body, ok=(202,), what=what)
            except (RegistryConnectionError, _Broken) as exc:
                resumes += 1
                if resumes > self.client.options.upload_restarts:
                    raise _Broken(f"upload kept breaking at byte {offset}: {exc.message}") from None
                delay = getattr(exc, "delay", None)
                self.client.sleep(self.client.backoff(resumes - 1) if delay is None else delay)
                held = self._status(location, what)
                if held is None or held > offset + n:
                    raise _Broken(f"upload session lost at byte {offset}: {exc.message}") from None
                log.info("%s: resuming at byte %d (registry holds %d)", what, held, held)
                offset = held
                continue
            resp.close()
            delay = retry_after_seconds(resp.headers.get("retry-after"), cap=self.client.options.max_retry_after)
            m = _RANGE_RE.match(resp.headers.get("range", ""))
            end = int(m.group(1)) + 1 if m else None
            if end != offset + n:
                # Never trust a session whose offset disagrees with ours: out-of-order data would be appended.
                raise _Broken(f"registry reported range {resp.headers.get('range', 'none')!r} after bytes "
                              f"0-{offset + n - 1}", delay=delay)
            location = self._location(resp)
            offset += n
        self._commit(location, desc, headers={"Content-Length": "0"}, body=b"", what=what)
