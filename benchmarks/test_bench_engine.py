"""Engine hot paths against baselines measured in the same run (ratios > 1: snapfs is slower).

- no-change snapshot + diff vs a C stat walk (nftw) and vs an os.scandir walk (targets: within 2x of C)
- diff with 1% of files changed
- layer writing vs the raw compressor on the same tar bytes (target: within 1.3x)
- snapshot memory per file (target: under 200 bytes)
- applying a layer vs GNU tar extracting it
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
import tracemalloc

import pytest
from conftest import best_of, report, scandir_walk

from snapfs.engine import backend, changes, compress, layer, snapshot
from snapfs.engine.apply import apply_layer


@pytest.mark.parametrize("tree", ["wide_tree", "debian_like"])
def test_no_change_snapshot_and_diff(benchmark, request, c_walker, tree):
    root = request.getfixturevalue(tree)
    old = snapshot.take(root, quiescent=True)
    c_time = best_of(lambda: subprocess.run([c_walker, root], check=True, capture_output=True))
    py_time = best_of(lambda: scandir_walk(root))
    pure = backend.get("python")
    pure_time = best_of(lambda: changes.diff(old, snapshot.take(root, quiescent=True, kernel=pure), kernel=pure),
                        rounds=1)

    def run():
        return changes.diff(old, snapshot.take(root, quiescent=True))

    d = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert d.changes == ()
    ours = benchmark.stats.stats.median
    report(benchmark, f"no-change snapshot+diff ({tree}, {len(old)} entries)", seconds=ours,
           vs_c_stat_walk=ours / c_time, vs_scandir_walk=ours / py_time, pure_twin_vs_compiled=pure_time / ours,
           entries_per_second=len(old) / ours)


def test_diff_with_one_percent_changed(benchmark, wide_tree):
    old = snapshot.take(wide_tree, quiescent=True)
    files = [e.path for e in old if e.is_reg]
    changed = files[:: 100]
    for rel in changed:
        with open(os.path.join(wide_tree, rel), "ab") as f:
            f.write(b"!")
    no_change_time = best_of(lambda: changes.diff(old, old))
    d = benchmark.pedantic(lambda: changes.diff(old, snapshot.take(wide_tree, quiescent=True)), rounds=5,
                           iterations=1, warmup_rounds=1)
    assert len(d.changes) == len(changed)
    ours = benchmark.stats.stats.median
    report(benchmark, f"snapshot+diff, {len(changed)} of {len(files)} files changed", seconds=ours,
           merge_only_seconds=no_change_time, changes=len(d.changes))


@pytest.fixture(scope="module")
def full_diff(debian_like, scratch):
    empty = os.path.join(scratch, "empty")
    os.makedirs(empty, exist_ok=True)
    d = changes.diff(snapshot.take(empty), snapshot.take(debian_like, quiescent=True))
    plain = layer.write_layer(d, os.path.join(scratch, "plain.tar"), compression="none")
    return d, plain


def _raw_compress(kind: str, level: int, src: str, dst: str) -> None:
    """The baseline: the same compressor and settings on the same bytes, streamed from a file."""
    with open(src, "rb") as f, open(dst, "wb") as out:
        w = compress.compressing_writer(kind, level, out)
        while chunk := f.read(1 << 20):
            w.write(chunk)
        w.close()


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_layer_write_vs_raw_compressor(benchmark, full_diff, scratch, kind):
    d, plain = full_diff
    level = compress.DEFAULT_LEVELS[kind]
    raw_time = best_of(lambda: _raw_compress(kind, level, plain.path, os.path.join(scratch, "raw.out")))
    out = os.path.join(scratch, f"layer.{kind}")
    blob = benchmark.pedantic(lambda: layer.write_layer(d, out, compression=kind, level=level), rounds=3,
                              iterations=1, warmup_rounds=1)
    ours = benchmark.stats.stats.median
    mb = plain.size / 2**20
    report(benchmark, f"layer write {kind} ({mb:.0f} MiB tar, {blob.entries} entries)", seconds=ours,
           vs_raw_compressor=ours / raw_time, mib_per_second=mb / ours, ratio=blob.size / plain.size)


def test_gzip_vs_single_threaded_zlib(benchmark, full_diff, scratch):
    """What isal + threads buy over the stdlib gzip most tools use (reported, not a target)."""
    import gzip

    d, plain = full_diff

    def stdlib():
        with open(plain.path, "rb") as f, gzip.open(os.path.join(scratch, "zlib.gz"), "wb", compresslevel=1) as g:
            shutil.copyfileobj(f, g, 1 << 20)

    zlib_time = best_of(stdlib, rounds=1)
    benchmark.pedantic(lambda: _raw_compress("gzip", 1, plain.path, os.path.join(scratch, "isal.gz")), rounds=3,
                       iterations=1)
    report(benchmark, "isal threaded gzip vs stdlib zlib level 1", speedup=zlib_time / benchmark.stats.stats.median)


def test_snapshot_memory_per_file(benchmark, wide_tree):
    tracemalloc.start()
    snap = snapshot.take(wide_tree, quiescent=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    benchmark.pedantic(lambda: snapshot.take(wide_tree, quiescent=True), rounds=1, iterations=1)
    n = len(snap)
    held = len(snap.records) + len(snap.names) + len(snap.extras)
    report(benchmark, f"snapshot memory ({n} entries)", bytes_per_entry_held=held / n,
           bytes_per_entry_peak=peak / n)


def test_apply_vs_gnu_tar(benchmark, full_diff, scratch):
    """Extraction alone, into a fresh directory whose predecessor's deletion has been flushed first (deleting
    a tree leaves the journal busy for the next creations, which would bias whichever runs second)."""
    d, plain = full_diff
    target = os.path.join(scratch, "apply-target")

    def fresh():
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        os.sync()

    tar_times = []
    for _ in range(3):
        fresh()
        t = time.perf_counter()
        subprocess.run(["tar", "-xf", plain.path, "-C", target, "--numeric-owner"], check=True)
        tar_times.append(time.perf_counter() - t)
    stats = benchmark.pedantic(lambda: apply_layer(plain.path, target), setup=fresh, rounds=3, iterations=1)
    assert stats.diff_id == plain.diff_id
    ours = benchmark.stats.stats.median
    report(benchmark, f"apply {stats.entries} entries", seconds=ours, vs_gnu_tar=ours / statistics.median(tar_times))
