"""snapfs.progress: throttled log lines (CI), nothing for quick transfers, rich bars on a terminal, counting readers.

Time is a fake clock handed to each Transfer: no test sleeps or asserts a duration.
"""
from __future__ import annotations

import io
import logging

import pytest

from snapfs import progress
from snapfs.progress import Transfer, size_text

MiB = 1 << 20


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="snapfs.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "snapfs.progress"]


@pytest.fixture(autouse=True)
def log_mode():
    before = progress.mode()
    progress.configure("log")
    yield
    progress.configure(before)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_long_transfer_logs_one_line_per_interval_with_rate_and_time_left(lines):
    clock = Clock()
    t = Transfer("layer sha256:abc", total=10 * MiB, clock=clock)
    for _ in range(10):  # 1 MiB a second, fed in 4 chunks each: lines follow the clock, not the chunks
        for _ in range(4):
            clock.now += 0.25
            t.update(MiB // 4)
    t.finish()
    assert lines() == [
        "downloading layer sha256:abc: 5.0 MiB of 10.0 MiB (50%), 1.0 MiB/s, 5s left",
        "downloading layer sha256:abc: 10.0 MiB of 10.0 MiB (100%), 1.0 MiB/s",
        "downloaded layer sha256:abc: 10.0 MiB in 10.0s (1.0 MiB/s)",
    ]


def test_a_quick_transfer_prints_nothing_unless_a_summary_is_asked_for(lines):
    clock = Clock()
    with Transfer("layer sha256:small", total=4096, clock=clock) as t:
        clock.now += 0.2
        t.update(4096)
    assert lines() == []
    with Transfer("s3://b/ctx.tgz", total=None, summary=True, verb="downloading", clock=clock) as t:
        clock.now += 2.0
        t.update(2048)
    assert lines() == ["downloaded s3://b/ctx.tgz: 2.0 KiB in 2.0s (1.0 KiB/s)"]


def test_a_failed_transfer_ends_without_a_summary(lines):
    clock = Clock()
    with pytest.raises(OSError):
        with Transfer("blob", total=10, summary=True, clock=clock) as t:
            t.update(5)
            raise OSError("broken")
    assert lines() == []


def test_uploads_restarting_go_back(lines):
    clock = Clock()
    t = Transfer("reg/app: blob sha256:1", total=8 * MiB, verb="uploading", done="uploaded", clock=clock)
    clock.now += 6
    t.at(6 * MiB)
    clock.now += 6
    t.at(2 * MiB)  # a new upload session starts again from byte 2 MiB
    assert t.done_bytes == 2 * MiB
    assert lines()[-1].startswith("uploading reg/app: blob sha256:1: 2.0 MiB of 8.0 MiB (25%)")


def test_off_mode_is_silent(lines):
    progress.configure("off")
    clock = Clock()
    t = Transfer("x", total=100, summary=True, clock=clock)
    clock.now += 60
    t.update(100)
    t.finish()
    assert lines() == []
    with pytest.raises(ValueError):
        progress.configure("loud")


def test_reader_counts_what_is_read():
    clock = Clock()
    t = Transfer("layer", total=300_000, clock=clock)
    data = bytes(range(256)) * 1200
    r = t.reader(io.BytesIO(data))
    assert r.read(10) == data[:10] and r.read() == data[10:]
    assert t.done_bytes == len(data)


def test_bars_appear_only_for_transfers_that_last(lines, monkeypatch):
    progress.configure("bar")
    board = progress._board()
    clock = Clock()
    quick = Transfer("quick", total=10, clock=clock)
    quick.update(10)  # no time has passed: no bar
    assert board._progress.tasks == []
    quick.finish()
    slow = Transfer("slow", total=10 * MiB, clock=clock)
    clock.now += progress.BAR_DELAY * 2  # 1 s
    slow.update(MiB)
    (task,) = board._progress.tasks
    assert task.description == "slow" and task.completed == MiB and task.total == 10 * MiB
    clock.now += 1
    slow.update(MiB)
    assert board._progress.tasks[0].completed == 2 * MiB
    slow.finish()
    assert board._progress.tasks == [] and not board._progress.live.is_started
    assert lines() == ["downloaded slow: 2.0 MiB in 2.0s (1.0 MiB/s)"]  # a shown bar leaves one line behind


def test_size_text():
    assert [size_text(n) for n in (0, 1023, 1024, 5 * MiB // 2, 3 << 30)] == [
        "0 B", "1023 B", "1.0 KiB", "2.5 MiB", "3.0 GiB"]


def test_the_engine_never_imports_rich():
    import subprocess
    import sys

    code = ("import sys, snapfs.engine.apply, snapfs.builder.stageroot, snapfs.progress; "
            "print('rich' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
