"""Log formats and progress of real builds: ``python -m snapfs build`` on the busybox base, as CI runs it.

With ``--log-format json`` every line of stdout and stderr is one JSON object: log lines, each line of RUN
output (with its step and stream), the final error and the digest. A cold base says how long unpacking took.
"""
from __future__ import annotations

import json
import logging
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from snapfs import progress
from snapfs.builder.pipeline import BuildOptions, build
from snapfs.image.reference import parse_reference
from snapfs.image.registry.client import RegistryOptions
from snapfs.image.transports import OutputOptions


def snapfs_build(tmp_path, dockerfile: str, *args: str, cache: str | None = None, stderr=None):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    (ctx / "app.txt").write_text("app\n")
    cmd = [sys.executable, "-m", "snapfs", "build", f"--context=dir://{ctx}", "--no-push",
           f"--cache-dir={cache or tmp_path / 'cache'}", *args]
    if stderr is not None:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
    return subprocess.run(cmd, capture_output=True, text=True)


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        obj = json.loads(line)  # every line, or the test fails here
        assert isinstance(obj, dict) and {"level", "msg", "time"} <= set(obj), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", obj["time"]), line
        out.append(obj)
    return out


def test_json_every_line_of_a_build_is_json(tmp_path, busybox_layout):
    df = (f"FROM oci:{busybox_layout}:busybox\n"
          "RUN echo to-stdout && echo to-stderr >&2 && printf 'two\\nlines\\n'\n"
          "COPY app.txt /app.txt\n")
    r = snapfs_build(tmp_path, df, "--log-format=json", "--log-timestamp", f"--oci-layout-path={tmp_path / 'out'}")
    assert r.returncode == 0, r.stderr
    out, err = json_lines(r.stdout), json_lines(r.stderr)
    assert len(out) == 1 and out[0]["digest"].startswith("sha256:") and out[0]["msg"] == out[0]["digest"]
    run = [(o["stream"], o["msg"]) for o in err if o.get("step") == 2]
    assert sorted(run) == [("stderr", "to-stderr"), ("stdout", "lines"), ("stdout", "to-stdout"),
                           ("stdout", "two")]
    assert [o["msg"] for o in err if o.get("stream") == "stdout"] == ["to-stdout", "two", "lines"]  # in order
    msgs = [o["msg"] for o in err]
    assert "STEP 2/3: RUN echo to-stdout && echo to-stderr >&2 && printf 'two\\nlines\\n'" in msgs
    assert any(m.startswith("  base unpacked in ") for m in msgs)
    assert any(m.startswith(f"built {out[0]['digest']} in ") for m in msgs)


def test_json_a_failing_run_and_its_error_are_json(tmp_path, busybox_layout):
    df = (f"FROM oci:{busybox_layout}:busybox\n"
          "RUN echo before\n"
          "RUN echo about to fail >&2; printf 'no newline at the end'; exit 3\n")
    r = snapfs_build(tmp_path, df, "--log-format", "json")
    assert r.returncode == 9, r.stderr
    assert r.stdout == ""
    err = json_lines(r.stderr)
    assert {"level": "info", "step": 3, "stream": "stdout", "msg": "no newline at the end"}.items() <= \
        [o for o in err if o.get("stream") == "stdout" and o["step"] == 3][0].items()
    assert [o["msg"] for o in err if o.get("stream") == "stderr"] == ["about to fail"]
    last = err[-1]
    assert last["level"] == "error" and last["msg"] == (
        "snapfs: step 3/3 (RUN at Dockerfile:3): RUN /bin/sh -c echo about to fail >&2; printf 'no newline at the "
        "end'; exit 3 returned a non-zero code: 3")


@pytest.mark.parametrize("args, code, message", [
    (["--compression", "brotli"], 2, "snapfs: argument --compression: invalid choice: 'brotli' (choose from 'gzip', "
                                     "'zstd')"),
    (["--dockerfile=missing"], 3, None),
    (["--custom-platform=linux/arm64"], 3, None),
])
def test_json_usage_and_input_errors_are_json(tmp_path, busybox_layout, args, code, message):
    r = snapfs_build(tmp_path, f"FROM oci:{busybox_layout}:busybox\n", "--log-format=json", *args)
    assert r.returncode == code, r.stderr
    err = json_lines(r.stderr)
    assert err[-1]["level"] == "error" and err[-1]["msg"].startswith("snapfs: ")
    if message:
        assert err[-1]["msg"] == message


