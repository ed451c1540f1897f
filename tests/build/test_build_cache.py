"""The layer cache end to end: real builds against a real registry and an ``oci:`` cache; hits give the same image,
every miss says why, faults in the cache never fail a build, secrets never reach an entry."""
from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from registry_servers import Fault, FaultProxy, free_port

from snapfs.builder.pipeline import BuildOptions, build
from snapfs.cache.session import CacheOptions
from snapfs.errors import UsageError
from snapfs.image.layout import index_json, read_layout
from snapfs.image.reference import parse_reference
from snapfs.image.registry.client import RegistryOptions
from snapfs.image.transports import OutputOptions

DOCKERFILE = """\
FROM busybox
ARG VERSION=1
COPY src/ /app/
RUN echo "v$VERSION" > /version && cat /proc/sys/kernel/random/uuid > /ran-at
RUN echo fixed > /fixed && cat /proc/sys/kernel/random/uuid > /fixed-at
ENV MODE=prod
RUN ls /app > /listing
"""


class Builds:
    """Builds of one context with the cache on, each with its own outputs, report and log."""

    def __init__(self, tmp_path, registry, caplog, repo: str, *, hosts=()) -> None:
        self.tmp, self.registry, self.caplog, self.repo = tmp_path, registry, caplog, repo
        self.ctx = tmp_path / "ctx"
        (self.ctx / "src").mkdir(parents=True)
        self.hosts = (registry.host, *hosts)
        self.n = 0

    def write(self, files: dict[str, str | None], dockerfile: str = DOCKERFILE) -> None:
        (self.ctx / "Dockerfile").write_text(dockerfile)
        for name, data in files.items():
            p = self.ctx / name
            if data is None:
                p.unlink()
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(data)

    def build(self, *, build_args=(), copy_layers=True, enabled=True, **cache_kw):
        self.n += 1
        layout = str(self.tmp / f"out-{self.n}")
        report = str(self.tmp / f"report-{self.n}.json")
        reg = RegistryOptions(registry_maps=(("docker.io", self.registry.host),), insecure_registries=self.hosts,
                              skip_default_registry_fallback=True)
        cache = CacheOptions(enabled=enabled, repo=self.repo, copy_layers=copy_layers, report_file=report, **cache_kw)
        opts = BuildOptions(context=str(self.ctx), outputs=OutputOptions(no_push=True, oci_layout_path=layout),
                            registry=reg, cache_dir=str(self.tmp / "base-cache"), reproducible=True,
                            build_args=tuple(build_args), cache=cache)
        self.caplog.clear()
        root = logging.getLogger("snapfs")
        propagate, root.propagate = root.propagate, True  # a CLI test in this process may have turned it off
        try:
            with self.caplog.at_level(logging.INFO, logger="snapfs"):
                result = build(opts)
        finally:
            root.propagate = propagate
        rep = {"steps": []}
        if enabled:
            with open(report) as f:
                rep = json.load(f)
        return result, rep, self.caplog.text, layout

    @staticmethod
    def outcomes(rep) -> dict[int, tuple[str, str]]:
        return {r["step"]: (r["result"], r["reason"]) for r in rep["steps"]}


@pytest.fixture(params=["registry", "oci"])
def builds(request, tmp_path, registry, caplog):
    import uuid

    # A repository of its own per test: entries of other tests must not explain this test's misses.
    repo = f"{registry.host}/cache/{uuid.uuid4().hex}" if request.param == "registry" else f"oci:{tmp_path / 'cache'}"
    b = Builds(tmp_path, registry, caplog, repo)
    b.write({"src/a.py": "print('a')\n", "src/b.py": "print('b')\n", "src/old.py": "old\n"})
    return b


def _files(layout: str) -> dict[str, bytes]:
    """Every file of the image's flattened root (layers applied in order, whiteouts honoured)."""
    from snapfs import apply_layers

    root = layout + "-root"
    os.makedirs(root)
    image = read_layout(layout)
    apply_layers([layer.path for layer in image.layers], root)
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    out[os.path.relpath(p, root)] = f.read()
    return out


def test_a_rebuild_hits_every_step_and_gives_the_same_image(builds):
    cold, rep1, log1, out1 = builds.build()
    assert {r for r, _ in builds.outcomes(rep1).values()} == {"miss"}
    assert "cache miss: no entry for this step yet" in log1
    warm, rep2, log2, out2 = builds.build()
    assert builds.outcomes(rep2) == {3: ("hit", ""), 4: ("hit", ""), 5: ("hit", ""), 7: ("hit", "")}
    assert warm.digest == cold.digest  # --reproducible: the same manifest, config and history
    assert _files(out2) == _files(out1)  # the RUNs did not run again: their timestamps are the stored ones
    assert all(r["key"].startswith("sha256:") and r["lookup_seconds"] >= 0 for r in rep2["steps"])


