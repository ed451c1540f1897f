"""A Kubernetes pod, simulated for real: the executor image (built by snapfs from deploy/Dockerfile) is unpacked
and entered the way a container runtime would (new mount and PID namespaces, chroot, /proc mounted, a workspace
and a docker config.json mounted in, /etc/hosts and resolv.conf bind-mounted), with only the capabilities a
default pod has (no CAP_SYS_ADMIN). It runs a multi-stage build with RUN steps that pushes to a real registry;
the image is pulled back and checked, and its digest equals the same build in root-directory mode."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "image"))
from basekit import make_busybox_layout, make_debian_layout  # noqa: E402
from registry_servers import RegistryProcess, skopeo  # noqa: E402

from snapfs import apply_layers  # noqa: E402
from snapfs.image.layout import read_layout  # noqa: E402

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POD_CAPS = ("chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
            "net_bind_service", "net_raw", "sys_chroot", "mknod", "audit_write", "setfcap")
DOCKERFILE = """\
FROM busybox AS build
RUN echo built-in-a-pod > /artifact && echo 'worker:x:1234:1234::/home/worker:/bin/sh' >> /etc/passwd
FROM busybox
COPY --from=build /artifact /artifact
COPY --from=build /etc/passwd /etc/passwd
RUN cat /artifact > /copied && (cat /snapfs/.docker/config.json 2>/dev/null || echo none) > /leak
USER worker
CMD ["cat", "/copied"]
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A registry with busybox, and the executor image built by snapfs (root-directory mode) from this tree."""
    work = str(tmp_path_factory.mktemp("pod"))
    reg = RegistryProcess(work, name="pod-registry").start()
    try:
        skopeo("copy", "--dest-tls-verify=false", f"oci:{make_busybox_layout(work)}:busybox",
               f"docker://{reg.host}/library/busybox:latest")
        debian = make_debian_layout(work)
        executor = os.path.join(work, "executor-oci")
        tmp = os.path.join(work, "tmp")  # the script's own TMPDIR: it must leave nothing there
        os.makedirs(tmp)
        r = subprocess.run(["bash", os.path.join(REPO, "deploy", "build-executor-image.sh"), "--base",
                            f"oci:{debian}:bookworm", "--no-push", f"--oci-layout-path={executor}", "--reproducible",
                            f"--cache-dir={os.path.join(work, 'cache')}"], capture_output=True, text=True,
                           env={**os.environ, "TMPDIR": tmp})
        assert r.returncode == 0, r.stderr[-4000:]
        assert os.listdir(tmp) == []  # the wheels' build context is removed (the script used to exec past its trap)
        yield work, reg, executor
    finally:
        reg.stop()


def _unpack(layout: str, dest: str) -> dict:
    image = read_layout(layout)
    os.makedirs(dest)
    apply_layers([l.path for l in image.layers], dest)
    return json.loads(image.config_bytes)


def _run_pod(work: str, executor: str, reg: RegistryProcess, dest: str, *extra: str) -> subprocess.CompletedProcess:
    pod = os.path.join(work, "pod-root")
    shutil.rmtree(pod, ignore_errors=True)
    config = _unpack(executor, pod)
    ws = os.path.join(work, "workspace")
    os.makedirs(ws, exist_ok=True)
    with open(os.path.join(ws, "Dockerfile"), "w") as f:
        f.write(DOCKERFILE)
    secret = os.path.join(work, "docker-config")
    os.makedirs(secret, exist_ok=True)
    with open(os.path.join(secret, "config.json"), "w") as f:  # the Secret a Kaniko Job mounts
        json.dump({"auths": {reg.host: {"auth": "cG9kdXNlcjpzM2NyM3QtcGFzc3dvcmQ="}}}, f)
    env = dict(e.split("=", 1) for e in config["config"]["Env"])
    env.update(KUBERNETES_SERVICE_HOST="10.0.0.1")  # what a pod's environment says
    args = [*config["config"]["Entrypoint"], "--context=dir:///workspace", "--dockerfile=Dockerfile",
            f"--destination={dest}", f"--insecure-registry={reg.host}",
            f"--registry-map=docker.io={reg.host}", "--skip-default-registry-fallback", "--reproducible", *extra]
    caps = ",".join(["-all"] + [f"+{c}" for c in POD_CAPS])
    script = f"""set -e
