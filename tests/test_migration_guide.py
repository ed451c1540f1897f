"""docs/migrating-from-kaniko.md against the code: its flag tables (every flag exists; "not yet" is refused and
nothing else is), its environment table, its exit codes. tests/image/test_secure_defaults.py checks the defaults
it states; this checks the rest of what it claims.
"""
from __future__ import annotations

import argparse
import os
import re

import pytest

from snapfs import errors
from snapfs.cli import kaniko_compat
from snapfs.cli.build import options_from_args
from snapfs.cli.main import make_parser
from snapfs.engine import lifecycle

GUIDE = os.path.join(os.path.dirname(__file__), "..", "docs", "migrating-from-kaniko.md")
FLAG_SECTIONS = ("Context", "Output", "Cache", "Snapshots", "Registries", "Logs")


def _sections() -> dict[str, list[list[str]]]:
    """``## Title`` -> the rows of its table(s), as cells (header and separator rows dropped)."""
    out: dict[str, list[list[str]]] = {}
    title = ""
    with open(GUIDE) as f:
        for line in f:
            if line.startswith(("## ", "### ")):  # a ### subsection has a table of its own (the warmer's flags)
                title = line.split(" ", 1)[1].strip()
                out[title] = []
            elif line.startswith("|") and title:
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
                if not set(cells[0]) <= set("- ") and cells[0] not in ("flag", "code", "variable", "Kaniko"):
                    out[title].append(cells)
    return out


def _flag_rows() -> list[tuple[str, str]]:
    """(flag spelling, status) for every flag of the flag tables: "`--a`, `-b`" names two spellings."""
    rows = []
    for section in FLAG_SECTIONS:
        for cells in _sections()[section]:
            for name in re.findall(r"`(-[^`]*)`", cells[0]):
                rows.append((name.split()[0], cells[1]))
    return rows


@pytest.fixture
def build_parser(monkeypatch):
    for var in [v for v in os.environ if v.startswith("KANIKO_")] + ["SNAPFS_DIR", "BENCHMARK_FILE"]:
        monkeypatch.delenv(var, raising=False)
    sub = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["build"]


def _sample(action: argparse.Action) -> list[str]:
    """A value the flag accepts, so that giving it tests the flag and not its value's syntax."""
    if action.nargs == 0:
        return []
    if action.choices:
        return [list(action.choices)[-1]]
    if action.type is int:
        return ["1"]
    metavar = str(action.metavar or "")
    if "=" in metavar:
        return ["r.example=/a,/b" if "," in metavar else "r.example=m.example"]
    return ["1M" if action.dest == "chunk_size" else "value"]


def test_the_guide_lists_flags_in_every_section():
    assert len(_flag_rows()) > 60 and {s for _, s in _flag_rows()} == {"same", "differs", "new", "not yet"}


@pytest.mark.parametrize("flag, status", _flag_rows())
def test_each_flag_exists_and_is_refused_exactly_when_the_guide_says_not_yet(build_parser, flag, status):
    actions = {s: a for a in build_parser._actions for s in a.option_strings}
    assert flag in actions, f"the guide lists {flag}, `snapfs build` does not know it"
    argv = ["build", "-d", "r.example/app:1", "--secret=id=x,src=" + __file__, flag, *_sample(actions[flag])]
    if flag == "--secret":
        argv = argv[:3] + argv[4:]
    try:
        options_from_args(build_parser.parse_args(argv[1:]))
    except errors.NotSupportedError as exc:
        assert status == "not yet", f"{flag} is refused ({exc.message}) but the guide says {status!r}"
        assert exc.exit_code == 2 and "not supported yet" in exc.message
        return
    except errors.UsageError:  # the sample value, not the flag: still not a refusal
        pass
    assert status != "not yet", f"the guide says {flag} is not supported yet, but it is accepted"


def test_the_environment_table_is_what_the_builder_reads():
    listed = {re.sub(r"`", "", cells[0]) for cells in _sections()["Environment"]}
    assert listed - {"any other KANIKO_*"} == set(kaniko_compat.KANIKO_ENV)


def _error_classes() -> list[type]:
    todo, out = [errors.SnapfsError], []
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo += cls.__subclasses__()
    return [c for c in out if c.__module__ == errors.__name__]


def test_exit_codes_table():
    rows = _sections()["Exit codes"]
    table: dict[int, str] = {}
    for cells in rows:
        for code in re.findall(r"\d+", cells[0]):
            table[int(code)] = cells[1]
    assert all(re.fullmatch(r"[\d, ]+", cells[0]) for cells in rows), "every row names fixed codes"
    interrupted = {128 + int(s) for s in lifecycle.SIGNALS}
    own = {cls.exit_code for cls in _error_classes()}
    assert set(table) == {0, 1} | own | interrupted, "codes in the guide vs codes snapfs returns"
    assert len(own) == len({cls.exit_code for cls in _error_classes() if cls is not errors.NotSupportedError})
    # each class's code is the row that describes it
    words = {errors.UsageError: "command line", errors.InputError: "missing", errors.LayerError: "layer",
             errors.SnapshotError: "snapshot", errors.RegistryError: "registry", errors.DockerfileError: "Dockerfile",
             errors.BuildError: "build step", errors.RunFailedError: "RUN command",
             errors.NotSupportedError: "not supported yet"}
    for cls in _error_classes():
        if cls is not errors.SnapfsError:
            assert words[cls] in table[cls.exit_code], (cls.__name__, cls.exit_code, table[cls.exit_code])
    for code in interrupted:
        assert "interrupted" in table[code]
    conventions = open(GUIDE).read().split("## ", 1)[0]
    assert f"exit code {errors.NotSupportedError.exit_code})" in conventions


def test_the_warmers_flags_are_those_of_snapfs_warm():
    sub = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["warm"]
    known = {opt for action in sub._actions for opt in action.option_strings}
    rows = _sections()["The warmer: `snapfs warm`"]
    assert rows
    listed = {name.split()[0] for cells in rows if cells[1] != "not yet" for name in re.findall(r"`(-[^`]*)`", cells[0])}
    assert listed and listed <= known, sorted(listed - known)
