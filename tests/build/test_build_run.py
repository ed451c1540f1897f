"""RUN end to end: isolation, environment, users, exit codes, heredocs and --mount kinds."""
from __future__ import annotations

import gzip
import json
import os
import tarfile

import pytest

from snapfs.errors import BuildError


def layer_names(built) -> list[list[str]]:
    from snapfs.image.layout import read_layout

    out = []
    for layer in read_layout(built.layout).layers:
        with tarfile.open(layer.path) as t:
            out.append(t.getnames())
    return out


def test_shell_exec_and_env(run_build):
    b = run_build("FROM busybox\nARG BUILDONLY=secret-arg\nENV KEEP=kept\n"
                  "RUN echo \"$KEEP $BUILDONLY $HOME\" > /shell.txt\n"
                  "RUN [\"/bin/sh\", \"-c\", \"echo exec > /exec.txt\"]\n")
    assert b.read("/shell.txt") == b"kept secret-arg /root\n"
    assert b.read("/exec.txt") == b"exec\n"
    env = b.config["config"]["Env"]
    assert "KEEP=kept" in env and not any(e.startswith("BUILDONLY") for e in env)  # ARGs never persist
    hist = [h["created_by"] for h in b.config["history"]]
    # BuildKit's format: the stage's ARG values lead the RUN entry (which is why secrets must not be ARGs)
    assert "RUN |1 BUILDONLY=secret-arg /bin/sh -c echo \"$KEEP $BUILDONLY $HOME\" > /shell.txt # buildkit" in hist


def test_run_does_not_see_the_builders_environment(run_build, monkeypatch):
    monkeypatch.setenv("REGISTRY_PASSWORD", "hunter2")
    b = run_build("FROM busybox\nRUN env > /env.txt\n")
    assert b"hunter2" not in b.read("/env.txt") and b"REGISTRY_PASSWORD" not in b.read("/env.txt")


def test_user_workdir_and_groups(run_build):
    b = run_build("FROM busybox\nUSER app\nWORKDIR /home/app/w\nRUN id > id.txt && pwd >> id.txt && touch mine\n")
    text = b.read("/home/app/w/id.txt").decode()
    assert "uid=1000(app) gid=1000(app)" in text and "50(staff)" in text and "/home/app/w" in text
    st = os.lstat(b.path("/home/app/w/mine"))
    assert (st.st_uid, st.st_gid) == (1000, 1000)


def test_failing_run_reports_step_and_exit_code_and_writes_nothing(run_build, tmp_path):
    with pytest.raises(BuildError) as err:
        run_build("FROM busybox\nRUN true\nRUN exit 3\n")
    assert "step 3/3 (RUN at Dockerfile:3)" in err.value.message and "non-zero code: 3" in err.value.message
    assert (err.value.exit_code, err.value.status) == (9, 3)  # a fixed code: the status is a field
    assert not any(p.name.startswith("out-oci") and (p / "index.json").exists() for p in tmp_path.iterdir())


def test_processes_are_killed_when_the_step_ends(run_build):
    b = run_build("FROM busybox\nRUN (sleep 300 &) ; echo started > /s\nRUN ps -o pid,args > /ps.txt\n")
    assert b"sleep 300" not in b.read("/ps.txt")


def test_run_without_changes_writes_no_layer(run_build):
    b = run_build("FROM busybox\nRUN true\nRUN echo x > /x\n")
    hist = b.config["history"]
    assert [h.get("empty_layer", False) for h in hist][-2:] == [True, False]
    assert len(b.config["rootfs"]["diff_ids"]) == 2  # base + one


def test_deletions_become_whiteouts(run_build):
    b = run_build("FROM busybox\nRUN rm -rf /etc/group /root && mkdir -p /x\n")
    assert not os.path.exists(b.path("/etc/group")) and not os.path.exists(b.path("/root"))
    last = layer_names(b)[-1]
    assert "etc/.wh.group" in last and ".wh.root" in last


def test_heredoc_runs_as_script(run_build):
    b = run_build("FROM busybox\nRUN <<EOF\nset -e\necho one > /h1\necho two >> /h1\nEOF\n"
                  "RUN cat <<EOT > /h2\nline $((1+1))\nEOT\n"
                  "RUN <<'PY'\n#!/bin/sh\necho shebang > /h3\nPY\n")
    assert b.read("/h1") == b"one\ntwo\n" and b.read("/h2") == b"line 2\n" and b.read("/h3") == b"shebang\n"


