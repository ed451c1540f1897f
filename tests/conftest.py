"""Shared fixtures. Area-specific fixtures live in tests/<area>/conftest.py."""
from __future__ import annotations

import os
import sys

import pytest

from snapfs.engine import backend as _backend

sys.path.insert(0, os.path.dirname(__file__))
from toolcheck import missing_tools, report  # noqa: E402


def pytest_sessionstart(session: pytest.Session) -> None:
    # CI must test the compiled kernel: a broken build may not silently run the pure-Python twin.
    if os.environ.get("SNAPFS_REQUIRE_COMPILED") == "1":
        import snapfs._fast  # noqa: F401  (raises if missing)

        if _backend.active_name() != "compiled":
            pytest.exit("SNAPFS_REQUIRE_COMPILED=1 but the active kernel is not the compiled one", returncode=3)
    # Every missing program at once, before the first test: not one skip (or failure) per test, deep in the run.
    missing = missing_tools()
    if missing and os.environ.get("SNAPFS_NO_SKIP") == "1":
        pytest.exit(report(missing), returncode=4)
    if missing:
        print(f"warning: {report(missing)} (tests that need them skip)", file=sys.stderr)


@pytest.fixture(params=["compiled", "python"])
def kernel(request):
    """Each kernel test runs against the compiled module and its pure-Python twin."""
    return _backend.get(request.param)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under scripts/test.sh (and so in CI) a skip is a failure: a missing tool must not pass silently."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("SNAPFS_NO_SKIP") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped where every test must run (SNAPFS_NO_SKIP=1): {reason}"


@pytest.fixture(scope="session", autouse=True)
def _basetemp_for_mount_checks(tmp_path_factory):
    """rootfs_kit.mountinfo tells this run's mounts from other runs' by this run's pytest basetemp."""
    os.environ["SNAPFS_TEST_BASETEMP"] = str(tmp_path_factory.getbasetemp())
    yield


@pytest.fixture(autouse=True)
def _snapfs_logger_restored():
    """A test that runs a command in this process sets up the CLI's logging (its own handler, no propagation):
    the next test's ``caplog`` must still see snapfs's records, so the logger is put back after every test."""
    import logging

    names = ("snapfs", "snapfs.run")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate, logging.getLogger(n).level)
             for n in names}
    yield
    for n, (handlers, propagate, level) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers[:] = handlers
        lg.propagate, lg.level = propagate, level
    top = logging.getLogger()  # --log-format json also takes over the root logger and Python's warnings
    top.handlers[:] = [h for h in top.handlers if type(h).__name__ != "_StderrHandler"]
    logging.captureWarnings(False)
