"""Nothing outside a stage root reaches a layer: COPY and the snapshot never follow a link out of the root.

Each test plants a "host secret" directory outside the stage root and a symlink to it inside the image, as a
hostile base (or an earlier RUN) can; the secret must appear in no layer blob, and what COPY writes through
the link lands inside the root, as Docker resolves it (``/etc/app -> /host/dir`` means ``<root>/host/dir``).
"""
from __future__ import annotations

import gzip
import os
import sys
import tarfile

import pytest

from snapfs.errors import BuildError, SnapfsError
from snapfs.image.layout import read_layout
from snapfs.limits import MAX_DEPTH

SECRET = b"HOST-SECRET-d41d8cd98f"


def host_secret(tmp_path, name: str) -> str:
    host = tmp_path / "host-secret-dir"
    host.mkdir(exist_ok=True)
    (host / name).write_bytes(SECRET)
    os.chmod(host / name, 0o600)
    return str(host)


def layers(built) -> list[tuple[list[str], bytes]]:
    """Each layer's entry names and its whole uncompressed tar."""
    out = []
    for layer in read_layout(built.layout).layers:
        with open(layer.path, "rb") as f:
            raw = gzip.decompress(f.read())
        with tarfile.open(layer.path) as t:
            out.append((t.getnames(), raw))
    return out


def test_copy_through_a_base_symlink_to_a_host_dir_stays_in_the_root(run_build, tmp_path):
    host = host_secret(tmp_path, "config.json")
    b = run_build(f"FROM busybox AS base\nRUN ln -s {host} /etc/app\n"
                  "FROM base\nCOPY config.json /etc/app/\n", {"config.json": "from-context"})
    assert all(SECRET not in raw for _, raw in layers(b))
    assert os.readlink(b.path("/etc/app")) == host
    # Docker semantics: the link is resolved inside the root, so the file lands at <root><host>/config.json.
    assert b.read(os.path.join(host, "config.json")) == b"from-context"
    with open(os.path.join(host, "config.json"), "rb") as f:
        assert f.read() == SECRET  # and the host file was neither read into the image nor overwritten
    names = [n for ns, _ in layers(b) for n in ns]
    assert "etc/app/config.json" not in names


def test_run_replacing_a_seen_directory_with_a_host_link_reads_nothing_through_it(run_build, tmp_path):
    host = host_secret(tmp_path, "x")
    b = run_build(f"FROM busybox\nRUN mkdir -p /d && echo inside > /d/x\nRUN rm -rf /d && ln -s {host} /d\n")
    found = layers(b)
    assert all(SECRET not in raw for _, raw in found)
    last_names = found[-1][0]
    assert "d" in last_names and not any(n.startswith("d/") for n in last_names)
    assert os.readlink(b.path("/d")) == host


def test_run_turning_a_directory_into_a_file_snapshots_cleanly(run_build):
    b = run_build("FROM busybox\nRUN mkdir -p /a/d && echo x > /a/d/f\nRUN rm -rf /a && echo file > /a\n"
                  "RUN rm /a && mkdir -p /a/d2 && echo y > /a/d2/g\n")
    assert b.read("/a/d2/g") == b"y\n" and not os.path.exists(b.path("/a/d"))


# -- deep trees: a one-line error naming the step and the path's start, never a crash -------------------------

def test_copy_of_a_context_tree_deeper_than_the_limit_is_one_error(run_build, tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from deepkit import make_chain, remove_chain

    deep = str(tmp_path / "ctx" / "deep")
    make_chain(deep, 3000, name="d")
    try:
        with pytest.raises(BuildError) as err:
            run_build("FROM busybox\nCOPY deep /deep\n")
    finally:
        remove_chain(deep, name="d")  # shutil.rmtree (pytest's clean-up) recurses once per level
    assert err.value.message == ("step 2/2 (COPY at Dockerfile:2): /deep/d/d/d/...: directory tree nested deeper "
                                 f"than {MAX_DEPTH} levels (snapfs's depth limit)")


def test_run_making_a_tree_deeper_than_the_limit_is_one_error(run_build):
    with pytest.raises(SnapfsError) as err:
        run_build(f"FROM busybox\nRUN i=0; while [ $i -le {MAX_DEPTH} ]; do mkdir d && cd d; i=$((i+1)); done\n")
    assert err.value.message.startswith("step 2/2 (RUN at Dockerfile:2): ")
    assert err.value.message.endswith(f"/d/d/d/d/...: directory tree nested deeper than {MAX_DEPTH} levels "
                                      "(snapfs's depth limit)")


def test_a_deep_tree_within_the_limit_builds(run_build):
    b = run_build("FROM busybox\nRUN i=1; while [ $i -lt 200 ]; do mkdir d && cd d; i=$((i+1)); done; "
                  "echo bottom > f\n")
    assert b.read("/" + "/".join(["d"] * 199) + "/f") == b"bottom\n"