def test_network_none_has_only_loopback(run_build):
    b = run_build("FROM busybox\nRUN --network=none cat /proc/net/dev > /net.txt\n")
    ifaces = [l.split(":")[0].strip() for l in b.read("/net.txt").decode().splitlines()[2:]]
    assert ifaces == ["lo"]


def test_mounts_do_not_leak_into_layers(run_build, tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-value")
    b = run_build("FROM busybox\n"
                  "RUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null && echo ok > /secret-read\n"
                  "RUN --mount=type=bind,source=data,target=/mnt/data cat /mnt/data/f > /bound\n"
                  "RUN --mount=type=tmpfs,target=/scratch touch /scratch/t && ls /scratch > /tmpfs.txt\n"
                  "RUN --mount=type=cache,target=/var/cache/x sh -c 'echo 1 >> /var/cache/x/n; wc -l < /var/cache/x/n > /count'\n",
                  {"data/f": "bound-data"}, secrets=(("tok", str(secret)),))
    assert b.read("/secret-read") == b"ok\n" and b.read("/bound") == b"bound-data"
    assert b.read("/tmpfs.txt") == b"t\n" and b.read("/count").strip() == b"1"
    for p in ("/run/secrets/tok", "/mnt/data/f", "/scratch/t", "/var/cache/x/n"):
        assert not os.path.exists(b.path(p)), p
    for layer in layer_names(b):
        assert not any("secrets" in n or n.startswith("mnt") or n.startswith("scratch") for n in layer)
    from snapfs.image.layout import read_layout

    for layer in read_layout(b.layout).layers:
        with gzip.open(layer.path) as f:
            assert b"s3cr3t-value" not in f.read()
    assert "s3cr3t" not in json.dumps(b.config)


def test_cache_mount_persists_between_builds(run_build):
    df = "FROM busybox\nRUN --mount=type=cache,id=c1,target=/c sh -c 'echo x >> /c/log; wc -l < /c/log > /n'\n"
    run_build(df)
    assert run_build(df).read("/n").strip() == b"2"


def test_bind_mount_rw_does_not_change_the_context(run_build, tmp_path):
    run_build("FROM busybox\nRUN --mount=type=bind,source=.,target=/src,rw echo changed > /src/f\n", {"f": "orig"})
    assert (tmp_path / "ctx" / "f").read_text() == "orig"


def test_unsupported_run_flags_are_refused(run_build):
    with pytest.raises(BuildError, match="RUN --mount=type=ssh is not supported yet"):
        run_build("FROM busybox\nRUN --mount=type=ssh true\n")
    with pytest.raises(BuildError, match="RUN --security=insecure is not supported yet"):
        run_build("FROM busybox\nRUN --security=insecure true\n")


def test_single_snapshot_makes_one_layer(run_build):
    b = run_build("FROM busybox\nRUN echo 1 > /a\nCOPY f /f\nRUN echo 2 > /b\n", {"f": "F"}, single_snapshot=True)
    assert len(b.config["rootfs"]["diff_ids"]) == 2
    assert b.read("/a") == b"1\n" and b.read("/b") == b"2\n" and b.read("/f") == b"F"
    nonempty = [h for h in b.config["history"] if not h.get("empty_layer")]
    assert len(nonempty) == 2


def test_snapshot_modes_agree_on_this_build(run_build):
    df = "FROM busybox\nRUN echo a > /a && rm /etc/group\n"
    digests = {mode: run_build(df, snapshot_mode=mode, reproducible=True).result.digest
               for mode in ("full", "redo", "time")}
    assert len(set(digests.values())) == 1


def test_onbuild_triggers_run_in_the_child(run_build, registry):
    run_build("FROM busybox\nONBUILD RUN echo triggered > /onbuild.txt\n", push=f"{registry.host}/test/parent:1")
    b = run_build(f"FROM {registry.host}/test/parent:1\nRUN cat /onbuild.txt > /seen\n")
    assert b.read("/seen") == b"triggered\n" and not b.config["config"].get("OnBuild")


def test_ignore_path_and_var_run_are_left_out_of_layers(run_build):
    b = run_build("FROM busybox\nRUN mkdir -p /var/cache/apt /var/run /data && echo x > /var/cache/apt/pkg "
                  "&& echo pid > /var/run/app.pid && echo kept > /data/kept\n", ignore_paths=("/var/cache",))
    assert b.read("/data/kept") == b"kept\n"
    assert not os.path.exists(b.path("/var/cache/apt/pkg")) and not os.path.exists(b.path("/var/run/app.pid"))
    b = run_build("FROM busybox\nRUN mkdir -p /var/run && echo pid > /var/run/app.pid\n", ignore_var_run=False)
    assert b.read("/var/run/app.pid") == b"pid\n"
