"""Shared fixtures. Area-specific fixtures live in tests/<area>/conftest.py."""
from __future__ import annotations

import os

import pytest

from snapfs import backend as _backend


def pytest_sessionstart(session: pytest.Session) -> None:
    # CI must test the compiled kernel: a broken build may not silently run the pure-Python twin.
    if os.environ.get("SNAPFS_REQUIRE_COMPILED") == "1":
        import snapfs._fast  # noqa: F401  (raises if missing)

        if _backend.active_name() != "compiled":
            pytest.exit("SNAPFS_REQUIRE_COMPILED=1 but the active kernel is not the compiled one", returncode=3)


@pytest.fixture(params=["compiled", "python"])
def kernel(request):
    """Each kernel test runs against the compiled module and its pure-Python twin."""
    return _backend.get(request.param)
