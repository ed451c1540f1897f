"""The image package's leaves do no IO and one module speaks HTTP; registry flags map to options.

The package-level layering is tests/test_layering.py (import-linter)."""
from __future__ import annotations

import ast
import os

import pytest

import snapfs
from snapfs.cli.registry import add_registry_arguments, registry_options
from snapfs.errors import UsageError

SRC = os.path.dirname(snapfs.__file__)
LEAVES = {"image/reference": {"re", "dataclasses"},
          "image/model": {"hashlib", "json", "dataclasses", "typing"}}
OURS = ["image/reference", "image/model", "image/blobstore", "image/layout", "image/tarball", "image/transports",
        "image/registry/credentials", "image/registry/client", "image/registry/auth", "image/registry/pull",
        "image/registry/push", "cli/registry"]


def _imports(name: str) -> set[str]:
    tree = ast.parse(open(os.path.join(SRC, f"{name}.py")).read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add("." + (node.module or "") if node.level else (node.module or ""))
    return {m if m.startswith((".", "snapfs.")) else m.split(".")[0] for m in out} - {"__future__"}


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_do_no_io(leaf):
    stdlib = {m for m in _imports(leaf) if not m.startswith((".", "snapfs"))}
    local = {m for m in _imports(leaf) if m.startswith((".", "snapfs"))}
    assert stdlib <= LEAVES[leaf], stdlib - LEAVES[leaf]
    assert local <= {"snapfs.errors", "snapfs.mediatypes", "snapfs.platforms", ".reference"}


def test_only_the_registry_modules_speak_http():
    speakers = [m for m in OURS if "httpx" in _imports(m)]
    assert speakers == ["image/registry/client", "image/registry/auth", "image/registry/pull"]


def _opts(*argv):
    import argparse
    p = argparse.ArgumentParser()
    add_registry_arguments(p)
    return registry_options(p.parse_args(list(argv)))


def test_registry_flags_map_to_options():
    o = _opts("--insecure", "--skip-tls-verify-pull", "--insecure-registry", "r.example:5000",
              "--registry-map", "index.docker.io=m1.example;m2.example/pre", "--registry-mirror", "mirror.example",
              "--registry-client-cert", "r.example=c.pem,k.pem", "--push-retry", "2", "--chunk-size", "8M")
    assert o.plain_http_allowed("any.example", pull=False) and not o.plain_http_allowed("any.example", pull=True)
    assert o.plain_http_allowed("r.example:5000", pull=True)
    assert o.skip_verify("x", pull=True) and not o.skip_verify("x", pull=False)
    assert o.registry_maps == (("docker.io", "m1.example"), ("docker.io", "m2.example/pre"))
    assert o.registry_client_certs == (("r.example", "c.pem", "k.pem"),)
    assert (o.push_retry, o.chunk_size, o.registry_mirrors) == (2, 8 << 20, ("mirror.example",))
    with pytest.raises(UsageError, match=r"^--registry-client-cert expects REGISTRY=CERT,KEY, got 'r=c.pem'$"):
        _opts("--registry-client-cert", "r=c.pem")
    with pytest.raises(UsageError, match=r"^--push-retry and --image-download-retry must not be negative$"):
        _opts("--push-retry", "-1")
