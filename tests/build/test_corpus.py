"""The Dockerfile corpus: one test per ``tests/build/cases/<name>/`` directory, checked against what
``docker build`` (BuildKit) gives for the same Dockerfile and context.

A case directory holds:

- ``Dockerfile``: built with ``run_build`` (``FROM busybox`` maps to the local registry's busybox image:
  users root, nobody, app(1000:1000, home /home/app); groups root, nogroup, app(1000), staff(50, members app);
  config ``Cmd ["sh"]``, ``Env ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]``, one layer, linux/amd64);
- ``context/`` (optional): the build context, copied as is (symlinks kept). Modes are normalised so that git
  checkouts do not matter: files 0644, directories 0755, unless ``[context.modes]`` says otherwise;
- ``expect.toml``: what the image must be. Every table is optional; each key present is checked exactly.

Schema of ``expect.toml`` (modes are octal strings, paths are absolute in the image). TOML puts a key written
after a ``[table]`` header into that table, so the top-level keys (``description``, ``slow``, ``absent``,
``config_absent``, ``env_absent``) come first; ``_validate`` rejects misplaced or unknown keys::

    description = "what the case proves"
    slow = false                       # true: marked @pytest.mark.slow

    [context]                          # extras git cannot carry, made before the build
    modes = { "bin/tool" = "0755" }    # chmod of context paths (after the 0644/0755 normalisation)
    symlinks = { "tree/link" = "f" }   # context path = link target
    hardlinks = { "tree/hard" = "tree/f" }   # new path = existing path
    mtimes = { "tree/f" = 1600000000 }
    [[context.archives]]               # a tar written into the context
    path = "pkg.tar.gz"
    compression = "gz"                 # gz | bz2 | xz | "" (plain tar)
    members = [ { name = "pkg/a", content = "A", mode = "0755", uid = 7, gid = 8, type = "file" },
                { name = "pkg/d", type = "dir" }, { name = "pkg/l", type = "symlink", target = "a" } ]
    [[context.raw]]                    # a file with exactly these bytes, gzip-compressed if gzip = true
    path = "notes.txt.gz"
    content = "..."
    gzip = true

    [serve]                            # files served over plain HTTP during the build: the case's serve/
    archives = [ ... ]                 # directory plus archives as in [[context.archives]] (path, members);
                                       # every served file has mtime 1600000000 (Last-Modified); the Dockerfile's
                                       # {{HTTP}} is replaced by http://127.0.0.1:<port>

    [build]                            # BuildOptions fields
    build_args = { NAME = "value" }
    labels = { key = "value" }
    target = "stage"
    custom_platform = "linux/arm/v7"
    image_format = "docker"            # oci | docker
    compression = "zstd"
    single_snapshot = true
    snapshot_mode = "redo"
    reproducible = true
    secrets = { id = "secret content" }   # written to a temporary file, passed as --secret id=...,src=...

    [error]                            # the build must fail
    type = "BuildError"                # class name of the raised SnapfsError
    message = ["substring", "..."]     # each must be in the message (a plain string works too)
    exit_code = 3                      # optional

    [image]                            # top-level config fields: os, architecture, variant, author, created
    architecture = "amd64"
    absent = ["variant"]               # missing, null or empty

    [config]                           # exact equality of config["config"][key] for each key given
    Cmd = ["sh"]
    [config_contains]                  # lists: each item present; tables: each key with this value
    Env = ["A=1"]
    Labels = { a = "b" }
    config_absent = ["Cmd"]            # (top level) keys of config["config"] missing, null or empty
    env_absent = ["BUILDONLY"]         # (top level) no Env entry with this name

    [history]
    layers = 2                         # len(rootfs.diff_ids) (non-empty history entries must always match)
    created_by_tail = ["ENV A=1"]      # the last N created_by strings, in order
    created_by_contains = ["..."]      # each among the created_by strings
    empty_layer_tail = [true, false]   # empty_layer flags of the last N entries

    [manifest]
    media_type = "application/vnd.oci.image.manifest.v1+json"
    config_media_type = "..."
    layer_media_types_tail = ["..."]   # media types of the last N layers

    [last_layer]                       # entry names of the top layer's tar (no leading ./, no trailing /)
    contains = ["etc/.wh.group"]
    excludes = ["tmp"]

    [[files]]                          # one table per path
    path = "/srv/a.txt"
    type = "file"                      # file | dir | symlink | fifo
    content = "exact text"             # or sha256 = "hex"; or contains = "substring"
    lines = ["a", "b"]                 # content split into lines (no trailing newline issues)
    mode = "0644"
    uid = 0
    gid = 0
    target = "a.txt"                   # symlink target
    hardlink = "/srv/b.txt"            # same inode as this path
    entries = ["a", "b"]               # a directory's exact listing
    mtime = 1600000000

    absent = ["/path"]                 # (top level) must not exist (lexists)

    [buildah]                          # test_parity_buildah.py: opting out of the buildah comparison, with reasons
    skip = "heredocs need buildah >= 1.33"          # (or top level: buildah = "skip: <reason>")
    known = { "config:WorkingDir" = "why BuildKit (followed by snapfs) and buildah 1.28 differ here" }
"""
from __future__ import annotations

