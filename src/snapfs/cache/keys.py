"""Layer-cache keys: what a step's result depends on, hashed; and, on a miss, which of it changed.

A step's inputs are a small JSON document (:class:`StepInputs`). In it, build-arg and environment values are
only hashes, so an entry can say *that* ``VERSION`` changed without listing values (a hash of a short value can
be guessed: build args are not secrets, ``--mount=type=secret`` is; and the entry's history, like the image's,
shows a RUN's build args as Docker records them); file contents are SHA-256 digests. Three names come from the inputs:

- the **key** (:meth:`StepInputs.key`): everything, including ``parent``, the state of the stage before the
  step. The state chains on the previous step's *result* (its layer's diff_id, or the config a metadata step
  left), not on the previous key: a step that runs again and makes a byte-identical layer leaves the same state,
  so the steps after it hit again (Kaniko chains keys, so one miss misses everything after it).
- the **local key**: the inputs that do not depend on earlier steps' results. Every step's local key is known
  when its stage starts, so all of them are looked up at once, concurrently (:mod:`snapfs.cache.session`).
- the **slot**: where the step sits in the Dockerfile. The entry stored last for a slot is what a miss is
  explained against (:func:`explain`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

VERSION = 1
MAX_LISTED = 3  # changed files named in one explanation
MAX_FILE_TABLE = 20_000  # entries beyond this keep only the table's digest (an explanation says "files changed")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8",
                                                                                          "surrogateescape")


def secret_hash(name: str, value: str) -> str:
    """A value's stand-in in a stored entry: equal values compare equal, the value itself is never kept."""
    return _digest(f"snapfs-cache-value\0{name}\0{value}".encode("utf-8", "surrogateescape"))[:39]


def hashed_values(values: Mapping[str, str]) -> dict[str, str]:
    return {k: secret_hash(k, v) for k, v in sorted(values.items())}


@dataclass(frozen=True)
class FileTable:
    """The files a step reads (COPY/ADD sources, RUN bind mounts): path -> record digest, and per path the
    parts an explanation names (type, mode, owner, size, content)."""

    records: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (path, (type, mode, owner, size, content digest))

    @property
    def digest(self) -> str:
        return _digest(canonical([[p, list(r)] for p, r in self.records]))

    def to_json(self) -> dict:
        if len(self.records) > MAX_FILE_TABLE:
            return {"digest": self.digest, "count": len(self.records)}
        return {"digest": self.digest, "files": {p: list(r) for p, r in self.records}}


_PARTS = ("type", "mode", "owner", "size", "content")
PARENT_CHANGED = "the filesystem or config before this step changed (an earlier step's result or the base image)"


@dataclass(frozen=True)
class StepInputs:
    """Everything a cached step's result depends on. ``parent`` is the stage state before the step."""

    slot: str  # stage and position in it: which stored entry an explanation compares with
    instruction: dict  # the expanded instruction's fields (never its line number)
    parent: str
    platform: str = ""
    layer_format: dict = field(default_factory=dict)  # compression, level, epoch, media types
    args: dict = field(default_factory=dict)  # name -> secret_hash (RUN: the ARGs it sees)
    env: dict = field(default_factory=dict)  # name -> secret_hash (RUN: its environment)
    config: dict = field(default_factory=dict)  # user, workdir, shell (also in parent; named for explanations)
    files: dict = field(default_factory=dict)  # "sources" / "mount:<target>" -> FileTable.to_json()
    extra: dict = field(default_factory=dict)  # e.g. ADD: a URL's checksum, a repository's commit

    def to_json(self) -> dict:
        return {"version": VERSION, "slot": self.slot, "instruction": self.instruction, "parent": self.parent,
                "platform": self.platform, "layer_format": self.layer_format, "args": self.args, "env": self.env,
                "config": self.config, "files": self.files, "extra": self.extra}

    def _hashed(self, *, local: bool) -> str:
        doc = self.to_json()
        del doc["slot"]  # two positions running the same step on the same state share the result
        doc["files"] = {name: table["digest"] for name, table in doc["files"].items()}  # the digest covers it
        if local:
            for name in ("parent", "config"):
                del doc[name]
        return _digest(canonical(doc))

    def key(self) -> str:
        return self._hashed(local=False)

    def local_key(self) -> str:
        return self._hashed(local=True)


