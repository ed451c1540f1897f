"""`snapfs snapshot|diff|apply` as a user runs them: real processes, exit codes, one-line errors."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from treekit import Dir, File, Symlink, build, state


def snapfs(*args, env=None, stdin=None):
    return subprocess.run([sys.executable, "-m", "snapfs", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=stdin)


@pytest.fixture
def trees(tmp_path):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    build(old, {"etc": Dir({"a": File(b"1"), "b": File(b"2")}), "gone": Dir({"x": File()})})
    build(new, {"etc": Dir({"a": File(b"one"), "b": File(b"2"), "c": Symlink("a")})})
    return old, new


def test_diff_json_then_apply_gives_the_new_tree(tmp_path, trees):
    old, new = trees
    layer = str(tmp_path / "layer.tar.zst")
    r = snapfs("diff", old, new, "-o", layer, "--compression", "zstd", "--level", "5", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["added"], out["modified"], out["deleted"]) == (1, 1, 1)
    data = open(layer, "rb").read()
    assert out["digest"] == "sha256:" + hashlib.sha256(data).hexdigest() and out["size"] == len(data)
    assert out["media_type"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    copy = str(tmp_path / "copy")
    subprocess.run(["cp", "-a", old, copy], check=True)
    r = snapfs("apply", layer, copy)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{layer}: 3 entries, 1 whiteouts, diff_id {out['diff_id']}"
    assert state(copy) == state(new)


def test_text_output(tmp_path, trees):
    r = snapfs("diff", *trees, "-o", str(tmp_path / "l.tgz"))
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("digest:   sha256:") and lines[1].startswith("diff_id:  sha256:")
    assert lines[3] == "added: 1  modified: 1  deleted: 1"


def test_snapshot_file_then_diff_from_it(tmp_path, trees):
    old, _ = trees
    idx = str(tmp_path / "snap.idx")
    r = snapfs("snapshot", old, "-o", idx)
    assert r.returncode == 0 and r.stdout.startswith("5 entries")
    os.remove(os.path.join(old, "etc/b"))
    r = snapfs("diff", "--from", idx, old, "-o", str(tmp_path / "l.tar"), "--compression", "none", "--json")
    assert r.returncode == 0, r.stderr
    assert (json.loads(r.stdout)["deleted"], json.loads(r.stdout)["added"]) == (1, 0)


def test_reproducible_flag_gives_identical_layers(tmp_path, trees):
    outs = []
    for n in range(2):
        path = str(tmp_path / f"l{n}.tgz")
        os.utime(trees[1], (n, n))  # a differing root mtime must not matter
        r = snapfs("diff", *trees, "-o", path, "--reproducible", "--json", env={"SOURCE_DATE_EPOCH": "86400"})
        assert r.returncode == 0, r.stderr
        outs.append(open(path, "rb").read())
    assert outs[0] == outs[1]


@pytest.mark.parametrize("args, code, message", [
    (["diff", "/nonexistent-old", "/tmp", "-o", "/tmp/x"], 3, "snapfs: /nonexistent-old: no such directory"),
    (["diff", "/tmp", "-o", "/tmp/x"], 2, "snapfs: give OLD and NEW directories (or --from SNAPSHOT ROOT)"),
    (["diff", "/tmp", "/tmp", "-o", "/tmp/x", "--compression", "lz4"], 2, "argument --compression: invalid choice"),
    (["diff", "/tmp", "/tmp", "-o", "/tmp/x", "--level", "99"], 2, "snapfs: gzip level must be 0-9, got 99"),
    (["apply", "/tmp"], 2, "snapfs: give one or more LAYER files and then the target DIR"),
    (["apply", "/nonexistent.tar", "/tmp"], 3, "snapfs: /nonexistent.tar: no such layer file"),
    (["snapshot", "/etc/passwd", "-o", "/tmp/x"], 3, "snapfs: /etc/passwd: not a directory"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
])
def test_errors_are_one_line_with_exit_codes(args, code, message):
    r = snapfs(*args)
    assert r.returncode == code
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2


def test_corrupt_snapshot_and_hostile_layer_are_clear_errors(tmp_path, trees):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"SNAPFS\x00\x01" + b"\xff" * 40)
    r = snapfs("diff", "--from", str(bad), trees[0], "-o", str(tmp_path / "l"))
    assert r.returncode == 5 and r.stderr.startswith(f"snapfs: {bad}: corrupt snapshot")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        ti = tarfile.TarInfo("../escape")
        t.addfile(ti, io.BytesIO(b""))
    (tmp_path / "evil.tar").write_bytes(buf.getvalue())
    target = tmp_path / "target"
    target.mkdir()
    r = snapfs("apply", str(tmp_path / "evil.tar"), str(target))
    assert r.returncode == 4 and "../escape" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "escape").exists()


def test_snapshot_file_is_truncation_safe(tmp_path, trees):
    idx = tmp_path / "s.idx"
    assert snapfs("snapshot", trees[0], "-o", str(idx)).returncode == 0
    data = idx.read_bytes()
    idx.write_bytes(data[:-7])
    r = snapfs("diff", "--from", str(idx), trees[0], "-o", str(tmp_path / "l"))
    assert r.returncode == 5 and "corrupt snapshot" in r.stderr
