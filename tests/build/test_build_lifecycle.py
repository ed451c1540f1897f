"""A build leaves nothing behind: signals stop it cleanly, a killed build's scratch is swept by the next one,
cache and scratch directories are private whatever the umask, stage roots are ``nodev``, long stage chains."""
from __future__ import annotations

import os
import re
import select
import signal
import stat
import subprocess
import sys
import tarfile
import time

import pytest
from imagekit import _reset, _write_layer, image_of

from snapfs.engine import lifecycle
from snapfs.image.layout import read_layout, write_layout

MARK = "step-42-running"  # what the step prints; the STEP line that announces it shows ECHO_MARK unexpanded
ECHO_MARK = 'echo "step-$((40 + 2))-running"'


_started: list[subprocess.Popen] = []


def snapfs(*args, tmp, umask=None):
    """A real ``snapfs`` process with its own temp dir (where RUN steps keep their scratch)."""
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "snapfs", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, umask=-1 if umask is None else umask)
    _started.append(proc)
    return proc


@pytest.fixture(autouse=True)
def stop_builds():
    """A failed assertion must not leave a build running (it would keep its overlay mounted): stop it."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


def wait_for(proc, marker: str, timeout: float = 60) -> str:
    """Read the build's output until ``marker`` shows up (the step really runs); returns what was read."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in seen:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
        chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
        if not chunk:
            proc.kill()
            raise AssertionError(f"{marker!r} never appeared; output so far:\n{seen.decode(errors='replace')}")
        seen += chunk
    return seen.decode(errors="replace")


def scratch_of(tmp) -> list[str]:
    return sorted(n for n in os.listdir(tmp) if n.startswith("snapfs-"))


def mounts_under(path) -> list[str]:
    return lifecycle.mounts_below(str(path))


def processes_running(argv: bytes) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if f.read() == argv:
                        found.append(int(name))
            except OSError:
                pass
    return found


