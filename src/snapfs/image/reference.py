"""Image references (``[registry[:port]/]repo[:tag][@digest]``) and digests: parsing and validation, no IO.

A reference names a manifest in a repository. Docker Hub short names get their defaults here, once
(``busybox`` -> ``docker.io/library/busybox:latest``), so nothing downstream has to know about them. Digests are
validated before they are ever used in a file path or URL, because they come from untrusted manifests.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from snapfs.errors import InputError

DEFAULT_REGISTRY = "docker.io"
# docker.io is a name, not a host: the API lives here, and Docker Hub credentials are stored under the v1 URL.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST_RE = re.compile(
    r"^(?:(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])(?:\.(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]))*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
_DIGEST_ALGOS = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"^[0-9a-f]+$")
_MAX_NAME = 255


def validate_digest(digest: str, *, what: str = "digest") -> str:
    """Return ``digest`` if it is ``sha256:<64 lowercase hex>`` (or sha512); raise InputError otherwise."""
    algo, sep, hexpart = str(digest).partition(":")
    want = _DIGEST_ALGOS.get(algo)
    if not sep or want is None or len(hexpart) != want or not _HEX_RE.match(hexpart):
        raise InputError(f"invalid {what} {_clip(digest)!r}: expected sha256 followed by 64 lowercase hex digits")
    return digest


def digest_parts(digest: str) -> tuple[str, str]:
    """``(algorithm, hex)`` of a validated digest: safe to use as path components."""
    validate_digest(digest)
    algo, _, hexpart = digest.partition(":")
    return algo, hexpart


def _clip(text: object, limit: int = 80) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def normalize_registry(host: str) -> str:
    """Docker Hub's aliases all become ``docker.io``; other hosts are lowercased."""
    host = host.lower()
    return DEFAULT_REGISTRY if host in _HUB_ALIASES else host


def _looks_like_registry(part: str) -> bool:
    # Docker's rule: the first component is a host if it has a dot or a port, or is exactly "localhost".
    return "." in part or ":" in part or part == "localhost" or part.startswith("[")


@dataclass(frozen=True)
class Reference:
    """A parsed reference. ``tag`` and ``digest`` may both be set; the digest then wins for fetching."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``, the part before tag and digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What goes after ``/manifests/``: the digest if known, else the tag (``latest`` by default)."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        """The host that serves the registry API for this reference."""
        return DOCKER_HUB_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    def with_tag(self, tag: str) -> Reference:
        if not _TAG_RE.match(tag):
            raise InputError(f"invalid tag {_clip(tag)!r}")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=validate_digest(digest))

    def with_registry(self, registry: str, *, prefix: str = "") -> Reference:
        """The same repository on another registry (a mirror), optionally under a path prefix."""
        repo = f"{prefix.strip('/')}/{self.repository}" if prefix.strip("/") else self.repository
        return replace(self, registry=normalize_registry(registry), repository=repo)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def short(self) -> str:
        """``name:tag`` or ``name@digest`` without adding a default tag: for logs and digest files."""
        return str(self)


def parse_reference(text: str, *, default_tag: str | None = "latest") -> Reference:
    """Parse and normalise a reference; raise InputError with the reason if it is not valid.

    ``default_tag`` is used when neither a tag nor a digest is given (``None`` keeps the tag empty).
    """
    original = text
    if not text or text != text.strip() or any(c.isspace() for c in text):
        raise InputError(f"invalid image reference {_clip(original)!r}: empty or contains whitespace")
    digest = None
    if "@" in text:
        text, _, digest = text.partition("@")
        try:
            validate_digest(digest)
        except InputError:
            raise InputError(f"invalid image reference {_clip(original)!r}: bad digest") from None
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:  # a colon after the last slash separates the tag (a port's colon comes before a slash)
        text, tag = text[:colon], text[colon + 1:]
        if not _TAG_RE.match(tag):
            raise InputError(f"invalid image reference {_clip(original)!r}: bad tag {_clip(tag)!r}")
    first, sep, rest = text.partition("/")
    if sep and _looks_like_registry(first):
        registry, repository = first, rest
        if not _HOST_RE.match(registry):
            raise InputError(f"invalid image reference {_clip(original)!r}: bad registry {_clip(registry)!r}")
    else:
        registry, repository = DEFAULT_REGISTRY, text
    registry = normalize_registry(registry)
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPO_RE.match(repository):
        raise InputError(f"invalid image reference {_clip(original)!r}: repository must be lowercase "
                         "letters, digits and separators")
    if len(registry) + 1 + len(repository) > _MAX_NAME:
        raise InputError(f"invalid image reference {_clip(original)!r}: name longer than {_MAX_NAME} characters")
    if tag is None and digest is None and default_tag:
        tag = default_tag
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


def split_registry_spec(spec: str) -> tuple[str, str]:
    """``host[:port][/prefix]`` (a mirror or a --registry-map target) -> ``(host, prefix)``."""
    spec = spec.strip()
    for scheme in ("https://", "http://"):
        if spec.startswith(scheme):
            spec = spec[len(scheme):]
    host, _, prefix = spec.partition("/")
    if not host or not _HOST_RE.match(host):
        raise InputError(f"invalid registry {_clip(spec)!r}")
    return normalize_registry(host), prefix.strip("/")
