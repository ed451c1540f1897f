"""COPY/ADD wildcards as BuildKit expands them: the destination rule counts the *expanded* sources, a wildcard may
match nothing, ``.dockerignore``d files never match, matched directories give their contents."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

from snapfs.errors import BuildError


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_one_match_without_trailing_slash_is_renamed_to_the_destination(run_build):
    b = run_build("FROM busybox\nWORKDIR /srv\nCOPY target/*.jar app.jar\nADD notes*.txt /etc/notes\n"
                  "COPY *.md *.rst /docs\n",
                  {"target/app-1.2.jar": "JAR", "target/classes/x": "", "notes-1.txt": "N", "README.md": "R"})
    assert b.read("/srv/app.jar") == b"JAR" and os.path.isfile(b.path("/srv/app.jar"))
    assert b.read("/etc/notes") == b"N"
    # two wildcards, one matching nothing: still one source, so /docs is the file's new name
    assert b.read("/docs") == b"R"


@pytest.mark.parametrize("what", ["COPY", "ADD"])
def test_several_matches_need_a_directory_destination(run_build, what):
    msg = (rf"step 2/2 \({what} at Dockerfile:2\): {what} failed: when using {what} with more than one source "
           rf"file \(2 here\), the destination '/app.jar' must be a directory and end with a /")
    with pytest.raises(BuildError, match=msg):
        run_build(f"FROM busybox\n{what} *.jar /app.jar\n", {"a.jar": "A", "b.jar": "B"})


def test_a_wildcard_matching_nothing_is_an_error_unless_another_source_matched(run_build):
    """Docker's classic builder, Kaniko and buildah refuse an instruction whose sources matched nothing; the
    optional-file idiom (one more source that matches) works everywhere."""
    b = run_build("FROM busybox\nCOPY requirements.txt extra-req*.txt /app/\n", {"requirements.txt": "r"})
    assert os.listdir(b.path("/app")) == ["requirements.txt"]
    for what in ("COPY", "ADD"):
        with pytest.raises(BuildError, match=rf"step 2/2 \({what} at Dockerfile:2\): {what} failed: no source files "
                                             rf"were specified: '\*\.nomatch', 'none\*' matched nothing in build "
                                             rf"context$"):
            run_build(f"FROM busybox\n{what} *.nomatch none* /dst/\n", {"a.txt": "a"})


def test_a_missing_literal_directory_before_the_wildcard_is_an_error(run_build):
    with pytest.raises(BuildError, match=r"step 2/2 \(COPY at Dockerfile:2\): COPY failed: 'fixtures/\*\.sh': "
                                         r"directory 'fixtures' not found in build context"):
        run_build("FROM busybox\nCOPY fixtures/*.sh /fx/\n", {"a.sh": ""})


def test_a_missing_literal_source_is_still_an_error(run_build):
    with pytest.raises(BuildError, match=r"COPY failed: 'missing.txt': not found in build context"):
        run_build("FROM busybox\nCOPY missing.txt nothing* /d/\n", {"a": ""})


def test_wildcards_from_a_stage(run_build):
    b = run_build("FROM busybox AS build\nRUN mkdir /out && echo one > /out/tool.bin && echo x > /out/a.log "
                  "&& echo y > /out/b.log\n"
                  "FROM busybox\nCOPY --from=build /out/*.bin /usr/local/bin/tool\n"
                  "COPY --from=build /out/*.log /logs/\nCOPY --from=build /out/*.none /out/tool.bin /none/\n")
    assert b.read("/usr/local/bin/tool") == b"one\n"
    assert sorted(os.listdir(b.path("/logs"))) == ["a.log", "b.log"]
    assert os.listdir(b.path("/none")) == ["tool.bin"]
    with pytest.raises(BuildError, match=r"COPY failed: when using COPY with more than one source file \(2 here\), "
                                         r"the destination '/one.log' must be a directory"):
        run_build("FROM busybox AS build\nRUN echo x > /a.log && echo y > /b.log\n"
                  "FROM busybox\nCOPY --from=build /*.log /one.log\n")


def test_dockerignored_files_never_match(run_build):
    files = {".dockerignore": "local.env\nsecret*\n", "local.env": "L", "prod.env": "P", "secret.key": "K"}
    b = run_build("FROM busybox\nCOPY *.env /app/config.env\n", files)
    assert b.read("/app/config.env") == b"P"  # local.env is ignored: one match, renamed
    with pytest.raises(BuildError, match=r"'secret\*' matched nothing in build context \(after \.dockerignore\)$"):
        run_build("FROM busybox\nCOPY secret* /s/\n", files)  # secret.key is ignored: nothing matches


def test_matched_directories_give_their_contents(run_build):
    b = run_build("FROM busybox\nCOPY pkg* /merged/\nCOPY lib* /single\n",
                  {"pkg-a/x": "X", "pkg-a/sub/y": "Y", "pkg-b/z": "Z", "lib-only/k": "K"})
    assert sorted(os.listdir(b.path("/merged"))) == ["sub", "x", "z"]
    assert b.read("/merged/sub/y") == b"Y"
    assert os.listdir(b.path("/single")) == ["k"]


def test_add_wildcard_archives_are_extracted(run_build):
    b = run_build("FROM busybox\nADD dist-*.tar.gz /opt/\nADD one-*.tar.gz /srv/one\n",
                  {"dist-a.tar.gz": _tgz({"a/f": b"A"}), "dist-b.tar.gz": _tgz({"b/f": b"B"}),
                   "one-1.tar.gz": _tgz({"inner/g": b"G"})})
    assert b.read("/opt/a/f") == b"A" and b.read("/opt/b/f") == b"B"
    # one archive, no trailing slash: extracted into /srv/one, as a lone archive source always is
    assert b.read("/srv/one/inner/g") == b"G"


def test_matched_names_holding_wildcard_characters_are_copied_as_themselves(run_build):
    b = run_build("FROM busybox\nADD data* /add/\nCOPY data* /copy/\n",
                  {"data[1].txt": "bracket", "data1.txt": "one", "data*.csv": "star"})
    for d in ("/add", "/copy"):
        assert sorted(os.listdir(b.path(d))) == ["data*.csv", "data1.txt", "data[1].txt"]
        assert b.read(f"{d}/data[1].txt") == b"bracket" and b.read(f"{d}/data*.csv") == b"star"
