"""Bytes that are not UTF-8 in a Dockerfile (or a ``--label``): carried as BuildKit carries them.

RUN's argv and environment get the raw bytes (Go strings are bytes); the image config and history are JSON, which
must be UTF-8, so each such byte is written as U+FFFD, as Go's ``json.Marshal`` does. Never a traceback, and the
build is the real command line on a real busybox base."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from snapfs import apply_layers
from snapfs.image.layout import read_layout

DOCKERFILE = (b"FROM busybox\n"
              b"ENV V=a\xffb\n"
              b"LABEL l\xfe=x\xfey\n"
              b"RUN printf 'r\\375\\n' > /out && printf 'c\xfd\\n' >> /out && printf '%s\\n' \"$V\" >> /out\n"
              b"COPY <<EOF /inline\nv\xff\nEOF\n"
              b"RUN <<EOF\necho \"h\xfe\" > /heredoc\nEOF\n")


def build(registry, tmp_path, dockerfile: bytes, *extra: bytes):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_bytes(dockerfile)
    out = tmp_path / "oci"
    argv = [sys.executable, "-m", "snapfs", "build", f"--context=dir://{ctx}", "--no-push",
            f"--oci-layout-path={out}", f"--registry-map=docker.io={registry.host}",
            f"--insecure-registry={registry.host}", "--skip-default-registry-fallback",
            f"--cache-dir={tmp_path / 'cache'}"]
    r = subprocess.run([os.fsencode(a) for a in argv] + list(extra), capture_output=True)
    assert b"Traceback" not in r.stderr, r.stderr.decode(errors="replace")
    return r, out


def test_invalid_utf8_reaches_run_as_bytes_and_json_as_replacement_characters(registry, tmp_path):
    r, out = build(registry, tmp_path, DOCKERFILE, b"--label=cli=v\xff")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    image = read_layout(str(out))
    raw = image.config_bytes
    raw.decode("utf-8")  # strict: the config is valid UTF-8
    config = json.loads(raw)
    assert "V=a\ufffdb" in config["config"]["Env"]
    assert config["config"]["Labels"] == {"l\ufffd": "x\ufffdy", "cli": "v\ufffd"}
    created = [h["created_by"] for h in config["history"]]
    assert "ENV V=a\ufffdb" in created and "LABEL l\ufffd=x\ufffdy" in created
    run = [c for c in created if c.startswith("RUN ")]
    assert run == ["RUN /bin/sh -c printf 'r\\375\\n' > /out && printf 'c\ufffd\\n' >> /out && "
                   "printf '%s\\n' \"$V\" >> /out # buildkit",
                   'RUN /bin/sh -c echo "h\ufffd" > /heredoc\n # buildkit']
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    apply_layers([layer.path for layer in image.layers], str(rootfs))
    # the shell saw the Dockerfile's bytes, in the command and in the environment, unchanged
    assert (rootfs / "out").read_bytes() == b"r\xfd\nc\xfd\na\xffb\n"
    assert (rootfs / "inline").read_bytes() == b"v\xff\n"  # heredoc files and scripts too
    assert (rootfs / "heredoc").read_bytes() == b"h\xfe\n"


def test_invalid_utf8_in_a_bad_instruction_is_one_line_naming_the_place(registry, tmp_path):
    """Refused before any step runs; the byte shows as U+FFFD, not as Python's ``\\udcff`` escape."""
    r, out = build(registry, tmp_path, b"FROM busybox\nRUN true\nFR\xffOM x\n")
    assert r.returncode == 7 and not out.exists()
    lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
    assert lines == ["snapfs: Dockerfile:3:1: unknown instruction: FR\ufffdOM"], lines  # as a terminal shows Go's


def test_urls_python_cannot_send_are_one_line_not_a_traceback(registry, tmp_path):
    """An ADD URL Python's parser refuses, and a --dockerfile URL with a byte that is not UTF-8 in its password."""
    r, _ = build(registry, tmp_path, b"FROM busybox\nADD https://u:pw@[::1/x.git /d/\n")
    assert r.returncode == 8
    assert r.stderr.decode().strip().splitlines()[-1] == \
        "snapfs: step 2/2 (ADD at Dockerfile:2): ADD https://***@[::1/x.git: invalid URL: Invalid IPv6 URL"
    (tmp_path / "ctx2").mkdir()
    (tmp_path / "ctx2" / "Dockerfile").write_text("FROM scratch\n")
    r = subprocess.run([os.fsencode(sys.executable), b"-m", b"snapfs", b"build", b"--context", os.fsencode(
        tmp_path / "ctx2"), b"--dockerfile", b"https://u:Secr3t\xffPw@127.0.0.1:9/Dockerfile", b"--no-push",
        b"--oci-layout-path", os.fsencode(tmp_path / "o2")], capture_output=True)
    assert r.returncode == 3 and b"Traceback" not in r.stderr and b"Secr3t" not in r.stderr
    assert r.stderr.decode().startswith("snapfs: https://***@127.0.0.1:9/Dockerfile: invalid URL: ")