def state_after(parent: str, *, diff_id: str | None = None, config: Mapping | None = None) -> str:
    """The stage state after a step: the previous state plus the step's result (a layer's diff_id, or the
    runtime config a metadata step left; an empty-layer step leaves the state as it was)."""
    if diff_id is None and config is None:
        return parent
    result = diff_id if diff_id is not None else _digest(canonical(dict(config or {})))
    return _digest(f"{parent}\0{result}".encode())


def initial_state(base: str, config: Mapping) -> str:
    """A stage's state before its first step: the base (chain of diff_ids, or a stage's state) and config."""
    return _digest(canonical({"base": base, "config": dict(config)}))


def tag_for(kind: str, digest: str) -> str:
    """A registry tag naming an entry: ``k-`` exact key, ``l-`` local key, ``s-`` slot (tags are at most 128
    characters of ``[A-Za-z0-9_.-]``)."""
    return f"snapfs-{kind}-{digest.split(':', 1)[-1]}"


def slot_of(stage: str, position: int, keyword: str) -> str:
    return _digest(f"{stage}\0{position}\0{keyword}".encode())


def explain(stored: Mapping | None, now: StepInputs) -> str:
    """One line: which input of ``now`` differs from the entry stored last for the same step."""
    if not stored:
        return "no entry for this step yet"
    if stored.get("version") != VERSION:
        return "the stored entry was written by another snapfs cache version"
    cur = now.to_json()
    if stored.get("instruction") != cur["instruction"]:
        return "the instruction changed"
    for what, label in (("args", "build arg"), ("env", "env")):
        changed = _changed_names(stored.get(what) or {}, cur[what])
        if changed:
            return f"{label} {changed} changed"
    if stored.get("platform") != cur["platform"]:
        return f"the platform changed ({stored.get('platform')} -> {cur['platform']})"
    if stored.get("layer_format") != cur["layer_format"]:
        return "the layer format changed (compression, level or timestamps)"
    files = _file_changes(stored.get("files") or {}, cur["files"])
    if files:
        return files
    old_cfg = stored.get("config") or {}
    for name in sorted(set(old_cfg) | set(cur["config"])):
        if old_cfg.get(name) != cur["config"].get(name):
            return f"{name} changed ({old_cfg.get(name)!r} -> {cur['config'].get(name)!r})"
    if stored.get("extra") != cur["extra"]:
        names = sorted(k for k in set(stored.get("extra") or {}) | set(cur["extra"])
                       if (stored.get("extra") or {}).get(k) != cur["extra"].get(k))
        return f"{', '.join(names)} changed"
    if stored.get("parent") != cur["parent"]:
        return PARENT_CHANGED
    return "an entry with these inputs exists under another key (written by another snapfs version?)"


def _changed_names(old: Mapping, new: Mapping) -> str:
    names = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def _file_changes(old: Mapping, new: Mapping) -> str:
    out: list[str] = []
    total = 0
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name) or {}, new.get(name) or {}
        if a.get("digest") == b.get("digest"):
            continue
        where = "" if name == "sources" else f" ({name})"
        fa, fb = a.get("files"), b.get("files")
        if fa is None or fb is None:
            out.append(f"the source files changed{where}")
            total += 1
            continue
        for path in sorted(set(fa) | set(fb)):
            if path not in fb:
                what = f"{path or '.'} removed"
            elif path not in fa:
                what = f"{path or '.'} added"
            elif fa[path] != fb[path]:
                parts = [p for p, x, y in zip(_PARTS, fa[path], fb[path]) if x != y]
                what = f"{path or '.'} changed ({', '.join(parts)})"
            else:
                continue
            total += 1
            if len(out) < MAX_LISTED:
                out.append(what + where)
    if not total:
        return ""
    more = total - len(out)
    return ", ".join(out) + (f" and {more} more" if more > 0 else "")
