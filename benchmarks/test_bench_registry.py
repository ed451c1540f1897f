"""Registry transfer: push and pull of a large image through loopback, against ``skopeo copy`` in the same run.

A one-layer image of incompressible data (1 GiB at ``SNAPFS_BENCH_SCALE=1.0``), gzip-compressed, goes to a local
``docker-registry``. Reported: wall-time ratios snapfs / skopeo (> 1: snapfs is slower), throughput, and the peak
RSS of each process (from ``wait4``) at full size and at a quarter of it: streaming means the peak must not grow
with the layer. Nothing is asserted about time.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import SCALE, report

sys.path.append(os.path.join(os.path.dirname(__file__), "..", "tests", "registry"))
from imagekit import image_of, random_layer  # noqa: E402
from registry_servers import RegistryProcess  # noqa: E402

from snapfs.image.layout import write_layout  # noqa: E402

GIB = 1 << 30


def _run(cmd: list[str], log: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process.

    The RSS comes from ``busybox time``: a child forked straight from pytest would report pytest's own peak
    (Linux carries the pre-exec high-water mark over ``exec``), a grandchild of the tiny ``time`` does not.
    """
    start = time.perf_counter()
    proc = subprocess.run(["busybox", "time", "-f", "%M", *cmd], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    with open(log, "ab") as f:
        f.write(proc.stderr)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:4])} failed: {proc.stderr[-2000:].decode(errors='replace')}")
    return elapsed, int(proc.stderr.decode().strip().splitlines()[-1]) / 1024


def _image_layout(scratch: str, name: str, size: int) -> str:
    layer = random_layer(os.path.join(scratch, f"{name}-blobs"), size, compression="gzip", seed=-1)
    layout = os.path.join(scratch, f"{name}-oci")
    write_layout(layout, image_of([layer]), ref_name="bench")
    with open(layer.path, "rb") as f:  # warm the page cache for both contenders
        while f.read(8 << 20):
            pass
    return layout


@pytest.fixture(scope="module")
def bench_registry(scratch):
    if not all(shutil.which(t) for t in ("docker-registry", "skopeo", "busybox")):
        pytest.skip("needs docker-registry, skopeo and busybox")
    reg = RegistryProcess(scratch, name="bench-registry").start()
    yield reg
    reg.stop()


def test_push_pull_vs_skopeo(benchmark, bench_registry, scratch):
    host = bench_registry.host
    size = max(4 << 20, int(GIB * SCALE))
    log = os.path.join(scratch, "bench-registry.log")
    snapfs = [sys.executable, "-m", "snapfs"]
    skopeo = ["skopeo", "--insecure-policy", "copy", "--quiet"]
    layout = _image_layout(scratch, "big", size)
    small_layout = _image_layout(scratch, "small", size // 4)

    # Push: skopeo first, then snapfs to its own repository (each uploads the whole blob).
    sk_push, sk_push_rss = _run(skopeo + ["--dest-tls-verify=false", f"oci:{layout}:bench",
                                          f"docker://{host}/bench/skopeo:1"], log)
    rounds = iter(range(100))

    def push():
        return _run(snapfs + ["push", f"{layout}:bench", f"{host}/bench/snapfs{next(rounds)}:1",
                              "--insecure-registry", host], log)

    push_time, push_rss = benchmark.pedantic(push, rounds=1, iterations=1)
    _, small_push_rss = _run(snapfs + ["push", f"{small_layout}:bench", f"{host}/bench/small:1",
                                       "--insecure-registry", host], log)

    # Pull: into empty layouts.
    sk_pull, sk_pull_rss = _run(skopeo + ["--src-tls-verify=false", f"docker://{host}/bench/snapfs0:1",
                                          f"oci:{os.path.join(scratch, 'sk-pull')}:x"], log)
    pull_time, pull_rss = _run(snapfs + ["pull", f"{host}/bench/snapfs0:1", "--oci-layout",
                                         os.path.join(scratch, "snapfs-pull"), "--insecure-registry", host], log)
    _, small_pull_rss = _run(snapfs + ["pull", f"{host}/bench/small:1", "--oci-layout",
                                       os.path.join(scratch, "snapfs-pull-small"), "--insecure-registry", host], log)
    mib = size / (1 << 20)
    report(benchmark, f"registry push/pull of {mib:.0f} MiB (gzip, incompressible)",
           push_vs_skopeo=push_time / sk_push, pull_vs_skopeo=pull_time / sk_pull,
           push_seconds=push_time, pull_seconds=pull_time, skopeo_push_seconds=sk_push,
           skopeo_pull_seconds=sk_pull, push_mib_per_s=mib / push_time, pull_mib_per_s=mib / pull_time,
           push_peak_rss_mib=push_rss, push_peak_rss_mib_quarter_size=small_push_rss,
           pull_peak_rss_mib=pull_rss, pull_peak_rss_mib_quarter_size=small_pull_rss,
           skopeo_push_peak_rss_mib=sk_push_rss, skopeo_pull_peak_rss_mib=sk_pull_rss)
