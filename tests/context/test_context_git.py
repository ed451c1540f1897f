"""git:// contexts against ``git http-backend`` (smart) and a plain file server (dumb), over http and https."""
from __future__ import annotations

import logging
import os

import pytest

from context_servers import GIT_PASSWORD, GIT_TOKEN, GIT_USER
from snapfs.context.extract import ContextError
from snapfs.context.git import GitOptions, parse_git_options, parse_git_spec
from snapfs.context.resolve import fetch_context, locate_dockerfile
from snapfs.errors import UsageError


@pytest.fixture
def workdir(tmp_path):
    return str(tmp_path / "work")


@pytest.fixture
def http(monkeypatch):
    monkeypatch.setenv("GIT_PULL_METHOD", "http")


def read(ctx, rel: str) -> str:
    with open(os.path.join(ctx.root, rel)) as f:
        return f.read()


def is_shallow(ctx) -> bool:
    return os.path.exists(os.path.join(ctx.root, ".git", "shallow"))


def test_default_branch_shallow_over_http(git_server, workdir, http):
    ctx = fetch_context(f"git://{git_server.http}/smart/app.git", workdir=workdir)
    assert read(ctx, "app/hello.txt") == "v2\n" and not os.path.exists(os.path.join(ctx.root, "feature.txt"))
    assert is_shallow(ctx) and ctx.temporary
    assert locate_dockerfile(ctx, "", workdir=workdir) == os.path.join(ctx.root, "Dockerfile")
    ctx.cleanup()
    assert os.listdir(workdir) == []


