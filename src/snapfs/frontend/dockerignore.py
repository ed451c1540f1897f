""".dockerignore: loading and matching with the semantics of moby's ``ignorefile`` and ``patternmatcher``.

Loading: ``<Dockerfile>.dockerignore`` next to the Dockerfile wins over ``<context>/.dockerignore``; an ignore file
that is a symlink must resolve inside the context. Lines starting with ``#`` are comments, patterns are cleaned
like Go's ``filepath.Clean`` (``./a/`` is ``a``) and a leading ``/`` is dropped.

Matching: Go ``filepath.Match`` syntax (``*``, ``?``, ``[...]``, ``\\`` escapes) plus ``**`` for any number of
directories; patterns apply in order and ``!`` re-includes. A path is also excluded when a pattern matches one of
its parent directories. ``may_descend`` tells a context walker whether an excluded directory can still contain
re-included paths, so it only walks into excluded trees when it must.
"""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

from snapfs.errors import DockerfileError

MAX_IGNORE_FILE = 4 << 20  # bytes


@dataclass(frozen=True, slots=True)
class IgnorePattern:
    text: str  # cleaned pattern without the leading "!"
    exclusion: bool  # "!" pattern: re-include
    regex: re.Pattern[str]
    dirs: tuple[str, ...]  # the pattern split at "/", for may_descend
    line: int


@dataclass(frozen=True, slots=True)
class DockerIgnore:
    patterns: tuple[IgnorePattern, ...] = ()
    file: str | None = None  # where the patterns came from, None when there is no ignore file

    def excluded(self, path: str) -> bool:
        """Whether a context-relative path (``/``-separated) is left out of the build context."""
        path = _clean(path.replace(os.sep, "/")).lstrip("/")
        if path in (".", ""):
            return False
        parent = posixpath.dirname(path)
        parents = parent.split("/") if parent else []
        matched = False
        for pat in self.patterns:
            if pat.exclusion != matched:
                continue  # only an exclusion can undo a match, only an inclusion can make one
            hit = pat.regex.match(path) is not None
            if not hit and parents:
                hit = any(pat.regex.match("/".join(parents[: i + 1])) for i in range(len(parents)))
            if hit:
                matched = not pat.exclusion
        return matched

    def may_descend(self, directory: str) -> bool:
        """Whether an excluded ``directory`` may hold paths that a later ``!`` pattern re-includes."""
        parts = [p for p in _clean(directory.replace(os.sep, "/")).lstrip("/").split("/") if p not in ("", ".")]
        for pat in self.patterns:
            if not pat.exclusion:
                continue
            if _prefix_could_match(pat.dirs, parts):
                return True
        return False

    @property
    def has_exclusions(self) -> bool:
        return any(p.exclusion for p in self.patterns)


def _prefix_could_match(pattern_dirs: tuple[str, ...], parts: list[str]) -> bool:
    for i, part in enumerate(parts):
        if i >= len(pattern_dirs):
            return False
        pd = pattern_dirs[i]
        if "**" in pd:
            return True
        if not component_regex(pd).fullmatch(part):
            return False
    return True


def component_regex(component: str) -> re.Pattern[str]:
    """The regex for one path component of a pattern (``*``/``?``/``[...]``); never matches if it is invalid."""
    try:
        return re.compile(_translate(component))
    except re.error:
        return re.compile(r"(?!)")


_component_regex = component_regex  # the name copier.py imported first


def parse_dockerignore(text: str | bytes, *, file: str = ".dockerignore") -> DockerIgnore:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    patterns = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = _clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        elif invert:
            raise DockerfileError('illegal exclusion pattern: "!"', file=file, line=number, column=1)
        try:
            regex = re.compile(_translate(pattern))
        except re.error as exc:
            raise DockerfileError(f"syntax error in pattern {pattern!r}: {exc.msg}", file=file, line=number,
                                  column=1) from None
        patterns.append(IgnorePattern(pattern, invert, regex, tuple(pattern.split("/")), number))
    return DockerIgnore(tuple(patterns), file)


def load_dockerignore(context: str | os.PathLike[str], *, dockerfile: str | os.PathLike[str] | None = None
                      ) -> DockerIgnore:
    """The ignore rules for a build: ``<dockerfile>.dockerignore`` if it exists, else ``<context>/.dockerignore``."""
    context = os.path.realpath(context)
    candidates = []
    if dockerfile is not None:
        candidates.append(os.fspath(dockerfile) + ".dockerignore")
    candidates.append(os.path.join(context, ".dockerignore"))
    for path in candidates:
        if not os.path.lexists(path):
            continue
        if os.path.islink(path):
            target = os.path.realpath(path)
            if os.path.commonpath([context, target]) != context:
                raise DockerfileError("ignore file is a symlink that points outside the build context", file=path)
        if not os.path.isfile(path):
            raise DockerfileError("ignore file is not a regular file", file=path)
        with open(path, "rb") as fh:
            data = fh.read(MAX_IGNORE_FILE + 1)
        if len(data) > MAX_IGNORE_FILE:
            raise DockerfileError(f"ignore file larger than {MAX_IGNORE_FILE} bytes", file=path)
        return parse_dockerignore(data, file=path)
    return DockerIgnore()


def _clean(path: str) -> str:
    """Go's ``filepath.Clean`` for ``/`` paths (posixpath.normpath keeps a leading ``//``, Go does not)."""
    if not path:
        return "."
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def _translate(pattern: str) -> str:
    """Pattern to regex like patternmatcher: ``*`` and ``?`` stop at ``/``, ``**`` crosses directories, brackets
    pass through, ``\\`` escapes the next character."""
    out = ["^"]
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        ch = pattern[i]
        i += 1
        if in_class:
            if ch == "]":
                in_class = False
                out.append("]")
            elif ch == "\\" and i < n:
                out.append(re.escape(pattern[i]))
                i += 1
            elif ch == "^" and out[-1] == "[":
                out.append("^")
            elif ch == "-":
                out.append("-")
            else:
                out.append(re.escape(ch))
            continue
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                out.append(".*" if i >= n else "(?:.*/)?")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i < n:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                raise re.error("trailing backslash")
        elif ch == "[":
            in_class = True
            out.append("[")
        else:
            out.append(re.escape(ch))
    if in_class:
        raise re.error("unterminated character class")
    out.append("$")
    return "".join(out)