import bz2
import contextlib
import functools
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import tarfile
import threading
import tomllib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from snapfs.errors import SnapfsError

CASES = os.path.join(os.path.dirname(__file__), "cases")
TYPES = {"file": stat.S_ISREG, "dir": stat.S_ISDIR, "symlink": stat.S_ISLNK, "fifo": stat.S_ISFIFO}
BUILD_KEYS = {"build_args", "labels", "target", "custom_platform", "image_format", "compression", "single_snapshot",
              "snapshot_mode", "reproducible", "secrets", "compression_level"}
TOP_KEYS = {"description", "slow", "context", "serve", "build", "error", "image", "config", "config_contains",
            "config_absent", "env_absent", "history", "manifest", "last_layer", "files", "absent", "buildah"}
TABLE_KEYS = {
    "context": {"modes", "symlinks", "hardlinks", "mtimes", "archives", "raw"},
    "serve": {"archives"},
    "error": {"type", "message", "exit_code"},
    "history": {"layers", "created_by_tail", "created_by_contains", "empty_layer_tail"},
    "manifest": {"media_type", "config_media_type", "layer_media_types_tail"},
    "last_layer": {"contains", "excludes"},
}
FILE_KEYS = {"path", "type", "content", "sha256", "contains", "lines", "mode", "uid", "gid", "target", "hardlink",
             "entries", "mtime"}


def _validate(expect: dict) -> None:
    """Catch schema mistakes (a top-level key written after a table lands inside that table in TOML)."""
    unknown = set(expect) - TOP_KEYS
    assert not unknown, f"unknown expect.toml keys {unknown}"
    for table, keys in TABLE_KEYS.items():
        extra = set(expect.get(table, {})) - keys
        assert not extra, f"unknown keys in [{table}]: {extra}"
    for table in ("config", "config_contains"):
        bad = [k for k in expect.get(table, {}) if not k[:1].isupper()]
        assert not bad, f"[{table}] keys are image config fields (capitalised), not {bad}"
    bad = [k for k in expect.get("image", {}) if not k.islower()]
    assert not bad, f"[image] keys are lower-case top-level config fields, not {bad}"
    for f in expect.get("files", []):
        extra = set(f) - FILE_KEYS
        assert not extra and "path" in f, f"[[files]] {f.get('path')}: unknown keys {extra}"
        assert f.get("type", "file") in TYPES, f"[[files]] {f['path']}: unknown type {f['type']}"
    assert "error" not in expect or not (set(expect) & {"files", "config", "history", "absent"}), \
        "an error case checks nothing else"
    _validate_buildah(expect.get("buildah"))


