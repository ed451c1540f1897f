"""Dockerfile syntax: text to frozen nodes with line numbers, the way BuildKit's ``parser`` package reads it.

This layer knows the shape of each instruction's arguments (JSON or shell form, key/value lists, words) but not
what any instruction means: unknown keywords become nodes too and the ``instructions`` layer rejects them. Flags
stay raw ``--name=value`` strings. Nothing here expands variables.

Handled: parser directives (``syntax``, ``escape``, ``check``) before the first instruction, comments, line
continuations (also across comment lines, empty continuation lines and at end of file), CRLF, a UTF-8 BOM, JSON
(exec) form with fallback to shell form when the JSON does not parse, and heredocs for RUN/COPY/ADD (also as an
ONBUILD trigger).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from snapfs.errors import DockerfileError
from .shellwords import Lexer, is_space

MAX_LINE = 256 * 1024  # characters per physical line; BuildKit's own scanner gives up at 64 KiB
MAX_INSTRUCTION = 1 << 20  # characters per instruction after joining continuation lines and heredocs

DIRECTIVES = ("syntax", "escape", "check")
_DIRECTIVE_RE = re.compile(r"#[\t\n\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*")
_WS_RE = re.compile(r"[\t\v\f\r ]+")
_HEREDOC_RE = re.compile(r"(\d*)<<(-?)([^<]*)", re.S)
_HEREDOC_KEYWORDS = frozenset({"RUN", "COPY", "ADD"})

# How each keyword's arguments are split; any other keyword is kept as an unknown node.
_FORMS = {
    "ADD": "json_or_words", "COPY": "json_or_words", "VOLUME": "json_or_words",
    "CMD": "json_or_string", "ENTRYPOINT": "json_or_string", "RUN": "json_or_string", "SHELL": "json_or_string",
    "ARG": "quoted_words", "ENV": "key_values", "LABEL": "key_values",
    "EXPOSE": "words", "FROM": "words",
    "MAINTAINER": "string", "STOPSIGNAL": "string", "USER": "string", "WORKDIR": "string",
    "HEALTHCHECK": "healthcheck", "ONBUILD": "subcommand",
}


@dataclass(frozen=True, slots=True)
class Heredoc:
    name: str
    content: str  # as written, including the final newline; ``<<-`` tab stripping is applied later
    expand: bool  # False when any part of the delimiter was quoted
    chomp: bool  # ``<<-``: strip leading tabs
    fd: int = 0  # ``3<<EOF`` redirects a file descriptor in RUN


@dataclass(frozen=True, slots=True)
class Node:
    """One instruction as written. ``args`` follow BuildKit's split for the keyword (see ``_FORMS``)."""

    keyword: str  # upper-cased
    args: tuple[str, ...]
    flags: tuple[str, ...] = ()
    json: bool = False  # exec (JSON array) form
    original: str = ""  # the joined line (continuations removed), plus heredoc bodies
    start_line: int = 0
    end_line: int = 0
    heredocs: tuple[Heredoc, ...] = ()
    trigger: Node | None = None  # the instruction an ONBUILD wraps
    column: int = 1  # where the keyword starts on ``start_line``


@dataclass(frozen=True, slots=True)
class Dockerfile:
    nodes: tuple[Node, ...]
    file: str = "Dockerfile"
    escape: str = "\\"
    directives: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = ()

    def directive(self, name: str) -> str | None:
        return dict(self.directives).get(name)


