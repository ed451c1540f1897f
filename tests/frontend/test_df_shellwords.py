"""Shell-word expansion: a table of inputs and what BuildKit's ``shell.Lex`` gives for them."""
from __future__ import annotations

import pytest

from snapfs.errors import DockerfileError
from snapfs.frontend.shellwords import MAX_PATTERN_STEPS, Lexer, expand_word, expand_words

ENV = {"PWD": "/home", "NULL": "", "FILE": "archive.tar.gz", "PATHS": "/a:/b:/c", "SPACED": "x  y",
       "KOREAN": "한국어", "STAR": "a*b"}

WORD_CASES = [
    ("hello", "hello"),
    ("he'll'o", "hello"),
    ("he\\'llo", "he'llo"),
    ("abc\\\\", "abc\\"),
    ('"abc\\\\"', "abc\\"),
    ("'abc\\\\'", "abc\\\\"),
    ('"a\'b"', "a'b"),
    ('"a\\b"', "a\\b"),  # inside double quotes a backslash only escapes " $ and itself
    ('"a\\"b"', 'a"b'),
    ("a\\ b", "a b"),
    ("trailing\\", "trailing"),
    ("$PWD", "/home"),
    ("${PWD}", "/home"),
    ("\\$PWD", "$PWD"),
    ("'$PWD'", "$PWD"),
    ('"$PWD"', "/home"),
    ('"\\$PWD"', "$PWD"),
    ("$PWDx", ""),
    ("${PWD}x", "/homex"),
    ("$", "$"),
    ("$.", "$."),
    ("a$", "a$"),
    ("$1", ""),
    ("${UNSET}", ""),
    ("${UNSET:-default}", "default"),
    ("${NULL:-default}", "default"),
    ("${NULL-default}", ""),
    ("${UNSET-default}", "default"),
    ("${PWD:-default}", "/home"),
    ("${PWD:+set}", "set"),
    ("${UNSET:+set}", ""),
    ("${NULL+set}", "set"),
    ("${NULL:+set}", ""),
    ("${NULL?}", ""),
    ("${PWD:?}", "/home"),
    ("${UNSET:-$PWD}", "/home"),
    ("${UNSET:-'a b'}", "a b"),
    ('${UNSET:-"$PWD x"}', "/home x"),
    ("${FILE#*.}", "tar.gz"),
    ("${FILE##*.}", "gz"),
    ("${FILE%.*}", "archive.tar"),
    ("${FILE%%.*}", "archive"),
    ("${FILE%.tar*}", "archive"),
    ("${FILE#nomatch}", "archive.tar.gz"),
    ("${FILE#?}", "rchive.tar.gz"),
    ("${STAR#a\\*}", "b"),
    ("${PWD/home/root}", "/root"),
    ("${PATHS/:/ }", "/a /b:/c"),
    ("${PATHS//:/ }", "/a /b /c"),
    ("${PATHS//\\//-}", "-a:-b:-c"),
    ("${PWD/nomatch/x}", "/home"),
    ("${UNSET/a/b}", ""),
    ("${KOREAN}", "한국어"),
    ("${KOREAN#한}", "국어"),
]


@pytest.mark.parametrize(("text", "expected"), WORD_CASES)
def test_word(text: str, expected: str):
    assert expand_word(text, ENV) == expected


ERROR_CASES = [
    ("he'llo", "unexpected end of statement while looking for matching single-quote"),
    ('"abc', "unexpected end of statement while looking for matching double-quote"),
    ("he\\\\'llo", "unexpected end of statement while looking for matching single-quote"),
    ("${}", "syntax error: bad substitution"),
    ("${:x}", "syntax error: bad substitution"),
    ("${{x}", "syntax error: bad substitution"),
    ("${", "syntax error: missing '}'"),
    ("${PWD", "syntax error: missing '}'"),
    ("${PWD:-x", "syntax error: missing '}'"),
    ("${PWD/x", "syntax error: missing '/' in ${}"),
    ("${X:=y}", "unsupported modifier (:=) in substitution"),
    ("${X=y}", "unsupported modifier (=) in substitution"),
    ("${X:x}", "unsupported modifier (:x) in substitution"),
    ("${UNSET:?}", "UNSET: is not allowed to be unset"),
    ("${UNSET?}", "UNSET: is not allowed to be unset"),
    ("${NULL:?}", "NULL: is not allowed to be empty"),
    ("${UNSET?custom message}", "UNSET: custom message"),
    ("${FILE#\\x}", "invalid pattern (\\x) in substitution: invalid escape '\\x'"),
]


@pytest.mark.parametrize(("text", "message"), ERROR_CASES)
def test_word_errors(text: str, message: str):
    with pytest.raises(DockerfileError) as info:
        expand_word(text, ENV)
    assert info.value.detail == f"failed to process {_go_quote(text)}: {message}"


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


WORDS_CASES = [
    ("a b  c", ["a", "b", "c"]),
    ('"a b" c', ["a b", "c"]),
    ("$SPACED", ["x", "y"]),
    ('"$SPACED"', ["x  y"]),
    ('a"$SPACED"b', ["ax  yb"]),
    ("a${SPACED}b", ["ax", "yb"]),
    ("'' a", ["a"]),  # BuildKit drops an empty quoted word
    ("\\ a", [" a"]),
    ("${UNSET} a", ["a"]),
    ("", []),
    ("  ", []),
]


@pytest.mark.parametrize(("text", "expected"), WORDS_CASES)
def test_words(text: str, expected: list[str]):
    assert expand_words(text, ENV) == expected


def test_backtick_escape():
    assert expand_word("`$PWD", ENV, escape="`") == "$PWD"
    assert expand_word("C:\\dir\\$PWD", ENV, escape="`") == "C:\\dir\\/home"


def test_skip_unset_keeps_references():
    lex = Lexer(skip_unset=True)
    assert lex.word("$UNSET ${UNSET} ${UNSET:-x} ${UNSET/a/b} $PWD", ENV) == \
        "$UNSET ${UNSET} ${UNSET:-x} ${UNSET/a/b} /home"


def test_raw_quotes_and_escapes():
    assert Lexer(raw_quotes=True).word("\"a\"'b'", ENV) == "\"a\"'b'"
    assert Lexer(raw_escapes=True).word("a\\ b", ENV) == "a\\ b"


def test_heredoc_bodies_keep_quotes():
    assert Lexer(skip_quotes=True).word("echo \"$PWD\" '$PWD'", ENV) == "echo \"/home\" '/home'"


def test_output_is_bounded():
    with pytest.raises(DockerfileError) as info:
        Lexer(max_output=10).word("$PWD$PWD$PWD", ENV)
    assert info.value.detail.endswith("expansion exceeds 10 characters")


def test_pattern_matching_is_bounded():
    env = {"V": "a" * 5000}
    with pytest.raises(DockerfileError) as info:
        expand_word("${V//*a*a*a*b/x}", env)
    assert info.value.detail.endswith("pattern substitution too complex")
    assert MAX_PATTERN_STEPS < 10_000_000  # a budget, not a formality: at most a few seconds of Python


def test_newline_is_not_matched_by_wildcards():
    # Go's regexp '.' does not match a newline; BuildKit builds its patterns from '.'.
    assert expand_word("${V#*b}", {"V": "a\nb c"}) == "a\nb c"


def test_nesting_is_bounded():
    assert expand_word("${A:-" * 60 + "x" + "}" * 60, ENV) == "x"
    with pytest.raises(DockerfileError) as info:
        expand_word("${A:-" * 3000 + "x" + "}" * 3000, ENV)
    assert info.value.detail.endswith("substitutions nested more than 64 levels deep")
