"""One build's use of the layer cache: concurrent lookups, hits with verified layers, explained misses,
background stores, and the ``--cache-report``.

The cache never fails a build: an unreadable, corrupt, truncated or expired entry is a warning and a miss; a
registry that is down or answers 5xx turns the cache off for the rest of the build (one warning, not one per
step); a failed store is a warning.
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from snapfs.errors import SnapfsError
from snapfs.image.blobstore import BlobStore
from snapfs.image.model import Image, Layer, canonical_json
from snapfs.platforms import Platform
from .keys import PARENT_CHANGED, StepInputs, explain, tag_for
from .store import CacheError, CacheStore

log = logging.getLogger("snapfs.cache")

SECTION = "snapfs.cache"  # the entry config's field that holds the inputs
DEFAULT_TTL = 336 * 3600.0  # Kaniko's --cache-ttl default, two weeks


@dataclass(frozen=True)
class CacheOptions:
    """Kaniko's cache flags, as values."""

    enabled: bool = False  # --cache
    repo: str = ""  # --cache-repo: a registry repository or oci:DIR ("": <first destination>/cache)
    ttl: float = DEFAULT_TTL  # --cache-ttl, seconds
    copy_layers: bool = False  # --cache-copy-layers
    run_layers: bool = True  # --cache-run-layers
    push: bool = True  # False: --no-push-cache
    report_file: str | None = None  # --cache-report


@dataclass(frozen=True)
class Hit:
    key: str
    layers: tuple[Layer, ...]  # local, verified; empty for a step that changed no file
    created_by: str


@dataclass(frozen=True)
class Miss:
    key: str
    reason: str
    parent_changed: bool = False  # the reason is the state before the step (the caller may say which step)
    stored_result: str | None = None  # the diff_id ("" for none) of the entry stored last for this step


@dataclass
class _Row:
    step: int
    instruction: str
    key: str | None
    result: str  # hit | miss | uncached
    reason: str
    lookup_seconds: float
    seconds: float = 0.0


