"""sandbox: RUN steps in real namespaces on a busybox root (needs root; skipped where isolation is unavailable)."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid

import pytest

from rootfs_kit import busybox_available, copy_root, listing, make_busybox_root, mountinfo, write
from snapfs.errors import BuildError, InputError, UsageError
from snapfs.run.confine import MASKED, READ_ONLY
from snapfs.run.sandbox import DEFAULT_PATH, Mount, RunResult, RunSpec, isolation_available, run

pytestmark = pytest.mark.skipif(not (busybox_available() and isolation_available()),
                                reason="needs root, /bin/busybox and namespaces")

STANDARD_CREATED = ("dev", "etc/hostname", "etc/hosts", "etc/resolv.conf", "proc", "sys")


@pytest.fixture(scope="session")
def template(tmp_path_factory):
    return make_busybox_root(str(tmp_path_factory.mktemp("busybox") / "root"))


@pytest.fixture
def root(template, tmp_path):
    return copy_root(template, str(tmp_path / "root"))


def sh(root: str, script: str, **kw) -> tuple[RunResult, str, str]:
    """Run ``script`` with /bin/sh -c; (result, stdout, stderr)."""
    out, err = io.BytesIO(), io.BytesIO()
    result = run(RunSpec(root=root, argv=("/bin/sh", "-c", script), **kw), stdout=out, stderr=err)
    return result, out.getvalue().decode(), err.getvalue().decode()


def host_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None


# --- exit codes and output ---------------------------------------------------------------------------------

@pytest.mark.parametrize("script, code", [
    ("true", 0),
    ("exit 3", 3),
    ("exit 255", 255),
    ("kill -9 $$", 137),
    ("kill -TERM $$", 143),
    ("nosuchcommand", 127),  # the shell's own "not found"
])
def test_exit_codes(root, script, code):
    assert sh(root, script)[0].exit_code == code


def test_exec_form_command_not_found(root):
    out, err = io.BytesIO(), io.BytesIO()
    result = run(RunSpec(root=root, argv=("nosuchcommand", "arg")), stdout=out, stderr=err)
    assert result.exit_code == 127
    assert err.getvalue() == b"snapfs: exec 'nosuchcommand': executable file not found in $PATH\n"
    result = run(RunSpec(root=root, argv=("/no/such",)), stdout=out, stderr=err)
    assert result.exit_code == 127
    assert err.getvalue().endswith(b"snapfs: exec '/no/such': no such file or directory\n")


def test_exec_form_not_executable(root):
    err = io.BytesIO()
    result = run(RunSpec(root=root, argv=("/etc/passwd",)), stderr=err)
    assert result.exit_code == 126
    assert err.getvalue() == b"snapfs: exec '/etc/passwd': permission denied\n"


def test_output_streams_to_real_files(root, tmp_path):
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        result = run(RunSpec(root=root, argv=("/bin/sh", "-c", "echo to-out; echo to-err >&2")), stdout=out,
                     stderr=err)
    assert result.exit_code == 0 and result.seconds > 0
    assert (tmp_path / "out").read_text() == "to-out\n"
    assert (tmp_path / "err").read_text() == "to-err\n"


def test_output_to_text_streams(root):
    out = io.StringIO()
    run(RunSpec(root=root, argv=("echo", "héllo")), stdout=out)
    assert out.getvalue() == "héllo\n"


def test_stdin_is_empty_by_default(root):
    assert sh(root, "cat; echo end")[1] == "end\n"


# --- environment, user, workdir, hostname ------------------------------------------------------------------

def test_environment_is_exactly_the_spec(root, monkeypatch):
    monkeypatch.setenv("SNAPFS_TEST_SECRET", "hunter2")
    out = io.BytesIO()
    run(RunSpec(root=root, argv=("env",), env=(("A", "1"), ("B", "two words"))), stdout=out)
    assert sorted(out.getvalue().decode().splitlines()) == ["A=1", "B=two words", "HOME=/root",
                                                            f"PATH={DEFAULT_PATH}"]
    assert b"hunter2" not in out.getvalue()


def test_environment_keeps_given_path_and_home(root):
    out = io.BytesIO()
    run(RunSpec(root=root, argv=("env",), env=(("PATH", "/usr/bin"), ("HOME", "/h"))), stdout=out)
    assert sorted(out.getvalue().decode().splitlines()) == ["HOME=/h", "PATH=/usr/bin"]


@pytest.mark.parametrize("user, ids, home", [
    ("", "0 0 0", "/root"),
    ("root", "0 0 0", "/root"),
    ("app", "1000 1000 1000 2000", "/home/app"),
    ("1000", "1000 1000 1000 2000", "/home/app"),
    ("app:extra", "1000 2000 2000", "/home/app"),
    ("app:0", "1000 0 0", "/home/app"),
    ("4321", "4321 0 0", "/"),
    ("4321:4322", "4321 4322 4322", "/"),
    ("nobody", "65534 65534 65534", "/nonexistent"),
])
def test_user_switching(root, user, ids, home):
    result, out, _ = sh(root, 'echo $(id -u) $(id -g) $(id -G) "$HOME"', user=user)
    assert result.exit_code == 0
    assert out == f"{ids} {home}\n"


def test_unknown_user_is_a_build_error(root):
    with pytest.raises(BuildError, match="^unable to find user ghost: no matching entries in passwd file$"):
        sh(root, "true", user="ghost")


def test_workdir_is_created_and_owned_by_the_user(root):
    result, out, _ = sh(root, "pwd; touch mine", workdir="/srv/app/", user="app")
    assert (result.exit_code, out) == (0, "/srv/app\n")
    for rel in ("srv", "srv/app"):
        st = os.lstat(os.path.join(root, rel))
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 1000, 1000)
    assert os.path.exists(os.path.join(root, "srv/app/mine"))
    assert "srv" not in result.created and "srv/app" not in result.created  # it is part of the layer


def test_existing_workdir_is_left_alone(root):
    result, out, _ = sh(root, "pwd", workdir="/tmp", user="app")
    assert out == "/tmp\n"
    st = os.lstat(os.path.join(root, "tmp"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o1777, 0)


def test_hostname(root):
    assert sh(root, "hostname; cat /etc/hostname")[1] == "snapfs\nsnapfs\n"
    assert sh(root, "hostname", hostname="builder-1")[1] == "builder-1\n"
    assert os.uname().nodename != "snapfs"


# --- what the step sees ------------------------------------------------------------------------------------

def test_proc_shows_only_the_steps_processes(root):
    result, out, _ = sh(root, "ls /proc | grep -c '^[0-9]'; echo $$")
    count, me = out.split()
    assert int(count) <= 4  # the reaper (1), the shell, ls and grep
    assert int(me) < 10


def test_only_the_steps_mounts_are_visible(root):
    # pivot_root detached the host's tree: no host mount (not even "/" of the host) is left in the namespace.
    # The masked and read-only kernel files (those this kernel has) are mounts too.
    out = sh(root, "cut -d' ' -f5 /proc/self/mountinfo")[1]
    kernel = [p for p in (*MASKED, *READ_ONLY) if os.path.exists(p)]
    assert sorted(out.split()) == sorted(["/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/sys", "/etc/resolv.conf",
                                          "/etc/hosts", "/etc/hostname", *kernel])


def test_orphans_are_reaped_and_umask_is_the_default(root):
    out = sh(root, "umask; (sleep 0.1 &); (true &); sleep 0.5; ps -o stat,comm | grep -c '^Z' || true")[1]
    assert out == "0022\n0\n"


def test_dev_nodes(root):
    result, out, err = sh(root, "head -c 4 /dev/urandom | wc -c; echo gone > /dev/null && echo ok; "
                                "head -c 3 /dev/zero | wc -c; ls -l /dev/null /dev/zero /dev/full /dev/random "
                                "/dev/urandom /dev/tty; for l in fd stdin ptmx; do readlink /dev/$l; done; "
                                "touch /dev/shm/x && echo shm; grep -c devpts /proc/mounts")
    assert result.exit_code == 0, err
    lines = out.splitlines()
    assert lines[:3] == ["4", "ok", "3"]
    assert all(line.startswith("crw-rw-rw-") for line in lines[3:9])
    assert lines[9:] == ["/proc/self/fd", "/proc/self/fd/0", "pts/ptmx", "shm", "1"]


def test_sys_is_read_only(root):
    result, out, _ = sh(root, "touch /sys/x 2>/dev/null && echo wrote; grep ' /sys ' /proc/mounts; ls /sys")
    assert "wrote" not in out
    assert " ro," in out.splitlines()[0]
    assert "class" in out.split()


def test_resolver_files_are_throwaway_copies(root):
    before = {p: host_digest(p) for p in ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname")}
    with open("/etc/resolv.conf") as f:
        host_resolv = f.read()
    result, out, _ = sh(root, "cat /etc/resolv.conf; grep -c snapfs /etc/hosts; "
                              "echo evil >> /etc/hosts; echo evil > /etc/resolv.conf; echo evil > /etc/hostname; "
                              "cat /etc/resolv.conf")
    assert result.exit_code == 0
    assert out == host_resolv + "1\nevil\n"
    assert {p: host_digest(p) for p in before} == before
    for rel in ("etc/hosts", "etc/resolv.conf", "etc/hostname"):
        assert not os.path.lexists(os.path.join(root, rel))


def test_no_leftovers_in_the_root(root):
    before = listing(root)
    result, _, _ = sh(root, "ls /proc /dev /sys > /dev/null")
    assert result.exit_code == 0
    assert listing(root) == before
    assert result.created == STANDARD_CREATED


def test_existing_mount_points_are_kept(root):
    for d in ("proc", "dev", "sys"):
        os.mkdir(os.path.join(root, d))
    write(root, "etc/hosts", "127.0.0.1 image\n")
    before = listing(root)
    result, out, _ = sh(root, "cat /etc/hosts | head -1")
    assert out != "127.0.0.1 image\n"  # the step sees the host's copy
    assert listing(root) == before
    with open(os.path.join(root, "etc/hosts")) as f:
        assert f.read() == "127.0.0.1 image\n"
    assert result.created == ("etc/hostname", "etc/resolv.conf")


def test_host_mount_table_is_untouched(root):
    before = mountinfo()
    sh(root, "true", mounts=(Mount("tmpfs", "/t"),))
    assert mountinfo() == before


def test_background_processes_are_killed(root):
    marker = str(1000 + uuid.uuid4().int % 8000)
    started = time.monotonic()
    result, out, _ = sh(root, f"sleep {marker} & (trap '' TERM HUP; sleep {marker}) & echo done")
    assert (result.exit_code, out) == (0, "done\n")
    assert time.monotonic() - started < 30
    assert _sleepers(marker, want=False) == []


def _sleepers(marker: str, *, want: bool, timeout: float = 10) -> list[str]:
    """Pids of ``sleep MARKER`` processes, polled until some exist (want) or none do (not want)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline(pid) == ["sleep", marker]]
        if bool(found) == want or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


