"""What each tag named when ``snapfs warm`` pulled it: ``<cache-dir>/refs.json``.

A base given by tag is resolved with the registry on every build (a ``HEAD``), so a tag moved since the cache was
warmed is noticed. When the registry cannot be reached, a tag recorded here for the same platform is used as it
was when warmed, with a warning that it was not re-checked; any other failure, or a tag never warmed, is the
usual error. A base pinned by digest needs neither the registry nor this file.

The file is JSON, ``{"refs": {"<registry>/<repository>:<tag>": {"<os/arch[/variant]>": "<manifest digest>"}}}``,
replaced atomically; concurrent warmers serialise on a lock next to it, so none loses another's entries.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os

from snapfs.platforms import Platform
from .layout import atomic_write
from snapfs.errors import InputError
from .reference import Reference, validate_digest

log = logging.getLogger("snapfs.registry")

REFS_FILE = "refs.json"
_MAX_BYTES = 4 << 20


class WarmRefs:
    """The tag -> digest records of one cache directory."""

    def __init__(self, cache_dir: str) -> None:
        self.path = os.path.join(cache_dir, REFS_FILE)

    def _read(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read(_MAX_BYTES))
        except (OSError, ValueError):  # absent, unreadable or damaged: nothing recorded
            return {}
        refs = data.get("refs") if isinstance(data, dict) else None
        return refs if isinstance(refs, dict) else {}

    def lookup(self, ref: Reference, platform: Platform) -> str | None:
        """The manifest digest ``ref`` (a tag) named for ``platform`` when it was warmed, or None."""
        if ref.digest or not ref.tag:
            return None
        digest = (self._read().get(str(ref)) or {}).get(str(platform))
        try:
            return validate_digest(digest) if isinstance(digest, str) else None
        except InputError:  # a hand-edited file: no record rather than a confusing error
            return None

    def record(self, ref: Reference, platform: Platform, digest: str) -> None:
        """Remember that tag ``ref`` named manifest ``digest`` for ``platform`` (a digest reference: no-op)."""
        if ref.digest or not ref.tag:
            return
        with self._locked():
            refs = self._read()
            refs.setdefault(str(ref), {})[str(platform)] = digest
            body = json.dumps({"refs": refs}, indent=1, sort_keys=True).encode() + b"\n"
            atomic_write(self.path, body)

    @contextlib.contextmanager
    def _locked(self):
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
