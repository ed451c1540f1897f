"""Fixtures for end-to-end builds: real bases (busybox, Debian), a real registry, and a build runner.

Dockerfiles in the tests say ``FROM busybox`` or ``FROM debian:bookworm`` like real ones; the runner maps
docker.io to the local registry with ``--registry-map`` (plain HTTP), as a mirror would in a cluster.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "image"))
from basekit import make_busybox_layout, make_debian_layout  # noqa: E402
from parity import RESULTS, Buildah  # noqa: E402
from registry_servers import RegistryProcess, need, skopeo  # noqa: E402

from snapfs import apply_layers  # noqa: E402
from snapfs.builder.pipeline import BuildOptions, build  # noqa: E402
from snapfs.image.layout import read_layout  # noqa: E402
from snapfs.image.reference import parse_reference  # noqa: E402
from snapfs.image.registry.client import RegistryOptions  # noqa: E402
from snapfs.image.transports import OutputOptions  # noqa: E402

@pytest.fixture(scope="session")
def basedir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("bases"))


@pytest.fixture(scope="session")
def busybox_layout(basedir):
    """busybox (Debian's busybox-static) with an ``app`` user, as an OCI layout."""
    need("busybox")
    return make_busybox_layout(basedir)


@pytest.fixture(scope="session")
def debian_layout(basedir):
    """Debian bookworm minbase from the machine's own mirror, cached between runs as an OCI layout."""
    need("debootstrap")
    return make_debian_layout(basedir)


@pytest.fixture(scope="session")
def registry(tmp_path_factory, busybox_layout):
    """A plain-HTTP registry holding ``library/busybox:latest`` (and Debian once asked for)."""
    need("docker-registry")
    reg = RegistryProcess(str(tmp_path_factory.mktemp("build-registry")), name="build").start()
    try:
        skopeo("copy", "--dest-tls-verify=false", f"oci:{busybox_layout}:busybox",
               f"docker://{reg.host}/library/busybox:latest")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def debian_in_registry(registry, debian_layout):
    skopeo("copy", "--dest-tls-verify=false", f"oci:{debian_layout}:bookworm",
           f"docker://{registry.host}/library/debian:bookworm")
    return registry


@dataclass
class Built:
    result: object
    rootfs: str
    config: dict
    layout: str

    def path(self, p: str) -> str:
        return os.path.join(self.rootfs, p.lstrip("/"))

    def read(self, p: str) -> bytes:
        with open(self.path(p), "rb") as f:
            return f.read()


@pytest.fixture
def run_build(tmp_path, registry):
    """Build ``dockerfile`` with ``files`` as the context; returns the image unpacked and its config."""

    calls = []

    def run(dockerfile: str, files: dict | None = None, *, push: str | None = None, **kw) -> Built:
        calls.append(1)
        n = len(calls)
        ctx = tmp_path / "ctx"
        ctx.mkdir(exist_ok=True)
        (ctx / "Dockerfile").write_text(dockerfile)
        for name, data in (files or {}).items():
            p = ctx / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, str):
                data = data.encode()
            p.write_bytes(data)
        layout = str(tmp_path / f"out-oci-{n}")
        reg = RegistryOptions(registry_maps=(("docker.io", registry.host),),
                              insecure_registries=(registry.host,), skip_default_registry_fallback=True)
        destinations = (parse_reference(push),) if push else ()
        outputs = OutputOptions(destinations=destinations, no_push=push is None, oci_layout_path=layout)
        opts = BuildOptions(context=str(ctx), outputs=outputs, registry=reg,
                            cache_dir=str(tmp_path.parent / "snapfs-cache"), **kw)
        result = build(opts)
        image = read_layout(layout)
        rootfs = str(tmp_path / f"rootfs-{n}")
        os.makedirs(rootfs)
        apply_layers([l.path for l in image.layers], rootfs)
        return Built(result, rootfs, json.loads(image.config_bytes), layout)

    return run


@pytest.fixture(scope="session")
def buildah(tmp_path_factory, registry):
    """``buildah`` with one storage for the session (busybox pulled once from the local registry)."""
    need("buildah")
    b = Buildah.create(str(tmp_path_factory.mktemp("buildah-storage")), registry.host)
    yield b
    b.run("rmi", "--all", "--force", check=False)


def pytest_terminal_summary(terminalreporter):
    """After a run of test_parity_buildah.py: the corpus size and how many cases matched buildah."""
    if not RESULTS:
        return
    count = {k: sum(1 for v in RESULTS.values() if v.split(":")[0] == k) for k in ("matched", "known", "differs",
                                                                                   "skipped")}
    compared = count["matched"] + count["known"] + count["differs"]
    terminalreporter.write_line(
        f"buildah parity: corpus {len(_corpus_names())} cases, {len(RESULTS)} run, {compared} compared, "
        f"{count['matched']} matched exactly, {count['known']} matched apart from documented differences, "
        f"{count['differs']} differ, {count['skipped']} opted out")


def _corpus_names() -> list[str]:
    cases = os.path.join(os.path.dirname(__file__), "cases")
    return [n for n in os.listdir(cases) if os.path.isfile(os.path.join(cases, n, "Dockerfile"))]
