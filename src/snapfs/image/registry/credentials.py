"""Registry credentials, found the way Docker and Kaniko users already store them.

``$DOCKER_CONFIG/config.json``, then ``~/.docker/config.json``, then Kaniko's ``/kaniko/.docker/config.json``:
``auths`` entries (``auth`` = base64 ``user:pass``, or ``username``/``password``, or ``identitytoken``),
``credHelpers`` per registry and a default ``credsStore``, both run as ``docker-credential-<name> get``, except
the cloud helpers Kaniko bundles (``ecr-login``, ``gcr``/``gcloud``, ``acr-env``), which are built in
(:mod:`.cloud`). A registry with no entry of its own on a cloud's registry host gets that cloud's credentials
automatically, as with Kaniko; an explicit ``auths`` entry always wins over a cloud provider.
Secrets never reach logs or error messages: ``Credential``'s repr masks them and helper failures are reported
by helper name and exit status only.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Mapping

from snapfs.errors import InputError, RegistryError
from snapfs.image.reference import DEFAULT_REGISTRY, DOCKER_HUB_AUTH_KEY, normalize_registry
from . import cloud

log = logging.getLogger(__name__)

KANIKO_DOCKER_CONFIG = "/kaniko/.docker"
_HELPER_TIMEOUT = 60
_RENEW_MARGIN = 60.0  # look an expiring credential up again this long before it expires


@dataclass(frozen=True)
class Credential:
    """Basic credentials or an identity (refresh) token for one registry."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    source: str = ""
    expires_at: float = 0.0  # epoch seconds; 0: does not expire (config.json entries, helpers)

    def __repr__(self) -> str:
        secret = "***" if (self.password or self.identity_token) else ""
        return f"Credential(username={self.username!r}, secret={secret!r}, source={self.source!r})"

    __str__ = __repr__

    def expiring(self, now: float | None = None) -> bool:
        """True when this credential expires within a minute (a cloud token): time to look it up again."""
        return bool(self.expires_at) and (time.time() if now is None else now) >= self.expires_at - _RENEW_MARGIN

    @property
    def secrets(self) -> tuple[str, ...]:
        """The strings that must never be printed (used to scrub messages)."""
        return tuple(s for s in (self.password, self.identity_token) if s)


ANONYMOUS = Credential(source="anonymous")


def _server_key(key: str) -> str:
    """``https://host:port/v1/`` (a config key) -> ``host:port``, Docker Hub's aliases -> ``docker.io``."""
    host = key.strip()
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme):]
    host = host.split("/", 1)[0]
    return normalize_registry(host)


def _helper_server_url(registry: str) -> str:
    return DOCKER_HUB_AUTH_KEY if registry == DEFAULT_REGISTRY else registry


