"""Benchmark fixtures: generated trees and in-run baselines.

``SNAPFS_BENCH_SCALE`` (default 1.0) scales tree sizes; the test script runs the benchmarks at 0.05 so they
cannot rot, and figures are printed as ratios against baselines measured in the same run. Nothing is asserted
about time.
"""
from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time

import pytest

SCALE = float(os.environ.get("SNAPFS_BENCH_SCALE", "1.0"))

_C_WALKER = r"""
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <stdio.h>
static long n;
static int cb(const char *p, const struct stat *s, int t, struct FTW *f) { (void)p; (void)s; (void)t; (void)f; n++; return 0; }
int main(int argc, char **argv) { if (argc < 2 || nftw(argv[1], cb, 64, FTW_PHYS | FTW_MOUNT)) return 1; printf("%ld\n", n); return 0; }
"""


def best_of(fn, rounds: int = 3) -> float:
    """Median wall time of ``fn`` over ``rounds`` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def report(benchmark, name: str, **figures) -> None:
    """Attach figures to the benchmark's JSON and print them (ratios > 1 mean snapfs is slower)."""
    for k, v in figures.items():
        benchmark.extra_info[k] = round(v, 4) if isinstance(v, float) else v
    text = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"\n[bench] {name}: {text}")


@pytest.fixture(scope="session")
def scratch():
    path = tempfile.mkdtemp(prefix="snapfs-bench-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def c_walker(scratch) -> str:
    """A plain C stat walk (nftw, physical, one filesystem): the baseline for the walker."""
    src, exe = os.path.join(scratch, "walk.c"), os.path.join(scratch, "cwalk")
    with open(src, "w") as f:
        f.write(_C_WALKER)
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe


def _text(rng: random.Random, n: int) -> bytes:
    words = [b"lib", b"usr", b"share", b"config", b"return", b"static", b"int", b"the", b"debian", b"\n"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


@pytest.fixture(scope="session")
def debian_like(scratch) -> str:
    """~10k entries, a few hundred MB at scale 1: text files, some incompressible binaries, symlinks."""
    rng = random.Random(42)
    root = os.path.join(scratch, "debian")
    n_files = max(200, int(10_000 * SCALE))
    target_bytes = int(300 * 2**20 * SCALE)
    dirs = [f"usr/share/doc/pkg{i}" for i in range(max(10, n_files // 20))] + \
           [f"usr/lib/x86_64-linux-gnu/mod{i}" for i in range(max(5, n_files // 100))] + ["usr/bin", "etc", "var/lib"]
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    text_blob = _text(rng, 1 << 20)
    written = 0
    for i in range(n_files):
        d = rng.choice(dirs)
        path = os.path.join(root, d, f"file{i}")
        if i % 10 == 0:
            os.symlink(f"file{i - 1}", path)
            continue
        size = min(int(rng.lognormvariate(8.5, 1.6)), 8 << 20)
        if written + size > target_bytes:
            size = 100
        written += size
        with open(path, "wb") as f:
            if i % 7 == 0:
                f.write(os.urandom(size))  # binaries barely compress
            else:
                off = rng.randrange(0, len(text_blob) - 1)
                while size > 0:
                    chunk = text_blob[off:off + size]
                    f.write(chunk)
                    size -= len(chunk)
                    off = 0
    return root


@pytest.fixture(scope="session")
def wide_tree(scratch) -> str:
    """200k small files (at scale 1) in 400 directories."""
    root = os.path.join(scratch, "wide")
    n = max(2000, int(200_000 * SCALE))
    per_dir = 500
    for i in range(n):
        d = os.path.join(root, f"d{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
            f.write(b"x" * (i % 64))
    return root


def scandir_walk(root: str) -> int:
    """The pure-Python baseline: os.scandir recursion with an lstat per entry."""
    count, stack = 0, [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                count += 1
                if entry.is_dir(follow_symlinks=False) and st:
                    stack.append(entry.path)
    return count
