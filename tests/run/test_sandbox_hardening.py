"""sandbox: what a root RUN step may not touch on the host kernel (masked /proc, capabilities, seccomp).

Real namespaces on a busybox root, plus a static C probe (tests/sandbox_probe.c, built with gcc at test time)
for the syscalls busybox cannot make. Host sysctls a failing test might have changed are restored in finally.
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from rootfs_kit import busybox_available, copy_root, make_busybox_root
from snapfs.run.confine import MASKED, READ_ONLY
from snapfs.run.sandbox import RunResult, RunSpec, isolation_available, run

pytestmark = pytest.mark.skipif(not (busybox_available() and isolation_available()),
                                reason="needs root, /bin/busybox and namespaces")

HERE = os.path.dirname(os.path.abspath(__file__))
SYSCTLS = ("/proc/sys/kernel/printk_ratelimit_burst", "/proc/sys/kernel/core_pattern")


@pytest.fixture(scope="session")
def template(tmp_path_factory):
    return make_busybox_root(str(tmp_path_factory.mktemp("busybox") / "root"))


@pytest.fixture(scope="session")
def probe(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc and libc6-dev (scripts/setup.sh installs them)")
    out = str(tmp_path_factory.mktemp("probe") / "probe")
    subprocess.run(["gcc", "-static", "-O1", "-o", out, os.path.join(HERE, "sandbox_probe.c")], check=True,
                   capture_output=True)
    return out


@pytest.fixture
def root(template, probe, tmp_path):
    path = copy_root(template, str(tmp_path / "root"))
    shutil.copy2(probe, os.path.join(path, "bin/probe"))
    return path


def sh(root: str, script: str, **kw) -> tuple[RunResult, str, str]:
    out, err = io.BytesIO(), io.BytesIO()
    result = run(RunSpec(root=root, argv=("/bin/sh", "-c", script), **kw), stdout=out, stderr=err)
    return result, out.getvalue().decode(), err.getvalue().decode()


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def probes(root: str, *names: str, **kw) -> dict[str, str]:
    result, out, err = sh(root, "probe " + " ".join(names), **kw)
    assert result.exit_code == 0, err
    return dict(line.split("=", 1) for line in out.splitlines())


# --- /proc and /sys ------------------------------------------------------------------------------------------

def test_proc_sys_writes_fail_and_the_host_is_unchanged(root):
    before = {p: read(p) for p in SYSCTLS}
    burst = int(before[SYSCTLS[0]]) + 7
    try:
        result, out, err = sh(root, f"echo {burst} > {SYSCTLS[0]} || echo refused; "
                                    f"echo '|/tmp/pwn %p' > {SYSCTLS[1]} || echo refused")
        assert result.exit_code == 0
        assert out == "refused\n" * 2
        assert err.count("Read-only file system") == 2, err
        assert {p: read(p) for p in SYSCTLS} == before
    finally:
        for path, value in before.items():  # never leave the host changed, even when the fix regresses
            if read(path) != value:
                with open(path, "w") as f:
                    f.write(value)


def test_kernel_files_are_read_only_or_masked(root):
    # Each kernel has its own set (this one may lack /proc/kcore or /proc/sysrq-trigger): check those it has.
    masked = [p for p in MASKED if os.path.exists(p)]
    read_only = [p for p in READ_ONLY if os.path.exists(p)]
    assert {"/proc/keys", "/proc/timer_list", "/sys/firmware"} <= set(masked) and "/proc/sys" in read_only
    script = "".join(f"wc -c < {p}; " if os.path.isfile(p) else f"ls -A {p} | wc -w; " for p in masked)
    script += "".join(f"grep ' {p} ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1; " for p in read_only)
    result, out, err = sh(root, script + "cat /proc/sys/kernel/ostype")
    assert result.exit_code == 0, err
    # Masked files read as /dev/null, masked directories are empty; the read-only ones still read.
    assert out.split() == ["0"] * len(masked) + ["ro"] * len(read_only) + ["Linux"]


# --- capabilities ------------------------------------------------------------------------------------------

def test_block_and_char_devices_cannot_be_created(root):
    result, out, err = sh(root, "mknod /loopx b 7 0 || echo refused; mknod /memx c 1 1 || echo refused; "
                                "mknod /fifo p && echo fifo")
    assert out == "refused\nrefused\nfifo\n"
    assert err.count("Operation not permitted") == 2, err
    assert not os.path.lexists(os.path.join(root, "loopx"))


@pytest.mark.parametrize("network", ["default", "none"])
def test_raw_sockets_are_refused(root, network):
    # No sniffing of the host's lo (the default network is the host's); --network=none alike.
    assert probes(root, "raw_socket", "packet_socket", network=network) == {"raw_socket": "EPERM",
                                                                             "packet_socket": "EPERM"}


def test_network_none_cannot_reach_the_hosts_loopback(root):
    # The default network is the host's (as docker build's); none is a namespace of its own with only lo.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        got: list[bytes] = []

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                got.append(conn.recv(16))

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        script = f"echo hello | nc -w 5 127.0.0.1 {port} && echo reached || echo unreachable"
        assert sh(root, script, network="none")[1] == "unreachable\n"
        assert sh(root, script)[1] == "reached\n"
        t.join(10)
        assert got == [b"hello\n"]


# --- seccomp -----------------------------------------------------------------------------------------------

def test_seccomp_refuses_kernel_facing_syscalls(root):
    names = ("keyctl", "add_key", "userfaultfd", "perf_event_open", "io_uring_setup", "name_to_handle_at",
             "unshare_user", "clone_user", "personality_rx")
    # Each of these succeeds for root without CAP_SYS_ADMIN on this kernel; only the filter refuses them.
    assert probes(root, *names) == {name: "EPERM" for name in names}


def test_seccomp_allows_the_rest(root):
    assert probes(root, "getpid", "unshare_fs", "personality_query", "clone3", "thread") == {
        "getpid": "0", "unshare_fs": "0", "personality_query": "0",
        "clone3": "ENOSYS",  # so that libc falls back to clone, whose flags the filter can read ...
        "thread": "0"}  # ... as pthread_create does


def test_foreign_syscall_abi_is_killed(root):
    assert probes(root, "x32", "int80") == {"x32": "signal 31", "int80": "signal 31"}  # SIGSYS


def test_filter_is_on_without_no_new_privs(root):
    # no_new_privs would stop setuid binaries (su, sudo) from working in a step; the filter does without it.
    os.chmod(os.path.join(root, "bin/probe"), 0o4755)
    result, out, err = sh(root, "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; probe euid", user="app")
    assert result.exit_code == 0, err
    assert out == "NoNewPrivs:\t0\nSeccomp:\t2\neuid=0\n"


# --- without isolation (pod mode, --isolation none) ------------------------------------------------------

def _bounding_set() -> str:
    with open("/proc/thread-self/status") as f:
        return next(line for line in f if line.startswith("CapBnd:"))


def test_direct_steps_lose_net_raw_and_mknod_but_the_builder_keeps_them(root):
    from snapfs.run.direct import run_direct

    before = _bounding_set()
    out, err = io.BytesIO(), io.BytesIO()
    result = run_direct(RunSpec(root=root, argv=("/bin/sh", "-c", "probe raw_socket packet_socket; "
                                                 "mknod /loopx b 7 0 || echo refused")), stdout=out, stderr=err)
    assert result.exit_code == 0, err.getvalue()
    assert out.getvalue() == b"raw_socket=EPERM\npacket_socket=EPERM\nrefused\n"
    assert _bounding_set() == before  # dropped in a spawning thread of its own, not in the builder's
    assert int(before.split()[1], 16) & (1 << 13 | 1 << 27)


def test_pod_mode_warns_when_the_container_has_no_seccomp_filter(root, tmp_path, caplog):
    from snapfs.run import direct as direct_run

    # This test process has no filter (as a pod with seccompProfile Unconfined, Kubernetes' default).
    assert not direct_run.seccomp_confined()
    direct_run.announce_direct.cache_clear()
    try:
        direct_run.announce_direct()
        direct_run.announce_direct()
    finally:
        direct_run.announce_direct.cache_clear()
    assert caplog.messages == [direct_run.DIRECT_MESSAGE, "this container has no seccomp filter: RUN steps may "
                               "make any syscall the container's capabilities allow (run the pod with "
                               "seccompProfile: RuntimeDefault)"]
    # A confined process (a sandboxed step) reads as confined.
    (tmp_path / "status").write_text(sh(root, "cat /proc/self/status")[1])
    assert direct_run.seccomp_confined(str(tmp_path / "status"))


SYS_FALLBACK = """
import sys
from snapfs.run import sandbox_init as si

real = si.mount

def refuse_sysfs(source, target, fstype, flags, data, what):
    if fstype == "sysfs":
        raise si.SetupError("refused")
    real(source, target, fstype, flags, data, what)

si.mount = refuse_sysfs
si.setup_sys(si.Root(sys.argv[1], lambda msg: None))
with open("/proc/self/mountinfo") as f:
    for line in f:
        fields = line.split()
        if fields[4] == sys.argv[1] + "/sys" or fields[4].startswith(sys.argv[1] + "/sys/"):
            print(fields[4][len(sys.argv[1]):], fields[5].split(",")[0])
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_sys_fallback_bind_leaves_the_hosts_cgroup_mounts_out(root):
    # Where sysfs cannot be mounted the host's /sys is bound read-only; its submounts (the host's cgroup trees,
    # writable to the step's root by file mode alone) must not come along, since the remount cannot reach them.
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", SYS_FALLBACK,
                           os.path.realpath(root)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "/sys ro\n"
