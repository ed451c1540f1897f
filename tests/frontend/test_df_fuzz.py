"""Hypothesis: random and mutated Dockerfiles raise nothing but ``DockerfileError``, in bounded time, and where
BuildKit's parser accepts random text our syntax layer produces the same nodes."""
from __future__ import annotations

import os
import re
import time

import dockerfile as buildkit
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from snapfs.errors import DockerfileError
from snapfs.frontend.dockerignore import parse_dockerignore
from snapfs.frontend.plan import expand_plan, plan_build

from df_corpus import BASE
from test_df_differential import _ours, _theirs

TOKENS = ["FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "LABEL", "CMD", "ENTRYPOINT", "ONBUILD", "HEALTHCHECK",
          "SHELL", "EXPOSE", "VOLUME", "USER", "WORKDIR", "STOPSIGNAL", "MAINTAINER", "AS", "alpine", "a", "b",
          " ", " ", "\t", "\n", "\n", "\r\n", "\\", "\\\n", "`", "#", "# escape=`\n", "=", "\"", "'", "$", "${",
          "}", ":-", ":+", ":?", "#", "##", "%", "%%", "/", "//", "[", "]", ",", "<<", "<<-", "EOF", "\nEOF\n",
          "--mount=", "type=cache", "target=/x", "--from=", "--chmod=", "755", "u+x", "--link", "--", "0", "80/tcp",
          "CMD", "NONE", "--interval=", "1s", "$A", "${A:-x}", "é", "\ufeff", "*", "?", "!"]

# SNAPFS_FUZZ_EXAMPLES raises the count for a longer local hunt; the default keeps the suite quick.
SETTINGS = settings(max_examples=int(os.environ.get("SNAPFS_FUZZ_EXAMPLES", "150")), deadline=2000,
                    suppress_health_check=[HealthCheck.too_slow])


def _pipeline(text: str) -> None:
    """Everything a build does before executing: syntax, instructions, stages, expansion."""
    try:
        plan = plan_build(text, build_args={"A": "1"}, target_platform="linux/amd64", build_platform="linux/amd64")
        expand_plan(plan)
    except DockerfileError as exc:
        # One line naming the file, and line:column when the error has a place in it.
        assert "\n" not in exc.message
        assert re.match(r"Dockerfile(:[1-9][0-9]*:[1-9][0-9]*)?: \S", exc.message), exc.message


random_text = st.lists(st.sampled_from(TOKENS), max_size=60).map("".join)


@SETTINGS
@given(random_text)
def test_random_text_raises_only_dockerfile_error(text: str):
    start = time.monotonic()
    _pipeline(text)
    assert time.monotonic() - start < 1.0


@SETTINGS
@given(st.text(max_size=300))
def test_arbitrary_unicode_raises_only_dockerfile_error(text: str):
    _pipeline(text)


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from(sorted(BASE.values())))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "duplicate_line", "drop_line"]))
        if op == "insert":
            text = text[:pos] + draw(st.sampled_from(TOKENS)) + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 8)):]
        else:
            lines = text.split("\n")
            i = pos % max(len(lines), 1)
            lines[i:i + 1] = [lines[i]] * 2 if op == "duplicate_line" else []
            text = "\n".join(lines)
    return text


@SETTINGS
@given(mutated())
def test_mutated_corpus_raises_only_dockerfile_error(text: str):
    start = time.monotonic()
    _pipeline(text)
    assert time.monotonic() - start < 1.0


@SETTINGS
@given(st.one_of(random_text, mutated()))
def test_syntax_agrees_with_buildkit_when_both_accept(text: str):
    try:
        theirs = _theirs(text)
    except (buildkit.GoParseError, buildkit.GoIOError):
        return
    try:
        ours = _ours(text)
    except DockerfileError:
        return  # we are stricter on purpose in a few places (e.g. lines over MAX_LINE); see the golden cases
    assert ours == theirs


@SETTINGS
@given(st.lists(st.sampled_from(["*", "**", "/", "a", "b", "!", "#", "[", "]", "^", "-", "\\", ".", "..", " ",
                                 "\n", "?"]), max_size=40).map("".join),
       st.lists(st.sampled_from(["a", "b", "/", ".", "c"]), max_size=12).map("".join))
def test_dockerignore_raises_only_dockerfile_error(patterns: str, path: str):
    try:
        ignore = parse_dockerignore(patterns)
    except DockerfileError:
        return
    ignore.excluded(path)
    ignore.may_descend(path)


HOSTILE = {
    "deep_substitution": "FROM a\nENV X=" + "${A:-" * 3000 + "x" + "}" * 3000 + "\n",
    "deep_json": "FROM a\nCMD " + "[" * 100_000 + "\n",
    "onbuild_chain": "FROM a\n" + "ONBUILD " * 20_000 + "RUN x\n",
    "long_continuation": "FROM a\nRUN x \\\n" + "  y \\\n" * 50_000 + "  z\n",
    "many_heredocs": "FROM a\nRUN " + "<<A " * 2000 + "\n" + "A\n" * 2000,
    "doubling_env": "FROM a\nENV A=0123456789\n" + "ENV A=$A$A$A$A\n" * 40,
    "pattern_blowup": "FROM a\nENV A=" + "a" * 200_000 + "\nENV B=${A//*a*a*a*a*b/x}\n",
    "many_stages": "".join(f"FROM a AS s{i}\nCOPY --from=s{max(i - 1, 0)} / /\n" for i in range(1, 3000)),
    "unterminated_quotes": "FROM a\nENV A=\"" + "x" * 100_000 + "\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_inputs_fail_cleanly_and_fast(name: str):
    start = time.monotonic()
    _pipeline(HOSTILE[name])
    assert time.monotonic() - start < 5.0