def parse(text: str | bytes, *, file: str = "Dockerfile") -> Dockerfile:
    """Parse Dockerfile text; raises ``DockerfileError`` naming ``file:line:column``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return _Parser(text, file).run()


def parse_line(text: str, *, escape: str = "\\", file: str = "Dockerfile", line: int = 1) -> Node:
    """Parse one instruction (with heredoc bodies following it), e.g. an ONBUILD trigger from an image config."""
    parser = _Parser(text, file, escape=escape, directives=False, first_line=line)
    result = parser.run(allow_empty=True)
    if len(result.nodes) != 1:
        raise DockerfileError("expected exactly one instruction", file=file, line=line, column=1)
    return result.nodes[0]


class _Parser:
    def __init__(self, text: str, file: str, *, escape: str = "\\", directives: bool = True,
                 first_line: int = 1) -> None:
        if text.startswith("\ufeff"):
            text = text[1:]
        # Go's scanner splits on "\n" only; "\r" is stripped from line ends later (trimNewline).
        self.lines = text.split("\n")
        if self.lines and self.lines[-1] == "":
            self.lines.pop()
        self.file = file
        self.escape = escape
        self.in_directives = directives
        self.directives: dict[str, str] = {}
        self.line_base = first_line - 1
        self.pos = 0
        self.warnings: list[str] = []
        self._set_escape(escape)

    # -- errors and escape -------------------------------------------------------------------------------------
    def error(self, message: str, line: int, column: int = 1) -> DockerfileError:
        return DockerfileError(message, file=self.file, line=line + self.line_base, column=column)

    def _set_escape(self, escape: str) -> None:
        self.escape = escape
        # A trailing escape continues the line unless it is itself escaped (``\\`` at the end does not).
        self.continuation = re.compile("(?<!" + re.escape(escape) + ")" + re.escape(escape) + r"[ \t]*$")

    # -- reading lines -----------------------------------------------------------------------------------------
    def _raw(self) -> str:
        line = self.lines[self.pos]
        self.pos += 1
        if len(line) > MAX_LINE:
            raise self.error(f"line too long ({len(line)} characters, limit {MAX_LINE})", self.pos)
        return line

    def _directive(self, line: str) -> None:
        if not self.in_directives:
            return
        m = _DIRECTIVE_RE.fullmatch(line)
        key = m.group(1).lower() if m else None
        if key not in DIRECTIVES:
            self.in_directives = False
            return
        if key in self.directives:
            raise self.error(f"only one {key} parser directive can be used", self.pos)
        value = m.group(2)
        if key == "escape":
            if value not in ("`", "\\"):
                raise self.error(f"invalid escape token '{value}' does not match ` or \\", self.pos)
            self._set_escape(value)
        self.directives[key] = value

    def _continued(self, text: str) -> tuple[str, bool]:
        m = self.continuation.search(text)
        if m:
            return text[: m.start()], False
        return text, True

    def run(self, *, allow_empty: bool = False) -> Dockerfile:
        nodes: list[Node] = []
        while self.pos < len(self.lines):
            raw = _trim_newline(self._raw())
            stripped = raw.lstrip(" \t\r\n\v\f")
            self._directive(stripped)
            start = self.pos
            if stripped.startswith("#"):
                continue
            column = len(raw) - len(stripped) + 1
            line, end_of_line = self._continued(stripped)
            if end_of_line and not line:
                continue
            empty_continuation = False
            parts = [line]
            size = len(line)
            while not end_of_line and self.pos < len(self.lines):
                raw = _trim_newline(self._raw())
                self._directive(raw)
                if raw.lstrip(" \t\r\n\v\f").startswith("#"):
                    continue
                if not raw.strip(" \t\r\n\v\f"):
                    empty_continuation = True
                    continue
                cont, end_of_line = self._continued(raw)
                parts.append(cont)
                size += len(cont)
                if size > MAX_INSTRUCTION:
                    raise self.error(f"instruction too long (over {MAX_INSTRUCTION} characters)", start)
            if empty_continuation:
                self.warnings.append(f"{self.file}:{start + self.line_base}: empty continuation line")
            joined = "".join(parts)
            if not joined.strip(" \t\v\f\r"):
                continue  # only continuation characters: BuildKit makes a nameless node; we skip it
            node = self._node(joined, start, column)
            nodes.append(node)
        if not nodes and not allow_empty:
            raise self.error("file with no instructions", max(len(self.lines), 1))
        return Dockerfile(nodes=tuple(nodes), file=self.file, escape=self.escape,
                          directives=tuple(self.directives.items()), warnings=tuple(self.warnings))

    # -- one instruction ---------------------------------------------------------------------------------------
    def _node(self, line: str, start: int, column: int) -> Node:
        node = self._split(line, start, column, line)
        inner = node.trigger if node.trigger is not None else node
        if inner.keyword in _HEREDOC_KEYWORDS and not inner.json and "<<" in line:
            heredocs = self._read_heredocs(line, start, column)
            if heredocs:
                original = line + "\n" + "".join(h.content + h.name + "\n" for h in heredocs)
                end = self.pos + self.line_base
                if node.trigger is not None:
                    trigger_original = node.trigger.original + "\n" + original.split("\n", 1)[1]
                    trigger = replace(node.trigger, heredocs=heredocs, original=trigger_original, end_line=end)
                    return replace(node, trigger=trigger, original=original, end_line=end)
                return replace(node, heredocs=heredocs, original=original, end_line=end)
        return node

    def _split(self, line: str, start: int, column: int, original: str, *, nested: bool = False) -> Node:
        parts = _WS_RE.split(line.strip(" \t\v\f\r\n"), maxsplit=1)
        keyword = parts[0].upper() if parts[0].isascii() else parts[0]  # Go lower-cases Unicode differently
        rest, flags = "", ()
        if len(parts) == 2:
            rest, flags = _extract_flags(parts[1])
            rest = rest.strip(" \t\v\f\r\n")
        form = _FORMS.get(keyword)
        args, is_json, trigger = (), False, None
        where = (start, column)
        if form in ("json_or_string", "json_or_words"):
            parsed = self._json(rest, where) if rest else None
            if parsed is not None:
                args, is_json = parsed, True
            elif rest:
                args = (rest,) if form == "json_or_string" else tuple(_WS_RE.split(rest))
        elif form == "words":
            args = tuple(_WS_RE.split(rest)) if rest else ()
        elif form == "string":
            args = (rest,) if rest else ()
        elif form == "quoted_words":
            args = tuple(_parse_words(rest, self.escape))
        elif form == "key_values":
            args = self._key_values(rest, keyword, where)
        elif form == "healthcheck":
            args, is_json = self._healthcheck(rest, where)
        elif form == "subcommand" and rest and not nested:
            # One level only: ONBUILD ONBUILD is rejected later, and deeper chains must not recurse.
            trigger = self._split(rest, start, column, rest, nested=True)
        return Node(keyword=keyword, args=args, flags=flags, json=is_json, original=original,
                    start_line=start + self.line_base, end_line=self.pos + self.line_base,
                    trigger=trigger, column=column)

    def _json(self, rest: str, where: tuple[int, int]) -> tuple[str, ...] | None:
        body = rest.lstrip()
        if not body.startswith("["):
            return None
        try:
            # BuildKit decodes one JSON value and ignores whatever follows it (json.Decoder, not Unmarshal).
            value = _JSON.raw_decode(body)[0]
        except (ValueError, RecursionError):
            return None  # not JSON: shell form, as Docker does
        if not isinstance(value, list):
            return None
        if not all(isinstance(item, str) for item in value):
            raise self.error("when using JSON array syntax, arrays must be comprised of strings only", *where)
        return tuple(value)

    def _key_values(self, rest: str, keyword: str, where: tuple[int, int]) -> tuple[str, ...]:
        words = _parse_words(rest, self.escape)
        if not words:
            return ()
        if "=" not in words[0]:
            parts = _WS_RE.split(rest, maxsplit=1)
            if len(parts) < 2:
                raise self.error(f"{keyword} must have two arguments", *where)
            return (parts[0], parts[1])
        out: list[str] = []
        for word in words:
            if "=" not in word:
                raise self.error(f"Syntax error - can't find = in {_go_quote(word)}. "
                                 "Must be of the form: name=value", *where)
            key, value = word.split("=", 1)
            out += (key, value)
        return tuple(out)

    def _healthcheck(self, rest: str, where: tuple[int, int]) -> tuple[tuple[str, ...], bool]:
        sep = 0
        while sep < len(rest) and not is_space(rest[sep]):
            sep += 1
        if sep == 0:
            return (), False
        nxt = sep
        while nxt < len(rest) and is_space(rest[nxt]):
            nxt += 1
        cmd = rest[nxt:]
        parsed = self._json(cmd, where) if cmd else None
        if parsed is not None:
            return (rest[:sep], *parsed), True
        return ((rest[:sep], cmd) if cmd else (rest[:sep],)), False

    def _read_heredocs(self, line: str, start: int, column: int) -> tuple[Heredoc, ...]:
        found = []
        for word in _heredoc_words(line):
            heredoc = _heredoc(word)
            if heredoc is not None:
                found.append(heredoc)
        out = []
        for doc in found:
            body: list[str] = []
            size = 0
            while True:
                if self.pos >= len(self.lines):
                    raise self.error(f"unterminated heredoc {doc.name}", start, column)
                raw = self._raw()
                candidate = _trim_newline(raw)
                if doc.chomp:
                    candidate = candidate.lstrip("\t")
                if candidate == doc.name:
                    break
                body.append(raw + "\n")
                size += len(raw)
                if size > MAX_INSTRUCTION:
                    raise self.error(f"heredoc {doc.name} too long (over {MAX_INSTRUCTION} characters)", start,
                                     column)
            out.append(replace(doc, content="".join(body)))
        return tuple(out)


def _trim_newline(line: str) -> str:
    return line.rstrip("\r\n")


def _reject_constant(name: str):
    raise ValueError(name)  # Go's encoding/json has no NaN/Infinity


_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _extract_flags(line: str) -> tuple[str, tuple[str, ...]]:
    """Leading ``--flag[=value]`` words (quotes and backslashes processed), then the rest of the line."""
    words: list[str] = []
    pos, n = 0, len(line)
    while True:
        while pos < n and is_space(line[pos]):
            pos += 1
        if pos >= n:
            return "", tuple(words)
        if not line.startswith("--", pos):
            return line[pos:], tuple(words)
        word: list[str] = []
        quote = None
        blank_ok = False
        while pos < n:
            ch = line[pos]
            if quote is None:
                if is_space(ch):
                    break
                if ch in "'\"":
                    quote, blank_ok = ch, True
                    pos += 1
                    continue
            elif ch == quote:
                quote = None
                pos += 1
                continue
            if ch == "\\":
                if pos + 1 == n:
                    pos += 1
                    continue
                pos += 1
                ch = line[pos]
            word.append(ch)
            pos += 1
        text = "".join(word)
        if text == "--":
            return (line[pos:] if pos < n else ""), tuple(words)
        if blank_ok or text:
            words.append(text)


def _parse_words(rest: str, escape: str) -> list[str]:
    """BuildKit's ``parseWords``: split at unquoted whitespace, keeping quotes and escapes in the words."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    blank_ok = False
    quote = None
    i, n = 0, len(rest)
    while i < n:
        ch = rest[i]
        if not in_word:
            if is_space(ch):
                i += 1
                continue
            in_word = True
        if quote is None:
            if is_space(ch):
                if blank_ok or word:
                    words.append("".join(word))
                word, blank_ok, in_word = [], False, False
                i += 1
                continue
            if ch in "'\"":
                quote, blank_ok = ch, True
            if ch == escape:
                if i + 1 == n:
                    i += 1
                    continue
                word.append(ch)
                i += 1
                ch = rest[i]
        else:
            if ch == quote:
                quote = None
            elif ch == escape and quote != "'":
                if i + 1 == n:
                    i += 1
                    quote = None
                    continue
                word.append(ch)
                i += 1
                ch = rest[i]
        word.append(ch)
        i += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


