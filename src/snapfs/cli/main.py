"""Command-line entry point: parses arguments, dispatches, prints one line per error.

Each group of subcommands lives in a module of this package (``COMMAND_MODULES``) exposing
``register(subparsers)``; a handler returns the process exit code. Errors the user can cause are ``SnapfsError``
and print as ``snapfs: <message>``.

Run as a program, SIGTERM, SIGINT and SIGHUP stop the command cleanly (the running step killed, stage roots
unmounted, scratch removed: see :mod:`snapfs.engine.lifecycle`), print ``snapfs: <command> interrupted
(SIGTERM)`` and exit with 128 + the signal number (143, 130, 129), as a shell reports a process killed by that
signal.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from snapfs.engine import lifecycle
from snapfs.errors import SnapfsError

# Subcommand modules, in the order their commands appear in --help.
COMMAND_MODULES = (
    "snapfs.cli.build",
    "snapfs.cli.engine",
    "snapfs.cli.dockerfile",
    "snapfs.cli.registry",
    "snapfs.cli.warm",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints usage and exits 2; keep that, one line
        _say(message)
        self.exit(2)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="snapfs", description="Daemonless OCI image builder and filesystem diff engine.")
    parser.add_argument("--version", action="version", version=f"snapfs {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from snapfs import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the process's own entry point (not a caller embedding the CLI): signals are ours
        lifecycle.handle_signals()
    argv = list(sys.argv[1:] if argv is None else argv)
    global _json
    _json = _json_requested(argv)
    try:
        if argv and argv[0] in ("build", "warm"):  # Kaniko's Go-style booleans (--no-push=true)
            from .build import normalize_booleans

            argv = argv[:1] + normalize_booleans(argv[1:])
    except SnapfsError as exc:
        _say(exc.message)
        return exc.exit_code
    try:
        args = make_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except lifecycle.Interrupted as exc:
        command = argv[0] if argv and not argv[0].startswith("-") else "snapfs"
        _say(f"{command} interrupted ({exc.name})")
        return exc.exit_code
    except SnapfsError as exc:
        _say(exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except BrokenPipeError:
        return 141
    except OSError as exc:  # a filesystem or network failure outside any step: one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        _say(f"{where}{exc.strerror or exc}")
        return 1


_json = False  # --log-format json: the failure line is JSON too


def _json_requested(argv: list[str]) -> bool:
    """``--log-format json`` anywhere in a build's arguments (known before, and whether or not, they parse)."""
    if not argv or argv[0] != "build":
        return False
    for i, arg in enumerate(argv):
        if arg == "--log-format=json" or (arg == "--log-format" and argv[i + 1:i + 2] == ["json"]):
            return True
    return False


def _say(message: str) -> None:
    """The one line a failure prints; URLs pass the package's redaction once more as a last line of defence."""
    from snapfs.redact import redact_url

    text = f"snapfs: {redact_url(message)}"
    if _json:
        from .build import json_line

        text = json_line("error", text)
    print(text, file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
