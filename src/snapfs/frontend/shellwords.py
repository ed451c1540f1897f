"""Shell-word lexing and variable expansion with the semantics of BuildKit's ``shell.Lex``.

This is the third Dockerfile layer: it knows nothing about instructions or stages, only how one word (or a
whitespace-separated list of words) is unquoted and expanded against an environment. The planner decides which
instruction parts go through it and with which scope.

Supported: ``$V``, ``${V}``, ``${V:-w}``, ``${V-w}``, ``${V:+w}``, ``${V+w}``, ``${V:?msg}``, ``${V?msg}``,
``${V#p}``, ``${V##p}``, ``${V%p}``, ``${V%%p}``, ``${V/p/r}``, ``${V//p/r}``, single and double quotes, and the
escape token (``\\`` or a backtick). Patterns are shell wildcards (``*``, ``?``, ``\\`` escapes) without bracket
expressions, exactly as BuildKit.

Bounds: an expansion result may not exceed ``max_output`` characters (``ENV A=$A$A`` repeated would otherwise
double memory per line), and wildcard matching has a step budget, so a hostile Dockerfile costs bounded time.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from snapfs.errors import DockerfileError, SnapfsError

MAX_OUTPUT = 1 << 20  # characters one expansion may produce
MAX_PATTERN_STEPS = 2_000_000  # NFA state-steps one expansion may spend matching wildcards
MAX_NESTING = 64  # ${a:-${b:-...}} levels; each costs a few Python frames

_STAR, _ANY = 1, 2  # wildcard tokens; literals are 1-character strings
_NOT_SPACE = frozenset("\x1c\x1d\x1e\x1f")  # Python's isspace() says yes, Go's unicode.IsSpace says no


def is_space(ch: str) -> bool:
    """Go's ``unicode.IsSpace``: the split points of shell words and of Dockerfile arguments."""
    return ch.isspace() and ch not in _NOT_SPACE


class ExpansionError(DockerfileError):
    """A word that cannot be expanded; the planner re-raises it with the instruction's location."""

    def __init__(self, detail: str) -> None:
        SnapfsError.__init__(self, detail)  # no location yet: the planner adds the instruction's


@dataclass(frozen=True, slots=True)
class Lexer:
    """A configured lexer; the flags mirror BuildKit's ``Lex`` fields of the same names."""

    escape: str = "\\"
    raw_quotes: bool = False  # keep quote characters in the output
    raw_escapes: bool = False  # keep escape characters in the output
    skip_quotes: bool = False  # quotes are ordinary characters (heredoc bodies)
    skip_unset: bool = False  # leave references to unset variables as written
    max_output: int = MAX_OUTPUT

    def word(self, text: str, env: Mapping[str, str]) -> str:
        """Expand ``text`` as one word: quotes removed, spaces kept."""
        if not _needs_lexing(text, self.escape, self.skip_quotes):
            return text
        return _Scanner(self, text, env, split=False).process()[0]

    def words(self, text: str, env: Mapping[str, str]) -> list[str]:
        """Expand ``text`` and split it at unquoted whitespace (after expansion, like BuildKit)."""
        if not _needs_lexing(text, self.escape, self.skip_quotes):
            return _split_plain(text)
        return _Scanner(self, text, env).process()[1]


DEFAULT_LEXER = Lexer()