@dataclass
class StepCache:
    store: CacheStore
    options: CacheOptions
    blobs: BlobStore  # where a hit's layers are put (the build's blob store)
    platform: Platform
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8, "snapfs-cache"))
    _prefetched: dict = field(default_factory=dict)  # local key -> Future[Image | None]
    _pushes: list = field(default_factory=list)
    _off: str = ""  # why the cache stopped being used, once it did
    _prepared: bool = False
    rows: list = field(default_factory=list)

    # -- lookups -------------------------------------------------------------------------------------------

    def prefetch(self, inputs: list[StepInputs]) -> None:
        """Look up every step's local key at once (one round trip for a stage, not one per step)."""
        prepare = getattr(self.store, "prepare", None)
        if prepare is not None and inputs and not self._off and not self._prepared:
            self._prepared = True
            try:
                prepare()
            except CacheError as exc:
                if exc.unreachable:
                    self._turn_off(exc.message)
                else:
                    log.warning("cache: %s", exc.message)
        for i in inputs:
            local = i.local_key()
            if local not in self._prefetched and not self._off:
                self._prefetched[local] = self._pool.submit(self._get, tag_for("l", local))

    def lookup(self, inputs: StepInputs) -> Hit | Miss:
        key = inputs.key()
        if self._off:
            return Miss(key, f"cache off: {self._off}")
        try:
            entry = None
            fut: Future | None = self._prefetched.get(inputs.local_key())
            if fut is not None:
                entry = fut.result()
            config = entry.config() if entry is not None else {}
            if _section(config).get("key") != key:  # none, or the same step on another state
                entry = self._get(tag_for("k", key))
                config = entry.config() if entry is not None else {}
            if entry is not None:
                age = time.time() - float(_section(config).get("stored") or 0)
                if age > self.options.ttl:
                    return Miss(key, f"the entry expired ({age / 3600:.0f}h old, --cache-ttl "
                                     f"{self.options.ttl / 3600:.0f}h)")
                layers = self.store.local_layers(entry, self.blobs)
                history = config.get("history") or [{}]
                return Hit(key, layers, str(history[-1].get("created_by", "")))
            slot = self._get(tag_for("s", inputs.slot))
            config = slot.config() if slot is not None else {}
            reason = explain(_section(config).get("inputs") if slot is not None else None, inputs)
            result = None
            if slot is not None:
                diff_ids = config.get("rootfs", {}).get("diff_ids") or [""]
                result = str(diff_ids[-1])
            return Miss(key, reason, parent_changed=reason == PARENT_CHANGED, stored_result=result)
        except _Unreachable as exc:
            return Miss(key, f"cache off: {exc}")
        except (CacheError, SnapfsError, OSError, ValueError) as exc:
            log.warning("cache: %s; the step runs", _message(exc))
            return Miss(key, f"unusable entry: {_message(exc)}")

    def _get(self, tag: str) -> Image | None:
        if self._off:
            raise _Unreachable(self._off)
        try:
            return self.store.get(tag)
        except CacheError as exc:
            if exc.unreachable:
                self._turn_off(exc.message)
                raise _Unreachable(self._off) from None
            raise

    def _turn_off(self, why: str) -> None:
        if not self._off:
            self._off = f"{self.store.name} unreachable ({why})"
            log.warning("cache: %s; building without the cache", self._off)

    # -- stores --------------------------------------------------------------------------------------------

    def record(self, inputs: StepInputs, layer: Layer | None, *, created_by: str) -> None:
        """Store a step's result in the background (``--no-push-cache``: not at all)."""
        if not self.options.push or self._off:
            return
        entry = make_entry(inputs, layer, created_by=created_by, platform=self.platform)
        tags = [tag_for("k", inputs.key()), tag_for("l", inputs.local_key()), tag_for("s", inputs.slot)]
        self._pushes.append(self._pool.submit(self._put, entry, tags))

    def _put(self, entry: Image, tags: list[str]) -> None:
        try:
            self.store.put(entry, tags)
        except (CacheError, SnapfsError, OSError) as exc:
            log.warning("cache: storing %s failed: %s (the build goes on)", tags[0], _message(exc))

    # -- report --------------------------------------------------------------------------------------------

    def note(self, *, step: int, instruction: str, key: str | None, result: str, reason: str,
             lookup_seconds: float, seconds: float) -> None:
        self.rows.append(_Row(step, instruction, key, result, reason, round(lookup_seconds, 4), round(seconds, 4)))

    def close(self) -> None:
        """Wait for the stores to finish (a failed one has warned) and write the report."""
        for fut in self._pushes:
            fut.result()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.options.report_file:
            data = {"cache": self.store.name, "enabled": not self._off, "off_reason": self._off or None,
                    "steps": [vars(r) for r in self.rows],
                    "hits": sum(r.result == "hit" for r in self.rows),
                    "misses": sum(r.result == "miss" for r in self.rows)}
            with open(self.options.report_file, "w") as f:
                json.dump(data, f, indent=2)

    def abandon(self) -> None:
        """The build failed: stores already running finish (their steps did succeed), nothing is reported."""
        self._pool.shutdown(wait=True, cancel_futures=False)


class _Unreachable(Exception):
    pass


def _message(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc)


def _section(config: dict) -> dict:
    """The cache's part of an entry's config (empty when the config has none)."""
    section = config.get(SECTION)
    return section if isinstance(section, dict) else {}


def make_entry(inputs: StepInputs, layer: Layer | None, *, created_by: str, platform: Platform) -> Image:
    """The OCI image that stores one step's result (see :mod:`snapfs.cache.store`)."""
    config = {
        "architecture": platform.architecture, "os": platform.os,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id] if layer is not None else []},
        "history": [{"created_by": created_by, **({} if layer is not None else {"empty_layer": True})}],
        SECTION: {"key": inputs.key(), "inputs": inputs.to_json(), "stored": int(time.time())},
    }
    if platform.variant:
        config["variant"] = platform.variant
    return Image(config_bytes=canonical_json(config), layers=(layer,) if layer is not None else ())
