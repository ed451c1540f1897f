"""The registry client: the only module that speaks HTTP (httpx, synchronous).

One ``RegistryClient`` holds the transport options (plain HTTP, TLS verification, CAs and client certificates
per registry), the credential lookup, the auth state per host and one connection pool per (host, TLS setting).
Every request goes through ``request``: it attaches credentials only when the URL is the registry's own origin,
follows redirects itself (so Authorization never travels to another host), answers 401 challenges once, and
retries connection errors, 5xx and 429 with exponential backoff and jitter (honouring ``Retry-After``), never
400/401/403/404 and never a TLS failure that no retry can fix (a certificate that fails verification, a server
that does not speak TLS). Pulling lives in :mod:`.pull`, pushing in :mod:`.push`; both build on this client.
"""
from __future__ import annotations

import contextlib
import email.utils
import logging
import random
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator
from urllib.parse import urljoin, urlsplit

import httpx

from snapfs.errors import RegistryError, UsageError
from snapfs.redact import redact_url as _redact_url
from .auth import NO_AUTH, Authenticator, parse_challenge
from .credentials import ANONYMOUS, Credential, CredentialSource

log = logging.getLogger("snapfs.registry")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_ERROR_BODY_LIMIT = 8192
USER_AGENT = "snapfs"

Body = Callable[[], Iterable[bytes]] | bytes | None


class RegistryHTTPError(RegistryError):
    """The registry answered with an error status (kept for callers that branch on it)."""

    def __init__(self, message: str, *, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.status in RETRYABLE_STATUS


class RegistryConnectionError(RegistryError):
    """The connection failed or broke (after the allowed retries)."""

    transient = True


class RegistryTLSError(RegistryError):
    """The registry's certificate failed verification: a setting to fix, never retried, never a reason to fall
    back to plain HTTP."""

    transient = False


@dataclass(frozen=True)
class RegistryOptions:
    """Kaniko's registry flags, plus the client's own tuning (retries, chunking, timeouts)."""

    insecure: bool = False                      # --insecure: plain HTTP allowed when pushing
    insecure_pull: bool = False                 # --insecure-pull
    insecure_registries: tuple[str, ...] = ()   # --insecure-registry R (both directions)
    skip_tls_verify: bool = False               # --skip-tls-verify (push)
    skip_tls_verify_pull: bool = False          # --skip-tls-verify-pull
    skip_tls_verify_registries: tuple[str, ...] = ()
    registry_certificates: tuple[tuple[str, str], ...] = ()        # (registry, ca.pem)
    registry_client_certs: tuple[tuple[str, str, str], ...] = ()   # (registry, cert, key)
    registry_mirrors: tuple[str, ...] = ()      # for docker.io, tried in order
    registry_maps: tuple[tuple[str, str], ...] = ()  # (original registry, replacement[/prefix])
    skip_default_registry_fallback: bool = False
    push_retry: int = 0                         # --push-retry: extra attempts of a whole push
    image_download_retry: int = 0               # --image-download-retry: extra attempts of a whole pull
    push_ignore_immutable_tag_errors: bool = False  # a destination refusing an existing immutable tag is skipped
    request_retries: int = 4                    # per request, for connection errors / 5xx / 429
    backoff_base: float = 0.5
    backoff_max: float = 10.0
    max_retry_after: float = 60.0
    chunk_size: int = 64 << 20                  # PATCH size for chunked uploads
    monolithic_max: int = 64 << 20              # blobs up to this size go in one PUT
    upload_restarts: int = 4                    # new upload sessions per blob after a broken one
    parallel: int = 3                           # blobs transferred at once
    connect_timeout: float = 15.0
    read_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.monolithic_max < 0:
            raise UsageError("chunk size must be positive")
        for n in (self.push_retry, self.image_download_retry, self.request_retries, self.upload_restarts):
            if n < 0:
                raise UsageError("retry counts must not be negative")

    def plain_http_allowed(self, host: str, *, pull: bool) -> bool:
        return host in self.insecure_registries or (self.insecure_pull if pull else self.insecure)

    def skip_verify(self, host: str, *, pull: bool) -> bool:
        return host in self.skip_tls_verify_registries or (self.skip_tls_verify_pull if pull else
                                                           self.skip_tls_verify)


def redact_url(url) -> str:
    """A URL for messages: the package's one rule (:func:`snapfs.redact.redact_url`; upload ``_state`` masked)."""
    return _redact_url(str(url))


def origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(str(url))
    return (parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80))