def test_text_timestamps_and_the_cold_base_line(tmp_path, busybox_layout):
    df = f"FROM oci:{busybox_layout}:busybox\nRUN echo hi > /hi\n"
    cache = str(tmp_path / "shared-cache")
    cold = snapfs_build(tmp_path, df, "--log-timestamp", "--reproducible", cache=cache)
    assert cold.returncode == 0, cold.stderr
    lines = cold.stderr.splitlines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line) for line in lines), lines
    unpacked = [line for line in lines if " base unpacked in " in line]
    assert len(unpacked) == 1 and re.search(r"  base unpacked in \d+\.\d\ds \(\d+\.\d MiB, 1 layer\)$", unpacked[0])
    assert re.search(r"built sha256:[0-9a-f]{64} in \d+\.\d\ds \(unpack \d+\.\d\ds, run ", cold.stderr)
    warm = snapfs_build(tmp_path, df, "--reproducible", cache=cache)  # the base is in the cache now: nothing to unpack, no line
    assert warm.returncode == 0, warm.stderr
    assert "base unpacked" not in warm.stderr and "(unpack 0.00s, run " in warm.stderr
    assert cold.stdout == warm.stdout


def test_color_levels_on_a_terminal_only(tmp_path, busybox_layout):
    df = f"FROM oci:{busybox_layout}:busybox\nRUN echo hi\n"
    plain = snapfs_build(tmp_path, df, "--log-format=color")
    assert plain.returncode == 0 and "\x1b[" not in plain.stderr and "STEP 1/2: FROM" in plain.stderr
    master, slave = pty.openpty()
    try:
        r = snapfs_build(tmp_path, df, "--log-format=color", stderr=slave)
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert r.returncode == 0
    assert b"\x1b[36mINFO\x1b[0m STEP 1/2: FROM oci:" in seen


def test_pull_unpack_and_push_report_progress(tmp_path, registry, monkeypatch, caplog):
    """With no pause between progress lines, every transfer of a build reports: the pulled layer, its unpack,
    the pushed layers (CI logs get the same lines, every LOG_INTERVAL seconds)."""
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    caplog.set_level(logging.INFO, logger="snapfs")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN head -c 3000000 /dev/urandom > /noise\n")
    reg = RegistryOptions(registry_maps=(("docker.io", registry.host),), insecure_registries=(registry.host,),
                          skip_default_registry_fallback=True)
    dest = f"{registry.host}/progress/app:1"
    result = build(BuildOptions(context=str(ctx), registry=reg, cache_dir=str(tmp_path / "cache"),
                                outputs=OutputOptions(destinations=(parse_reference(dest),))))
    lines = [r.getMessage() for r in caplog.records if r.name == "snapfs.progress"]
    base = result.image.layers[0].digest[:19]
    mine = result.layers[0].digest[:19]
    assert any(line.startswith(f"downloading layer {base}: ") and " of " in line for line in lines), lines
    assert any(line.startswith(f"downloaded layer {base}: ") for line in lines), lines
    assert any(line.startswith(f"unpacking layer {base}: ") for line in lines), lines
    assert any(line.startswith(f"uploading {registry.host}/progress/app: blob {mine}: ") for line in lines), lines
    assert result.unpack > 0


def test_json_an_interrupted_build_says_so_in_json(tmp_path, busybox_layout):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM oci:{busybox_layout}:busybox\nRUN echo json-$((6*7))-started && sleep 977\n")
    proc = subprocess.Popen([sys.executable, "-m", "snapfs", "build", f"--context=dir://{ctx}", "--no-push",
                             f"--cache-dir={tmp_path / 'cache'}", "--log-format=json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = b""
        deadline = time.monotonic() + 60
        while b"json-42-started" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 65536)
                assert chunk, seen
                seen += chunk
        assert b"json-42-started" in seen, seen
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143
    assert out == b""
    lines = json_lines((seen + err).decode())
    assert any({"step": 2, "stream": "stdout", "msg": "json-42-started"}.items() <= o.items() for o in lines), lines
    assert lines[-1]["level"] == "error" and lines[-1]["msg"] == "snapfs: build interrupted (SIGTERM)"
