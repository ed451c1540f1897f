"""Errors that carry their context and the exit code the CLI returns.

Every failure a user can cause (bad path, hostile layer, bad Dockerfile, registry refusal) is a SnapfsError:
the CLI prints ``snapfs: <message>`` on one line and exits with ``exit_code``; anything else is a bug.
"""
from __future__ import annotations


class SnapfsError(Exception):
    """Base class: a one-line message for the user and a process exit code.

    ``detail`` is what went wrong; the optional context fields say where: a Dockerfile location (``file``,
    ``line``, ``column``) and, during a build, the step (``step`` of ``total``, running ``instruction``).
    ``message`` is the one line the CLI prints, formatted from both in one place (:meth:`message`), so no
    caller prepends or strips locations by hand.
    """

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None, file: str | None = None, line: int = 0,
                 column: int = 0, step: int = 0, total: int = 0, instruction: str | None = None) -> None:
        super().__init__(message)
        self.detail = message
        self.file, self.line, self.column = file, line, column
        self.step, self.total, self.instruction = step, total, instruction
        if exit_code is not None:
            self.exit_code = exit_code

    def with_context(self, **fields) -> SnapfsError:
        """This error (same class, same exit code) with more context fields set; returns ``self``."""
        for name, value in fields.items():
            if name not in _CONTEXT:
                raise TypeError(f"unknown error context field {name!r}")
            setattr(self, name, value)
        return self

    @property
    def message(self) -> str:
        """The user-facing line: ``step N/M (KW at FILE:LINE): ...``, ``FILE:LINE:COL: ...`` or ``FILE: ...``."""
        detail = self.detail if self.detail is not None else self.__class__.__name__
        if self.step:
            return f"step {self.step}/{self.total} ({self.instruction} at {self.file}:{self.line}): {detail}"
        if self.file and self.line:
            return f"{self.file}:{self.line}:{self.column}: {detail}"
        if self.file:
            return f"{self.file}: {detail}"
        return detail

    def __str__(self) -> str:
        return self.message


_CONTEXT = frozenset({"detail", "file", "line", "column", "step", "total", "instruction"})


class UsageError(SnapfsError):
    """Bad command-line arguments or an option that is not supported yet."""

    exit_code = 2


class NotSupportedError(UsageError):
    """A flag or syntax snapfs recognises but does not implement yet: refused, never silently ignored."""


class InputError(SnapfsError):
    """A missing or unreadable input file or directory."""

    exit_code = 3


class LayerError(SnapfsError):
    """A layer that is malformed or hostile (path escapes, bad whiteouts, bombs)."""

    exit_code = 4


class SnapshotError(SnapfsError):
    """A snapshot file that is corrupt, truncated or from an incompatible version."""

    exit_code = 5


class RegistryError(SnapfsError):
    """A registry refused or broke a request (never carries credentials in its message)."""

    exit_code = 6


class DockerfileError(SnapfsError):
    """A Dockerfile that cannot be parsed or is invalid; names file, line and column."""

    exit_code = 7

    def __init__(self, message: str, *, file: str = "Dockerfile", line: int = 0, column: int = 0) -> None:
        super().__init__(message, file=file, line=line, column=column)


class BuildError(SnapfsError):
    """A build step failed (a COPY source missing, a RUN that could not be set up, ...)."""

    exit_code = 8


class RunFailedError(BuildError):
    """A RUN command exited non-zero or died of a signal; ``status`` is its own status (128 + signal).

    Its exit code is fixed, never the command's own status: a RUN that exits 6 must not look like a registry
    error (6), nor one killed by SIGTERM like an interrupted build (143).
    """

    exit_code = 9

    def __init__(self, message: str, *, status: int, **context) -> None:
        super().__init__(message, **context)
        self.status = status