def test_a_changed_file_is_named_and_only_what_depends_on_it_runs(builds):
    builds.build()
    builds.write({"src/a.py": "print('A')\n", "src/old.py": None, "src/new.py": "new\n"})
    _, rep, log, out = builds.build()
    got = builds.outcomes(rep)
    assert got[3] == ("miss", "src/a.py changed (content), src/new.py added, src/old.py removed")
    assert "step 3/" in log and "COPY src/ /app/: cache miss: src/a.py changed (content)" in log
    # The RUNs start from another filesystem now: they run again and say so.
    assert got[4][0] == got[5][0] == got[7][0] == "miss"
    assert got[4][1] == got[5][1] == "step 3 (COPY src/ /app/) made a different result"
    assert _files(out)["listing"] == b"a.py\nb.py\nnew.py\n"


def test_a_mode_change_is_named(builds):
    builds.build()
    os.chmod(builds.ctx / "src" / "b.py", 0o600)
    _, rep, _, _ = builds.build()
    assert builds.outcomes(rep)[3] == ("miss", "src/b.py changed (mode)")


def test_a_changed_build_arg_is_named_and_a_byte_identical_result_lets_later_steps_hit(builds):
    """No first-miss cliff: step 4 runs again (VERSION changed) but step 5's key chains on step 4's *result*."""
    builds.write({}, DOCKERFILE.replace('echo "v$VERSION" > /version && cat /proc/sys/kernel/random/uuid > /ran-at', 'echo same > /same'))
    builds.build(build_args=(("VERSION", "1"),))
    _, rep, log, _ = builds.build(build_args=(("VERSION", "2"),))
    got = builds.outcomes(rep)
    assert got[4] == ("miss", "build arg VERSION changed")
    assert "cache miss: build arg VERSION changed" in log
    # Step 4 made a byte-identical layer, but steps 5 and 7 also see VERSION in their environment (Docker's
    # rule: every ARG in scope is part of a RUN's key), so they say so too...
    assert got[5] == got[7] == ("miss", "build arg VERSION changed")
    # ...while the COPY before it, which does not see ARGs, hits.
    assert got[3] == ("hit", "")


def test_a_rerun_with_the_same_result_lets_the_next_steps_hit(builds):
    """A step whose own input changed but whose layer comes out byte-identical: the next steps hit."""
    df = "FROM busybox\nARG N=1\nRUN echo $N > /dev/null; echo constant > /c\nRUN echo after > /after\n"
    df2 = "FROM busybox\nARG N=1\nRUN echo $N >/dev/null; echo constant > /c\nRUN echo after > /after\n"
    builds.write({}, df)
    builds.build()
    builds.write({}, df2)  # the first RUN's text changed (a trailing space), its result did not
    _, rep, _, _ = builds.build()
    got = builds.outcomes(rep)
    assert got[3] == ("miss", "the instruction changed")
    assert got[4] == ("hit", "")


def test_copy_layers_are_not_cached_unless_asked(builds):
    builds.build(copy_layers=False)
    _, rep, _, _ = builds.build(copy_layers=False)
    got = builds.outcomes(rep)
    assert got[3] == ("uncached", "COPY/ADD are cached with --cache-copy-layers")
    assert got[4] == got[5] == got[7] == ("hit", "")  # the re-made COPY layer is identical: the RUNs still hit


def test_no_push_cache_reads_but_never_writes(builds):
    builds.build(push=False)
    _, rep, _, _ = builds.build()
    assert {r for r, _ in builds.outcomes(rep).values()} == {"miss"}


def test_an_expired_entry_is_a_miss(builds):
    builds.build()
    time.sleep(0.05)
    _, rep, _, _ = builds.build(ttl=0.01)
    got = builds.outcomes(rep)
    assert got[3][1].startswith("the entry expired") and got[4][1].startswith("the entry expired")
    assert {r for r, _ in got.values()} == {"miss"}


