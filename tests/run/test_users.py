"""users: Docker's USER and COPY --chown rules against the root's own passwd and group files."""
from __future__ import annotations

import os

import pytest

from snapfs.engine.rootfs import RootFS
from snapfs.errors import BuildError, InputError
from snapfs.run.users import MAX_DB_SIZE, User, resolve_chown, resolve_owner, resolve_user

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:app:/home/app:/bin/sh
# a comment
broken line without fields
bad:x:notanumber:1::/:/bin/sh
short:x:5
dup:x:1000:7::/dup:/bin/sh
nohome:x:1001:1001:::/bin/sh
"""
GROUP = """\
root:x:0:
daemon:x:1:app
app:x:1000:
extra:x:2000:app,other
other:x:2001:someone
malformed
weird:x:xx:app
"""


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc/passwd").write_text(PASSWD)
    (r / "etc/group").write_text(GROUP)
    return str(r)


@pytest.mark.parametrize("spec, want", [
    ("", User(0, 0, (0,), "/root", "root")),
    ("root", User(0, 0, (0,), "/root", "root")),
    ("0", User(0, 0, (0,), "/root", "root")),
    ("app", User(1000, 1000, (1000, 1, 2000), "/home/app", "app")),
    ("1000", User(1000, 1000, (1000, 1, 2000), "/home/app", "app")),  # first entry with that uid wins
    ("app:extra", User(1000, 2000, (2000,), "/home/app", "app")),  # explicit group: no supplementary groups
    ("app:2001", User(1000, 2001, (2001,), "/home/app", "app")),
    ("app:4242", User(1000, 4242, (4242,), "/home/app", "app")),  # numeric group need not exist
    ("4242", User(4242, 0, (0,), "/", "")),  # numeric uid not in passwd: gid 0, HOME /
    ("4242:4343", User(4242, 4343, (4343,), "/", "")),
    (":extra", User(0, 2000, (2000,), "/root", "root")),
    ("nohome", User(1001, 1001, (1001,), "/", "nohome")),
    ("daemon", User(1, 1, (1,), "/usr/sbin", "daemon")),
])
def test_resolve_user(root, spec, want):
    assert resolve_user(root, spec) == want


@pytest.mark.parametrize("spec, message", [
    ("ghost", "unable to find user ghost: no matching entries in passwd file"),
    ("bad", "unable to find user bad: no matching entries in passwd file"),  # malformed lines are skipped
    ("short", "unable to find user short: no matching entries in passwd file"),
    ("app:ghosts", "unable to find group ghosts: no matching entries in group file"),
    ("app:weird", "unable to find group weird: no matching entries in group file"),
    ("99999999999", "user or group id 99999999999 is out of range"),
])
def test_resolve_user_errors(root, spec, message):
    with pytest.raises(BuildError) as exc:
        resolve_user(root, spec)
    assert exc.value.message == message


def test_missing_files_allow_numeric_ids_only(tmp_path):
    (tmp_path / "etc").mkdir()
    assert resolve_user(str(tmp_path), "") == User(0, 0, (0,), "/", "")
    assert resolve_user(str(tmp_path), "1000:1000") == User(1000, 1000, (1000,), "/", "")
    with pytest.raises(BuildError, match="^unable to find user app: no matching entries in passwd file$"):
        resolve_user(str(tmp_path), "app")
    assert resolve_chown(str(tmp_path), "1000") == (1000, 1000)
    with pytest.raises(BuildError, match="^unable to find group app: no matching entries in group file$"):
        resolve_chown(str(tmp_path), "1000:app")


def test_missing_root_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="^root directory .*/nope: No such file or directory$"):
        resolve_user(str(tmp_path / "nope"), "app")


@pytest.mark.parametrize("target", ["/etc/debian_version", "../../../../../../etc/debian_version",
                                    "/proc/self/root/etc/passwd"])
def test_symlinked_passwd_escaping_the_root_resolves_inside_it(root, target):
    # These name real host files; inside the root they do not exist, so "app" is unknown rather than the host's.
    os.unlink(os.path.join(root, "etc/passwd"))
    os.symlink(target, os.path.join(root, "etc/passwd"))
    with pytest.raises(BuildError, match="^unable to find user app: no matching entries in passwd file$"):
        resolve_user(root, "app")
    assert resolve_user(root, "1000").home == "/"


def test_passwd_symlink_loop_is_refused(root):
    os.unlink(os.path.join(root, "etc/passwd"))
    os.symlink("../../etc/passwd", os.path.join(root, "etc/passwd"))  # clamped at the root: points at itself
    with pytest.raises(BuildError, match="^/etc/passwd in the image: too many levels of symbolic links$"):
        resolve_user(root, "app")


def test_symlinked_passwd_follows_links_within_the_root(root):
    os.rename(os.path.join(root, "etc/passwd"), os.path.join(root, "etc/passwd.real"))
    os.symlink("/../../etc/passwd.real", os.path.join(root, "etc/passwd"))
    assert resolve_user(root, "app").uid == 1000


def test_etc_symlink_to_host_root_stays_inside(tmp_path):
    # etc -> / : "/etc/passwd" is "/passwd" of the root, not the host's /etc/passwd (which has root, daemon, ...).
    r = tmp_path / "r"
    r.mkdir()
    os.symlink("/", r / "etc")
    (r / "passwd").write_text("only:x:77:88::/o:/bin/sh\n")
    assert resolve_user(str(r), "only") == User(77, 88, (88,), "/o", "only")
    with pytest.raises(BuildError, match="^unable to find user daemon"):
        resolve_user(str(r), "daemon")


def test_passwd_that_is_not_a_regular_file(root):
    os.unlink(os.path.join(root, "etc/passwd"))
    os.mkfifo(os.path.join(root, "etc/passwd"))  # a FIFO would block a naive open
    with pytest.raises(BuildError, match="^/etc/passwd in the image is not a regular file$"):
        resolve_user(root, "app")


def test_absurdly_large_passwd_is_refused(root):
    with open(os.path.join(root, "etc/passwd"), "ab") as f:
        f.truncate(MAX_DB_SIZE + 1)
    with pytest.raises(BuildError, match=r"^/etc/passwd in the image is too large \(\d+ bytes, limit \d+\)$"):
        resolve_user(root, "app")


def test_accepts_an_open_rootfs(root):
    with RootFS(root) as rfs:
        assert resolve_user(rfs, "app").gid == 1000
        assert resolve_chown(rfs, "app") == (1000, 1000)
        assert rfs.fd >= 0  # not closed by the call


@pytest.mark.parametrize("spec, want", [
    ("app", (1000, 1000)),  # a lone name: its primary gid
    ("app:extra", (1000, 2000)),
    ("app:7", (1000, 7)),
    ("1000", (1000, 1000)),  # a lone number: gid = uid (BuildKit)
    ("4242", (4242, 4242)),
    ("4242:extra", (4242, 2000)),
    ("0:0", (0, 0)),
    ("daemon", (1, 1)),
])
def test_resolve_chown(root, spec, want):
    assert resolve_chown(root, spec) == want


@pytest.mark.parametrize("spec, message", [
    ("ghost", "unable to find user ghost: no matching entries in passwd file"),
    ("app:ghosts", "unable to find group ghosts: no matching entries in group file"),
    ("", "invalid --chown value '': expected user[:group]"),
    (":", "invalid --chown value ':': expected user[:group]"),
    ("app:", "invalid --chown value 'app:': expected user[:group]"),
])
def test_resolve_chown_errors(root, spec, message):
    with pytest.raises(BuildError) as exc:
        resolve_chown(root, spec)
    assert exc.value.message == message


def test_root_and_numeric_ids_need_no_passwd_or_group_file(tmp_path):
    # FROM scratch has no /etc at all: "root" is uid/gid 0 for USER, --chown and WORKDIR alike (BuildKit's
    # llb.WithUser and its executor's fast path parse "root" as 0; buildah accepts USER root there too).
    r = str(tmp_path)
    assert resolve_user(r, "root") == User(0, 0, (0,), "/", "root")
    assert resolve_user(r, "root:root") == User(0, 0, (0,), "/", "root")
    assert resolve_user(r, "1000:root") == User(1000, 0, (0,), "/", "")
    assert resolve_chown(r, "root") == (0, 0)
    assert resolve_chown(r, "root:root") == (0, 0)
    assert resolve_chown(r, "1000") == (1000, 1000)
    assert resolve_chown(r, ":50") == (0, 50)
    assert resolve_owner(r, "root") == (0, 0)
    assert resolve_owner(r, "1000") == (1000, 1000)
    assert resolve_owner(r, "1000:2000") == (1000, 2000)
    with pytest.raises(BuildError, match="^unable to find user ghost: no matching entries in passwd file$"):
        resolve_chown(r, "ghost")


def test_chown_lone_uid_is_gid_uid_even_when_passwd_says_otherwise(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("svc:x:500:100::/srv:/bin/sh\n")
    (tmp_path / "etc/group").write_text("users:x:100:\nstaff:x:50:svc\n")
    r = str(tmp_path)
    assert resolve_chown(r, "500") == (500, 500)  # BuildKit's UserOpt_ByID sets both; buildah gives 500:500 too
    assert resolve_chown(r, "svc") == (500, 100)  # a name: its primary group
    assert resolve_chown(r, "svc:staff") == (500, 50)
    assert resolve_chown(r, ":staff") == (0, 50)
    assert resolve_owner(r, "svc") == (500, 100)
    assert resolve_owner(r, "500") == (500, 500)
    assert resolve_user(r, "500").gid == 100  # RUN follows runc: a uid in passwd gets its primary group


@pytest.mark.parametrize("spec, want", [
    ("", (0, 0)),
    ("app", (1000, 1000)),
    ("app:extra", (1000, 2000)),
    ("ghost", (0, 0)),  # BuildKit and buildah create WORKDIR as 0:0 for a user they cannot find
    ("app:ghosts", (1000, 1000)),  # an unknown group keeps the user's gid (BuildKit's readUser)
    ("ghost:extra", (0, 2000)),
])
def test_resolve_owner_falls_back_as_buildkit_does(root, spec, want):
    assert resolve_owner(root, spec) == want