def retry_after_seconds(value: str | None, *, cap: float) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, cap))


def tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error under an httpx transport error when retrying cannot help: a certificate that failed
    verification, or a server that does not speak TLS at all. Other SSL errors (a cut handshake) may be transient."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        if type(exc) is ssl.SSLError and getattr(exc, "reason", "") in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST",
                                                                          "RECORD_LAYER_FAILURE"):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def tls_error(host: str, exc: ssl.SSLCertVerificationError) -> RegistryTLSError:
    """A one-line message naming the certificate problem and the flags that fix it (never plain HTTP)."""
    why = exc.verify_message or exc.reason or "certificate rejected"
    return RegistryTLSError(f"{host}: TLS certificate verify failed: {why} (trust the registry's CA with "
                            f"--registry-certificate {host}=CA.pem, or skip verification with "
                            f"--skip-tls-verify-registry {host})")


def describe_transport_error(exc: Exception) -> str:
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{name}: {text}"[:200] if text else name


def file_body(path: str, offset: int, length: int, *,
              sent: Callable[[int], None] | None = None) -> Callable[[], Iterator[bytes]]:
    """A replayable streaming body: ``length`` bytes of ``path`` from ``offset``, 1 MiB at a time.
    ``sent(position)`` is told the file position after each chunk handed to the connection (progress)."""
    def gen() -> Iterator[bytes]:
        with open(path, "rb") as f:
            f.seek(offset)
            left = length
            while left > 0:
                chunk = f.read(min(1 << 20, left))
                if not chunk:
                    raise RegistryError(f"{path}: file shrank while being uploaded")
                left -= len(chunk)
                yield chunk
                if sent is not None:
                    sent(offset + length - left)
    return gen