def gone(pids_of, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while pids_of():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def dirs(tmp_path):
    tmp, ctx = tmp_path / "tmp", tmp_path / "ctx"
    tmp.mkdir()
    ctx.mkdir()
    return tmp, ctx


def sleeping_build(busybox_layout, tmp_path, dirs, seconds: int, *flags: str):
    tmp, ctx = dirs
    (ctx / "Dockerfile").write_text(f"FROM oci:{busybox_layout}:busybox\nRUN {ECHO_MARK} && sleep {seconds}\n")
    proc = snapfs("build", "-c", str(ctx), "--no-push", f"--oci-layout-path={tmp_path / 'out'}",
                  f"--cache-dir={tmp_path / 'cache'}", *flags, tmp=tmp)
    wait_for(proc, MARK)
    return proc


@pytest.mark.parametrize("signo, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_step_unmounts_and_removes_scratch(busybox_layout, tmp_path, dirs, signo, code):
    tmp, _ = dirs
    seconds = 900 + signo  # a command line no other test runs
    proc = sleeping_build(busybox_layout, tmp_path, dirs, seconds)
    # What would be left behind: the stage overlay mounted on the host, the build's and the step's scratch.
    assert mounts_under(tmp) and {n.split("-")[1] for n in scratch_of(tmp)} == {"build", "run"}
    sleeper = lambda: processes_running(f"sleep\0{seconds}\0".encode())  # noqa: E731
    assert gone(lambda: not sleeper()), "the step's sleep never started"  # the shell forks it after the echo
    proc.send_signal(signo)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == code, out
    name = signal.Signals(signo).name
    assert out.strip().splitlines()[-1] == f"snapfs: build interrupted ({name})"
    assert "Traceback" not in out
    assert mounts_under(tmp) == [] and scratch_of(tmp) == []
    assert gone(sleeper), "the step's command outlived the build"
    assert not (tmp_path / "out").exists()


def test_sigterm_without_namespaces_kills_the_steps_session(busybox_layout, tmp_path, dirs):
    tmp, _ = dirs
    proc = sleeping_build(busybox_layout, tmp_path, dirs, 944, "--isolation=none")
    sleeper = lambda: processes_running(b"sleep\x00944\x00")  # noqa: E731
    assert gone(lambda: not sleeper()), "the step's sleep never started"
    proc.terminate()
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 143 and out.strip().splitlines()[-1] == "snapfs: build interrupted (SIGTERM)", out
    assert gone(sleeper) and scratch_of(tmp) == [] and mounts_under(tmp) == []


def test_sigkill_leaves_scratch_that_the_next_build_sweeps(busybox_layout, tmp_path, dirs):
    tmp, ctx = dirs
    proc = sleeping_build(busybox_layout, tmp_path, dirs, 933)
    proc.kill()
    proc.wait()
    left = scratch_of(tmp)
    assert mounts_under(tmp) and any(n.startswith("snapfs-build-") for n in left), left
    assert gone(lambda: processes_running(b"sleep\x00933\x00")), "PDEATHSIG did not end the step"

    (ctx / "Dockerfile").write_text(f"FROM oci:{busybox_layout}:busybox\nRUN echo again > /again\n")
    second = snapfs("build", "-c", str(ctx), "--no-push", f"--oci-layout-path={tmp_path / 'out2'}",
                    f"--cache-dir={tmp_path / 'cache'}", tmp=tmp)
    out = second.communicate(timeout=120)[0].decode()
    assert second.returncode == 0, out
    assert f"removed stale scratch {tmp}/snapfs-build-" in out
    assert mounts_under(tmp) == [] and scratch_of(tmp) == []


def _start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def test_sweep_removes_only_scratch_whose_owner_is_gone(tmp_path):
    """Owners are real processes: one alive, one exited, and a live pid whose start time differs (pid reuse)."""
    ns = os.stat("/proc/self/ns/pid").st_ino
    child = subprocess.Popen(["sleep", "30"])
    try:
        live = f"{child.pid}.{_start_time(child.pid)}.{ns}"
        dead = subprocess.Popen(["true"])
        dead_tag = f"{dead.pid}.{_start_time(dead.pid) if dead.poll() is None else 1}.{ns}"
        dead.wait()
        names = {
            f"snapfs-build-{live}-abcd1234": True,  # a live build: kept
            f"snapfs-run-{live}-abcd1234": True,
            f"snapfs-build-{dead_tag}-abcd1234": False,  # its build exited: removed
            f"snapfs-run-{child.pid}.{_start_time(child.pid) + 1}.{ns}-abcd1234": False,  # pid reused: removed
            f"snapfs-build-1.1.{ns + 1}-abcd1234": True,  # another PID namespace: cannot tell, kept
            "snapfs-build-abcd1234": True,  # no owner in the name: kept
            "unrelated-1.1.1-abcd1234": True,
        }
        for name in names:
            (tmp_path / name / "sub").mkdir(parents=True)
        removed = lifecycle.sweep(str(tmp_path))
        assert sorted(removed) == sorted(str(tmp_path / n) for n, keep in names.items() if not keep)
        assert sorted(os.listdir(tmp_path)) == sorted(n for n, keep in names.items() if keep)
    finally:
        child.kill()
        child.wait()


# -- private directories -----------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_cache_and_scratch_directories_are_0700(registry, tmp_path, dirs, umask):
    tmp, ctx = dirs
    cache = tmp_path / "new" / "nested" / "cache"
    (ctx / "Dockerfile").write_text(
        f"FROM busybox\nRUN --mount=type=bind,target=/ctx --mount=type=cache,target=/c "
        f"{ECHO_MARK} && while [ ! -e /ctx/go ]; do sleep 0.05; done\n")
    proc = snapfs("build", "-c", str(ctx), "--no-push", f"--oci-layout-path={tmp_path / 'out'}",
                  f"--cache-dir={cache}", f"--registry-map=docker.io={registry.host}",
                  f"--insecure-registry={registry.host}", "--skip-default-registry-fallback", tmp=tmp, umask=umask)
    try:
        wait_for(proc, MARK)
        running = {n.split("-")[1]: tmp / n for n in scratch_of(tmp)}
        assert set(running) == {"build", "run"}
        for path in running.values():
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
    finally:
        (ctx / "go").write_text("")
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, out
    private = [tmp_path / "new", tmp_path / "new" / "nested", cache, cache / "roots", cache / "run-cache",
               cache / "blobs", cache / "blobs" / "blobs", cache / "blobs" / "blobs" / "sha256"]
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(os.stat(p).st_mode)) for p in private}
    assert modes == {k: "0o700" for k in modes}
    assert os.listdir(cache / "roots")  # the base root is in there, behind the 0700 directory
    # The OCI layout is the user's output: its modes follow the umask as any file the user writes.
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "blobs").st_mode) == 0o777 & ~umask