P={pod}
for d in workspace proc dev sys snapfs/.docker etc; do mkdir -p "$P/$d"; done
for f in etc/hosts etc/resolv.conf etc/hostname; do [ -e "$P/$f" ] || touch "$P/$f"; done
mount --bind {ws} "$P/workspace"
mount --bind {secret} "$P/snapfs/.docker"
mount -t proc proc "$P/proc"
mount --rbind /dev "$P/dev"
mount --rbind -o ro /sys "$P/sys"
mount --bind /etc/hosts "$P/etc/hosts"
mount --bind /etc/resolv.conf "$P/etc/resolv.conf"
exec setpriv --bounding-set={caps} --inh-caps=-all --no-new-privs -- chroot "$P" "$@"
"""
    return subprocess.run(["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "--",
                           "sh", "-c", script, "pod", *args], capture_output=True, text=True,
                          env=env, cwd="/", timeout=900)


def _host_build(reg: RegistryProcess, tmp_path, *extra: str) -> subprocess.CompletedProcess:
    """The same Dockerfile in root-directory mode (scratch roots, sandboxed RUN), on this machine."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return subprocess.run([sys.executable, "-m", "snapfs", "build", f"--context={ctx}", "--no-push",
                           f"--oci-layout-path={tmp_path / 'host-oci'}", f"--insecure-registry={reg.host}",
                           f"--registry-map=docker.io={reg.host}", "--skip-default-registry-fallback",
                           "--reproducible", f"--cache-dir={tmp_path / 'cache'}", "--in-container=false", *extra],
                          capture_output=True, text=True)


def test_build_in_an_unprivileged_pod_matches_root_directory_mode(world, tmp_path):
    work, reg, executor = world
    dest = f"{reg.host}/pod/app:1"
    r = _run_pod(work, executor, reg, dest)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "isolation not available: running RUN steps directly in the container" in r.stderr
    pod_digest = r.stdout.strip().splitlines()[-1]
    # The credentials were taken into memory and removed from the mounted Secret before any RUN step.
    assert not os.path.exists(os.path.join(work, "docker-config", "config.json"))
    # Pulled back through the registry and checked.
    pulled = str(tmp_path / "pulled")
    skopeo("copy", "--src-tls-verify=false", f"docker://{dest}", f"oci:{pulled}:x")
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{dest}").stdout)
    assert info["Digest"] == pod_digest
    image = read_layout(pulled)
    root = str(tmp_path / "root")
    os.makedirs(root)
    apply_layers([l.path for l in image.layers], root)
    assert open(os.path.join(root, "copied")).read() == "built-in-a-pod\n"
    assert open(os.path.join(root, "leak")).read() == "none\n"
    assert "worker:x:1234" in open(os.path.join(root, "etc/passwd")).read()
    for leftover in ("snapfs", "workspace", "proc/self", "etc/hosts", "etc/resolv.conf"):
        assert not os.path.exists(os.path.join(root, leftover)), leftover
    assert json.loads(image.config_bytes)["config"]["User"] == "worker"
    # The same Dockerfile in root-directory mode (scratch roots, sandboxed RUN) gives the same digest.
    host = _host_build(reg, tmp_path)
    assert host.returncode == 0, host.stderr[-3000:]
    assert host.stdout.strip() == pod_digest


def test_cached_layers_apply_in_the_pod(world, tmp_path):
    """The cache filled by a root-directory-mode build is used by the pod (in-container mode): every RUN and
    COPY hits, and the image is the one the uncached pod build makes."""
    work, reg, executor = world
    cache = f"{reg.host}/pod/cache"
    host = _host_build(reg, tmp_path, "--cache", f"--cache-repo={cache}", "--cache-copy-layers")
    assert host.returncode == 0, host.stderr[-3000:]
    r = _run_pod(work, executor, reg, f"{reg.host}/pod/cached:1", "--cache", f"--cache-repo={cache}",
                 "--cache-copy-layers")
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stderr.count(": cache hit ") == 4 and "cache miss" not in r.stderr, r.stderr[-4000:]
    assert r.stdout.strip().splitlines()[-1] == host.stdout.strip()
