"""SnapfsError keeps what went wrong (``detail``) apart from where (context fields) and formats the one line the
CLI prints in one place."""
from __future__ import annotations

import pytest

from snapfs.errors import BuildError, DockerfileError, InputError, SnapfsError


def test_message_formats_location_fields():
    assert str(SnapfsError("boom")) == "boom"
    e = DockerfileError("unknown instruction: FOO", file="Dockerfile", line=3, column=1)
    assert (e.detail, e.file, e.line, e.column) == ("unknown instruction: FOO", "Dockerfile", 3, 1)
    assert e.message == str(e) == "Dockerfile:3:1: unknown instruction: FOO"
    assert DockerfileError("no FROM", file="x/Dockerfile").message == "x/Dockerfile: no FROM"


def test_step_context_names_the_step_and_keeps_exit_code():
    e = BuildError("missing.txt: not found", exit_code=3, file="Dockerfile", line=4, column=1, step=2, total=5,
                   instruction="COPY")
    assert e.message == "step 2/5 (COPY at Dockerfile:4): missing.txt: not found" and e.exit_code == 3


def test_with_context_returns_the_same_error_enriched():
    e = InputError("cannot read x")
    same = e.with_context(file="Dockerfile", line=2, column=5)
    assert same is e and type(same) is InputError and same.exit_code == 3
    assert str(e) == "Dockerfile:2:5: cannot read x"
    with pytest.raises(TypeError):
        e.with_context(colour="red")
