"""Registry authentication: ``WWW-Authenticate`` challenges, HTTP Basic and the Bearer token flow.

A registry answers 401 with ``Bearer realm=..,service=..,scope=..`` (or ``Basic realm=..``). For Bearer we ask
the realm for a token covering the scopes we need (with Basic credentials or an identity token if we have
them) and cache it per (host, scopes) until shortly before it expires; a 401 on a request that carried a token
drops it and fetches a fresh one, which is how a token expiring in the middle of a long push is survived.
Credentials are sent only to the registry itself and to the realm it named, never to a redirect target.
"""
from __future__ import annotations

import base64
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlencode, urlsplit

import httpx

from snapfs.errors import RegistryError
from .credentials import Credential

log = logging.getLogger("snapfs.registry")

_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')
_DEFAULT_TOKEN_SECONDS = 60
_EXPIRY_MARGIN = 5.0  # refresh this long before the token's announced expiry, to absorb clock and latency


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer", "basic" or "" (the registry needs no auth)
    params: tuple[tuple[str, str], ...] = ()

    def get(self, key: str, default: str = "") -> str:
        return dict(self.params).get(key, default)


NO_AUTH = Challenge(scheme="")


def parse_challenge(header: str) -> Challenge:
    """``Bearer realm="..",service="..",scope=".."`` -> Challenge (unknown schemes kept by name)."""
    header = (header or "").strip()
    if not header:
        return NO_AUTH
    scheme, _, rest = header.partition(" ")
    params = []
    pos = 0
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if not m or m.end() == pos:
            break
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params.append((m.group(1).lower(), re.sub(r"\\(.)", r"\1", value)))
        pos = m.end()
    return Challenge(scheme=scheme.lower(), params=tuple(params))


def basic_header(cred: Credential) -> str:
    raw = f"{cred.username}:{cred.password}".encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass
class _Token:
    value: str = field(repr=False)
    expires_at: float


class Authenticator:
    """Auth state for one registry host: its challenge and the tokens fetched so far."""

    clock = staticmethod(time.monotonic)  # token lifetimes are measured on this clock (tests move it)

    def __init__(self, host: str, credential: Credential, *, plain_http_ok: bool) -> None:
        self.host = host
        self.credential = credential
        self.challenge: Challenge | None = None  # None until the registry was pinged or answered 401
        self._plain_http_ok = plain_http_ok
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._lock = threading.Lock()

    def header(self, scopes: tuple[str, ...], fetch: Callable[..., httpx.Response]) -> str | None:
        """The Authorization value for a request needing ``scopes`` (None: send nothing)."""
        ch = self.challenge
        if ch is None or not ch.scheme:
            return None
        if ch.scheme == "basic":
            return basic_header(self.credential) if self.credential.username else None
        if ch.scheme != "bearer":
            raise RegistryError(f"{self.host}: unsupported authentication scheme {ch.scheme!r}")
        key = tuple(sorted(set(scopes)))
        with self._lock:
            token = self._tokens.get(key)
            if token is None or self.clock() >= token.expires_at:
                token = self._fetch_token(key, fetch)
                self._tokens[key] = token
            return "Bearer " + token.value

    def unauthorized(self, response: httpx.Response) -> None:
        """A 401: learn the (possibly new) challenge and forget cached tokens so the next try fetches one."""
        self.challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        with self._lock:
            self._tokens.clear()

    def _fetch_token(self, scopes: tuple[str, ...], fetch: Callable[..., httpx.Response]) -> _Token:
        ch = self.challenge
        realm = ch.get("realm") if ch else ""
        parts = urlsplit(realm)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise RegistryError(f"{self.host}: the registry named an invalid token realm")
        if parts.scheme == "http" and not self._plain_http_ok:
            raise RegistryError(f"{self.host}: refusing to send credentials to a plain-HTTP token realm "
                                f"{parts.netloc} (mark the registry insecure to allow it)")
        wanted = list(scopes)
        for extra in (ch.get("scope") or "").split():
            if extra not in wanted:
                wanted.append(extra)
        service = ch.get("service")
        cred = self.credential
        headers = {}
        if cred.identity_token:
            # An identity token is an OAuth2 refresh token: exchange it with a POST, as Docker does.
            form = {"grant_type": "refresh_token", "refresh_token": cred.identity_token, "client_id": "snapfs",
                    "service": service, "scope": " ".join(wanted)}
            resp = fetch("POST", realm, headers={"Content-Type": "application/x-www-form-urlencoded"},
                         body=urlencode({k: v for k, v in form.items() if v}).encode())
        else:
            query = [("service", service)] if service else []
            query += [("scope", s) for s in wanted]
            url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
            if cred.username:
                headers["Authorization"] = basic_header(cred)
            resp = fetch("GET", url, headers=headers, body=None)
        try:
            if resp.status_code in (401, 403):
                what = "rejected the credentials" if (cred.username or cred.identity_token) else \
                    "requires credentials (none configured)"
                raise RegistryError(f"{self.host}: authentication failed: the token service {parts.netloc} "
                                    f"{what} (HTTP {resp.status_code})")
            if resp.status_code != 200:
                raise RegistryError(f"{self.host}: the token service {parts.netloc} answered HTTP "
                                    f"{resp.status_code}")
            try:
                body = resp.read()
                obj = httpx.Response(200, content=body).json()
                value = str(obj.get("token") or obj.get("access_token") or "")
                lifetime = float(obj.get("expires_in") or _DEFAULT_TOKEN_SECONDS)
            except (ValueError, AttributeError):
                raise RegistryError(f"{self.host}: the token service {parts.netloc} returned invalid JSON") from None
        finally:
            resp.close()
        if not value:
            raise RegistryError(f"{self.host}: the token service {parts.netloc} returned no token")
        log.debug("token for %s scopes %s, valid %.0fs", self.host, " ".join(wanted), lifetime)
        return _Token(value=value, expires_at=self.clock() + max(0.0, lifetime - min(_EXPIRY_MARGIN,
                                                                                            lifetime / 2)))
