"""COPY, ADD, WORKDIR and metadata instructions end to end, on a busybox base pulled from a real registry."""
from __future__ import annotations

import io
import os
import stat
import tarfile

import pytest

from snapfs.errors import BuildError, DockerfileError


def mode(built, p):
    return stat.S_IMODE(os.lstat(built.path(p)).st_mode)


def owner(built, p):
    st = os.lstat(built.path(p))
    return st.st_uid, st.st_gid


def test_copy_file_dir_and_metadata(run_build):
    b = run_build("FROM busybox\nCOPY a.txt /srv/\nCOPY dir /opt/dir\nENV GREETING=hi PATH=/opt:$PATH\n"
                  "LABEL org.example=1\nEXPOSE 80 53/udp\nVOLUME /data\nUSER app\nWORKDIR /home/app/work\n"
                  "ENTRYPOINT [\"/bin/sh\", \"-c\"]\nCMD [\"echo hi\"]\nSTOPSIGNAL SIGTERM\n",
                  {"a.txt": "A", "dir/x": "X", "dir/sub/y": "Y"})
    assert b.read("/srv/a.txt") == b"A" and b.read("/opt/dir/x") == b"X" and b.read("/opt/dir/sub/y") == b"Y"
    assert owner(b, "/srv/a.txt") == (0, 0) and mode(b, "/srv/a.txt") == 0o644
    assert os.path.isdir(b.path("/home/app/work")) and owner(b, "/home/app/work") == (1000, 1000)
    c = b.config["config"]
    assert c["Env"] == ["PATH=/opt:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hi"]  # a reset key keeps its place
    assert c["Labels"] == {"org.example": "1"}
    assert c["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}} and c["Volumes"] == {"/data": {}}
    assert c["User"] == "app" and c["WorkingDir"] == "/home/app/work"
    assert c["Entrypoint"] == ["/bin/sh", "-c"] and c["Cmd"] == ["echo hi"] and c["StopSignal"] == "SIGTERM"
    hist = b.config["history"]
    assert len([h for h in hist if not h.get("empty_layer")]) == len(b.config["rootfs"]["diff_ids"])
    assert hist[-1]["created_by"] == "STOPSIGNAL SIGTERM" and hist[-1]["empty_layer"] is True


def test_entrypoint_resets_inherited_cmd(run_build):
    b = run_build("FROM busybox\nENTRYPOINT [\"/bin/true\"]\n")
    assert b.config["config"]["Entrypoint"] == ["/bin/true"] and b.config["config"].get("Cmd") is None
    b = run_build("FROM busybox\nCMD [\"x\"]\nENTRYPOINT [\"/bin/true\"]\n")
    assert b.config["config"]["Cmd"] == ["x"]


def test_shell_form_uses_shell_instruction(run_build):
    b = run_build("FROM busybox\nSHELL [\"/bin/ash\", \"-eo\", \"pipefail\", \"-c\"]\nCMD echo $HOME\n")
    assert b.config["config"]["Cmd"] == ["/bin/ash", "-eo", "pipefail", "-c", "echo $HOME"]
    assert b.config["config"]["Shell"] == ["/bin/ash", "-eo", "pipefail", "-c"]


def test_copy_chown_chmod_wildcards_and_trailing_slash_rules(run_build):
    b = run_build("FROM busybox\nCOPY --chown=app:staff --chmod=0750 *.sh /usr/local/bin/\n"
                  "COPY --chmod=u=rw,go=r one.txt /etc/renamed\nCOPY one.txt two.txt /multi/\n",
                  {"a.sh": "#!/bin/sh", "b.sh": "#!/bin/sh", "one.txt": "1", "two.txt": "2"})
    for name in ("a.sh", "b.sh"):
        assert owner(b, f"/usr/local/bin/{name}") == (1000, 50) and mode(b, f"/usr/local/bin/{name}") == 0o750
    assert b.read("/etc/renamed") == b"1" and mode(b, "/etc/renamed") == 0o644
    assert sorted(os.listdir(b.path("/multi"))) == ["one.txt", "two.txt"]


def test_copy_several_sources_needs_a_directory(run_build):
    with pytest.raises(BuildError, match=r"destination '/x' must be a directory and end with a /"):
        run_build("FROM busybox\nCOPY a b /x\n", {"a": "", "b": ""})


def test_missing_source_is_a_clear_error_with_the_step(run_build):
    with pytest.raises(BuildError, match=r"step 2/2 \(COPY at Dockerfile:2\): COPY failed: 'nope': not found"):
        run_build("FROM busybox\nCOPY nope /\n")


def test_dockerignore_excludes_and_exceptions(run_build):
    b = run_build("FROM busybox\nCOPY . /app/\n", {".dockerignore": "*.log\n!keep.log\nsecret/\n",
                                                   "a.log": "", "keep.log": "k", "secret/key": "s", "src/m.c": "c"})
    assert sorted(os.listdir(b.path("/app"))) == [".dockerignore", "Dockerfile", "keep.log", "src"]
    with pytest.raises(BuildError, match="not found in build context"):
        run_build("FROM busybox\nCOPY secret/key /\n", {".dockerignore": "secret\n", "secret/key": "s"})


def test_copy_preserves_symlinks_hardlinks_and_mtime(run_build, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "tree").mkdir()
    (ctx / "tree/f").write_text("F")
    os.utime(ctx / "tree/f", (1_600_000_000, 1_600_000_000))
    os.symlink("f", ctx / "tree/link")
    os.link(ctx / "tree/f", ctx / "tree/hard")
    b = run_build("FROM busybox\nCOPY tree /t/\n")
    assert os.readlink(b.path("/t/link")) == "f"
    assert os.stat(b.path("/t/f")).st_ino == os.stat(b.path("/t/hard")).st_ino
    assert int(os.stat(b.path("/t/f")).st_mtime) == 1_600_000_000


def test_copy_parents_and_exclude(run_build):
    b = run_build("FROM busybox\nCOPY --parents a/*/x.txt /dst/\nCOPY --exclude=*.tmp data/ /data/\n",
                  {"a/b/x.txt": "1", "a/c/x.txt": "2", "data/k.txt": "k", "data/z.tmp": "z"})
    assert b.read("/dst/a/b/x.txt") == b"1" and b.read("/dst/a/c/x.txt") == b"2"
    assert os.listdir(b.path("/data")) == ["k.txt"]


def test_add_local_archive_is_extracted_and_plain_files_copied(run_build):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in (("pkg/bin/tool", b"T"), ("pkg/README", b"R")):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.uid, ti.gid = len(data), 0o755, 7, 8
            t.addfile(ti, io.BytesIO(data))
    b = run_build("FROM busybox\nADD tool.tgz /opt/\nADD plain.txt /opt/plain.txt\n",
                  {"tool.tgz": buf.getvalue(), "plain.txt": "p"})
    assert b.read("/opt/pkg/bin/tool") == b"T" and owner(b, "/opt/pkg/bin/tool") == (7, 8)
    assert mode(b, "/opt/pkg/bin/tool") == 0o755 and b.read("/opt/plain.txt") == b"p"


def test_copy_heredoc(run_build):
    b = run_build("FROM busybox\nARG WHO=you\nCOPY <<EOF /etc/motd\nwelcome $WHO$NOPE\nEOF\n"
                  "COPY <<'EOF' /etc/raw\nkeep $WHO\nEOF\nCOPY <<-A <<-B /two/\n\tone\n\tA\n\ttwo\n\tB\n")
    assert b.read("/etc/motd") == b"welcome you\n"  # unquoted delimiter: ARG/ENV expanded, unknown is empty
    assert b.read("/etc/raw") == b"keep $WHO\n"  # quoted delimiter: kept as written
    assert b.read("/two/A") == b"one\n" and b.read("/two/B") == b"two\n"


def test_copy_from_stage_keeps_owners_and_target_picks_stage(run_build):
    df = ("FROM busybox AS build\nCOPY --chown=app:app src /src\nFROM busybox AS other\nCOPY nope /\n"
          "FROM busybox\nCOPY --from=build /src /copied\n")
    b = run_build(df, {"src/main": "m"})
    assert b.read("/copied/main") == b"m" and owner(b, "/copied/main") == (1000, 1000)
    b = run_build(df, {"src/main": "m"}, target="build")
    assert b.read("/src/main") == b"m" and not os.path.exists(b.path("/copied"))


def test_from_previous_stage_and_build_args(run_build):
    b = run_build("ARG BASE=busybox\nFROM ${BASE} AS one\nARG WHO=world\nENV MSG=hello-$WHO\n"
                  "FROM one\nLABEL from=one\n", build_args=(("WHO", "snapfs"),))
    assert "MSG=hello-snapfs" in b.config["config"]["Env"] and b.config["config"]["Labels"] == {"from": "one"}


def test_dockerfile_errors_name_the_line(run_build):
    with pytest.raises(DockerfileError, match=r"Dockerfile:2:1: unknown instruction"):
        run_build("FROM busybox\nFROBNICATE x\n")


def test_reproducible_builds_give_the_same_digest(run_build, monkeypatch):
    df = "FROM busybox\nCOPY a /a\nENV X=1\n"
    digests = set()
    for n in range(2):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
        digests.add(run_build(df, {"a": "same"}).result.digest)
    assert len(digests) == 1