BUILDER = """
import sys
from snapfs.run.sandbox import RunSpec, run
run(RunSpec(root=sys.argv[1], argv=("/bin/sh", "-c", "echo started; sleep " + sys.argv[2])))
"""


@pytest.mark.parametrize("signo", [signal.SIGKILL, signal.SIGINT])
def test_step_dies_with_the_builder(root, signo):
    # SIGKILL: no cleanup code runs, PDEATHSIG takes launcher and reaper down; SIGINT: the builder kills them.
    marker = str(10000 + uuid.uuid4().int % 8000)
    builder = subprocess.Popen([sys.executable, "-c", BUILDER, root, marker], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    try:
        assert builder.stdout.readline() == b"started\n"
        assert _sleepers(marker, want=True) != []
        builder.send_signal(signo)
        assert builder.wait(timeout=30) != 0
        assert _sleepers(marker, want=False) == []
    finally:
        builder.kill()
        builder.wait()


def _cmdline(pid: str) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def test_capabilities_are_dockers_default_set_without_mknod_and_net_raw(root):
    result, out, _ = sh(root, "grep CapEff /proc/self/status; mount -t tmpfs x /tmp 2>/dev/null || echo refused")
    assert out == "CapEff:\t00000000a00405fb\nrefused\n"  # Docker's a80425fb less bits 13 and 27


# --- network -----------------------------------------------------------------------------------------------

def test_network_none_has_only_lo(root):
    result, out, _ = sh(root, "ls /sys/class/net; ip -o link | cut -d: -f2; "
                              "tail -n +3 /proc/net/dev | cut -d: -f1", network="none")
    assert result.exit_code == 0
    words = out.split()
    assert words == ["lo", "lo", "lo"]
    assert "UP" in sh(root, "ip link show lo", network="none")[1]


@pytest.mark.parametrize("network", ["default", "host"])
def test_network_default_is_the_hosts(root, network):
    out = sh(root, "ls /sys/class/net", network=network)[1]
    assert sorted(out.split()) == sorted(os.listdir("/sys/class/net"))


# --- RUN --mount ------------------------------------------------------------------------------------------

@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data\n")
    return src


def test_bind_mount_read_only(root, source):
    result, out, err = sh(root, "cat /src/f; echo x > /src/f || echo refused; touch /src/new || echo refused",
                          mounts=(Mount("bind", "/src", str(source)),))
    assert out == "data\nrefused\nrefused\n"
    assert "Read-only file system" in err
    assert sorted(os.listdir(source)) == ["f"]
    assert "src" in result.created and not os.path.exists(os.path.join(root, "src"))


def test_bind_mount_read_write_does_not_reach_the_source(root, source, tmp_path):
    single = tmp_path / "single"
    single.write_text("one\n")
    result, out, err = sh(root, "echo changed > /src/f; touch /src/new; rm /src/f; ls /src; "
                                "echo two >> /one; cat /one",
                          mounts=(Mount("bind", "/src", str(source), readonly=False),
                                  Mount("bind", "/one", str(single), readonly=False)))
    assert (result.exit_code, out) == (0, "new\none\ntwo\n"), err
    assert sorted(os.listdir(source)) == ["f"] and (source / "f").read_text() == "data\n"
    assert single.read_text() == "one\n"
    assert not os.path.lexists(os.path.join(root, "one"))


def test_bind_mount_of_a_file_read_only(root, tmp_path):
    f = tmp_path / "conf"
    f.write_text("cfg\n")
    result, out, _ = sh(root, "cat /etc/app.conf; echo x >> /etc/app.conf 2>/dev/null || echo refused",
                        mounts=(Mount("bind", "/etc/app.conf", str(f)),))
    assert out == "cfg\nrefused\n"
    assert "etc/app.conf" in result.created


def test_cache_mount_persists_across_runs(root, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    m = (Mount("cache", "/root/.cache", str(cache)),)  # read-write by default
    assert sh(root, "echo one >> /root/.cache/log", mounts=m)[0].exit_code == 0
    result, out, _ = sh(root, "echo two >> /root/.cache/log; cat /root/.cache/log", mounts=m)
    assert out == "one\ntwo\n"
    assert (cache / "log").read_text() == "one\ntwo\n"
    assert not os.path.lexists(os.path.join(root, "root/.cache"))


def test_read_only_cache_mount(root, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "x").write_text("cached\n")
    out = sh(root, "cat /c/x; touch /c/y 2>/dev/null || echo refused", mounts=(Mount("cache", "/c", str(cache),
                                                                                      readonly=True),))[1]
    assert out == "cached\nrefused\n"


def test_new_cache_dir_gets_owner_and_mode(root, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    m = (Mount("cache", "/c", str(cache), mode=0o700, uid=1000, gid=1000),)
    result, out, _ = sh(root, "touch /c/x && echo ok", mounts=m, user="app")
    assert out == "ok\n"
    st = os.stat(cache)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 1000, 1000)


def test_tmpfs_mount(root):
    result, out, _ = sh(root, "stat -c '%a %U' /t; echo x > /t/f && cat /t/f; df -k /t | tail -1 | tr -s ' ' "
                              "| cut -d' ' -f2", mounts=(Mount("tmpfs", "/t", size=1 << 20),
                                                         Mount("tmpfs", "/u", mode=0o750, uid=1000, gid=1000)))
    assert out == "1777 root\nx\n1024\n"
    assert sh(root, "stat -c '%a %U' /u", mounts=(Mount("tmpfs", "/u", mode=0o750, uid=1000),))[1] == "750 app\n"
    assert not os.path.lexists(os.path.join(root, "t"))


def test_secret_mount(root, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    os.chmod(secret, 0o644)
    m = Mount("secret", "/run/secrets/token", str(secret))
    result, out, err = sh(root, "stat -c '%a %u %g' /run/secrets/token; cat /run/secrets/token; echo; "
                                "echo x > /run/secrets/token || echo refused", mounts=(m,))
    assert out == "400 0 0\ns3cret\nrefused\n"
    assert result.created == tuple(sorted(STANDARD_CREATED + ("run", "run/secrets", "run/secrets/token")))
    assert not os.path.lexists(os.path.join(root, "run"))
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o644 and secret.read_text() == "s3cret"


def test_secret_mount_owned_by_the_user(root, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    os.mkdir(os.path.join(root, "run"))
    m = Mount("secret", "/run/secrets/token", str(secret), mode=0o440, uid=1000, gid=2000)
    result, out, _ = sh(root, "stat -c '%a %U %G' /run/secrets/token; cat /run/secrets/token", mounts=(m,),
                        user="app")
    assert out == "440 app extra\ns3cret"
    assert os.listdir(os.path.join(root, "run")) == []  # the root's /run stays, the mount points go


def test_executable_bind_under_dev(root, tmp_path):
    # The builder runs a heredoc script this way: a file bound below the step's own /dev.
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho from-heredoc $(id -u)\n")
    os.chmod(script, 0o755)
    out = io.BytesIO()
    result = run(RunSpec(root=root, argv=("/dev/.script",), user="app",
                         mounts=(Mount("bind", "/dev/.script", str(script)),)), stdout=out)
    assert (result.exit_code, out.getvalue()) == (0, b"from-heredoc 1000\n")
    assert result.created == STANDARD_CREATED


def test_nested_mounts(root, source):
    result, out, err = sh(root, "ls /m; cat /m/src/f", mounts=(Mount("bind", "/m/src", str(source)),
                                                               Mount("tmpfs", "/m")))
    assert (result.exit_code, out) == (0, "src\ndata\n"), err
    assert not os.path.lexists(os.path.join(root, "m"))


# --- hostile roots -----------------------------------------------------------------------------------------

def test_etc_symlink_to_host_root(root):
    os.rename(os.path.join(root, "etc"), os.path.join(root, "realetc"))
    os.symlink("/", os.path.join(root, "etc"))
    host = {p: host_digest(p) for p in ("/hosts", "/resolv.conf", "/hostname", "/etc/hosts")}
    before, mounts = listing(root), mountinfo()
    result, out, err = sh(root, "cat /etc/hostname; ls -d /hosts", network="none")
    assert (result.exit_code, out) == (0, "snapfs\n/hosts\n"), err
    assert {p: host_digest(p) for p in host} == host
    assert listing(root) == before and mountinfo() == mounts
    assert set(result.created) >= {"hosts", "resolv.conf", "hostname"}


def test_proc_symlink_out_of_the_root(root, tmp_path):
    outside = f"/tmp/snapfs-hostile-{uuid.uuid4().hex}"
    os.symlink(outside, os.path.join(root, "proc"))
    os.symlink("/etc", os.path.join(root, "dev"))
    os.symlink("../../../../../../sys-outside", os.path.join(root, "sys"))
    before, mounts = listing(root), mountinfo()
    result, out, err = sh(root, "ls /proc/self/ > /dev/null && echo proc; test -c /dev/null && echo dev")
    assert (result.exit_code, out) == (0, "proc\ndev\n"), err
    assert not os.path.lexists(outside) and not os.path.lexists("/sys-outside")
    assert listing(root) == before and mountinfo() == mounts
    assert "tmp" + outside[4:] in result.created and "sys-outside" in result.created


def test_mount_target_through_symlink_stays_inside(root, source, tmp_path):
    target_outside = tmp_path / "outside"
    target_outside.mkdir()
    os.symlink(str(target_outside), os.path.join(root, "mnt"))
    before = listing(root)
    result, out, err = sh(root, "cat /mnt/x/f", mounts=(Mount("bind", "/mnt/x", str(source)),))
    assert (result.exit_code, out) == (0, "data\n"), err
    assert os.listdir(target_outside) == []
    assert listing(root) == before


# --- without privileges --------------------------------------------------------------------------------------

UNPRIVILEGED = ("cap_sys_admin,cap_sys_ptrace,cap_sys_module,cap_sys_rawio,cap_sys_boot,cap_sys_nice,"
                "cap_sys_resource,cap_sys_time,cap_net_admin,cap_ipc_lock,cap_mac_admin,cap_mac_override,"
                "cap_dac_read_search,cap_linux_immutable,cap_syslog,cap_wake_alarm,cap_block_suspend,"
                "cap_audit_control,cap_lease,cap_ipc_owner,cap_sys_pacct,cap_sys_tty_config,cap_net_broadcast")


@pytest.mark.skipif(shutil.which("capsh") is None, reason="needs capsh (libcap2-bin)")
def test_unprivileged_pod(root):
    # What a default container has: isolation_available() says no, and run() fails with one clear line.
    code = ("from snapfs.run.sandbox import RunSpec, isolation_available, run\n"
            "from snapfs.errors import SnapfsError\n"
            "print(isolation_available())\n"
            "try:\n"
            "    run(RunSpec(root=%r, argv=('true',)))\n"
            "except SnapfsError as e:\n"
            "    print(type(e).__name__, e)\n" % root)
    done = subprocess.run(["capsh", f"--drop={UNPRIVILEGED}", "--", "-c", 'exec "$0" -c "$1"', sys.executable,
                           code], capture_output=True, text=True, timeout=60)
    assert done.stdout == ("False\nBuildError RUN true: creating namespaces (unshare): Operation not permitted\n"), \
        done.stderr
    assert listing(root) == listing(root)  # nothing was created (unshare comes before any mount point)
    assert not os.path.lexists(os.path.join(root, "proc"))


# --- errors ------------------------------------------------------------------------------------------------

def test_missing_root_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="^stage root .*/nope: No such file or directory$"):
        run(RunSpec(root=str(tmp_path / "nope"), argv=("true",)))


def test_mount_point_under_a_file_is_a_build_error(root, source):
    before = listing(root)
    with pytest.raises(BuildError, match=r"^RUN /bin/sh -c true: /bin/busybox/x: a parent is not a directory$"):
        sh(root, "true", mounts=(Mount("bind", "/bin/busybox/x", str(source)),))
    assert listing(root) == before  # the mount points made before the failure are gone too


def test_missing_secret_source_is_a_build_error(root, tmp_path):
    with pytest.raises(BuildError, match=r"^RUN /bin/sh -c true: RUN --mount type=secret target=/s: reading the "
                                         r"secret: No such file or directory$"):
        sh(root, "true", mounts=(Mount("secret", "/s", str(tmp_path / "missing")),))
    assert not os.path.lexists(os.path.join(root, "s"))


@pytest.mark.parametrize("kw, message", [
    ({"network": "bridge"}, "RUN --network=bridge: expected one of default, host, none"),
    ({"mounts": (Mount("ssh", "/x", "/y"),)}, "RUN --mount type=ssh: expected one of bind, cache, tmpfs, secret"),
    ({"mounts": (Mount("tmpfs", "rel"),)}, "RUN --mount type=tmpfs target=rel: target must be an absolute path "
                                           "below /"),
    ({"mounts": (Mount("tmpfs", "/"),)}, "RUN --mount type=tmpfs target=/: target must be an absolute path below /"),
    ({"mounts": (Mount("bind", "/x"),)}, "RUN --mount type=bind target=/x: no source"),
])
def test_usage_errors(root, kw, message):
    with pytest.raises(UsageError) as exc:
        run(RunSpec(root=root, argv=("true",), **kw))
    assert exc.value.message == message


def test_empty_command_is_refused(root):
    with pytest.raises(BuildError, match="^RUN: empty command$"):
        run(RunSpec(root=root, argv=()))