def test_the_default_cache_directory_is_0700(busybox_layout, tmp_path, dirs):
    tmp, ctx = dirs
    home = tmp_path / "home"
    home.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM oci:{busybox_layout}:busybox\nRUN true\n")
    env = {k: v for k, v in os.environ.items() if k != "SNAPFS_CACHE_DIR"}
    r = subprocess.run([sys.executable, "-m", "snapfs", "build", "-c", str(ctx), "--no-push",
                        f"--oci-layout-path={tmp_path / 'out'}"], env={**env, "HOME": str(home), "TMPDIR": str(tmp)},
                       capture_output=True, text=True, timeout=120, umask=0)
    assert r.returncode == 0, r.stderr
    for p in (home / ".cache", home / ".cache" / "snapfs", home / ".cache" / "snapfs" / "roots"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o700, p


def test_an_existing_roots_directory_is_tightened(busybox_layout, tmp_path, dirs):
    """Caches made by an older snapfs (0755): the next build makes the directory of unpacked bases 0700."""
    tmp, ctx = dirs
    roots = tmp_path / "cache" / "roots"
    roots.mkdir(parents=True)
    roots.chmod(0o755)
    (ctx / "Dockerfile").write_text(f"FROM oci:{busybox_layout}:busybox\nRUN true\n")
    proc = snapfs("build", "-c", str(ctx), "--no-push", f"--oci-layout-path={tmp_path / 'out'}",
                  f"--cache-dir={tmp_path / 'cache'}", tmp=tmp)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, out
    assert stat.S_IMODE(os.stat(roots).st_mode) == 0o700


# -- stage roots: nodev --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def devices_base(busybox_layout, tmp_path_factory):
    """busybox plus a layer with device nodes a hostile base could carry: /dev-zero (c 1 5), /loopx (b 7 0)."""
    out = str(tmp_path_factory.mktemp("devbase"))

    def fill(tar: tarfile.TarFile) -> None:
        for name, kind, major, minor in (("dev-zero", tarfile.CHRTYPE, 1, 5), ("loopx", tarfile.BLKTYPE, 7, 0)):
            info = _reset(tarfile.TarInfo(name))
            info.type, info.devmajor, info.devminor, info.mode = kind, major, minor, 0o666
            tar.addfile(info)

    layers = list(read_layout(busybox_layout, ref_name="busybox").layers)
    layout = os.path.join(out, "oci")
    write_layout(layout, image_of(layers + [_write_layer(os.path.join(out, "blobs"), fill)]), ref_name="dev")
    return layout


def test_device_nodes_in_a_stage_root_are_not_devices(devices_base, tmp_path, dirs):
    tmp, ctx = dirs
    probe = "; ".join(f"if head -c 1 {p} >/dev/null 2>/tmp/e; then echo {p}: opened; "
                      f"else echo {p}: $(cat /tmp/e); fi" for p in ("/dev-zero", "/loopx", "/made"))
    (ctx / "Dockerfile").write_text(
        f"FROM oci:{devices_base}:dev\n"
        f"RUN ls -l /dev-zero /loopx && (mknod /made c 1 5 || echo made: mknod refused); {probe}\n")
    proc = snapfs("build", "-c", str(ctx), "--no-push", f"--oci-layout-path={tmp_path / 'out'}",
                  f"--cache-dir={tmp_path / 'cache'}", tmp=tmp)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, out
    assert "crw-rw-rw-" in out and "brw-rw-rw-" in out  # the nodes are there, as the image has them
    for p in ("/dev-zero", "/loopx"):
        assert f"{p}: head: {p}: Permission denied" in out, out
    assert "/made: head: /made: Permission denied" in out or "made: mknod refused" in out, out
    assert not [line for line in out.splitlines() if line.endswith(": opened")], out


def test_device_nodes_in_bind_mounted_images_and_stages_are_not_devices(devices_base, tmp_path, dirs):
    """RUN --mount=type=bind from an image (a plain cached root) or a stage: nodev there too, read-only or not."""
    tmp, ctx = dirs
    probe = "if head -c 1 /m/loopx >/dev/null 2>/tmp/e; then echo $0: opened; else echo $0: $(cat /tmp/e); fi"
    (ctx / "Dockerfile").write_text(
        f"FROM oci:{devices_base}:dev AS d\nRUN true\nFROM oci:{devices_base}:dev\n"
        f"RUN --mount=type=bind,from=oci:{devices_base}:dev,target=/m sh -c '{probe}' image\n"
        f"RUN --mount=type=bind,from=d,target=/m sh -c '{probe}' stage\n"
        f"RUN --mount=type=bind,from=d,target=/m,rw sh -c '{probe}' stage-rw\n")
    proc = snapfs("build", "-c", str(ctx), "--no-push", f"--oci-layout-path={tmp_path / 'out'}",
                  f"--cache-dir={tmp_path / 'cache'}", tmp=tmp)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, out
    for name in ("image", "stage", "stage-rw"):
        assert f"{name}: head: /m/loopx: Permission denied" in out, out


# -- long chains of stages -----------------------------------------------------------------------------------


def test_120_chained_stages_build(tmp_path, dirs):
    """Beyond what one overlay mount can stack (about 90 lowers at these path lengths)."""
    tmp, ctx = dirs
    n = 120
    lines = []
    for i in range(n):
        (ctx / f"f{i}").write_text(str(i))
        lines += [f"FROM {'scratch' if i == 0 else f's{i - 1}'} AS s{i}", f"COPY f{i} /f{i}"]
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    t0 = time.monotonic()
    proc = snapfs("build", "-c", str(ctx), "--no-push", f"--oci-layout-path={tmp_path / 'out'}",
                  f"--cache-dir={tmp_path / 'cache'}", tmp=tmp)
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    assert "too many for one overlay" in out
    image = read_layout(str(tmp_path / "out"))
    assert len(image.layers) == n
    from snapfs import apply_layers

    root = tmp_path / "root"
    root.mkdir()
    apply_layers([l.path for l in image.layers], str(root))
    assert sorted(os.listdir(root)) == sorted(f"f{i}" for i in range(n))
    assert (root / "f0").read_text() == "0" and (root / f"f{n - 1}").read_text() == str(n - 1)
    assert time.monotonic() - t0 < 60


# -- full disks ----------------------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], check=True)
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_a_full_scratch_disk_names_the_scratch_directory(tmp_path, dirs, small_tmpfs):
    _, ctx = dirs
    (ctx / "big.bin").write_bytes(os.urandom(4 << 20))
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY big.bin /\n")
    proc = snapfs("build", "-c", str(ctx), "--no-push", f"--oci-layout-path={tmp_path / 'out'}",
                  f"--cache-dir={tmp_path / 'cache'}", tmp=small_tmpfs)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 8, out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"snapfs: step 2/2 (COPY at Dockerfile:2): No space left on device: {small_tmpfs}/"
                           "snapfs-build-"), out
    assert last.endswith(" (a filesystem of 2.0 MiB, 0 B free now)") and "Traceback" not in out
    assert os.listdir(small_tmpfs) == []  # and the scratch is gone even so


