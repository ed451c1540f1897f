"""The layer cache without ``--reproducible`` (Kaniko's usual flags): a step the cache does not look up (WORKDIR,
COPY without ``--cache-copy-layers``) makes a layer whose timestamps differ from build to build, as a fresh CI
checkout gives every context file a new mtime. The RUN steps after it still hit when nothing they depend on
changed, and miss when the copied content did."""
from __future__ import annotations

import json
import os

from snapfs.builder.pipeline import BuildOptions, build
from snapfs.cache.session import CacheOptions
from snapfs.image.registry.client import RegistryOptions
from snapfs.image.transports import OutputOptions

DOCKERFILE = "FROM busybox\nWORKDIR /app\nCOPY src/ /app/src/\nRUN cat src/a.txt > copy\nRUN echo done > done\n"


def _build(registry, tmp_path, n: int) -> dict[str, tuple[str, str]]:
    """Build the context with the oci: cache; returns each RUN's (result, reason) from the --cache-report."""
    report = tmp_path / f"report{n}.json"
    reg = RegistryOptions(registry_maps=(("docker.io", registry.host),), insecure_registries=(registry.host,),
                          skip_default_registry_fallback=True)
    build(BuildOptions(context=str(tmp_path / "ctx"), registry=reg, cache_dir=str(tmp_path / "cache-dir"),
                       outputs=OutputOptions(no_push=True, oci_layout_path=str(tmp_path / f"out{n}")),
                       cache=CacheOptions(enabled=True, repo=f"oci:{tmp_path / 'layer-cache'}",
                                          report_file=str(report))))
    rows = json.loads(report.read_text())["steps"]
    return {r["instruction"]: (r["result"], r["reason"]) for r in rows if r["instruction"].startswith("RUN")}


def test_steps_after_an_uncached_copy_hit_when_only_mtimes_changed(registry, tmp_path):
    src = tmp_path / "ctx" / "src"
    src.mkdir(parents=True)
    (tmp_path / "ctx" / "Dockerfile").write_text(DOCKERFILE)
    (src / "a.txt").write_text("a\n")
    os.utime(src / "a.txt", ns=(1_600_000_000 * 10**9,) * 2)
    first = _build(registry, tmp_path, 1)
    assert [r for r, _ in first.values()] == ["miss", "miss"], first

    os.utime(src / "a.txt", ns=(1_700_000_000 * 10**9,) * 2)  # a fresh checkout: same content, new mtime
    again = _build(registry, tmp_path, 2)
    assert [r for r, _ in again.values()] == ["hit", "hit"], again

    (src / "a.txt").write_text("b\n")  # the content changed: the RUN steps after the COPY run again
    changed = _build(registry, tmp_path, 3)
    assert [r for r, _ in changed.values()] == ["miss", "miss"], changed
    assert changed["RUN cat src/a.txt > copy"][1] == "the base image, or an earlier step that is not cached, changed"
