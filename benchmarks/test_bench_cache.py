"""The layer cache (``--cache --cache-copy-layers --reproducible``): cold build, fully cached rebuild, and a
rebuild after one context file changed, against a local ``docker-registry`` and against an ``oci:DIR`` cache.

The Dockerfile is a service's usual shape, on Debian bookworm: a slow RUN (dependencies; a scaled ``sleep`` plus
some gzip work), a COPY of a 1,000-file source tree (scaled), RUN steps over the sources, metadata. Each round
uses a new cache; at ``SNAPFS_BENCH_SCALE >= 0.5`` figures are medians of 3 rounds. Reported, as ratios against
the cold build (a) of the same run: (b) the fully cached rebuild and (c) the rebuild after one file changed; (a)
against a build without ``--cache`` (what storing costs); the lookup time per cached step (the
``--cache-report``'s ``lookup_seconds``: the lookup and, on a hit, fetching the layer); the steps (c) ran again;
whether (b) gave (a)'s digest. Before each build the base-layer cache (``--cache-dir``) holds only the base, as on
a fresh CI machine, so a hit's layers come from the layer cache. Asserted: correctness only (which steps hit or
missed, the cache never changes the image's digest), never time.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass

import pytest
from conftest import SCALE, report

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from basekit import make_debian_layout  # noqa: E402 (puts tests/image on the path)
from registry_servers import RegistryProcess, skopeo  # noqa: E402

from snapfs import build  # noqa: E402
from snapfs.builder.pipeline import BuildOptions  # noqa: E402
from snapfs.cache.session import CacheOptions  # noqa: E402
from snapfs.image.registry.client import RegistryOptions  # noqa: E402
from snapfs.image.transports import OutputOptions  # noqa: E402

CONTEXT_FILES = max(50, int(1000 * SCALE))
SLOW_SECONDS = max(0.2, round(4 * SCALE, 2))  # the slow RUN's sleep (plus gzip of SEQ numbers)
SEQ = max(20_000, int(2_000_000 * SCALE))
ROUNDS = 3 if SCALE >= 0.5 else 1  # medians: this machine is shared, one build can take twice as long

DOCKERFILE = f"""ARG BASE
FROM ${{BASE}}
ENV APP_HOME=/app LANG=C.UTF-8
WORKDIR /app
RUN mkdir -p /app/data /app/bin && echo "bench {SCALE}" > /etc/bench-release
RUN sleep {SLOW_SECONDS} && seq 1 {SEQ} | gzip -9 > /app/data/deps.gz
COPY src/ /app/src/
RUN find /app/src -type f | sort | xargs cat | sha256sum > /app/data/src.sha256
RUN find /app/src -type f | wc -l > /app/data/count
RUN printf '#!/bin/sh\\necho ready\\n' > /app/bin/start && chmod 755 /app/bin/start
LABEL org.opencontainers.image.title=cache-bench
CMD ["/app/bin/start"]
"""
# The steps the cache looks up (RUN, and COPY with --cache-copy-layers), named by a word of each.
CACHED = ["mkdir", "sleep", "COPY", "sha256sum", "wc -l", "printf"]
# After one source file changed: the COPY and every cached step after it run again (the filesystem they start
# from changed); the slow RUN before it hits.
RERUN_AFTER_EDIT = ["COPY", "sha256sum", "wc -l", "printf"]


def _write_context(ctx: str) -> None:
    """The Dockerfile and a source tree of CONTEXT_FILES files, 50 a directory."""
    os.makedirs(ctx)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(DOCKERFILE)
    for i in range(CONTEXT_FILES):
        d = os.path.join(ctx, "src", f"pkg{i // 50:03d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"mod{i}.py"), "w") as f:
            f.write(f"# module {i}\n" + "".join(f"def f{j}(): return {i * j}\n" for j in range(5 + i % 40)))


def _edit(ctx: str) -> None:
    """The one-file change of scenario (c)."""
    with open(os.path.join(ctx, EDITED), "a") as f:
        f.write("# edited\n")


EDITED = "src/pkg000/mod0.py"


class Builder:
    """Builds with a shared base-layer cache that holds only the base before each build (a hit's layers must
    come from the layer cache, as on a fresh CI machine); each build returns (seconds, digest, report)."""

    def __init__(self, workdir: str, reg: RegistryProcess, base: str) -> None:
        self.dir, self.reg, self.base = workdir, reg, base
        self.cache_dir = os.path.join(workdir, "cache-dir")
        self.base_blobs: set[str] | None = None
        self.n = 0

    def _blobs(self) -> set[str]:
        root = os.path.join(self.cache_dir, "blobs", "blobs", "sha256")
        return {os.path.join(root, name) for name in os.listdir(root)} if os.path.isdir(root) else set()

    def run(self, ctx: str, repo: str | None = None) -> tuple[float, str, dict]:
        if self.base_blobs is None:  # the first build pulls the base: nothing but it is kept
            self.run_once(ctx, None)
            self.base_blobs = self._blobs()
        for path in self._blobs() - self.base_blobs:
            os.unlink(path)
        return self.run_once(ctx, repo)

    def run_once(self, ctx: str, repo: str | None) -> tuple[float, str, dict]:
        self.n += 1
        out = os.path.join(self.dir, f"out{self.n}")
        report_file = os.path.join(self.dir, f"report{self.n}.json")
        cache = CacheOptions(enabled=True, repo=repo, copy_layers=True, report_file=report_file) if repo \
            else CacheOptions()
        opts = BuildOptions(context=ctx, build_args=(("BASE", self.base),), cache_dir=self.cache_dir,
                            reproducible=True, cache=cache,
                            registry=RegistryOptions(insecure_registries=(self.reg.host,)),
                            outputs=OutputOptions(no_push=True, oci_layout_path=out))
        t = time.perf_counter()
        result = build(opts)
        seconds = time.perf_counter() - t
        shutil.rmtree(out, ignore_errors=True)
        data = {}
        if repo:
            with open(report_file) as f:
                data = json.load(f)
        return seconds, result.digest, data


@dataclass(frozen=True)
class Baseline:
    builder: Builder
    context: str  # the unedited context: each round copies it
    digest: str  # a build without --cache
    edited_digest: str  # a build without --cache of the edited context


@pytest.fixture(scope="module")
def baseline(scratch):
    """A plain-HTTP registry holding Debian (the base, and the registry case's cache), and builds without the
    cache: the digests the cached builds must reproduce."""
    if not shutil.which("docker-registry") or not shutil.which("skopeo"):
        pytest.fail("needs docker-registry and skopeo (scripts/setup.sh installs them)")
    layout = make_debian_layout(scratch)
    reg = RegistryProcess(scratch, name="bench-cache").start()
    try:
        skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:bookworm",
               f"docker://{reg.host}/library/debian:bookworm")
        work = os.path.join(scratch, "cache-bench")
        b = Builder(work, reg, f"{reg.host}/library/debian:bookworm")
        ctx, edited = os.path.join(work, "ctx"), os.path.join(work, "ctx-edited")
        _write_context(ctx)
        _, digest, _ = b.run(ctx)  # after a warm-up build: the base is local, the page cache warm
        shutil.copytree(ctx, edited, symlinks=True)
        _edit(edited)
        _, edited_digest, _ = b.run(edited)
        yield Baseline(b, ctx, digest, edited_digest)
    finally:
        reg.stop()


def _name(instruction: str) -> str:
    return next((w for w in CACHED if w in instruction), instruction)


def _results(rep: dict) -> dict[str, str]:
    """Cached step -> hit | miss, from a --cache-report."""
    return {_name(row["instruction"]): row["result"] for row in rep["steps"] if row["result"] != "uncached"}


def _rows(rep: dict) -> str:
    """The report, readable in an assertion message."""
    return "\n".join(f"{r['step']} {r['instruction'][:50]}: {r['result']} ({r['reason']})" for r in rep["steps"])


def _lookups(rep: dict) -> list[float]:
    return [row["lookup_seconds"] for row in rep["steps"] if row["result"] != "uncached"]


@dataclass(frozen=True)
class Round:
    plain: tuple[float, str, dict]  # (seconds, digest, report): without --cache, just before the cold build
    cold: tuple[float, str, dict]
    cached: tuple[float, str, dict]
    edited: tuple[float, str, dict]


def _check(r: Round, baseline: Baseline) -> None:
    """Correctness only: what hit and missed, and that the cache never changed the image."""
    (_, cold_digest, cold), (_, cached_digest, cached), (_, edited_digest, edited) = r.cold, r.cached, r.edited
    assert r.plain[1] == baseline.digest, "two --reproducible builds without cache differ"
    assert cold["enabled"], cold["off_reason"]
    assert _results(cold) == {s: "miss" for s in CACHED}, _rows(cold)
    assert cold_digest == baseline.digest, "the cache changed a --reproducible image"
    assert _results(cached) == {s: "hit" for s in CACHED}, _rows(cached)
    assert cached_digest == cold_digest, "a fully cached rebuild made another image"
    results = _results(edited)
    assert [s for s, x in results.items() if x == "miss"] == RERUN_AFTER_EDIT, _rows(edited)
    assert all(x == "hit" for s, x in results.items() if s not in RERUN_AFTER_EDIT), _rows(edited)
    copy_reason = next(row["reason"] for row in edited["steps"] if row["instruction"].startswith("COPY"))
    assert f"{EDITED} changed (size, content)" in copy_reason, copy_reason
    assert edited_digest == baseline.edited_digest, "the partly cached rebuild made another image than no cache"


@pytest.mark.parametrize("kind", ["registry", "oci"])
def test_cache_cold_cached_edited(benchmark, baseline, kind):
    b = baseline.builder
    rounds: list[Round] = []

    def one_round() -> None:
        """A new cache and a new copy of the context: no cache, (a) cold, (b) cached, (c) one file changed."""
        n = len(rounds)
        ctx = os.path.join(b.dir, f"ctx-{kind}{n}")
        shutil.copytree(baseline.context, ctx, symlinks=True)
        repo = f"{b.reg.host}/cache-bench/{kind}{n}" if kind == "registry" else \
            "oci:" + os.path.join(b.dir, f"oci-cache{n}")
        plain = b.run(ctx)
        cold = b.run(ctx, repo)
        cached = b.run(ctx, repo)
        _edit(ctx)
        rounds.append(Round(plain, cold, cached, b.run(ctx, repo)))
        _check(rounds[-1], baseline)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)

    def median(what: str) -> float:
        return statistics.median(getattr(r, what)[0] for r in rounds)

    plain, cold, cached, edited = median("plain"), median("cold"), median("cached"), median("edited")
    by_step: dict[str, list[float]] = {}
    for r in rounds:
        for row in r.cached[2]["steps"]:
            if row["result"] != "uncached":
                by_step.setdefault(_name(row["instruction"]), []).append(1000 * row["lookup_seconds"])
    step_ms = {name: statistics.median(ms) for name, ms in by_step.items()}
    cold_ms = [1000 * x for r in rounds for x in _lookups(r.cold[2])]
    edited_rows = rounds[0].edited[2]["steps"]
    report(benchmark, f"cache {kind} (debian, {CONTEXT_FILES} context files, slow RUN {SLOW_SECONDS}s, "
                      f"median of {ROUNDS})",
           cold_seconds=cold, cached_seconds=cached, edited_seconds=edited, no_cache_seconds=plain,
           cached_vs_cold=cached / cold, edited_vs_cold=edited / cold, cold_vs_no_cache=cold / plain,
           lookup_ms_per_step_median=statistics.median(step_ms.values()),
           lookup_ms_per_step_max=max(step_ms.values()),
           lookup_ms_per_step_cold_median=statistics.median(cold_ms),
           lookup_ms_by_step_cached="; ".join(f"{name}:{ms:.1f}" for name, ms in step_ms.items()),
           rerun_after_edit="|".join(_name(row["instruction"]) for row in edited_rows if row["result"] == "miss"),
           same_digest_cached=all(r.cached[1] == r.cold[1] for r in rounds))