class RegistryClient:
    """Connections, auth and retries for any number of registries. Thread-safe; close it when done."""

    def __init__(self, options: RegistryOptions | None = None, *,
                 credentials: Callable[[str], Credential] | None = None) -> None:
        self.options = options or RegistryOptions()
        self._credentials = credentials or CredentialSource()
        self._clients: dict[tuple[str, bool, bool], httpx.Client] = {}
        self._bases: dict[str, str] = {}
        self._auth: dict[str, Authenticator] = {}
        self._lock = threading.RLock()
        self._sleep = time.sleep  # tests may replace it to count waits

    # ---------------------------------------------------------------- plumbing

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _registry_key(self, host: str) -> str:
        # Options and credentials name registries as users write them (docker.io, not registry-1.docker.io).
        return "docker.io" if host == "registry-1.docker.io" else host

    def _ssl(self, host: str, *, pull: bool) -> ssl.SSLContext:
        key = self._registry_key(host)
        opts = self.options
        ctx = ssl.create_default_context()
        for reg, ca in opts.registry_certificates:
            if reg in (host, key):
                try:
                    ctx.load_verify_locations(cafile=ca)
                except (OSError, ssl.SSLError) as exc:
                    raise UsageError(f"--registry-certificate {reg}: cannot load {ca}: {exc}") from None
        for reg, cert, keyfile in opts.registry_client_certs:
            if reg in (host, key):
                try:
                    ctx.load_cert_chain(cert, keyfile)
                except (OSError, ssl.SSLError) as exc:
                    raise UsageError(f"--registry-client-cert {reg}: cannot load {cert}: {exc}") from None
        if opts.skip_verify(key, pull=pull) or opts.skip_verify(host, pull=pull):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _http(self, host: str, *, pull: bool) -> httpx.Client:
        skip = self.options.skip_verify(self._registry_key(host), pull=pull)
        key = (host, pull, skip)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                timeout = httpx.Timeout(self.options.read_timeout, connect=self.options.connect_timeout)
                client = httpx.Client(verify=self._ssl(host, pull=pull), timeout=timeout, follow_redirects=False,
                                      trust_env=False, headers={"User-Agent": USER_AGENT},
                                      limits=httpx.Limits(max_connections=16, max_keepalive_connections=8))
                self._clients[key] = client
            return client

    def credential(self, host: str) -> Credential:
        try:
            return self._credentials(self._registry_key(host))
        except RegistryError:
            raise
        except Exception as exc:  # a broken config must not print its contents
            raise RegistryError(f"cannot get credentials for {host}: {type(exc).__name__}") from None

    def _authenticator(self, host: str, *, pull: bool) -> Authenticator:
        with self._lock:
            auth = self._auth.get(host)
            if auth is None:
                plain = self.options.plain_http_allowed(self._registry_key(host), pull=pull)
                auth = Authenticator(host, self.credential(host), plain_http_ok=plain)
                self._auth[host] = auth
            elif auth.credential.expiring():  # a cloud token outlived by a long build: its successor
                auth.credential = self.credential(host)
            return auth

    def backoff(self, attempt: int) -> float:
        cap = min(self.options.backoff_max, self.options.backoff_base * (2 ** attempt))
        return cap * random.uniform(0.5, 1.0)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._sleep(seconds)

    # ---------------------------------------------------------------- base URL and ping

    def base_url(self, host: str, *, pull: bool) -> str:
        """``scheme://host`` for the registry, found by pinging ``/v2/`` (https first, http if allowed)."""
        with self._lock:
            base = self._bases.get(host)
        if base is not None:
            return base
        plain_ok = self.options.plain_http_allowed(self._registry_key(host), pull=pull)
        auth = self._authenticator(host, pull=pull)
        last_exc: Exception | None = None
        for scheme in ("https", "http") if plain_ok else ("https",):
            url = f"{scheme}://{host}/v2/"
            try:
                # When http is the fallback, the https probe gets no retries: a plain server fails it at once.
                resp = self._send_raw("GET", url, headers={}, body=None, pull=pull,
                                      retries=0 if (plain_ok and scheme == "https") else None)
            except RegistryConnectionError as exc:
                last_exc = exc
                continue
            with contextlib.closing(resp):
                if resp.status_code == 401:
                    auth.challenge = parse_challenge(resp.headers.get("www-authenticate", ""))
                elif resp.status_code < 400:
                    auth.challenge = NO_AUTH
                elif resp.status_code == 404 and scheme == "https" and plain_ok:
                    continue
                else:
                    raise RegistryHTTPError(f"{host}: not a registry (GET /v2/ answered HTTP {resp.status_code})",
                                            status=resp.status_code)
            with self._lock:
                self._bases[host] = f"{scheme}://{host}"
            log.debug("registry %s speaks %s", host, scheme)
            return f"{scheme}://{host}"
        hint = "" if plain_ok else " (for a plain-HTTP registry use --insecure-registry)"
        raise RegistryConnectionError(f"cannot reach registry {host}: {last_exc.message if last_exc else ''}{hint}")

    # ---------------------------------------------------------------- requests

    def _send_raw(self, method: str, url: str, *, headers: dict, body: Body, pull: bool,
                  retries: int | None = None) -> httpx.Response:
        """One logical request with transient retries and manual redirects; no auth handling. Streamed."""
        retries = self.options.request_retries if retries is None else retries
        attempt = 0
        while True:
            try:
                resp = self._follow(method, url, headers=headers, body=body, pull=pull)
            except httpx.TransportError as exc:
                bad_tls = tls_failure(exc)
                if isinstance(bad_tls, ssl.SSLCertVerificationError):
                    raise tls_error(urlsplit(url).netloc, bad_tls) from None
                if bad_tls is None and attempt < retries:
                    delay = self.backoff(attempt)
                    log.info("%s %s: %s; retrying in %.1fs", method, redact_url(url), describe_transport_error(exc),
                             delay)
                    attempt += 1
                    self.sleep(delay)
                    continue
                raise RegistryConnectionError(f"{method} {redact_url(url)}: {describe_transport_error(exc)}"
                                              + (f" (after {attempt + 1} attempts)" if attempt else "")) from None
            if resp.status_code in RETRYABLE_STATUS and attempt < retries:
                delay = retry_after_seconds(resp.headers.get("retry-after"), cap=self.options.max_retry_after)
                if delay is None:
                    delay = self.backoff(attempt)
                resp.close()
                log.info("%s %s: HTTP %d; retrying in %.1fs", method, redact_url(url), resp.status_code, delay)
                attempt += 1
                self.sleep(delay)
                continue
            return resp

    def _follow(self, method: str, url: str, *, headers: dict, body: Body, pull: bool) -> httpx.Response:
        start = origin(url)
        for _ in range(_MAX_REDIRECTS + 1):
            host = urlsplit(url).netloc
            hdrs = dict(headers)
            if origin(url) != start:
                # Credentials belong to the registry's origin: a redirect elsewhere (a CDN, storage) gets none.
                hdrs.pop("Authorization", None)
            content = body() if callable(body) else body
            req = self._http(host, pull=pull).build_request(method, url, headers=hdrs, content=content)
            resp = self._http(host, pull=pull).send(req, stream=True)
            location = resp.headers.get("location")
            if resp.status_code not in _REDIRECTS or not location or method not in ("GET", "HEAD"):
                return resp
            resp.close()
            url = urljoin(url, location)
            log.debug("redirected to %s", redact_url(url))
        raise RegistryError(f"{method} {redact_url(url)}: too many redirects")

    def request(self, method: str, url: str, *, host: str, scopes: tuple[str, ...], pull: bool,
                headers: dict | None = None, body: Body = None, ok: Iterable[int] = (200,),
                retries: int | None = None, what: str = "") -> httpx.Response:
        """An authenticated request to ``host``'s API (``url`` absolute, or a path); returns a streamed response
        whose status is in ``ok``, else raises RegistryHTTPError. The caller closes the response."""
        if url.startswith("/"):
            url = self.base_url(host, pull=pull) + url
        else:
            self.base_url(host, pull=pull)
        auth = self._authenticator(host, pull=pull)
        registry_origin = origin(self.base_url(host, pull=pull))
        challenged = False
        while True:
            hdrs = dict(headers or {})
            if origin(url) == registry_origin:
                value = auth.header(scopes, lambda m, u, headers, body: self._send_raw(
                    m, u, headers=headers, body=body, pull=pull))
                if value:
                    hdrs["Authorization"] = value
            resp = self._send_raw(method, url, headers=hdrs, body=body, pull=pull, retries=retries)
            if resp.status_code == 401 and not challenged and origin(url) == registry_origin:
                # First 401, or a token that expired mid-operation: learn the challenge, get a new token, retry once.
                challenged = True
                auth.unauthorized(resp)
                resp.close()
                continue
            if resp.status_code in set(ok):
                return resp
            raise self.error_from(resp, method=method, url=url, what=what, credential=auth.credential)

    def error_from(self, resp: httpx.Response, *, method: str, url: str, what: str = "",
                   credential: Credential = ANONYMOUS) -> RegistryHTTPError:
        """A one-line error naming the request, the status and the registry's own error code."""
        detail = ""
        try:
            body = b""
            if method != "HEAD":
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) >= _ERROR_BODY_LIMIT:
                        break
            errors = httpx.Response(200, content=body).json().get("errors") if body else None
            if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                detail = f"{errors[0].get('code', '')}: {errors[0].get('message', '')}".strip(": ")
        except (ValueError, AttributeError, httpx.HTTPError):
            pass
        finally:
            resp.close()
        status = resp.status_code
        hint = ""
        if status == 401:
            hint = "credentials were rejected" if credential.username or credential.identity_token else \
                f"authentication required, no credentials ({credential.source})" \
                if credential.source.startswith("anonymous: ") else \
                "authentication required, no credentials configured"
        elif status == 403:
            hint = "access denied"
        for secret in credential.secrets:
            detail = detail.replace(secret, "***")
        subject = f"{what}: " if what else ""
        return RegistryHTTPError(f"{subject}{method} {redact_url(url)}: HTTP {status}" + (f": {hint}" if hint else "")
                                 + (f" ({detail[:300]})" if detail else ""), status=status,
                                 retry_after=retry_after_seconds(resp.headers.get("retry-after"),
                                                                 cap=self.options.max_retry_after))


def run_parallel(fn: Callable, items: list, *, workers: int, name: str) -> None:
    """``fn(item)`` for every item on up to ``workers`` threads; the first error cancels what has not started."""
    workers = max(1, min(workers, len(items)))
    if workers == 1:
        for item in items:
            fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    try:
        for fut in [pool.submit(fn, item) for item in items]:
            fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def read_limited(resp: httpx.Response, *, limit: int, what: str) -> bytes:
    """Read a small response body (manifest, config), refusing more than ``limit`` bytes."""
    data = bytearray()
    try:
        for chunk in resp.iter_bytes():
            data += chunk
            if len(data) > limit:
                raise RegistryError(f"{what} is larger than {limit} bytes")
    except httpx.TransportError as exc:
        raise RegistryConnectionError(f"{what}: {describe_transport_error(exc)}") from None
    finally:
        resp.close()
    return bytes(data)


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"

__all__ = ["RegistryClient", "RegistryConnectionError", "RegistryHTTPError", "RegistryOptions", "RegistryTLSError"]
