"""RUN --mount without namespaces (pod mode, ``--isolation none``): secrets, caches and tmpfs moved into the root
around the step by the real direct runner; bind mounts, sized tmpfs and ``--network=none`` refused before the
first step.

Three levels: ``run_direct`` on a busybox root (chrooted, as outside a pod), whole builds with
``isolation="none"`` (plain stage roots, the same runner), and a build in place over ``/`` in a simulated pod
(a private mount namespace, a chroot, a default pod's capabilities), where the step runs in the builder's own
root exactly as in a Kubernetes pod.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile

import pytest

from rootfs_kit import busybox_available, copy_root, listing, make_busybox_root, write
from snapfs import apply_layers
from snapfs.errors import BuildError, NotSupportedError
from snapfs.image.layout import read_layout
from snapfs.run import direct
from snapfs.run.sandbox import Mount, RunSpec

NEEDS_BUSYBOX = pytest.mark.skipif(not busybox_available(), reason="needs root and /bin/busybox")
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")
SECRET = b"s3cr3t-pod-value"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    if not busybox_available():
        pytest.skip("needs root and /bin/busybox")
    return make_busybox_root(str(tmp_path_factory.mktemp("busybox-mounts") / "root"))


@pytest.fixture
def root(template, tmp_path):
    return copy_root(template, str(tmp_path / "root"))


@pytest.fixture
def secret_file(tmp_path):
    p = tmp_path / "secret"
    p.write_bytes(SECRET)
    return str(p)


def sh(root: str, script: str, mounts=(), **kw):
    out, err = io.BytesIO(), io.BytesIO()
    result = direct.run_direct(RunSpec(root=root, argv=("/bin/sh", "-c", script), mounts=tuple(mounts), **kw),
                               stdout=out, stderr=err)
    return result, out.getvalue().decode(), err.getvalue().decode()


# --- run_direct ------------------------------------------------------------------------------------------------

def test_direct_secret_at_its_target_with_mode_and_owner_then_gone(root, secret_file):
    before = listing(root)
    mounts = [Mount(kind="secret", target="/run/secrets/tok", source=secret_file, mode=0o400),
              Mount(kind="secret", target="/etc/app/token", source=secret_file, mode=0o440, uid=1000, gid=2000)]
    result, out, err = sh(root, "cat /run/secrets/tok; echo; stat -c '%a %u %g' /run/secrets/tok /etc/app/token;"
                                "su app -c 'cat /etc/app/token'", mounts)
    assert result.exit_code == 0, err
    assert out == f"{SECRET.decode()}\n400 0 0\n440 1000 2000\n{SECRET.decode()}"
    assert listing(root) == before  # no secret, no /run, no /etc/app left behind
    assert result.created == ("etc/app", "etc/app/token", "run", "run/secrets", "run/secrets/tok")


def test_direct_secret_over_a_file_of_the_image_brings_it_back_unchanged(root, secret_file):
    path = write(root, "etc/app-token", "from the image\n", mode=0o604)
    os.chown(path, 1000, 1000)
    os.utime(path, ns=(1_500_000_000_000_000_000, 1_600_000_000_123_456_789))
    st = os.lstat(path)
    result, out, _ = sh(root, "cat /etc/app-token; ls -a /etc | grep -c snapfs-aside || true",
                        [Mount(kind="secret", target="/etc/app-token", source=secret_file)])
    assert result.exit_code == 0
    assert out.startswith(SECRET.decode())
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode, after.st_uid, after.st_mtime_ns, after.st_size) == (
        st.st_ino, st.st_mode, st.st_uid, st.st_mtime_ns, st.st_size)
    assert open(path).read() == "from the image\n"
    assert (result.created, result.restored) == ((), ("etc/app-token",))  # ignored, it would look deleted
    assert not [n for n in os.listdir(os.path.join(root, "etc")) if "snapfs" in n]


def test_direct_secret_through_a_symlinked_parent_is_named_where_it_really_is(root, secret_file):
    os.makedirs(os.path.join(root, "run"))
    os.makedirs(os.path.join(root, "var"))
    os.symlink("../run", os.path.join(root, "var/run"))
    write(root, "run/app.conf", "the image's\n")
    before = listing(root)
    result, out, _ = sh(root, "cat /var/run/app.conf /var/run/new/tok",
                        [Mount(kind="secret", target="/var/run/app.conf", source=secret_file),
                         Mount(kind="secret", target="/var/run/new/tok", source=secret_file)])
    assert (result.exit_code, out) == (0, SECRET.decode() * 2)
    assert (result.created, result.restored) == (("run/new", "run/new/tok"), ("run/app.conf",))
    assert listing(root) == before


def test_direct_secret_is_removed_when_the_step_fails(root, secret_file):
    before = listing(root)
    result, _, _ = sh(root, "cat /run/secrets/tok > /seen && mkdir /run/secrets/extra; exit 3",
                      [Mount(kind="secret", target="/run/secrets/tok", source=secret_file)])
    assert result.exit_code == 3
    # The step made a directory of its own next to the secret: it stays (it is the step's), the secret goes.
    after = listing(root)
    assert {k: v for k, v in after.items() if not k.startswith("run") and k != "seen"} == before
    assert sorted(p for p in after if p.startswith("run")) == ["run", "run/secrets", "run/secrets/extra"]


def test_direct_a_mount_that_cannot_be_placed_undoes_the_others(root, secret_file):
    before = listing(root)
    mounts = [Mount(kind="secret", target="/run/secrets/tok", source=secret_file),
              Mount(kind="tmpfs", target="/etc/passwd/sub")]
    with pytest.raises(BuildError, match=r"^RUN --mount target /etc/passwd/sub: .*not a directory"):
        sh(root, "echo never > /ran", mounts)
    assert listing(root) == before


def test_direct_cache_is_moved_in_and_out(root, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chown(cache, 1000, 1000)
    (cache / "old").write_text("kept from last time\n")
    write(root, "var/cache/x/image-file", "the image's\n")
    script = ("cat /var/cache/x/old; ls /var/cache/x; stat -c '%u' /var/cache/x; echo new > /var/cache/x/new;"
              "mkdir -p /var/cache/x/d/e && ln -s /etc/passwd /var/cache/x/d/link")
    result, out, _ = sh(root, script, [Mount(kind="cache", target="/var/cache/x", source=str(cache))], user="app")
    assert result.exit_code == 0
    assert out == "kept from last time\nold\n1000\n"  # the image's file is hidden, as under a mount
    assert sorted(os.listdir(cache)) == ["d", "new", "old"]
    assert os.readlink(cache / "d" / "link") == "/etc/passwd"
    assert os.listdir(os.path.join(root, "var/cache/x")) == ["image-file"]
    assert (result.created, result.restored) == ((), ("var/cache/x",))


def test_direct_tmpfs_is_an_empty_directory_for_the_step(root):
    before = listing(root)
    result, out, _ = sh(root, "stat -c %a /scratch; touch /scratch/t; ls /scratch",
                        [Mount(kind="tmpfs", target="/scratch")])
    assert (result.exit_code, out) == (0, "1777\nt\n")
    assert listing(root) == before


SIGNAL_SCRIPT = """
import io, os, signal, sys
sys.path.insert(0, {src!r})
from snapfs.engine import lifecycle
from snapfs.run import direct
from snapfs.run.sandbox import Mount, RunSpec

