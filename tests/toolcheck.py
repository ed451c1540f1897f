"""Every program the suite runs, and where scripts/setup.sh gets it: checked once, at the start of the run.

A missing tool otherwise shows up test by test (a skip each, or under ``SNAPFS_NO_SKIP=1`` a failure each, deep
in a long run). The session start lists them all at once; under ``SNAPFS_NO_SKIP=1`` the run stops there.
"""
from __future__ import annotations

import shutil

# program -> how scripts/setup.sh installs it ("apt <package>", "npm <package>", "pip <extra>")
TOOLS = {
    "bash": "apt bash",
    "buildah": "apt buildah",
    "busybox": "apt busybox-static",
    "capsh": "apt libcap2-bin",
    "chattr": "apt e2fsprogs",
    "chroot": "apt coreutils",
    "cp": "apt coreutils",
    "debootstrap": "apt debootstrap",
    "docker-registry": "apt docker-registry",
    "gcc": "apt gcc",
    "git": "apt git",
    "htpasswd": "apt apache2-utils",
    "mount": "apt mount",
    "openssl": "apt openssl",
    "setpriv": "apt util-linux",
    "skopeo": "apt skopeo",
    "sleep": "apt coreutils",
    "tar": "apt tar",
    "umoci": "apt umoci",
    "umount": "apt mount",
    "unshare": "apt util-linux",
    "zstd": "apt zstd",
    "azurite-blob": "npm azurite",
    "gcp-storage-emulator": "pip gcp-storage-emulator (.[test])",
    "moto_server": "pip moto[server] (.[test])",
}


def missing_tools(path: str | None = None) -> list[str]:
    """The programs of TOOLS not found on ``path`` (default: $PATH), sorted."""
    return sorted(t for t in TOOLS if shutil.which(t, path=path) is None)


def report(missing: list[str]) -> str:
    return (f"{len(missing)} tool(s) the tests run are missing: "
            + ", ".join(f"{t} ({TOOLS[t]})" for t in missing) + "; scripts/setup.sh installs them")