_LINE_LEXER = Lexer(raw_quotes=True, raw_escapes=True)
_NAME_LEXER = Lexer(skip_unset=True)
_NAME_LEXER_RAW = Lexer(skip_unset=True, raw_quotes=True)


def _heredoc_words(line: str) -> list[str]:
    try:
        return _LINE_LEXER.words(line, {})
    except DockerfileError:
        return []  # BuildKit ignores lexing errors here: the line simply has no heredocs


def _heredoc(word: str) -> Heredoc | None:
    m = _HEREDOC_RE.fullmatch(word)
    if not m or not m.group(3):
        return None
    rest = m.group(3)
    try:
        words = _NAME_LEXER.words(rest, {})
        if len(words) != 1:
            return None
        raw = _NAME_LEXER_RAW.words(rest, {})
    except DockerfileError:
        return None
    if len(raw) != 1:
        return None
    name = words[0]
    quoted = raw[0].count("'") + raw[0].count('"') != name.count("'") + name.count('"')
    return Heredoc(name=name, content="", expand=not quoted, chomp=m.group(2) == "-", fd=int(m.group(1) or 0))


def heredoc_from_word(word: str) -> Heredoc | None:
    """The heredoc a COPY/ADD source or destination word names (``<<EOF``), if any."""
    return _heredoc(word)


def chomp_heredoc(content: str) -> str:
    """``<<-``: leading tabs removed from every line of the body."""
    return re.sub(r"(?m)^\t+", "", content)