lifecycle.handle_signals()
spec = RunSpec(root={root!r}, argv=("/bin/sh", "-c", "cat /run/secrets/tok > /seen; kill -TERM $PPID; sleep 60"),
               mounts=(Mount(kind="secret", target="/run/secrets/tok", source={secret!r}),))
try:
    direct.run_direct(spec)
    print("finished")
except lifecycle.Interrupted as exc:
    print("interrupted", exc.signo, os.path.lexists({root!r} + "/run"))
"""


@NEEDS_BUSYBOX
def test_direct_secret_is_removed_when_a_signal_ends_the_build(root, secret_file):
    """The step itself sends SIGTERM to the builder (in a chroot its parent): the build is interrupted, the
    step killed, and the secret and the directories made for it are gone."""
    script = SIGNAL_SCRIPT.format(src=SRC, root=root, secret=secret_file)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"interrupted {int(signal.SIGTERM)} False\n"
    assert open(os.path.join(root, "seen"), "rb").read() == SECRET  # the step did read it


# --- whole builds without namespaces ---------------------------------------------------------------------------

def layer_entries(layout: str) -> list[dict[str, bytes]]:
    """Each layer's entries: name -> content (b"" for non-files)."""
    out = []
    for layer in read_layout(layout).layers:
        with gzip.open(layer.path) as f, tarfile.open(fileobj=io.BytesIO(f.read())) as tar:
            out.append({m.name: (tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()})
    return out


def assert_secret_nowhere(b) -> None:
    for entries in layer_entries(b.layout):
        assert not any(SECRET in data for data in entries.values())
        assert not any("secrets" in n or "snapfs-aside" in n for n in entries)
    assert SECRET.decode() not in json.dumps(b.config)


def test_build_secret_without_namespaces(run_build, secret_file):
    b = run_build("FROM busybox\n"
                  "RUN mkdir -p /etc/app && echo 'from the image' > /etc/app/token\n"
                  "RUN --mount=type=secret,id=tok stat -c %a /run/secrets/tok > /mode && "
                  "cat /run/secrets/tok | wc -c > /len\n"
                  "RUN --mount=type=secret,id=tok,target=/etc/app/token,mode=0440,uid=1000 "
                  "stat -c '%a %u' /etc/app/token > /over && tr a-z A-Z < /etc/app/token > /upper\n"
                  "RUN --mount=type=secret,id=tok,env=TOKEN sh -c 'echo ${#TOKEN}; test -e /run/secrets/tok || "
                  "echo no-file' > /env\n"
                  "RUN --mount=type=secret,id=not-given sh -c 'test -e /run/secrets/not-given || echo absent' > /opt\n",
                  secrets=(("tok", secret_file),), isolation="none")
    assert b.read("/mode") == b"400\n" and b.read("/over") == b"440 1000\n"
    assert b.read("/upper") == SECRET.upper()
    assert b.read("/env") == b"%d\nno-file\n" % len(SECRET)
    assert b.read("/opt") == b"absent\n"
    assert b.read("/etc/app/token") == b"from the image\n"  # the image's file at the target came back
    assert not os.path.lexists(b.path("/run/secrets"))
    assert_secret_nowhere(b)
    # The layer of the step over /etc/app/token holds only what it wrote (no whiteout, no token).
    over = layer_entries(b.layout)[-3]
    assert sorted(over) == ["over", "upper"]
    assert b.read("/len").strip() == str(len(SECRET)).encode()
    history = [h["created_by"] for h in b.config["history"]]
    assert all(SECRET.decode() not in h for h in history)


def test_build_required_secret_missing_fails_before_its_command(run_build, capfd, secret_file):
    with pytest.raises(BuildError, match=r"^step 3/3 \(RUN at Dockerfile:3\): secret nope is required"):
        run_build("FROM busybox\nRUN --mount=type=secret,id=tok test -s /run/secrets/tok && echo FIRST-READ\n"
                  "RUN --mount=type=secret,id=nope,required=true echo SECOND-RAN\n",
                  secrets=(("tok", secret_file),), isolation="none")
    out = capfd.readouterr().out
    assert "FIRST-READ" in out and "SECOND-RAN" not in out


def test_build_cache_without_namespaces_persists_and_stays_out_of_layers(run_build, tmp_path):
    df = ("FROM busybox\n"
          "RUN mkdir -p /var/cache/x && echo image > /var/cache/x/orig\n"
          "RUN --mount=type=cache,id=pod-mounts-c1,target=/var/cache/x,uid=1000 "
          "sh -c 'echo x >> /var/cache/x/log; wc -l < /var/cache/x/log > /n; ls /var/cache/x > /seen; "
          "stat -c %u /var/cache/x > /owner'\n")
    run_build(df, isolation="none")
    b = run_build(df, isolation="none")
    assert b.read("/n").strip() == b"2"
    assert b.read("/seen") == b"log\n" and b.read("/owner") == b"1000\n"  # the image's entry hidden meanwhile
    assert sorted(os.listdir(b.path("/var/cache/x"))) == ["orig"]
    last = layer_entries(b.layout)[-1]
    assert sorted(last) == ["n", "owner", "seen"]


def test_build_tmpfs_without_namespaces(run_build):
    b = run_build("FROM busybox\nRUN --mount=type=tmpfs,target=/scratch sh -c 'touch /scratch/t; ls /scratch > /l'\n",
                  isolation="none")
    assert b.read("/l") == b"t\n" and not os.path.lexists(b.path("/scratch"))
    assert sorted(layer_entries(b.layout)[-1]) == ["l"]


@pytest.mark.parametrize("line, message", [
    ("RUN --mount=type=bind,source=.,target=/src ls /src",
     r"^Dockerfile:3:1: RUN --mount=type=bind needs a mount .*: not supported yet when RUN steps run without"),
    ("RUN --mount=type=tmpfs,target=/t,size=1m true", r"^Dockerfile:3:1: RUN --mount=type=tmpfs,size=\.\.\.: "),
    ("RUN --network=none true", r"^Dockerfile:3:1: RUN --network=none needs a network namespace: not supported"),
])
def test_build_unsupported_without_namespaces_fails_before_the_first_step(run_build, capfd, caplog, line, message):
    caplog.set_level("INFO", logger="snapfs")
    with pytest.raises(NotSupportedError, match=message):
        run_build(f"FROM busybox AS first\nRUN echo FIRST-STEP-RAN\n{line}\n", isolation="none")
    assert "FIRST-STEP-RAN" not in capfd.readouterr().out
    assert not any(m.startswith("STEP ") for m in caplog.messages)  # not even the base was loaded


# --- in place over "/", in a simulated pod ---------------------------------------------------------------------

POD_CAPS = ("chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
            "net_bind_service", "net_raw", "sys_chroot", "mknod", "audit_write", "setfcap")
CAP_NAMES = ("chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap linux_immutable "
             "net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module sys_rawio sys_chroot "
             "sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time sys_tty_config mknod lease "
             "audit_write audit_control setfcap mac_override mac_admin syslog wake_alarm block_suspend audit_read "
             "perfmon bpf checkpoint_restore").split()

# Runs in the pod: the builder starts on the host, enters the pod's root (where the directories of the host's
# Python and this tree are bind-mounted, read-only, at their own paths) and builds in place over "/".
POD_BUILDER = """
import json, logging, os, sys
sys.path.insert(0, SRC)
# Extension modules whose shared libraries are on the host's /lib: loaded before it is out of reach.
import ssl, hashlib, zlib, ctypes, snapfs._fast
for name in ("lzma", "bz2", "decimal", "zstandard", "xxhash", "isal.isal_zlib"):
    try:
        __import__(name)
    except ImportError:
        pass
from snapfs.builder.pipeline import BuildOptions, build
from snapfs.image.transports import OutputOptions
from snapfs.errors import SnapfsError
logging.basicConfig(level=logging.INFO, format="%(message)s")
os.chroot(POD)
os.chdir("/")
assert os.path.exists("/.snapfs-test-pod")  # never build over the real /
out = []
for n, (dockerfile, cache) in enumerate(BUILDS):
    with open("/workspace/Dockerfile", "w") as f:
        f.write(dockerfile)
    opts = BuildOptions(context="/workspace", outputs=OutputOptions(no_push=True, oci_layout_path=f"/out/oci-{n}"),
                        secrets=(("tok", "/secrets/tok"),), in_place=True, snapfs_dir="/snapfs", cache_dir=cache,
                        reproducible=True)
    try:
        out.append(build(opts).digest)
    except SnapfsError as exc:
        out.append("error: " + exc.message)
    out.append(sorted(os.listdir("/run")) if os.path.isdir("/run") else None)
print("RESULT " + json.dumps(out))
"""


def pod_drop_list() -> str:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    return ",".join(f"cap_{n}" for n in CAP_NAMES[:last + 1] if n not in POD_CAPS)


def python_dirs() -> list[str]:
    """The directories the pod's Python imports from (its ``-I`` sys.path and this tree's src), each to be
    bind-mounted at its own path: not the whole prefix, which for a system Python is ``/usr`` and would hide
    the image's ``/usr``."""
    found = subprocess.run([sys.executable, "-I", "-c", "import json, sys; print(json.dumps(sys.path))"],
                           capture_output=True, text=True, check=True).stdout
    dirs = sorted({os.path.realpath(p) for p in [SRC, *json.loads(found)] if p and os.path.isdir(p)})
    return [d for d in dirs if not any(d.startswith(o + "/") for o in dirs)]


def run_pod(work: str, busybox_layout: str, builds: list[tuple[str, str]]) -> tuple[list, str]:
    """Run ``builds`` (Dockerfile, cache dir) one after the other in one pod; the results and the output."""
    pod = os.path.join(work, "pod")
    os.makedirs(os.path.join(pod, "snapfs"))
    open(os.path.join(pod, ".snapfs-test-pod"), "w").close()
    for name in ("out", "cachevol", "secrets"):
        os.makedirs(os.path.join(work, name), exist_ok=True)
    with open(os.path.join(work, "secrets", "tok"), "wb") as f:
        f.write(SECRET)
    binds = [(p, p, "ro") for p in python_dirs()] + [(busybox_layout, "/base", "ro"),
             (os.path.join(work, "out"), "/out", "rw"), (os.path.join(work, "cachevol"), "/cachevol", "rw"),
             (os.path.join(work, "secrets"), "/secrets", "ro"), (os.path.join(work, "ws"), "/workspace", "rw")]
    os.makedirs(os.path.join(work, "ws"), exist_ok=True)
    lines = ["set -e", f"P={pod}"]
    for src, dst, mode in binds:
        lines.append(f"mkdir -p \"$P{dst}\" && mount --bind {src} \"$P{dst}\"")
        if mode == "ro":
            lines.append(f"mount -o remount,bind,ro \"$P{dst}\"")
    lines += ["mkdir -p \"$P/proc\" \"$P/dev\"", "mount -t proc proc \"$P/proc\"", "mount --rbind /dev \"$P/dev\"",
              f"exec capsh --drop={pod_drop_list()} -- -c 'exec \"$0\" -I -c \"$1\"' {sys.executable} \"$1\""]
    script = f"SRC = {SRC!r}\nPOD = {pod!r}\nBUILDS = {builds!r}\n" + POD_BUILDER
    done = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "--", "sh", "-c",
                           "\n".join(lines), "pod", script], capture_output=True, text=True, timeout=300,
                          env={"PATH": os.environ["PATH"], "TMPDIR": "/snapfs/tmp",
                               "KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert done.returncode == 0, done.stderr[-4000:]
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(results[-1][len("RESULT "):]), done.stdout + done.stderr


POD_DOCKERFILE = """\
FROM oci:/base:busybox
RUN mkdir -p /etc/app /run && echo 'from the image' > /etc/app/token && echo keep > /run/keep
RUN --mount=type=secret,id=tok stat -c %a /run/secrets/tok > /mode && cat /run/secrets/tok | wc -c > /len
RUN --mount=type=secret,id=tok,target=/etc/app/token,mode=0440 tr a-z A-Z < /etc/app/token > /upper
RUN --mount=type=cache,id=c1,target=/root/.cache/tool sh -c 'f=/root/.cache/tool/log; echo x >> $f; wc -l < $f > /n1'
RUN --mount=type=cache,id=c2,target=/var/cache/vol sh -c 'f=/var/cache/vol/log; echo y >> $f; wc -l < $f > /n2'
"""


@pytest.mark.skipif(not shutil.which("capsh") or not shutil.which("unshare") or not busybox_available(),
                    reason="needs capsh, unshare, root and busybox")
def test_in_a_pod_secrets_and_caches_in_place(tmp_path, busybox_layout):
    """Builds in one simulated pod, over its "/": the secret is read at its target with its mode and is in
    no layer and in no history; the image's own file at a target is back unchanged; caches persist from the
    first build to the second and are in no
    layer, whether the cache directory is on the root's filesystem (entries renamed in and out) or on a volume
    (copied); a failing step leaves no secret behind; unsupported mounts fail before the first step."""
    failing = ("FROM oci:/base:busybox\nRUN --mount=type=secret,id=tok sh -c 'cat /run/secrets/tok >/dev/null; "
               "exit 7'\n")
    refused = "FROM oci:/base:busybox\nRUN echo FIRST-STEP-RAN\nRUN --mount=type=bind,target=/src ls /src\n"
    snap, vol = "/snapfs/cache", "/cachevol"  # on the root's filesystem (renamed), on a volume (copied)
    builds = [(POD_DOCKERFILE, snap), (POD_DOCKERFILE, snap), (POD_DOCKERFILE, vol), (POD_DOCKERFILE, vol),
              (failing, vol), (refused, vol)]
    results, output = run_pod(str(tmp_path), busybox_layout, builds)
    digests, runs = results[0:8:2], results[1:8:2]
    fail, run_after_fail, refusal, _ = results[8:]
    assert all(d.startswith("sha256:") for d in digests), output[-3000:]
    assert runs == [["keep"]] * 4  # no secrets directory left in the pod's /run
    assert fail.startswith("error: step 2/2 (RUN at Dockerfile:2): RUN /bin/sh -c sh -c ")
    assert fail.endswith("returned a non-zero code: 7")
    assert "secrets" not in (run_after_fail or [])  # the failing step's secret is gone from the pod's /run
    assert refusal.startswith("error: Dockerfile:3:1: RUN --mount=type=bind needs a mount")
    assert "FIRST-STEP-RAN" not in output
    for n, count in enumerate((1, 2, 1, 2)):
        layout = os.path.join(str(tmp_path), "out", f"oci-{n}")
        image = read_layout(layout)
        rootfs = tmp_path / f"rootfs-{n}"
        rootfs.mkdir()
        apply_layers([l.path for l in image.layers], str(rootfs))
        assert (rootfs / "mode").read_text() == "400\n"
        assert (rootfs / "len").read_text().strip() == str(len(SECRET))
        assert (rootfs / "upper").read_bytes() == SECRET.upper()
        assert (rootfs / "etc/app/token").read_text() == "from the image\n"
        assert sorted(os.listdir(rootfs / "run")) == ["keep"]
        assert ((rootfs / "n1").read_text().strip(), (rootfs / "n2").read_text().strip()) == (str(count),) * 2
        assert not (rootfs / "root/.cache").exists() and not (rootfs / "var/cache/vol").exists()
        for entries in layer_entries(layout):
            assert not any(SECRET in d for d in entries.values())
            assert not any("secrets" in p or "cache" in p or "snapfs" in p for p in entries), sorted(entries)
        config = json.loads(image.config_bytes)
        assert SECRET.decode() not in json.dumps(config)
    assert sorted(os.listdir(tmp_path / "cachevol" / "run-cache")) and any(
        "log" in files for _, _, files in os.walk(tmp_path / "cachevol" / "run-cache"))
