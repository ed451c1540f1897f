"""``snapfs parse``: exit codes, one-line errors, no tracebacks."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


def snapfs(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapfs", *args], capture_output=True, text=True, input=stdin,
                          timeout=60)


MULTI = """\
ARG TAG=3.19
FROM alpine:${TAG} AS base
RUN echo base
FROM base AS test
RUN make test
FROM golang AS tools
FROM base AS final
COPY --from=tools /go/bin/tool /usr/bin/tool
"""


def test_json_output_lists_stages_and_target(tmp_path):
    df = tmp_path / "Dockerfile"
    df.write_text(MULTI)
    res = snapfs("parse", str(df), "--json", "--build-arg", "TAG=3.20", "--target", "TEST")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["target"] == "test"
    assert doc["build_order"] == ["base", "test"]
    assert [s["needed"] for s in doc["stages"]] == [True, True, False, False]
    assert doc["stages"][0]["base"] == "alpine:3.20"
    assert doc["stages"][1]["instructions"][0] == {
        "instruction": "RUN", "line": 5, "end_line": 5, "command": ["make test"], "shell_form": True,
        "heredocs": [], "mounts": [], "mount_specs": [], "network": None, "security": None, "arg_env": {}}


def test_text_output(tmp_path):
    df = tmp_path / "Dockerfile"
    df.write_text(MULTI)
    res = snapfs("parse", str(df))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "ARG TAG=3.19"
    assert lines[1] == "[build] stage 0: FROM alpine:3.19 AS base (line 2)"
    assert "[skip] stage 1: FROM base AS test (line 4)" in lines
    assert lines[-1] == "target: final; build order: base, tools, final"


def test_stdin():
    res = snapfs("parse", "-", "--json", stdin="FROM scratch\n")
    assert res.returncode == 0 and json.loads(res.stdout)["stages"][0]["base"] == "scratch"


@pytest.mark.parametrize(("text", "args", "message"), [
    ("FROM alpine\nBOGUS x\n", (), "snapfs: {f}:2:1: unknown instruction: BOGUS"),
    ("FROM alpine\nRUN <<EOF\nx\n", (), "snapfs: {f}:2:1: unterminated heredoc EOF"),
    ("FROM alpine AS a\n", ("--target", "nope"), "snapfs: {f}: target stage nope could not be found"),
    ("RUN x\n", (), "snapfs: {f}:1:1: no build stage in current context: RUN must come after FROM"),
    ("FROM alpine\nRUN echo {1MiB}\n", (), "snapfs: {f}:2:1: line too long (1048585 characters, limit 262144)"),
], ids=["unknown", "heredoc", "target", "no-from", "1MiB-line"])
def test_errors_are_one_line_with_exit_code_7(tmp_path, text, args, message):
    df = tmp_path / "Dockerfile"
    df.write_text(text.replace("{1MiB}", "x" * (1 << 20)))  # built here: a 1 MiB test id would not fit in env
    res = snapfs("parse", str(df), *args)
    assert res.returncode == 7
    assert res.stdout == ""
    assert res.stderr == message.format(f=df) + "\n"


def test_missing_file_is_an_input_error(tmp_path):
    res = snapfs("parse", str(tmp_path / "nope"))
    assert res.returncode == 3
    assert res.stderr == f"snapfs: cannot read {tmp_path / 'nope'}: No such file or directory\n"


def test_bad_build_arg_is_a_usage_error(tmp_path):
    df = tmp_path / "Dockerfile"
    df.write_text("FROM alpine\n")
    res = snapfs("parse", str(df), "--build-arg", "=x")
    assert res.returncode == 2
    assert res.stderr == "snapfs: invalid --build-arg '=x': expected K=V\n"
