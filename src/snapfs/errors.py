"""Errors that carry their context and the exit code the CLI returns.

Every failure a user can cause (bad path, hostile layer, bad Dockerfile, registry refusal) is a SnapfsError:
the CLI prints ``snapfs: <message>`` on one line and exits with ``exit_code``; anything else is a bug.
"""
from __future__ import annotations


class SnapfsError(Exception):
    """Base class: a one-line message for the user and a process exit code."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


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
        self.file, self.line, self.column = file, line, column
        where = f"{file}:{line}:{column}" if line else file
        super().__init__(f"{where}: {message}")


class BuildError(SnapfsError):
    """A build step failed (e.g. a RUN command exited non-zero)."""

    exit_code = 8
