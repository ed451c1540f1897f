""".dockerignore loading and matching (moby patternmatcher semantics)."""
from __future__ import annotations

import os

import pytest

from snapfs.errors import DockerfileError
from snapfs.frontend.dockerignore import DockerIgnore, load_dockerignore, parse_dockerignore

MATCH_CASES = [
    # (patterns, path, excluded)
    ("*.md", "README.md", True),
    ("*.md", "docs/README.md", False),  # '*' does not cross '/'
    ("**/*.md", "docs/deep/README.md", True),
    ("**/*.md", "README.md", True),
    ("docs", "docs/a/b.txt", True),  # a matching parent excludes everything below it
    ("docs/", "docs/a", True),  # cleaned to "docs"
    ("/docs", "docs/a", True),  # leading slash dropped
    ("./docs", "docs", True),
    ("a/**", "a/b/c", True),
    ("a/**", "a", False),
    ("a/**/z", "a/z", True),
    ("a/**/z", "a/b/c/z", True),
    ("?.txt", "a.txt", True),
    ("?.txt", "ab.txt", False),
    ("[ab].txt", "b.txt", True),
    ("[^ab].txt", "c.txt", True),
    ("[a-c]x", "bx", True),
    ("\\*.txt", "*.txt", True),
    ("\\*.txt", "a.txt", False),
    ("*\n!keep.md", "keep.md", False),
    ("*\n!keep.md", "other", True),
    ("*.md\n!README.md", "README.md", False),
    ("*.md\n!README.md\nREADME.md", "README.md", True),  # order matters: the last match wins
    ("build\n!build/keep", "build/keep", False),
    ("build\n!build/keep", "build/drop", True),
    ("# comment\n*.log", "# comment", False),
    ("x\n #notcomment", "#notcomment", True),  # "#" only starts a comment at column 0; patterns are trimmed
    ("#x\n  \n\n*.tmp  ", "a.tmp", True),
    ("a/../b", "b", True),
    ("node_modules", "node_modules", True),
    ("node_modules", "src/node_modules", False),
    ("**/node_modules", "src/node_modules/x", True),
    (".git", ".git/HEAD", True),
    ("*", ".", False),  # the context root itself is never excluded
]


@pytest.mark.parametrize(("patterns", "path", "excluded"), MATCH_CASES)
def test_excluded(patterns: str, path: str, excluded: bool):
    assert parse_dockerignore(patterns).excluded(path) is excluded


def test_may_descend_only_where_an_exception_can_match():
    ignore = parse_dockerignore("build\n!build/keep/*.txt\nvendor\n")
    assert ignore.excluded("build") and ignore.excluded("vendor")
    assert ignore.may_descend("build")
    assert ignore.may_descend("build/keep")
    assert not ignore.may_descend("build/other")
    assert not ignore.may_descend("vendor")
    assert parse_dockerignore("*\n!**/keep").may_descend("any/depth")
    assert not parse_dockerignore("*").may_descend("x")


def test_bom_and_crlf():
    ignore = parse_dockerignore(b"\xef\xbb\xbf*.log\r\n!keep.log\r\n")
    assert ignore.excluded("a.log") and not ignore.excluded("keep.log")


@pytest.mark.parametrize(("text", "message"), [
    ("ok\n!", '.dockerignore:2:1: illegal exclusion pattern: "!"'),
    ("a\n[abc", ".dockerignore:2:1: syntax error in pattern '[abc': unterminated character class"),
    ("trailing\\", ".dockerignore:1:1: syntax error in pattern 'trailing\\\\': trailing backslash"),
])
def test_bad_patterns(text: str, message: str):
    with pytest.raises(DockerfileError) as info:
        parse_dockerignore(text)
    assert info.value.message == message


def test_dockerfile_specific_ignore_file_wins(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / ".dockerignore").write_text("*.ctx\n")
    df = ctx / "build" / "app.Dockerfile"
    df.parent.mkdir()
    df.write_text("FROM alpine\n")
    assert load_dockerignore(ctx, dockerfile=df).excluded("x.ctx")
    (ctx / "build" / "app.Dockerfile.dockerignore").write_text("*.specific\n")
    ignore = load_dockerignore(ctx, dockerfile=df)
    assert ignore.excluded("x.specific") and not ignore.excluded("x.ctx")
    assert ignore.file == str(df) + ".dockerignore"


def test_no_ignore_file_excludes_nothing(tmp_path):
    ignore = load_dockerignore(tmp_path)
    assert ignore == DockerIgnore() and not ignore.excluded("anything")


def test_symlink_inside_the_context_is_followed(tmp_path):
    (tmp_path / "rules").write_text("secret\n")
    os.symlink("rules", tmp_path / ".dockerignore")
    assert load_dockerignore(tmp_path).excluded("secret")


def test_symlink_out_of_the_context_is_refused(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (tmp_path / "outside").write_text("x\n")
    os.symlink(tmp_path / "outside", ctx / ".dockerignore")
    with pytest.raises(DockerfileError) as info:
        load_dockerignore(ctx)
    assert info.value.message == f"{ctx}/.dockerignore: ignore file is a symlink that points outside the build context"