def test_no_repository_and_no_destination_is_a_usage_error(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    with pytest.raises(UsageError, match="--cache needs --cache-repo"):
        build(BuildOptions(context=str(tmp_path), outputs=OutputOptions(no_push=True),
                           cache=CacheOptions(enabled=True)))


# --- faults ------------------------------------------------------------------------------------------------

@pytest.fixture
def oci_builds(tmp_path, registry, caplog):
    b = Builds(tmp_path, registry, caplog, f"oci:{tmp_path / 'cache'}")
    b.write({"src/a.py": "a\n"})
    return b


def _layer_blobs(layout: str) -> list[str]:
    out = []
    for m in index_json(layout)["manifests"]:
        manifest = json.load(open(os.path.join(layout, "blobs", "sha256", m["digest"].split(":")[1])))
        out += [os.path.join(layout, "blobs", "sha256", d["digest"].split(":")[1]) for d in manifest["layers"]]
    return sorted(set(out))


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "remove"])
def test_a_damaged_cached_layer_is_a_warning_and_the_step_runs(oci_builds, damage):
    first, _, _, out1 = oci_builds.build()
    for blob in _layer_blobs(str(oci_builds.tmp / "cache")):
        if damage == "remove":
            os.unlink(blob)
        else:
            with open(blob, "rb") as f:
                data = f.read()
            # A new file in the cache's place (its blobs may be hard links shared with earlier outputs).
            data = data[:len(data) // 2] if damage == "truncate" else data[:20] + b"\xff" * 8 + data[28:]
            os.unlink(blob)
            with open(blob, "wb") as f:
                f.write(data)
    second, rep, log, out2 = oci_builds.build()
    assert {r for r, _ in oci_builds.outcomes(rep).values()} == {"miss"}
    got = oci_builds.outcomes(rep)
    assert "unusable entry" in got[3][1] and "unusable entry" in got[4][1]
    assert "the step runs" in log and "Traceback" not in log
    assert _files(out2)["ran-at"] != _files(out1)["ran-at"]  # the steps really ran again


def test_a_cache_registry_that_is_down_turns_the_cache_off_and_the_build_goes_on(tmp_path, registry, caplog):
    dead = f"127.0.0.1:{free_port()}"
    b = Builds(tmp_path, registry, caplog, f"{dead}/cache", hosts=(dead,))
    b.write({"src/a.py": "a\n"})
    t = time.monotonic()
    result, rep, log, _ = b.build()
    assert result.digest.startswith("sha256:")
    assert log.count("building without the cache") == 1
    assert all(r == "miss" and why.startswith("cache off:") for r, why in b.outcomes(rep).values())
    assert rep["enabled"] is False and "unreachable" in rep["off_reason"]
    assert time.monotonic() - t < 60


@pytest.fixture
def proxied(tmp_path, registry, caplog):
    """The fault proxy in front of the registry, and builds whose cache repository (its own) is behind it."""
    import uuid

    proxy = FaultProxy(registry.port).start()
    try:
        host = f"127.0.0.1:{proxy.port}"
        repo = f"cache/{uuid.uuid4().hex}"
        b = Builds(tmp_path, registry, caplog, f"{host}/{repo}", hosts=(host,))
        b.write({"src/a.py": "a\n"})
        yield proxy, b, repo
    finally:
        proxy.stop()


def test_a_cache_registry_answering_5xx_is_turned_off_and_failed_stores_only_warn(proxied):
    proxy, b, repo = proxied
    proxy.add(Fault("PUT", rf"/v2/{repo}/manifests/", "status", times=100, status=500))
    first, rep, log, _ = b.build()  # every store fails: warnings, a good image
    assert "storing snapfs-k-" in log and "the build goes on" in log
    proxy.reset()
    proxy.add(Fault("GET", rf"/v2/{repo}/manifests/", "status", times=100, status=503),
              Fault("HEAD", rf"/v2/{repo}/manifests/", "status", times=100, status=503))
    second, rep, log, _ = b.build()
    assert second.digest.startswith("sha256:")
    assert log.count("building without the cache") == 1
    assert rep["enabled"] is False


def test_two_builds_storing_the_same_keys_at_once(tmp_path, registry):
    """Two real snapfs processes fill one oci: cache concurrently; the layout stays valid, a third build hits."""
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "src" / "a").write_text("a\n")
    # Deterministic steps: both builds compute the same four keys and store them at the same time.
    (ctx / "Dockerfile").write_text(DOCKERFILE.replace("cat /proc/sys/kernel/random/uuid", "echo same"))
    cache = tmp_path / "cache"

    def start(n: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "snapfs", "build", "-c", str(ctx), "--no-push", f"--oci-layout-path={tmp_path}/o{n}",
             "--cache", f"--cache-repo=oci:{cache}", "--cache-copy-layers", "--reproducible",
             f"--cache-report={tmp_path}/r{n}.json", f"--cache-dir={tmp_path}/bases{n}",
             f"--registry-map=docker.io={registry.host}", f"--insecure-registry={registry.host}",
             "--skip-default-registry-fallback"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    procs = [start(1), start(2)]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    tags = {(m.get("annotations") or {}).get("org.opencontainers.image.ref.name")
            for m in index_json(str(cache))["manifests"]}
    assert len([t for t in tags if t.startswith("snapfs-k-")]) == 4
    third = start(3)
    out = third.communicate(timeout=300)[0].decode()
    assert third.returncode == 0, out
    rep = json.load(open(tmp_path / "r3.json"))
    assert rep["hits"] == 4 and rep["misses"] == 0


def test_secrets_and_build_arg_values_never_reach_an_entry(tmp_path, registry, caplog):
    secret = tmp_path / "token"
    secret.write_text("s3cret-token-value")
    cache = tmp_path / "cache"
    b = Builds(tmp_path, registry, caplog, f"oci:{cache}")
    b.write({"src/a": "a\n"}, "FROM busybox\nARG TOKEN\n"
            "RUN --mount=type=secret,id=tok cat /run/secrets/tok | wc -c > /len\n")
    b.n += 1
    layout = str(tmp_path / "out")
    reg = RegistryOptions(registry_maps=(("docker.io", registry.host),), insecure_registries=(registry.host,),
                          skip_default_registry_fallback=True)
    build(BuildOptions(context=str(b.ctx), outputs=OutputOptions(no_push=True, oci_layout_path=layout),
                       registry=reg, cache_dir=str(tmp_path / "bases"), secrets=(("tok", str(secret)),),
                       build_args=(("TOKEN", "argvalue-hunter2"),),
                       cache=CacheOptions(enabled=True, repo=f"oci:{cache}")))
    blobs = os.path.join(cache, "blobs", "sha256")
    assert len(os.listdir(blobs)) >= 3
    for name in os.listdir(blobs):
        data = open(os.path.join(blobs, name), "rb").read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        assert b"s3cret-token-value" not in data
        if b"snapfs.cache" in data:  # the entry's config: the build arg's value only as a hash
            inputs = json.loads(data)["snapfs.cache"]["inputs"]
            assert "argvalue-hunter2" not in json.dumps(inputs) and set(inputs["args"]) == {"TOKEN"}


def test_a_hit_in_a_multi_stage_build_and_copy_from_a_stage(builds):
    df = ("FROM busybox AS deps\nCOPY src/ /src/\nRUN cat /src/*.py > /all\n"
          "FROM busybox\nCOPY --from=deps /all /all\nRUN wc -c /all > /size\n")
    builds.write({}, df)
    cold, _, _, out1 = builds.build()
    warm, rep, _, out2 = builds.build()
    assert {r for r, _ in builds.outcomes(rep).values()} == {"hit"}
    assert warm.digest == cold.digest and _files(out1) == _files(out2)
    builds.write({"src/b.py": "print('B')\n"}, df)
    _, rep, _, out3 = builds.build()
    got = builds.outcomes(rep)
    assert got[2] == ("miss", "src/b.py changed (content)")
    assert got[5] == ("miss", "all changed (content)")  # COPY --from names the stage's file
    assert got[6] == ("miss", "step 5 (COPY --from=deps /all /all) made a different result")
    assert _files(out3)["all"] == b"print('a')\nprint('B')\nold\n"


def test_the_cli_flags_reach_the_cache(tmp_path):
    from snapfs.cli.build import normalize_booleans, options_from_args
    from snapfs.cli.main import make_parser

    args = make_parser().parse_args(normalize_booleans(["build", "--cache=true", "--cache-repo=oci:/x", "--cache-ttl=1h30m",
                                     "--cache-copy-layers", "--cache-run-layers=false", "--no-push-cache",
                                     "--cache-report=/r.json", "-d", "r.example/app:1"]))
    c = options_from_args(args).cache
    assert c == CacheOptions(enabled=True, repo="oci:/x", ttl=5400.0, copy_layers=True, run_layers=False,
                             push=False, report_file="/r.json")
    with pytest.raises(UsageError, match="--cache-ttl"):
        options_from_args(make_parser().parse_args(["build", "--cache-ttl=two weeks"]))


def test_the_default_cache_repository_is_the_destinations_repository_slash_cache(tmp_path, registry, caplog):
    import httpx

    b = Builds(tmp_path, registry, caplog, "")
    b.write({"src/a": "a\n"})
    reg = RegistryOptions(registry_maps=(("docker.io", registry.host),), insecure_registries=(registry.host,),
                          skip_default_registry_fallback=True)
    dest = parse_reference(f"{registry.host}/team/app:1")
    opts = BuildOptions(context=str(b.ctx), outputs=OutputOptions(destinations=(dest,)), registry=reg,
                        cache_dir=str(tmp_path / "bases"), cache=replace(CacheOptions(), enabled=True))
    build(opts)
    tags = httpx.get(f"http://{registry.host}/v2/team/app/cache/tags/list").json()["tags"]
    assert len([t for t in tags if t.startswith("snapfs-k-")]) == 3  # the three RUNs


def test_a_cached_rebuild_looks_every_step_up_in_one_round(proxied):
    """All lookups of a stage are sent when it starts (by local key); a hit needs no further lookup."""
    proxy, b, _ = proxied
    b.build()
    proxy.reset()
    _, rep, _, _ = b.build()
    assert rep["hits"] == 4
    lookups = proxy.count("GET", r"/manifests/snapfs-l-") + proxy.count("HEAD", r"/manifests/snapfs-l-")
    assert lookups >= 4
    assert proxy.count("GET", r"/manifests/snapfs-[ks]-") == proxy.count("HEAD", r"/manifests/snapfs-[ks]-") == 0
    assert proxy.count("PUT", r"/manifests/") == 0  # hits store nothing


def test_add_of_a_url_is_cached_with_its_checksum_only(oci_builds, tmp_path):
    import functools
    import hashlib
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    served = tmp_path / "served"
    served.mkdir()
    (served / "tool.txt").write_text("tool v1\n")
    digest = "sha256:" + hashlib.sha256(b"tool v1\n").hexdigest()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/tool.txt"
        oci_builds.write({}, f"FROM busybox\nADD --checksum={digest} {url} /tool\nADD {url} /again\n")
        oci_builds.build()
        _, rep, _, out = oci_builds.build()
        got = oci_builds.outcomes(rep)
        assert got[2] == ("hit", "")
        assert got[3] == ("uncached", f"ADD {url}: a URL is cached only with --checksum")
        assert _files(out)["tool"] == b"tool v1\n"
    finally:
        server.shutdown()
        server.server_close()


def test_a_bind_mounted_file_is_part_of_the_run_key(oci_builds):
    oci_builds.write({"src/a.py": "one\n"}, "FROM busybox\nRUN --mount=type=bind,source=src,target=/s cat /s/a.py > /out\n")
    oci_builds.build(copy_layers=False)
    _, rep, _, _ = oci_builds.build(copy_layers=False)
    assert oci_builds.outcomes(rep)[2] == ("hit", "")
    oci_builds.write({"src/a.py": "two\n"}, "FROM busybox\nRUN --mount=type=bind,source=src,target=/s cat /s/a.py > /out\n")
    _, rep, _, out = oci_builds.build(copy_layers=False)
    assert oci_builds.outcomes(rep)[2] == ("miss", "src/a.py changed (content) (mount:/s)")
    assert _files(out)["out"] == b"two\n"


def test_after_hits_a_step_that_runs_makes_the_layer_an_uncached_build_makes(oci_builds):
    """The snapshot a hit leaves (read again from the paths its layer names: files, whiteouts, opaque
    directories) is the one the step would have left: the next step's layer, and so the image, are the same."""
    oci_builds.write({}, "FROM busybox\n"
                         "RUN mkdir -p /d/sub /o && echo 1 > /d/sub/f && echo x > /gone && echo k > /o/k && ln -s /d /l\n"
                         "RUN rm -rf /d/sub /gone /o && mkdir /o && echo n > /o/n && echo f > /d/sub2 && chmod 700 /d\n"
                         "ARG V=1\n"
                         "RUN echo $V > /v && ls -R /d /o > /listing && touch /d && rm /l\n")
    oci_builds.build(build_args=(("V", "1"),))
    _, rep, _, out = oci_builds.build(build_args=(("V", "2"),))
    got = oci_builds.outcomes(rep)
    assert got[2] == got[3] == ("hit", "") and got[5][0] == "miss"
    plain, _, _, plain_out = oci_builds.build(build_args=(("V", "2"),), enabled=False)
    assert read_layout(out).digest == read_layout(plain_out).digest
