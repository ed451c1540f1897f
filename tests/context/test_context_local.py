"""Local sources (dir, path, tar file, stdin), sub-paths, Dockerfile locations and masking (progress:
tests/test_progress.py)."""
from __future__ import annotations

import io
import os

import pytest

from context_kit import check_app, compress, make_app, tar_cli, tar_of
from snapfs.context.extract import ContextError
from snapfs.context.fetch import scrub
from snapfs.context.resolve import Context, fetch_context, locate_dockerfile, mask_spec
from snapfs.errors import InputError, UsageError


@pytest.fixture
def app(tmp_path):
    return make_app(str(tmp_path / "app"))


@pytest.fixture
def workdir(tmp_path):
    return str(tmp_path / "work")


def test_plain_path_and_dir_prefix_are_used_in_place(app, workdir):
    for spec in (app, f"dir://{app}"):
        ctx = fetch_context(spec, workdir=workdir)
        assert ctx.root == app and ctx.source == spec and not ctx.temporary
        ctx.cleanup()
        assert os.path.isdir(app)  # never removed
    assert not os.path.exists(workdir)


def test_missing_directory_is_one_line_naming_it(tmp_path, workdir):
    with pytest.raises(ContextError, match=r"^context dir:///nope/ctx: no such directory$"):
        fetch_context("dir:///nope/ctx", workdir=workdir)


def test_a_file_without_tar_prefix_is_refused(app, tmp_path, workdir):
    archive = tar_cli(app, str(tmp_path / "c.tgz"))
    with pytest.raises(ContextError, match="not a directory .*tar://"):
        fetch_context(archive, workdir=workdir)


def test_unknown_prefix_is_a_usage_error(workdir):
    with pytest.raises(UsageError, match=r"unknown prefix 'ftp://'"):
        fetch_context("ftp://host/x.tgz", workdir=workdir)


@pytest.mark.parametrize("kind", ["gzip", "zstd", "bzip2", "xz", "none"])
def test_tar_file_every_compression_detected_by_content(app, tmp_path, workdir, kind):
    archive = tmp_path / "context.bin"  # the name says nothing: the content decides
    archive.write_bytes(compress(tar_of(app), kind))
    ctx = fetch_context(f"tar://{archive}", workdir=workdir)
    try:
        assert ctx.temporary and ctx.root.startswith(workdir + "/")
        check_app(ctx.root)
    finally:
        ctx.cleanup()
    assert os.listdir(workdir) == []


@pytest.mark.parametrize("flag", ["z", "j", "J", ""])
def test_gnu_tar_archives(app, tmp_path, workdir, flag):
    ctx = fetch_context(f"tar://{tar_cli(app, str(tmp_path / 'c.tar'), flag)}", workdir=workdir)
    check_app(ctx.root)
    ctx.cleanup()


def test_tar_stdin(app, workdir):
    stream = io.BytesIO(compress(tar_of(app), "gzip"))
    ctx = fetch_context("tar://stdin", workdir=workdir, stdin=stream)
    check_app(ctx.root)
    assert ctx.source == "tar://stdin"
    ctx.cleanup()


def test_missing_tar_file(workdir):
    with pytest.raises(ContextError, match=r"^tar:///no/such.tgz: cannot read the archive: No such file"):
        fetch_context("tar:///no/such.tgz", workdir=workdir)


def test_whiteout_names_are_ordinary_files(app, tmp_path, workdir):
    ctx = fetch_context(f"tar://{tar_cli(app, str(tmp_path / 'c.tgz'))}", workdir=workdir)
    assert os.path.isfile(os.path.join(ctx.root, "app/data/.wh.notawhiteout"))
    ctx.cleanup()


# --- sub-path ------------------------------------------------------------------------------------------------

def test_sub_path_for_dir_and_tar(app, tmp_path, workdir):
    ctx = fetch_context(app, workdir=workdir, sub_path="sub")
    assert ctx.root == os.path.join(app, "sub")
    archive = tar_cli(app, str(tmp_path / "c.tgz"))
    ctx = fetch_context(f"tar://{archive}", workdir=workdir, sub_path="/sub/")
    assert sorted(os.listdir(ctx.root)) == ["Dockerfile.sub", "x", "x-hard"]
    assert locate_dockerfile(ctx, "Dockerfile.sub", workdir=workdir) == os.path.join(ctx.root, "Dockerfile.sub")
    ctx.cleanup()
    assert os.listdir(workdir) == []


def test_sub_path_errors(app, workdir):
    with pytest.raises(ContextError, match=r"--context-sub-path 'nope' does not exist"):
        fetch_context(app, workdir=workdir, sub_path="nope")
    with pytest.raises(ContextError, match=r"--context-sub-path 'Dockerfile' is not a directory"):
        fetch_context(app, workdir=workdir, sub_path="Dockerfile")
    with pytest.raises(UsageError, match=r"must stay inside the context"):
        fetch_context(app, workdir=workdir, sub_path="../..")


def test_sub_path_symlink_resolves_inside_the_context(app, workdir, tmp_path):
    os.symlink("/", os.path.join(app, "rootlink"))
    os.symlink("/sub", os.path.join(app, "abs-sub"))
    with pytest.raises(ContextError, match="does not exist"):
        fetch_context(app, workdir=workdir, sub_path="rootlink/etc")  # not the host's /etc
    ctx = fetch_context(app, workdir=workdir, sub_path="abs-sub")  # "/sub" is the context's own /sub
    assert ctx.root == os.path.join(app, "sub")