def expand_word(text: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    return (DEFAULT_LEXER if escape == "\\" else Lexer(escape=escape)).word(text, env)


def expand_words(text: str, env: Mapping[str, str], *, escape: str = "\\") -> list[str]:
    return (DEFAULT_LEXER if escape == "\\" else Lexer(escape=escape)).words(text, env)


def _needs_lexing(text: str, escape: str, skip_quotes: bool) -> bool:
    if "$" in text or escape in text:
        return True
    return not skip_quotes and ("'" in text or '"' in text)


def _split_plain(text: str) -> list[str]:
    words, cur = [], []
    for ch in text:
        if is_space(ch):
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        words.append("".join(cur))
    return words


_SPACE_RUN = re.compile("[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


class _Words:
    """Word splitting that treats expanded variables as splittable and quoted text as not (``wordsStruct``)."""

    __slots__ = ("cur", "words", "in_word")

    def __init__(self) -> None:
        self.cur: list[str] = []
        self.words: list[str] = []
        self.in_word = False

    def _flush(self) -> None:
        if self.in_word:
            word = "".join(self.cur)
            if word:  # like Go: an empty quoted word ('') does not end a word on its own
                self.words.append(word)
                self.cur, self.in_word = [], False

    def add_char(self, ch: str) -> None:
        if is_space(ch):
            self._flush()
        else:
            self.add_raw(ch)

    def add_raw(self, text: str) -> None:
        self.cur.append(text)
        self.in_word = True

    def add_string(self, text: str) -> None:
        pos = 0
        for m in _SPACE_RUN.finditer(text):
            if m.start() > pos:
                self.add_raw(text[pos:m.start()])
            self._flush()
            pos = m.end()
        if pos < len(text):
            self.add_raw(text[pos:])

    def result(self) -> list[str]:
        word = "".join(self.cur)
        if word:
            self.words.append(word)
            self.cur, self.in_word = [], False
        return self.words


class _NoWords:
    """Stands in for ``_Words`` when only the joined word is wanted (ProcessWord), to skip the splitting work."""

    __slots__ = ()

    def add_char(self, ch: str) -> None:
        pass

    def add_raw(self, text: str) -> None:
        pass

    def add_string(self, text: str) -> None:
        pass

    def result(self) -> list[str]:
        return []


class _Scanner:
    __slots__ = ("lex", "text", "pos", "env", "raw_escapes", "steps", "split", "depth")

    def __init__(self, lex: Lexer, text: str, env: Mapping[str, str], *, split: bool = True) -> None:
        self.lex, self.text, self.pos, self.env, self.split = lex, text, 0, env, split
        self.raw_escapes = lex.raw_escapes
        self.steps = 0
        self.depth = 0

    def process(self) -> tuple[str, list[str]]:
        try:
            return self._stop_on(None, self.raw_escapes)
        except ExpansionError as exc:
            raise ExpansionError(f"failed to process {_quote(self.text)}: {exc.detail}") from None

    def _peek(self) -> str | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def _next(self) -> str | None:
        if self.pos < len(self.text):
            self.pos += 1
            return self.text[self.pos - 1]
        return None

    def _check_size(self, size: int) -> None:
        if size > self.lex.max_output:
            raise ExpansionError(f"expansion exceeds {self.lex.max_output} characters")

    def _stop_on(self, stop: str | None, raw_escapes: bool) -> tuple[str, list[str]]:
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            return self._stop_on_inner(stop)
        finally:
            self.raw_escapes = saved

    def _stop_on_inner(self, stop: str | None) -> tuple[str, list[str]]:
        out: list[str] = []
        size = 0
        words = _Words() if self.split else _NoWords()
        text, esc, quotes = self.text, self.lex.escape, not self.lex.skip_quotes
        while self.pos < len(text):
            ch = text[self.pos]
            if stop is not None and ch == stop:
                self.pos += 1
                return "".join(out), words.result()
            if ch == "$" or (quotes and ch in "'\""):
                if ch == "$":
                    tmp = self._dollar()
                    words.add_string(tmp)
                else:
                    tmp = self._single_quote() if ch == "'" else self._double_quote()
                    words.add_raw(tmp)
                out.append(tmp)
                size += len(tmp)
                self._check_size(size)
                continue
            self.pos += 1
            if ch == esc:
                if self.raw_escapes:
                    words.add_raw(ch)
                    out.append(ch)
                if self.pos >= len(text):
                    break
                ch = text[self.pos]
                self.pos += 1
                words.add_raw(ch)
            else:
                words.add_char(ch)
            out.append(ch)
            size += 1
        if stop is not None:
            raise ExpansionError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out), words.result()

    def _single_quote(self) -> str:
        start = self.pos + 1
        end = self.text.find("'", start)
        if end < 0:
            raise ExpansionError("unexpected end of statement while looking for matching single-quote")
        self.pos = end + 1
        body = self.text[start:end]
        return f"'{body}'" if self.lex.raw_quotes else body

    def _double_quote(self) -> str:
        out = []
        self.pos += 1
        if self.lex.raw_quotes:
            out.append('"')
        esc = self.lex.escape
        size = 0
        while True:
            ch = self._peek()
            if ch is None:
                raise ExpansionError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.pos += 1
                if self.lex.raw_quotes:
                    out.append('"')
                return "".join(out)
            if ch == "$":
                value = self._dollar()
                out.append(value)
                size += len(value)
                self._check_size(size)
                continue
            self.pos += 1
            if ch == esc:
                if self.raw_escapes:
                    out.append(ch)
                nxt = self._peek()
                if nxt is None:
                    continue  # an escape at the very end is dropped
                if nxt in ('"', "$", esc):
                    ch = nxt
                    self.pos += 1
            out.append(ch)
            size += 1

    def _name(self) -> str:
        text, start = self.text, self.pos
        if start >= len(text):
            return ""
        ch = text[start]
        if ch.isdecimal():
            end = start
            while end < len(text) and text[end].isdecimal():
                end += 1
            self.pos = end
            return text[start:end]
        if ch in "@*#?-$!0":  # POSIX special parameters are one character
            self.pos += 1
            return ch
        end = start
        while end < len(text) and (text[end].isalpha() or text[end].isdecimal() or text[end] == "_"):
            end += 1
        self.pos = end
        return text[start:end]

    def _dollar(self) -> str:
        self.pos += 1
        if self._peek() != "{":
            name = self._name()
            if not name:
                return "$"
            if name in self.env:
                return self.env[name]
            return "$" + name if self.lex.skip_unset else ""
        self.pos += 1
        ch = self._peek()
        if ch is None:
            raise ExpansionError("syntax error: missing '}'")
        if ch in "{}:":
            raise ExpansionError("syntax error: bad substitution")
        name = self._name()
        op = self._next()
        if op is None:
            raise ExpansionError("syntax error: missing '}'")
        if op == "}":
            if name in self.env:
                return self.env[name]
            return "${" + name + "}" if self.lex.skip_unset else ""
        if op == "/":
            return self._replace(name)
        ops = op
        null_is_unset = False
        if op == ":":
            null_is_unset = True
            op = self._next()
            if op is None:
                raise ExpansionError("syntax error: missing '}'")
            ops += op
        if not null_is_unset and op not in "+-?#%":
            raise ExpansionError(f"unsupported modifier ({ops}) in substitution")
        word = self._operand("}", raw_escapes=op in "#%", missing="syntax error: missing '}'")
        set_ = name in self.env
        value = self.env.get(name, "")
        if self.lex.skip_unset and not set_:
            return "${" + name + ops + word + "}"
        empty = not set_ or (null_is_unset and value == "")
        if op == "-":
            return word if empty else value
        if op == "+":
            return "" if empty else word
        if op == "?":
            if not set_:
                raise ExpansionError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise ExpansionError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if op in "#%":
            greedy = word.startswith(op)
            if greedy:
                word = word[1:]
            tokens = _compile_pattern(word)
            if op == "#":
                end = self._match_end(tokens, value, 0, longest=greedy)
                return value if end is None else value[end:]
            rev = value[::-1]
            end = self._match_end(tokens[::-1], rev, 0, longest=greedy)
            return value if end is None else rev[end:][::-1]
        raise ExpansionError(f"unsupported modifier ({ops}) in substitution")

    def _operand(self, stop: str, *, raw_escapes: bool, missing: str) -> str:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ExpansionError(f"substitutions nested more than {MAX_NESTING} levels deep")
        try:
            return self._stop_on(stop, raw_escapes)[0]
        except ExpansionError as exc:
            if self._peek() is None and not exc.detail.startswith("substitutions nested"):
                raise ExpansionError(missing) from None
            raise
        finally:
            self.depth -= 1

    def _replace(self, name: str) -> str:
        replace_all = self._peek() == "/"
        if replace_all:
            self.pos += 1
        pattern = self._operand("/", raw_escapes=True, missing="syntax error: missing '/' in ${}")
        replacement = self._operand("}", raw_escapes=True, missing="syntax error: missing '}'")
        if name not in self.env:
            if self.lex.skip_unset:
                return "${" + name + "/" + pattern + "/" + replacement + "}"
        value = self.env.get(name, "")
        tokens = _compile_pattern(pattern)
        if not replace_all:
            found = self._find(tokens, value, 0)
            if found is None:
                return value
            return value[: found[0]] + replacement + value[found[1]:]
        # Go's regexp.ReplaceAllString: successive non-overlapping leftmost matches, empty matches next to a
        # previous match ignored, always advancing at least one character.
        out, last_end, search = [], 0, 0
        while search <= len(value):
            found = self._find(tokens, value, search)
            if found is None:
                break
            start, end = found
            out.append(value[last_end:start])
            if end > last_end or start == 0:
                out.append(replacement)
                self._check_size(sum(map(len, out)))
            last_end = end
            search = search + 1 if search + 1 > end else end
        out.append(value[last_end:])
        result = "".join(out)
        self._check_size(len(result))
        return result

    def _find(self, tokens: list, value: str, start: int) -> tuple[int, int] | None:
        for begin in range(start, len(value) + 1):
            end = self._match_end(tokens, value, begin, longest=True)
            if end is not None:
                return begin, end
        return None

    def _match_end(self, tokens: list, value: str, begin: int, *, longest: bool) -> int | None:
        """End of the shortest or longest match of ``tokens`` anchored at ``begin`` (a small NFA walk)."""
        m = len(tokens)
        states = _closure(tokens, {0})
        best = begin if m in states else None
        if best is not None and not longest:
            return best
        pos = begin
        while states and pos < len(value):
            ch = value[pos]
            nxt = set()
            for i in states:
                if i == m:
                    continue
                tok = tokens[i]
                if tok is _STAR:
                    if ch != "\n":  # Go's '.' (and so '*') does not match a newline
                        nxt.add(i)
                elif tok is _ANY:
                    if ch != "\n":
                        nxt.add(i + 1)
                elif tok == ch:
                    nxt.add(i + 1)
            self.steps += len(states)
            if self.steps > MAX_PATTERN_STEPS:
                raise ExpansionError("pattern substitution too complex")
            states = _closure(tokens, nxt)
            pos += 1
            if m in states:
                best = pos
                if not longest:
                    return best
        return best


def _closure(tokens: list, states: set[int]) -> set[int]:
    out = set()
    for i in states:
        while i not in out:
            out.add(i)
            if i < len(tokens) and tokens[i] is _STAR:
                i += 1
            else:
                break
    return out


def _compile_pattern(pattern: str) -> list:
    """Shell wildcard to tokens, with BuildKit's escape rules (``\\}`` and ``\\/`` drop the backslash)."""
    tokens: list = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            tokens.append(_STAR)
        elif ch == "?":
            tokens.append(_ANY)
        elif ch == "\\":
            nxt = pattern[i] if i < len(pattern) else None
            if nxt in ("}", "/"):
                continue
            if nxt not in ("*", "?", "\\"):
                shown = "\\" + (nxt if nxt is not None else "")
                raise ExpansionError(f"invalid pattern ({pattern}) in substitution: invalid escape '{shown}'")
            tokens.append(nxt)
            i += 1
        else:
            tokens.append(ch)
    return tokens


def _quote(text: str) -> str:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return '"' + shown.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