def test_https_is_the_default_method_and_trusts_ssl_cert_file(git_server, workdir, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", git_server.ca)
    ctx = fetch_context(f"git://{git_server.https}/smart/app.git#feature", workdir=workdir)
    assert read(ctx, "feature.txt") == "feature\n"
    ctx.cleanup()


def test_untrusted_https_and_insecure_skip_tls(git_server, workdir):
    with pytest.raises(ContextError, match=r"git clone failed: .*(certificate|SSL)"):
        fetch_context(f"git://{git_server.https}/smart/app.git", workdir=workdir)
    ctx = fetch_context(f"git://{git_server.https}/smart/app.git", workdir=workdir,
                        git_options="insecure-skip-tls=true")
    assert read(ctx, "app/hello.txt") == "v2\n"
    ctx.cleanup()


@pytest.mark.parametrize("ref, expect", [
    ("feature", ("feature.txt", "feature\n")),
    ("refs/heads/feature", ("feature.txt", "feature\n")),
    ("v1", ("app/hello.txt", "v1\n")),
    ("refs/tags/v1", ("app/hello.txt", "v1\n")),
    ("refs/pull/7/head", ("pr.txt", "pull request\n")),
])
def test_refs(git_server, workdir, http, ref, expect):
    ctx = fetch_context(f"git://{git_server.http}/smart/app.git#{ref}", workdir=workdir)
    assert read(ctx, expect[0]) == expect[1]
    ctx.cleanup()


def test_commit_ids(git_server, workdir, http):
    ctx = fetch_context(f"git://{git_server.http}/smart/app.git#{git_server.c1}", workdir=workdir)
    assert read(ctx, "app/hello.txt") == "v1\n"
    ctx.cleanup()
    # ref, then a commit that is not its tip
    ctx = fetch_context(f"git://{git_server.http}/smart/app.git#refs/heads/main#{git_server.c1}", workdir=workdir)
    assert read(ctx, "app/hello.txt") == "v1\n"
    ctx.cleanup()


def test_git_option_branch_overrides_and_single_branch(git_server, workdir, http):
    ctx = fetch_context(f"git://{git_server.http}/smart/app.git#main", workdir=workdir,
                        git_options="branch=v1,single-branch=false")
    assert read(ctx, "app/hello.txt") == "v1\n"
    ctx.cleanup()


def test_sub_path(git_server, workdir, http):
    ctx = fetch_context(f"git://{git_server.http}/smart/app.git", workdir=workdir, sub_path="sub")
    assert os.listdir(ctx.root) == ["Dockerfile.sub"]
    ctx.cleanup()
    assert os.listdir(workdir) == []


def test_dumb_http_falls_back_to_a_full_clone(git_server, workdir, http, caplog):
    caplog.set_level(logging.INFO)
    ctx = fetch_context(f"git://{git_server.http}/dumb/app.git#feature", workdir=workdir)
    assert read(ctx, "feature.txt") == "feature\n"
    ctx.cleanup()


def test_submodules(git_server, workdir, http):
    ctx = fetch_context(f"git://{git_server.http}/smart/with-sub.git", workdir=workdir)
    assert os.listdir(os.path.join(ctx.root, "vendor/lib")) == []
    ctx.cleanup()
    ctx = fetch_context(f"git://{git_server.http}/smart/with-sub.git", workdir=workdir,
                        git_options="recurse-submodules=true")
    assert read(ctx, "vendor/lib/lib.txt") == "library\n"
    ctx.cleanup()


def test_password_auth(git_server, workdir, http, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"git://{git_server.http}/private/app.git"
    with pytest.raises(ContextError, match=r"git clone failed: authentication failed \(set GIT_TOKEN"):
        fetch_context(url, workdir=workdir)
    monkeypatch.setenv("GIT_USERNAME", GIT_USER)
    monkeypatch.setenv("GIT_PASSWORD", "wrong-password-123")
    with pytest.raises(ContextError, match="authentication failed") as info:
        fetch_context(url, workdir=workdir)
    assert "wrong-password-123" not in str(info.value)
    monkeypatch.setenv("GIT_PASSWORD", GIT_PASSWORD)
    ctx = fetch_context(url, workdir=workdir)
    assert read(ctx, "app/hello.txt") == "v2\n"
    # nothing of the credentials is stored in the checkout or shown anywhere
    config = read(ctx, ".git/config")
    assert GIT_PASSWORD not in config and GIT_USER not in config
    assert GIT_PASSWORD not in caplog.text
    ctx.cleanup()


def test_token_auth_and_userinfo(git_server, workdir, http, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("GIT_TOKEN", GIT_TOKEN)
    monkeypatch.setenv("GIT_USERNAME", "ignored-when-a-token-is-set")
    ctx = fetch_context(f"git://{git_server.http}/token/app.git#v1", workdir=workdir)
    assert read(ctx, "app/hello.txt") == "v1\n"
    ctx.cleanup()
    monkeypatch.delenv("GIT_TOKEN")
    monkeypatch.delenv("GIT_USERNAME")
    spec = f"git://{GIT_USER}:{GIT_PASSWORD}@{git_server.http}/private/app.git"
    ctx = fetch_context(spec, workdir=workdir)
    assert ctx.source == f"git://***@{git_server.http}/private/app.git"
    ctx.cleanup()
    assert GIT_TOKEN not in caplog.text and GIT_PASSWORD not in caplog.text


def test_errors_are_one_line(git_server, workdir, http):
    with pytest.raises(ContextError, match=rf"^git://{git_server.http}/smart/nope.git: git clone failed: "):
        fetch_context(f"git://{git_server.http}/smart/nope.git", workdir=workdir)
    with pytest.raises(ContextError, match=r"git clone failed: .*nosuchbranch"):
        fetch_context(f"git://{git_server.http}/smart/app.git#nosuchbranch", workdir=workdir)
    with pytest.raises(ContextError, match=r"checkout"):
        fetch_context(f"git://{git_server.http}/smart/app.git#main#{'0' * 40}", workdir=workdir)
    assert os.listdir(workdir) == []


def test_hostile_repository_symlinks_never_lead_outside(git_server, workdir, http, caplog):
    """Symlinks out of the tree stay symlinks (as Docker copies them), and every path the context layer resolves
    (sub-path, Dockerfile) follows them inside the context only."""
    ctx = fetch_context(f"git://{git_server.http}/smart/hostile.git", workdir=workdir)
    assert os.readlink(os.path.join(ctx.root, "Dockerfile")) == "/etc/passwd"
    assert "symlink(s) point outside the repository" in caplog.text
    # Dockerfile -> /etc/passwd lands on the repository's own etc/passwd, not the host's
    path = locate_dockerfile(ctx, "Dockerfile", workdir=workdir)
    assert path == os.path.join(ctx.root, "etc/passwd") and read(ctx, "etc/passwd") == "repo-owned passwd\n"
    # escape -> / is the context root; up -> ../../.. is clamped at it
    sub = fetch_context(f"git://{git_server.http}/smart/hostile.git", workdir=workdir, sub_path="escape/real")
    assert sub.root.endswith("/tree/real")
    sub.cleanup()
    sub = fetch_context(f"git://{git_server.http}/smart/hostile.git", workdir=workdir, sub_path="up/real")
    assert sub.root.endswith("/tree/real")
    sub.cleanup()
    with pytest.raises(ContextError, match="does not exist in the context"):
        fetch_context(f"git://{git_server.http}/smart/hostile.git", workdir=workdir, sub_path="real/home")
    with pytest.raises(ContextError, match=r"^escape/etc/shadow: Dockerfile not found in the context "):
        locate_dockerfile(ctx, "escape/etc/shadow", workdir=workdir)
    ctx.cleanup()


def test_parse_git_options_and_spec(monkeypatch):
    assert parse_git_options("") == GitOptions()
    assert parse_git_options("branch=dev, single-branch=true,recurse-submodules=1,insecure-skip-tls=F") == \
        GitOptions(branch="dev", single_branch=True, recurse_submodules=True, insecure_skip_tls=False)
    with pytest.raises(UsageError, match="unknown option 'depth'"):
        parse_git_options("depth=2")
    with pytest.raises(UsageError, match="expected true or false"):
        parse_git_options("single-branch=maybe")
    spec = parse_git_spec("github.com/org/repo.git#refs/heads/x#abc")
    assert (spec.url, spec.ref, spec.commit) == ("https://github.com/org/repo.git", "refs/heads/x", "abc")
    monkeypatch.setenv("GIT_PULL_METHOD", "ftp")  # unknown methods fall back to https, as Kaniko
    assert parse_git_spec("h/r").url == "https://h/r"
    with pytest.raises(UsageError):
        parse_git_spec("hostonly")
