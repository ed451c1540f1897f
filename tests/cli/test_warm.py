"""``snapfs warm`` (Kaniko's warmer) and builds on the cache it fills: with the registry gone, and mounted read-only.

Real processes against a real registry (docker-registry on a free loopback port), stopped before the builds
that must not need it; the read-only cache is a read-only bind mount of the warmed directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "image"))
from basekit import make_busybox_layout  # noqa: E402
from imagekit import files_layer, image_of  # noqa: E402
from registry_servers import RegistryProcess, need, skopeo  # noqa: E402

from snapfs.cli.main import main  # noqa: E402
from snapfs.image.layout import read_layout, write_layout  # noqa: E402
from snapfs.platforms import Platform  # noqa: E402


def snapfs(*args: str, tmp, umask: int = -1) -> subprocess.CompletedProcess:
    """A real ``snapfs`` process with its own temp dir (where builds keep their scratch)."""
    return subprocess.run([sys.executable, "-m", "snapfs", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(tmp)}, umask=umask)


def build(tmp_path, dockerfile: str, cache: str, *flags: str) -> tuple[subprocess.CompletedProcess, str]:
    n = len([p for p in os.listdir(tmp_path) if p.startswith("ctx")])
    ctx, out, tmp = tmp_path / f"ctx{n}", tmp_path / f"out{n}", tmp_path / f"tmp{n}"
    ctx.mkdir()
    tmp.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    r = snapfs("build", "-c", str(ctx), "--no-push", f"--oci-layout-path={out}", f"--cache-dir={cache}", *flags,
               tmp=tmp)
    assert os.listdir(tmp) == [], "the build left scratch behind"
    return r, str(out)


def tree(path) -> dict[str, str]:
    """Every entry below ``path`` with its mode and, for files, a content hash: to see that nothing changed."""
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = ""
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(p, path)] = f"{oct(st.st_mode)} {digest}"
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """busybox as an OCI layout, and a one-file image ``extra`` (``/extra.txt``)."""
    need("busybox", "docker-registry", "skopeo")
    work = str(tmp_path_factory.mktemp("warm-images"))
    busybox = make_busybox_layout(work)
    extra = os.path.join(work, "extra-oci")
    write_layout(extra, image_of([files_layer(os.path.join(work, "extra-blobs"), {"extra.txt": b"extra\n"})]),
                 ref_name="extra")
    return busybox, extra


def push(reg: RegistryProcess, layout: str, name: str, ref: str) -> str:
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:{name}", f"docker://{reg.host}/{ref}")
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{reg.host}/{ref}").stdout)
    return info["Digest"]


@pytest.fixture(scope="module")
def warmed(tmp_path_factory, images):
    """A cache directory warmed (umask 0, from an --images-file) with ``<host>/warm/busybox:1``, then the
    registry stopped for good: returns (cache dir, host, busybox digest, warm's stderr)."""
    busybox, _ = images
    work = tmp_path_factory.mktemp("warmed")
    reg = RegistryProcess(str(work)).start()
    try:
        digest = push(reg, busybox, "busybox", "warm/busybox:1")
        listing = work / "images.txt"
        listing.write_text(f"# bases of our builds\n\n{reg.host}/warm/busybox:1\n")
        cache = work / "shared" / "cache"
        (work / "tmp").mkdir()
        r = snapfs("warm", "--images-file", str(listing), "--cache-dir", str(cache),
                   f"--insecure-registry={reg.host}", tmp=work / "tmp", umask=0)
    finally:
        reg.stop()
    assert r.returncode == 0, r.stderr
    return str(cache), reg.host, digest, r.stderr


def test_warm_fills_the_builds_cache(warmed, images):
    cache, host, digest, log = warmed
    assert f"pulled {host}/warm/busybox:1 ({digest}, 1 layers)" in log
    # Where snapfs build looks: the blob store under blobs/ and one unpacked root under roots/, all 0700.
    image = read_layout(images[0], ref_name="busybox")
    layer = image.layers[0]
    assert os.path.isfile(os.path.join(cache, "blobs", "blobs", "sha256", layer.digest.split(":")[1]))
    roots = os.listdir(os.path.join(cache, "roots"))
    assert len(roots) == 1
    assert os.path.isfile(os.path.join(cache, "roots", roots[0], "bin", "busybox"))
    for d in (os.path.dirname(cache), cache, f"{cache}/roots", f"{cache}/blobs", f"{cache}/blobs/blobs/sha256"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    with open(os.path.join(cache, "refs.json")) as f:
        assert json.load(f)["refs"] == {f"{host}/warm/busybox:1": {str(Platform.host()): digest}}


def test_a_build_from_a_warmed_base_needs_no_registry(warmed, tmp_path):
    cache, host, digest, _ = warmed
    roots = sorted(os.listdir(os.path.join(cache, "roots")))
    r, out = build(tmp_path, f"FROM {host}/warm/busybox@{digest}\nRUN echo hi > /hi\n", cache,
                   f"--insecure-registry={host}")
    assert r.returncode == 0, r.stderr
    assert f"{host}/warm/busybox@{digest}: cached ({digest}, 1 layers), nothing to download" in r.stderr
    assert "pulled" not in r.stderr and "downloading" not in r.stderr
    assert len(read_layout(out).layers) == 2
    assert sorted(os.listdir(os.path.join(cache, "roots"))) == roots  # the warmed root, not a new unpack


def test_a_warmed_tag_is_used_when_its_registry_is_unreachable(warmed, images, tmp_path):
    cache, host, digest, _ = warmed
    r, out = build(tmp_path, f"FROM {host}/warm/busybox:1\nRUN echo hi > /hi\n", cache, f"--insecure-registry={host}")
    assert r.returncode == 0, r.stderr
    warning = [line for line in r.stderr.splitlines() if "not re-checked" in line]
    assert len(warning) == 1 and warning[0].startswith(f"{host}/warm/busybox:1: registry unreachable (cannot reach "
                                                       f"registry {host}: ")
    assert warning[0].endswith(f"; using {digest} as snapfs warm recorded it: the tag was not re-checked")
    assert read_layout(out).layers[0].digest == read_layout(images[0], ref_name="busybox").layers[0].digest
    # A tag the warmer never saw is the usual error.
    r, _ = build(tmp_path, f"FROM {host}/warm/busybox:2\n", cache, f"--insecure-registry={host}")
    assert r.returncode == 6
    assert r.stderr.splitlines()[-1].startswith(f"snapfs: cannot reach registry {host}: ")
    assert "Traceback" not in r.stderr


def test_warm_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["warm", "-i", "Bad//Ref", "--cache-dir", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err == ("snapfs: invalid image reference 'Bad//Ref': repository must be lowercase "
                                       "letters, digits and separators\n")
    assert main(["warm", "--cache-dir", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err == "snapfs: warm: give at least one --image (or --images-file)\n"
    assert main(["warm", "-i", "busybox", "--dockerfile", "Dockerfile"]) == 2
    assert capsys.readouterr().err == ("snapfs: warm: --dockerfile is not supported yet: list the base images "
                                       "with --image or --images-file\n")
    closed = "127.0.0.1:1"
    r = snapfs("warm", "-i", f"{closed}/x:y", "--cache-dir", str(tmp_path / "c"), f"--insecure-registry={closed}",
               tmp=tmp_path)
    assert r.returncode == 6
    assert r.stderr.splitlines()[-1].startswith(f"snapfs: cannot reach registry {closed}: ")
    assert "Traceback" not in r.stderr and not os.path.exists(tmp_path / "c" / "refs.json")


def test_force_downloads_and_unpacks_again(images, tmp_path):
    busybox, _ = images
    reg = RegistryProcess(str(tmp_path)).start()
    try:
        push(reg, busybox, "busybox", "warm/busybox:1")
        cache = tmp_path / "cache"
        args = ("warm", "-i", f"{reg.host}/warm/busybox:1", f"--cache-dir={cache}", f"--insecure-registry={reg.host}")
        assert snapfs(*args, tmp=tmp_path).returncode == 0
        layer = read_layout(busybox, ref_name="busybox").layers[0]
        blob = cache / "blobs" / "blobs" / "sha256" / layer.digest.split(":")[1]
        good = blob.read_bytes()
        blob.write_bytes(b"\0" * len(good))  # damaged in place: same size, so it still looks cached
        (root,) = (cache / "roots").iterdir()
        (root / "bin" / "busybox").unlink()
        r = snapfs(*args, "--force=true", tmp=tmp_path)
        assert r.returncode == 0, r.stderr
        assert f"pulled {reg.host}/warm/busybox:1" in r.stderr
        assert blob.read_bytes() == good
        assert (root / "bin" / "busybox").is_file()
        assert [p.name for p in (cache / "roots").iterdir()] == [root.name]
    finally:
        reg.stop()


# -- a pre-warmed cache shared read-only ---------------------------------------------------------------------


@pytest.fixture
def read_only(warmed, tmp_path):
    """The warmed cache as a read-only bind mount, unmounted afterwards."""
    cache = warmed[0]
    view = tmp_path / "ro-cache"
    view.mkdir()
    subprocess.run(["mount", "--bind", cache, str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        yield str(view)
    finally:
        subprocess.run(["umount", str(view)], check=True)


@pytest.fixture(scope="module")
def live_registry(tmp_path_factory, images):
    """A registry that stays up, holding ``warm/extra:1`` (never warmed)."""
    reg = RegistryProcess(str(tmp_path_factory.mktemp("live"))).start()
    try:
        push(reg, images[1], "extra", "warm/extra:1")
        yield reg
    finally:
        reg.stop()


def test_a_read_only_cache_gives_its_bases_and_takes_nothing(warmed, read_only, tmp_path):
    _, host, digest, _ = warmed
    before = tree(read_only)
    r, out = build(tmp_path, f"FROM {host}/warm/busybox@{digest}\n"
                             "RUN --mount=type=cache,target=/c echo x > /c/f && cat /c/f > /hi\n", read_only,
                   f"--insecure-registry={host}")
    assert r.returncode == 0, r.stderr
    assert (f"cache directory {read_only} is read-only: base images are read from it, anything new is kept in the "
            "build's scratch directory") in r.stderr.splitlines()
    assert "pulled" not in r.stderr and "downloading" not in r.stderr
    assert len(read_layout(out).layers) == 2
    assert tree(read_only) == before


def test_a_read_only_cache_and_a_base_it_lacks(warmed, read_only, live_registry, tmp_path):
    _, host, digest, _ = warmed
    live = live_registry.host
    before = tree(read_only)
    r, out = build(tmp_path, f"FROM {host}/warm/busybox@{digest}\nCOPY --from={live}/warm/extra:1 /extra.txt /\n"
                   "RUN cat /extra.txt\n", read_only, f"--insecure-registry={host}", f"--insecure-registry={live}")
    assert r.returncode == 0, r.stderr
    assert "is read-only: base images are read from it" in r.stderr
    assert f"pulled {live}/warm/extra:1" in r.stderr  # into the build's scratch: the shared cache is unchanged
    assert f"{host}/warm/busybox@{digest}: cached" in r.stderr
    assert tree(read_only) == before
    assert len(read_layout(out).layers) == 2


def test_every_image_is_tried_and_any_failure_fails_the_warm(live_registry, tmp_path):
    """Kaniko's warmer succeeds when any one image was cached; a build job then fails later, far from the cause."""
    live, closed = live_registry.host, "127.0.0.1:1"
    cache = tmp_path / "cache"
    r = snapfs("warm", "-i", f"{closed}/x:y", "-i", f"{live}/warm/extra:1", f"--cache-dir={cache}",
               f"--insecure-registry={closed}", f"--insecure-registry={live}", tmp=tmp_path)
    assert r.returncode == 6
    assert r.stderr.splitlines()[-1].startswith(f"snapfs: 1 of 2 images not warmed; the first: cannot reach "
                                                f"registry {closed}: ")
    assert f"pulled {live}/warm/extra:1" in r.stderr and len(os.listdir(cache / "roots")) == 1
    with open(cache / "refs.json") as f:
        assert list(json.load(f)["refs"]) == [f"{live}/warm/extra:1"]