def _validate_buildah(spec) -> None:
    """``buildah = "skip: <reason>"``, or ``[buildah]`` with ``skip = "<reason>"`` and/or ``known``: a table of
    difference keys (``error``, ``config:<Key>``, ``file:/<path>``, see parity.py) to reasons."""
    if spec is None:
        return
    if isinstance(spec, str):
        assert spec.startswith("skip: ") and spec[6:].strip(), f"buildah = 'skip: <reason>', not {spec!r}"
        return
    extra = set(spec) - {"skip", "known"}
    assert not extra, f"unknown keys in [buildah]: {extra}"
    assert "skip" not in spec or (isinstance(spec["skip"], str) and spec["skip"].strip()), \
        "[buildah] skip needs a reason"
    for key, why in spec.get("known", {}).items():
        assert key == "error" or key.startswith(("config:", "file:/")), \
            f"[buildah.known] {key!r} is not a difference key"
        assert isinstance(why, str) and why.strip(), f"[buildah.known] {key!r} needs a reason"


def _cases():
    out = []
    for name in sorted(os.listdir(CASES)):
        d = os.path.join(CASES, name)
        if not os.path.isfile(os.path.join(d, "Dockerfile")):
            continue
        with open(os.path.join(d, "expect.toml"), "rb") as f:
            expect = tomllib.load(f)
        marks = [pytest.mark.slow] if expect.get("slow") else []
        out.append(pytest.param(name, expect, id=name, marks=marks))
    return out