def test_a_full_output_disk_names_the_output(tmp_path, dirs, small_tmpfs):
    tmp, ctx = dirs
    (ctx / "big.bin").write_bytes(os.urandom(3 << 20))
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY big.bin /\n")
    out_dir = small_tmpfs / "oci"
    proc = snapfs("build", "-c", str(ctx), "--no-push", f"--oci-layout-path={out_dir}",
                  f"--cache-dir={tmp_path / 'cache'}", tmp=tmp)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode != 0 and "Traceback" not in out, out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(rf"snapfs: {re.escape(str(out_dir))}\S*( \(a filesystem of 2.0 MiB, .* free now\))?: "
                        "No space left on device", last), out


def test_removing_scratch_unmounts_what_is_still_mounted_below_it(tmp_path):
    """A mount the build lost track of (a signal between mount and bookkeeping) is detached, not deleted through."""
    scratch = tmp_path / "scratch"
    inner = scratch / "stage-0" / "root"
    inner.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(inner)], check=True)
    (inner / "file").write_text("x")
    lifecycle.remove_tree(str(scratch))
    assert mounts_under(tmp_path) == [] and not scratch.exists()


def test_a_run_step_that_fills_the_disk_names_the_host_directory(busybox_layout, tmp_path, dirs, small_tmpfs):
    """The step's own error names its path inside the image; the build's line names where on the host."""
    _, ctx = dirs
    (ctx / "Dockerfile").write_text(f"FROM oci:{busybox_layout}:busybox\n"
                                    "RUN dd if=/dev/zero of=/big bs=1k count=4096\n")
    proc = snapfs("build", "-c", str(ctx), "--no-push", f"--oci-layout-path={tmp_path / 'out'}",
                  f"--cache-dir={tmp_path / 'cache'}", tmp=small_tmpfs)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 9, out  # the RUN failed (its status, 1, is in the line)
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"snapfs: step 2/2 \(RUN at Dockerfile:2\): RUN /bin/sh -c dd .* returned a non-zero code: "
                        rf"1; {re.escape(str(small_tmpfs))}/snapfs-build-\S+ is full "
                        r"\(a filesystem of 2.0 MiB, 0 B free\)", last), out
    assert os.listdir(small_tmpfs) == []
