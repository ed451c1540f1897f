"""Base images for builds, made locally: busybox (Debian's busybox-static) and Debian (debootstrap, cached)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "image"))
from imagekit import busybox_rootfs, dir_layer, image_of  # noqa: E402

from snapfs.image.layout import write_layout  # noqa: E402

DEBIAN_CACHE = os.environ.get("SNAPFS_TEST_CACHE", "/var/tmp/snapfs-test-cache")


def make_busybox_layout(workdir: str) -> str:
    """busybox with users root, nobody, app (1000) and groups app, staff (50, member app): layout ref ``busybox``."""
    root = busybox_rootfs(os.path.join(workdir, "busybox-root"))
    with open(os.path.join(root, "etc", "passwd"), "a") as f:
        f.write("app:x:1000:1000:app:/home/app:/bin/sh\n")
    with open(os.path.join(root, "etc", "group"), "a") as f:
        f.write("app:x:1000:\nstaff:x:50:app\n")
    os.makedirs(os.path.join(root, "home", "app"))
    os.chown(os.path.join(root, "home", "app"), 1000, 1000)
    layer = dir_layer(os.path.join(workdir, "busybox-blobs"), root)
    layout = os.path.join(workdir, "busybox-oci")
    write_layout(layout, image_of([layer], cmd=["sh"]), ref_name="busybox")
    return layout


def debian_mirror() -> str:
    try:
        for line in open("/etc/apt/sources.list.d/debian.sources"):
            if line.startswith("URIs:"):
                return line.split()[1]
    except OSError:
        pass
    return "http://deb.debian.org/debian"


def make_debian_layout(workdir: str) -> str:
    """Debian bookworm minbase from the machine's own mirror, cached between runs (layout ref ``bookworm``)."""
    layout = os.path.join(DEBIAN_CACHE, "debian-bookworm-oci")
    if os.path.exists(os.path.join(layout, "index.json")):
        return layout
    root = os.path.join(workdir, "debian-root")
    r = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", root, debian_mirror()],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("debootstrap failed: " + (r.stdout[-2000:] + r.stderr[-2000:]))
    shutil.rmtree(os.path.join(root, "var/cache/apt/archives"), ignore_errors=True)
    os.makedirs(os.path.join(root, "var/cache/apt/archives/partial"), exist_ok=True)
    tmp = layout + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    layer = dir_layer(os.path.join(workdir, "debian-blobs"), root)
    write_layout(tmp, image_of([layer], cmd=["bash"]), ref_name="bookworm")
    os.makedirs(DEBIAN_CACHE, exist_ok=True)
    try:
        os.rename(tmp, layout)
    except OSError:  # another run cached it first
        shutil.rmtree(tmp, ignore_errors=True)
    return layout