def config_paths(env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    paths = []
    if env.get("DOCKER_CONFIG"):
        paths.append(os.path.join(env["DOCKER_CONFIG"], "config.json"))
    home = env.get("HOME") or os.path.expanduser("~")
    paths.append(os.path.join(home, ".docker", "config.json"))
    paths.append(os.path.join(KANIKO_DOCKER_CONFIG, "config.json"))
    return paths


@dataclass(frozen=True)
class DockerConfig:
    """The parsed credential parts of a docker ``config.json`` (empty if none was found)."""

    path: str = ""
    auths: tuple[tuple[str, Credential], ...] = ()
    cred_helpers: tuple[tuple[str, str], ...] = ()
    creds_store: str = ""

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> DockerConfig:
        """The first config.json that exists among ``config_paths``."""
        for path in config_paths(env):
            if os.path.isfile(path):
                return cls.from_file(path)
        return cls()

    @classmethod
    def from_file(cls, path: str) -> DockerConfig:
        try:
            with open(path, "rb") as f:
                obj = json.load(f)
        except OSError as exc:
            raise InputError(f"cannot read docker config {path}: {exc.strerror}") from None
        except ValueError:
            # The parser's message may quote the file's text, which holds secrets: say only where.
            raise InputError(f"docker config {path} is not valid JSON") from None
        if not isinstance(obj, dict):
            raise InputError(f"docker config {path} is not a JSON object")
        auths = []
        for key, entry in (obj.get("auths") or {}).items():
            if isinstance(entry, dict):
                cred = _parse_auth_entry(entry, path=path, key=key)
                if cred is not None:
                    auths.append((_server_key(key), cred))
        helpers = tuple((_server_key(k), str(v)) for k, v in (obj.get("credHelpers") or {}).items() if v)
        return cls(path=path, auths=tuple(auths), cred_helpers=helpers, creds_store=str(obj.get("credsStore") or ""))

    def lookup(self, registry: str) -> Credential:
        """Credentials for ``registry`` (a reference's registry, e.g. ``docker.io`` or ``host:5000``).

        Order: a ``credHelpers`` program, the ``auths`` entry, a built-in cloud helper named in ``credHelpers``,
        the ``credsStore`` (a built-in one only for its cloud's hosts), then the cloud provider whose registry
        hosts include ``registry``. A helper that has nothing for the registry lets the lookup go on to the
        automatic provider, as Kaniko's keychains do."""
        registry = normalize_registry(registry)
        helper = dict(self.cred_helpers).get(registry)
        builtin = cloud.provider_for_helper(helper) if helper else None
        if helper and builtin is None:
            cred = run_helper(helper, registry)
            return cred if cred is not ANONYMOUS else _automatic(registry)
        for key, cred in self.auths:
            if key == registry:
                return cred
        if builtin is not None:
            return cloud_credential(builtin, registry, explicit=True)
        store = cloud.provider_for_helper(self.creds_store) if self.creds_store else None
        if store is not None and store.matches(registry):
            return cloud_credential(store, registry, explicit=True)
        if self.creds_store and store is None:
            cred = run_helper(self.creds_store, registry)
            if cred is not ANONYMOUS:
                return cred
        return _automatic(registry)


def _automatic(registry: str) -> Credential:
    provider = cloud.provider_for_host(registry)
    return cloud_credential(provider, registry, explicit=False) if provider is not None else ANONYMOUS


_reported: set[str] = set()  # automatic-provider messages already logged by this process


def cloud_credential(provider: cloud.Provider, registry: str, *, explicit: bool) -> Credential:
    """``provider``'s credentials for ``registry``. Named in config.json (``explicit``), a failure is an error;
    found by host name, it is reported once and the registry is tried anonymously (public images still pull)."""
    try:
        token = cloud.get_token(provider, registry)
    except cloud.CloudCredentialError as exc:
        if explicit:
            raise
        if exc.message not in _reported:
            _reported.add(exc.message)
            log.log(logging.INFO if exc.kind == "no-credentials" else logging.WARNING,
                    "%s; trying %s anonymously", exc.message, registry)
        return Credential(source=f"anonymous: {exc.reason}")
    return Credential(username=token.username, password=token.password, source=f"built-in {provider.name}",
                      expires_at=token.expires_at)


def _parse_auth_entry(entry: dict, *, path: str, key: str) -> Credential | None:
    source = f"{path} auths[{key}]"
    if entry.get("identitytoken"):
        return Credential(username=str(entry.get("username", "") or ""),
                          identity_token=str(entry["identitytoken"]), source=source)
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InputError(f"docker config {path}: the auth entry for {key} is not base64 user:password") from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise InputError(f"docker config {path}: the auth entry for {key} is not base64 user:password")
        return Credential(username=user, password=password, source=source)
    if entry.get("username") or entry.get("password"):
        return Credential(username=str(entry.get("username", "")), password=str(entry.get("password", "")),
                          source=source)
    return None


def run_helper(name: str, registry: str) -> Credential:
    """``docker-credential-<name> get``: the server URL on stdin, JSON {Username, Secret} on stdout."""
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise InputError(f"invalid credential helper name {name!r}")
    program = f"docker-credential-{name}"
    try:
        proc = subprocess.run([program, "get"], input=_helper_server_url(registry).encode(), capture_output=True,
                              timeout=_HELPER_TIMEOUT, check=False)
    except FileNotFoundError:
        raise RegistryError(f"credential helper {program} not found on PATH (needed for {registry})") from None
    except subprocess.TimeoutExpired:
        raise RegistryError(f"credential helper {program} timed out for {registry}") from None
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        if "credentials not found" in out.lower() or "credentials not found" in proc.stderr.decode(
                "utf-8", "replace").lower():
            log.debug("credential helper %s has nothing for %s", program, registry)
            return ANONYMOUS
        # Never echo the helper's output: it may contain the secret it failed to format.
        raise RegistryError(f"credential helper {program} failed for {registry} (exit status {proc.returncode})")
    try:
        obj = json.loads(out)
        user, secret = str(obj.get("Username", "")), str(obj.get("Secret", ""))
    except (ValueError, AttributeError):
        raise RegistryError(f"credential helper {program} returned invalid JSON for {registry}") from None
    source = f"helper {program}"
    if user == "<token>":  # Docker's convention for an identity token
        return Credential(identity_token=secret, source=source)
    return Credential(username=user, password=secret, source=source)


class CredentialSource:
    """Looks credentials up once per registry and remembers them (helpers can be slow)."""

    def __init__(self, config: DockerConfig | None = None) -> None:
        self._config = config
        self._cache: dict[str, Credential] = {}

    def __call__(self, registry: str) -> Credential:
        registry = normalize_registry(registry)
        cached = self._cache.get(registry)
        if cached is None or cached.expiring():
            if self._config is None:
                self._config = DockerConfig.load()
            self._cache[registry] = self._config.lookup(registry)
            log.debug("credentials for %s: %r", registry, self._cache[registry])
        return self._cache[registry]
