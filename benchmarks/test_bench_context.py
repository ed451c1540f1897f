"""Unpacking a build-context archive of many small files vs GNU ``tar -x`` on the same bytes, same run.

The archive is plain (uncompressed) so both sides measure unpacking, not the decompressor; a gzip variant shows
what the usual ``context.tar.gz`` costs. ``SNAPFS_BENCH_SCALE`` scales the file count (20,000 at 1.0).
"""
from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import tarfile
import time

import pytest
from conftest import SCALE, report
from isal import igzip

from snapfs.context.extract import extract_context

FILES = max(200, int(20_000 * SCALE))


@pytest.fixture(scope="module")
def context_tar(scratch):
    """A source tree's shape: 100 files a directory, 200-2000 bytes each, some symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(FILES):
            d = f"src/pkg{i // 100:04d}"
            if i % 100 == 0:
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(ti)
            data = (b"line %d of a source file\n" % i) * (8 + i % 80)
            ti = tarfile.TarInfo(f"{d}/file{i}.py")
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(ti, io.BytesIO(data))
            if i % 50 == 0:
                ti = tarfile.TarInfo(f"{d}/link{i}")
                ti.type, ti.linkname = tarfile.SYMTYPE, f"file{i}.py"
                tar.addfile(ti)
    plain = os.path.join(scratch, "context.tar")
    with open(plain, "wb") as f:
        f.write(buf.getvalue())
    gz = os.path.join(scratch, "context.tar.gz")
    with open(gz, "wb") as f:
        f.write(igzip.compress(buf.getvalue(), 1))
    return plain, gz


@pytest.mark.parametrize("kind", ["plain", "gzip"])
def test_extract_context_vs_gnu_tar(benchmark, scratch, context_tar, kind):
    archive = context_tar[0] if kind == "plain" else context_tar[1]
    target = os.path.join(scratch, "ctx-target")

    def fresh():
        shutil.rmtree(target, ignore_errors=True)
        os.mkdir(target)

    def gnu() -> float:
        fresh()  # outside the timing, as pedantic's setup is for ours
        start = time.perf_counter()
        subprocess.run(["tar", "-x", "-f", archive, "-C", target], check=True)
        return time.perf_counter() - start

    gnu()  # warm-up: the archive is in the page cache for both sides from here on
    tar_time = statistics.median(gnu() for _ in range(2))

    def ours():
        with open(archive, "rb") as f:
            return extract_context(f, target, what=archive)

    stats = benchmark.pedantic(ours, setup=fresh, rounds=2, iterations=1)
    assert stats.entries >= FILES
    ours_time = benchmark.stats.stats.median
    report(benchmark, f"extract context ({kind}, {stats.entries} entries)", seconds=ours_time,
           vs_gnu_tar=ours_time / tar_time, entries_per_second=stats.entries / ours_time)