def test_failed_fetch_leaves_nothing_in_workdir(tmp_path, workdir):
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ContextError):
        fetch_context(f"tar://{bad}", workdir=workdir)
    assert os.listdir(workdir) == []


# --- Dockerfile ----------------------------------------------------------------------------------------------

def test_dockerfile_default_relative_and_absolute(app, tmp_path, workdir):
    ctx = Context(root=app, source=app, temporary=False)
    assert locate_dockerfile(ctx, "", workdir=workdir) == os.path.join(app, "Dockerfile")
    assert locate_dockerfile(ctx, "sub/Dockerfile.sub", workdir=workdir) == os.path.join(app, "sub/Dockerfile.sub")
    outside = tmp_path / "elsewhere.Dockerfile"
    outside.write_text("FROM scratch\n")
    assert locate_dockerfile(ctx, str(outside), workdir=workdir) == str(outside)
    with pytest.raises(ContextError, match=r"^nope/Dockerfile: Dockerfile not found in the context "):
        locate_dockerfile(ctx, "nope/Dockerfile", workdir=workdir)
    with pytest.raises(ContextError, match=r"'app' is not a regular file"):
        locate_dockerfile(ctx, "app", workdir=workdir)
    with pytest.raises(UsageError, match="must stay inside the context"):
        locate_dockerfile(ctx, "../elsewhere.Dockerfile", workdir=workdir)


def test_dockerfile_relative_to_working_directory_as_kaniko(app, tmp_path, workdir, monkeypatch, caplog):
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "Build.Dockerfile").write_text("FROM scratch\n")
    monkeypatch.chdir(tmp_path / "cwd")
    ctx = Context(root=app, source=app, temporary=False)
    got = locate_dockerfile(ctx, "Build.Dockerfile", workdir=workdir)
    assert got == str(tmp_path / "cwd" / "Build.Dockerfile")
    assert "relative to the working directory" in caplog.text


def test_absolute_dockerfile_under_the_context_resolves_inside_it(app, workdir, tmp_path):
    """An absolute --dockerfile under the context directory (above --context-sub-path too) is a context path."""
    secret = tmp_path / "host-secret"
    secret.write_text("not for the build\n")
    os.symlink(str(secret), os.path.join(app, "Linked.Dockerfile"))
    os.symlink(str(secret), os.path.join(app, "sub", "Linked.Dockerfile"))
    ctx = fetch_context(app, workdir=workdir, sub_path="sub")
    assert ctx.top == app and ctx.root == os.path.join(app, "sub")
    assert locate_dockerfile(ctx, os.path.join(app, "Dockerfile"), workdir=workdir) == os.path.join(app, "Dockerfile")
    assert locate_dockerfile(ctx, f"{app}/sub/Dockerfile.sub", workdir=workdir) == \
        os.path.join(app, "sub", "Dockerfile.sub")
    linked = (os.path.join(app, "Linked.Dockerfile"), os.path.join(app, "sub", "Linked.Dockerfile"), "Linked.Dockerfile")
    for name in linked:
        with pytest.raises(ContextError, match=r"Dockerfile not found in the context .* \(a symlink whose target "
                                               r"is not in the context\)"):
            locate_dockerfile(ctx, name, workdir=workdir)
    assert locate_dockerfile(ctx, str(secret), workdir=workdir) == str(secret)  # outside: the user's own path


def test_dockerfile_symlink_is_followed_inside_the_context_only(app, workdir):
    os.symlink("/etc/passwd", os.path.join(app, "Evil.Dockerfile"))
    os.makedirs(os.path.join(app, "etc"))
    with open(os.path.join(app, "etc/passwd"), "w") as f:
        f.write("FROM scratch\n")
    os.symlink("sub/Dockerfile.sub", os.path.join(app, "Good.Dockerfile"))
    ctx = Context(root=app, source=app, temporary=False)
    assert locate_dockerfile(ctx, "Evil.Dockerfile", workdir=workdir) == os.path.join(app, "etc/passwd")
    assert locate_dockerfile(ctx, "Good.Dockerfile", workdir=workdir) == os.path.join(app, "sub/Dockerfile.sub")


# --- masking ------------------------------------------------------------------------------------------------

def test_masking():
    """Context specs go through the package's one rule (snapfs.redact; its table is tests/test_redact.py)."""
    assert mask_spec("git://user:tok3n@github.com/o/r.git#main") == "git://***@github.com/o/r.git#main"
    assert (mask_spec("https://u:p@h/x.tgz?sv=2021&sig=SECRETSIG&se=1")
            == "https://***@h/x.tgz?sv=***&sig=***&se=***")
    assert mask_spec("https://h/x.tgz?X-Amz-Signature=abc&X-Amz-Date=1") == \
        "https://h/x.tgz?X-Amz-Signature=***&X-Amz-Date=***"
    assert mask_spec("tar://ctx.tar.gz") == "tar://ctx.tar.gz"
    assert scrub("failed GET https://a:b@h/?sig=zz&x=1 with KEYVALUE", ["KEYVALUE"]) == \
        "failed GET https://***@h/?sig=***&x=*** with ***"


def test_context_error_is_an_input_error():
    assert issubclass(ContextError, InputError) and ContextError("x").exit_code == 3


def test_relative_workdir_gives_an_absolute_root(app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ctx = fetch_context("tar://stdin", workdir="rel-work", stdin=io.BytesIO(tar_of(app)))
    assert os.path.isabs(ctx.root) and ctx.root.startswith(str(tmp_path / "rel-work") + "/")
    ctx.cleanup()