# -- context -------------------------------------------------------------------------------------------------
def _tar_bytes(members: list[dict], compression: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for m in members:
            kind = m.get("type", "file")
            ti = tarfile.TarInfo(m["name"])
            ti.uid, ti.gid, ti.mtime = m.get("uid", 0), m.get("gid", 0), m.get("mtime", 1_600_000_000)
            data = None
            if kind == "file":
                data = m.get("content", "").encode()
                ti.size, ti.mode = len(data), int(m.get("mode", "0644"), 8)
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, int(m.get("mode", "0755"), 8)
            elif kind == "symlink":
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, m["target"], 0o777
            elif kind == "hardlink":
                ti.type, ti.linkname, ti.mode = tarfile.LNKTYPE, m["target"], int(m.get("mode", "0644"), 8)
            else:
                raise ValueError(f"unknown archive member type {kind}")
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    return {"": lambda b: b, "gz": lambda b: gzip.compress(b, mtime=0), "bz2": bz2.compress,
            "xz": lzma.compress}[compression](raw)


def _make_context(case_dir: str, ctx: str, spec: dict) -> None:
    src = os.path.join(case_dir, "context")
    if os.path.isdir(src):
        shutil.copytree(src, ctx, symlinks=True, dirs_exist_ok=True)
    os.makedirs(ctx, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(ctx):
        for n in dirnames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
        for n in filenames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.chmod(p, 0o644)
    for a in spec.get("archives", []):
        p = os.path.join(ctx, a["path"])
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(_tar_bytes(a["members"], a.get("compression", "")))
        os.chmod(p, 0o644)
    for r in spec.get("raw", []):
        p = os.path.join(ctx, r["path"])
        os.makedirs(os.path.dirname(p), exist_ok=True)
        data = r["content"].encode()
        with open(p, "wb") as f:
            f.write(gzip.compress(data, mtime=0) if r.get("gzip") else data)
        os.chmod(p, 0o644)
    for rel, target in spec.get("symlinks", {}).items():
        p = os.path.join(ctx, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        os.symlink(target, p)
    for rel, existing in spec.get("hardlinks", {}).items():
        os.link(os.path.join(ctx, existing), os.path.join(ctx, rel))
    for rel, mode in spec.get("modes", {}).items():
        os.chmod(os.path.join(ctx, rel), int(mode, 8))
    for rel, mtime in spec.get("mtimes", {}).items():
        os.utime(os.path.join(ctx, rel), (mtime, mtime), follow_symlinks=False)


SERVED_MTIME = 1_600_000_000


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serve(case_dir: str, root: str, spec: dict | None):
    """Serve the case's ``serve/`` files (and generated archives) on 127.0.0.1; yields the base URL."""
    if spec is None and not os.path.isdir(os.path.join(case_dir, "serve")):
        yield None
        return
    src = os.path.join(case_dir, "serve")
    if os.path.isdir(src):
        shutil.copytree(src, root, dirs_exist_ok=True)
    os.makedirs(root, exist_ok=True)
    for a in (spec or {}).get("archives", []):
        p = os.path.join(root, a["path"])
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(_tar_bytes(a["members"], a.get("compression", "")))
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            os.utime(os.path.join(dirpath, n), (SERVED_MTIME, SERVED_MTIME))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _build_kwargs(spec: dict, tmp_path) -> dict:
    unknown = set(spec) - BUILD_KEYS
    assert not unknown, f"unknown [build] keys {unknown}"
    kw = {}
    for key, value in spec.items():
        if key in ("build_args", "labels"):
            kw[key] = tuple((k, str(v)) for k, v in value.items())
        elif key == "secrets":
            pairs = []
            for sid, content in value.items():
                p = tmp_path / f"secret-{sid}"
                p.write_text(content)
                pairs.append((sid, str(p)))
            kw[key] = tuple(pairs)
        else:
            kw[key] = value
    return kw


# -- checks ----------------------------------------------------------------------------------------------------
def _absent(value) -> bool:
    return value is None or value == [] or value == {} or value == ""


def _check_files(b, files: list[dict], absent: list[str]) -> list[str]:
    errs = []
    for f in files:
        p = f["path"]
        host = b.path(p)
        try:
            st = os.lstat(host)
        except OSError:
            errs.append(f"{p}: missing")
            continue
        kind = f.get("type")
        if kind and not TYPES[kind](st.st_mode):
            errs.append(f"{p}: not a {kind} (mode {oct(st.st_mode)})")
            continue
        if "mode" in f and stat.S_IMODE(st.st_mode) != int(f["mode"], 8) and not stat.S_ISLNK(st.st_mode):
            errs.append(f"{p}: mode {oct(stat.S_IMODE(st.st_mode))}, expected {f['mode']}")
        if "uid" in f and st.st_uid != f["uid"]:
            errs.append(f"{p}: uid {st.st_uid}, expected {f['uid']}")
        if "gid" in f and st.st_gid != f["gid"]:
            errs.append(f"{p}: gid {st.st_gid}, expected {f['gid']}")
        if "mtime" in f and int(st.st_mtime) != f["mtime"]:
            errs.append(f"{p}: mtime {int(st.st_mtime)}, expected {f['mtime']}")
        if "target" in f:
            target = os.readlink(host) if stat.S_ISLNK(st.st_mode) else None
            if target != f["target"]:
                errs.append(f"{p}: symlink target {target!r}, expected {f['target']!r}")
        if "hardlink" in f:
            other = os.lstat(b.path(f["hardlink"])) if os.path.lexists(b.path(f["hardlink"])) else None
            if other is None or (other.st_ino, other.st_dev) != (st.st_ino, st.st_dev):
                errs.append(f"{p}: not a hard link of {f['hardlink']}")
        if "entries" in f:
            got = sorted(os.listdir(host)) if stat.S_ISDIR(st.st_mode) else None
            if got != sorted(f["entries"]):
                errs.append(f"{p}: entries {got}, expected {sorted(f['entries'])}")
        if any(k in f for k in ("content", "sha256", "contains", "lines")):
            data = b.read(p) if stat.S_ISREG(st.st_mode) else b""
            if "content" in f and data != f["content"].encode():
                errs.append(f"{p}: content {data[:300]!r}, expected {f['content'].encode()!r}")
            if "sha256" in f and hashlib.sha256(data).hexdigest() != f["sha256"]:
                errs.append(f"{p}: sha256 {hashlib.sha256(data).hexdigest()}, expected {f['sha256']}")
            if "contains" in f and f["contains"].encode() not in data:
                errs.append(f"{p}: {data[:300]!r} does not contain {f['contains']!r}")
            if "lines" in f and data.decode(errors="replace").splitlines() != f["lines"]:
                errs.append(f"{p}: lines {data.decode(errors='replace').splitlines()}, expected {f['lines']}")
    for p in absent:
        if os.path.lexists(b.path(p)):
            errs.append(f"{p}: exists, expected absent")
    return errs


def _check_config(cfg: dict, expect: dict) -> list[str]:
    errs = []
    inner = cfg.get("config") or {}
    image = dict(expect.get("image", {}))
    for key in image.pop("absent", []):
        if not _absent(cfg.get(key)):
            errs.append(f"image {key} = {cfg.get(key)!r}, expected absent")
    for key, value in image.items():
        if cfg.get(key) != value:
            errs.append(f"image {key} = {cfg.get(key)!r}, expected {value!r}")
    for key, value in expect.get("config", {}).items():
        if inner.get(key) != value:
            errs.append(f"config {key} = {inner.get(key)!r}, expected {value!r}")
    for key, value in expect.get("config_contains", {}).items():
        got = inner.get(key)
        if isinstance(value, list):
            missing = [v for v in value if not isinstance(got, list) or v not in got]
            if missing:
                errs.append(f"config {key} = {got!r} lacks {missing!r}")
        else:
            missing = {k: v for k, v in value.items() if not isinstance(got, dict) or got.get(k, object()) != v}
            if missing:
                errs.append(f"config {key} = {got!r} lacks {missing!r}")
    for key in expect.get("config_absent", []):
        if not _absent(inner.get(key)):
            errs.append(f"config {key} = {inner.get(key)!r}, expected absent")
    env_names = [e.partition("=")[0] for e in inner.get("Env") or []]
    for name in expect.get("env_absent", []):
        if name in env_names:
            errs.append(f"config Env has {name}: {inner.get('Env')!r}")
    return errs


def _check_history(cfg: dict, h: dict) -> list[str]:
    errs = []
    hist = cfg.get("history") or []
    diff_ids = (cfg.get("rootfs") or {}).get("diff_ids") or []
    nonempty = [e for e in hist if not e.get("empty_layer")]
    if len(nonempty) != len(diff_ids):
        errs.append(f"{len(nonempty)} non-empty history entries for {len(diff_ids)} layers")
    if "layers" in h and len(diff_ids) != h["layers"]:
        errs.append(f"{len(diff_ids)} layers, expected {h['layers']}: {[e.get('created_by') for e in hist]}")
    created = [e.get("created_by", "") for e in hist]
    tail = h.get("created_by_tail")
    if tail is not None and created[-len(tail):] != tail:
        errs.append(f"history tail {created[-len(tail):]!r}, expected {tail!r}")
    for text in h.get("created_by_contains", []):
        if text not in created:
            errs.append(f"history lacks {text!r}: {created!r}")
    flags = h.get("empty_layer_tail")
    if flags is not None:
        got = [bool(e.get("empty_layer")) for e in hist[-len(flags):]]
        if got != flags:
            errs.append(f"empty_layer tail {got}, expected {flags} ({created[-len(flags):]!r})")
    return errs


def _layout_manifest(layout: str) -> dict:
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    desc = index["manifests"][0]
    with open(os.path.join(layout, "blobs", *desc["digest"].split(":", 1))) as f:
        manifest = json.load(f)
    manifest.setdefault("mediaType", desc.get("mediaType"))
    return manifest


def _check_manifest(layout: str, m: dict) -> list[str]:
    errs = []
    manifest = _layout_manifest(layout)
    if "media_type" in m and manifest.get("mediaType") != m["media_type"]:
        errs.append(f"manifest media type {manifest.get('mediaType')}, expected {m['media_type']}")
    if "config_media_type" in m and manifest["config"]["mediaType"] != m["config_media_type"]:
        errs.append(f"config media type {manifest['config']['mediaType']}, expected {m['config_media_type']}")
    tail = m.get("layer_media_types_tail")
    if tail is not None:
        got = [layer["mediaType"] for layer in manifest["layers"]][-len(tail):]
        if got != tail:
            errs.append(f"layer media types {got}, expected {tail}")
    return errs


def _last_layer_names(layout: str) -> list[str]:
    manifest = _layout_manifest(layout)
    desc = manifest["layers"][-1]
    with open(os.path.join(layout, "blobs", *desc["digest"].split(":", 1)), "rb") as f:
        data = f.read()
    if data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard  # only for zstd layers

        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    elif data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return [n.removeprefix("./").rstrip("/") for n in t.getnames()]


def _check_last_layer(layout: str, spec: dict) -> list[str]:
    names = _last_layer_names(layout)
    errs = [f"top layer lacks {n!r}: {names[:50]}" for n in spec.get("contains", []) if n not in names]
    errs += [f"top layer has {n!r}" for n in spec.get("excludes", []) if n in names]
    return errs


# -- the test --------------------------------------------------------------------------------------------------
def test_corpus_has_enough_cases():
    assert len(_cases()) >= 175


@pytest.mark.parametrize("name,expect", _cases())
def test_case(name, expect, run_build, tmp_path, monkeypatch):
    _validate(expect)
    case_dir = os.path.join(CASES, name)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    with open(os.path.join(case_dir, "Dockerfile")) as f:
        dockerfile = f.read()
    _make_context(case_dir, str(tmp_path / "ctx"), expect.get("context", {}))
    kw = _build_kwargs(expect.get("build", {}), tmp_path)
    with _serve(case_dir, str(tmp_path / "served"), expect.get("serve")) as url:
        if url is not None:
            dockerfile = dockerfile.replace("{{HTTP}}", url)
        _run_case(name, expect, dockerfile, kw, run_build)


def _run_case(name, expect, dockerfile, kw, run_build):
    if "error" in expect:
        err = expect["error"]
        with pytest.raises(SnapfsError) as info:
            run_build(dockerfile, **kw)
        exc = info.value
        messages = err.get("message", [])
        messages = [messages] if isinstance(messages, str) else messages
        problems = []
        if "type" in err and type(exc).__name__ != err["type"]:
            problems.append(f"raised {type(exc).__name__}, expected {err['type']}")
        problems += [f"message lacks {m!r}" for m in messages if m not in exc.message]
        if "exit_code" in err and exc.exit_code != err["exit_code"]:
            problems.append(f"exit code {exc.exit_code}, expected {err['exit_code']}")
        assert not problems, f"{name}: {problems}; message: {exc.message!r}"
        return

    b = run_build(dockerfile, **kw)
    errs = _check_config(b.config, expect)
    errs += _check_history(b.config, expect.get("history", {}))
    if "manifest" in expect:
        errs += _check_manifest(b.layout, expect["manifest"])
    if "last_layer" in expect:
        errs += _check_last_layer(b.layout, expect["last_layer"])
    errs += _check_files(b, expect.get("files", []), expect.get("absent", []))
    assert not errs, f"{name}:\n  " + "\n  ".join(errs)


@pytest.mark.parametrize("spec,message", [
    ("skip heredocs", "buildah = 'skip: <reason>'"),
    ("skip: ", "buildah = 'skip: <reason>'"),
    ({"skip": ""}, "[buildah] skip needs a reason"),
    ({"ignore": ["x"]}, "unknown keys in [buildah]: {'ignore'}"),
    ({"known": {"WorkingDir": "why"}}, "'WorkingDir' is not a difference key"),
    ({"known": {"layers": "why"}}, "'layers' is not a difference key"),
    ({"known": {"config:WorkingDir": ""}}, "'config:WorkingDir' needs a reason"),
])
def test_buildah_opt_out_needs_a_reason(spec, message):
    with pytest.raises(AssertionError) as info:
        _validate({"description": "x", "buildah": spec})
    assert message in str(info.value)


def test_buildah_opt_out_forms_accepted():
    _validate({"buildah": "skip: heredocs need buildah >= 1.33"})
    _validate({"buildah": {"known": {"error": "a", "config:Env": "c", "file:/srv": "d"}}})
