"""Transfer progress: bytes, rate and time left of downloads, uploads and base-layer unpacks.

The command line picks one display for the whole process with :func:`configure`:

- ``log`` (the default, and what CI gets): a transfer still running after ``LOG_INTERVAL`` seconds logs one
  line every ``LOG_INTERVAL`` seconds through the ``snapfs.progress`` logger, so ``--log-format json`` and
  ``--log-timestamp`` apply to it; a blob that finishes sooner prints nothing, keeping logs short.
- ``bar``: on a terminal, one `rich <https://rich.readthedocs.io>`_ bar per transfer still running after
  ``BAR_DELAY`` seconds, on stderr, removed when it ends; rich is imported only then.
- ``off``: nothing.

A transfer that showed anything ends with one summary line (size, time, rate); ``summary=True`` asks for it
always (a build context: one per build). A leaf: imports nothing of snapfs, and the engine never sees it (it
reads through :meth:`Transfer.reader`).
"""
from __future__ import annotations

import io
import logging
import threading
import time
from typing import Any, BinaryIO, Callable

LOG_INTERVAL = 5.0  # seconds between progress lines in a log, per transfer
BAR_DELAY = 0.5  # a transfer gets a bar once it has run this long
MODES = ("log", "bar", "off")

log = logging.getLogger("snapfs.progress")
_mode = "log"


def configure(mode: str) -> None:
    """The display for every later transfer of this process: ``log``, ``bar`` or ``off``."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: choose {', '.join(MODES)}")
    _mode = mode


def mode() -> str:
    return _mode


def size_text(n: float) -> str:
    """``n`` bytes as people read them: ``512 B``, ``3.4 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Transfer:
    """One transfer of ``total`` bytes (None: unknown). Feed it with :meth:`update`, end it with :meth:`finish`
    (or use it as a context manager: an exception ends it without a summary). Each transfer is fed by one
    thread; the terminal's bars are shared under a lock."""

    def __init__(self, what: str, *, total: int | None = None, verb: str = "downloading", done: str = "downloaded",
                 summary: bool = False, clock: Callable[[], float] = time.monotonic,
                 interval: float | None = None) -> None:
        self.what, self.total, self.verb, self.done_verb, self.summary = what, total, verb, done, summary
        self.done_bytes = 0
        self._clock = clock
        self._interval = LOG_INTERVAL if interval is None else interval
        self._mode = _mode
        self._start = self._last = clock()
        self._shown = False
        self._task: Any = None
        self._ended = False

    def update(self, n: int) -> None:
        """``n`` more bytes moved."""
        self.at(self.done_bytes + n)

    def at(self, position: int) -> None:
        """The transfer has reached byte ``position`` (an upload that restarts goes back)."""
        self.done_bytes = position
        if self._mode == "off":
            return
        now = self._clock()
        if self._mode == "log":
            if now - self._last >= self._interval:
                self._last = now
                self._shown = True
                log.info("%s %s: %s", self.verb, self.what, self._amount(now))
        elif self._task is None:
            if now - self._start >= BAR_DELAY:
                self._task = _board().add(self.what, self.total, self.done_bytes)
                self._shown = True
        else:
            _board().update(self._task, self.done_bytes)

    def finish(self) -> float:
        """End the transfer; returns its duration in seconds."""
        took = self._end()
        if self._mode != "off" and (self._shown or self.summary):
            rate = self.done_bytes / max(took, 1e-6)
            log.info("%s %s: %s in %.1fs (%s/s)", self.done_verb, self.what, size_text(self.done_bytes), took,
                     size_text(rate))
        return took

    def _end(self) -> float:
        if not self._ended:
            self._ended = True
            if self._task is not None:
                _board().remove(self._task)
                self._task = None
        return max(self._clock() - self._start, 0.0)

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self._end()

    def reader(self, f: BinaryIO) -> BinaryIO:
        """``f`` read through this transfer: every byte read counts. Keeps ``f``'s name (errors name the file)."""
        return _Named(_CountingRaw(f, self), getattr(f, "name", None))  # type: ignore[return-value]

    def _amount(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-6)
        rate = self.done_bytes / elapsed
        text = size_text(self.done_bytes)
        if self.total:
            text += f" of {size_text(self.total)} ({100 * self.done_bytes // self.total}%)"
        text += f", {size_text(rate)}/s"
        if self.total and rate > 0 and self.done_bytes < self.total:
            text += f", {(self.total - self.done_bytes) / rate:.0f}s left"
        return text


class _Named(io.BufferedReader):
    def __init__(self, raw: io.RawIOBase, name) -> None:
        super().__init__(raw, 1 << 16)
        self._name = name

    @property
    def name(self):  # BufferedReader's own name asks the raw stream, which has none
        return self._name if self._name is not None else "layer"


class _CountingRaw(io.RawIOBase):
    def __init__(self, f: BinaryIO, transfer: Transfer) -> None:
        self._f, self._t = f, transfer

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        readinto = getattr(self._f, "readinto", None)
        if readinto is not None:
            n = readinto(buf) or 0
        else:
            data = self._f.read(len(buf))
            n = len(data)
            buf[:n] = data
        if n:
            self._t.update(n)
        return n


class _Board:
    """The terminal's bars: one rich Progress shared by every transfer, live only while one is shown."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self._lock = threading.Lock()
        self._live = 0
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                                  transient=True, redirect_stdout=False, redirect_stderr=True)

    def add(self, what: str, total: int | None, done: int):
        with self._lock:
            if not self._live:
                self._progress.start()
            self._live += 1
            return self._progress.add_task(what, total=total, completed=done)

    def update(self, task, done: int) -> None:
        self._progress.update(task, completed=done)

    def remove(self, task) -> None:
        with self._lock:
            self._progress.remove_task(task)
            self._live -= 1
            if not self._live:
                self._progress.stop()


_the_board: _Board | None = None
_board_lock = threading.Lock()


def _board() -> _Board:
    global _the_board
    with _board_lock:
        if _the_board is None:
            _the_board = _Board()
        return _the_board


__all__ = ["Transfer", "configure", "mode", "size_text", "LOG_INTERVAL", "BAR_DELAY"]
