"""Whole builds against `buildah bud --isolation chroot` on the same Dockerfile, base and machine, same run.

(a) a Debian-based RUN that creates 20,000 files (at scale 1) and deletes part of the base;
(b) a 5-stage build with COPY --from between stages.
Reported: total time ratio (snapfs / buildah; < 1 means faster), snapfs's split by phase, and the share of
snapshot time in each RUN step (target: under 10%).
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time

import pytest
from conftest import SCALE, report

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "registry"))
from basekit import make_debian_layout  # noqa: E402
from registry_servers import RegistryProcess, skopeo  # noqa: E402

from snapfs import build  # noqa: E402
from snapfs.builder.pipeline import BuildOptions  # noqa: E402
from snapfs.image.registry.client import RegistryOptions  # noqa: E402
from snapfs.image.transports import OutputOptions  # noqa: E402

FILES = max(1000, int(20_000 * SCALE))

MANY_FILES = f"""ARG BASE
FROM ${{BASE}}
RUN set -e; mkdir /data; cd /data; i=0; while [ $i -lt {FILES // 100} ]; do mkdir d$i; j=0; \\
    while [ $j -lt 100 ]; do echo "$i $j" > d$i/f$j; j=$((j+1)); done; i=$((i+1)); done; \\
    rm -rf /usr/share/doc /usr/share/man /usr/share/locale
"""

FIVE_STAGES = """ARG BASE
FROM ${BASE} AS s1
RUN mkdir /out && seq 1 20000 > /out/s1.txt
FROM ${BASE} AS s2
COPY --from=s1 /out /out
RUN seq 1 20000 > /out/s2.txt
FROM s2 AS s3
RUN cat /out/* > /out/s3.txt
FROM ${BASE} AS s4
COPY --from=s3 /out/s3.txt /s3.txt
RUN wc -l /s3.txt > /s4.txt
FROM ${BASE}
COPY --from=s4 /s4.txt /result.txt
COPY --from=s1 /out/s1.txt /s1.txt
"""


@pytest.fixture(scope="module")
def debian_registry(scratch):
    if shutil.which("buildah") is None or shutil.which("docker-registry") is None:
        pytest.fail("needs buildah and docker-registry (scripts/setup.sh installs them)")
    layout = make_debian_layout(scratch)
    reg = RegistryProcess(scratch, name="bench-build").start()
    try:
        skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:bookworm",
               f"docker://{reg.host}/library/debian:bookworm")
        yield reg
    finally:
        reg.stop()


def _snapfs(ctx: str, base: str, reg: RegistryProcess, out: str, cache: str):
    opts = BuildOptions(context=ctx, build_args=(("BASE", base),), cache_dir=cache,
                        registry=RegistryOptions(insecure_registries=(reg.host,)),
                        outputs=OutputOptions(no_push=True, oci_layout_path=out))
    shutil.rmtree(out, ignore_errors=True)
    return build(opts)


def _buildah(ctx: str, base: str, root: str) -> None:
    cmd = ["buildah", "--root", os.path.join(root, "root"), "--runroot", os.path.join(root, "run"),
           "--storage-driver", "vfs", "bud", "--isolation", "chroot", "--tls-verify=false", "--quiet",
           "--build-arg", f"BASE={base}", "-t", "bench", ctx]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("name, dockerfile", [("many-files", MANY_FILES), ("five-stages", FIVE_STAGES)])
def test_build_vs_buildah(benchmark, scratch, debian_registry, name, dockerfile):
    ctx = os.path.join(scratch, f"ctx-{name}")
    os.makedirs(ctx, exist_ok=True)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(dockerfile)
    base = f"{debian_registry.host}/library/debian:bookworm"
    broot = os.path.join(scratch, f"buildah-{name}")
    cache = os.path.join(scratch, "snapfs-cache")
    out = os.path.join(scratch, f"out-{name}")
    _buildah(ctx, base, broot)  # warm-up: both have the base locally afterwards
    _snapfs(ctx, base, debian_registry, out, cache)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        _buildah(ctx, base, broot)
        times.append(time.perf_counter() - t)
    buildah_time = statistics.median(times)
    result = benchmark.pedantic(lambda: _snapfs(ctx, base, debian_registry, out, cache), rounds=2, iterations=1)
    ours = benchmark.stats.stats.median
    runs = [t for t in result.timings if t.instruction.startswith("RUN")]
    shares = [t.snapshot / (t.run + t.snapshot + t.layer) for t in runs if t.run + t.snapshot + t.layer > 0]
    report(benchmark, f"build {name} ({FILES} files)", seconds=ours, buildah_seconds=buildah_time,
           vs_buildah=ours / buildah_time, run=sum(t.run for t in result.timings),
           snapshot=sum(t.snapshot for t in result.timings), layer=sum(t.layer for t in result.timings),
           max_snapshot_share_of_run_step=max(shares) if shares else 0.0)
