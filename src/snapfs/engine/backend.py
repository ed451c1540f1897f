"""Selects the kernel implementation: the compiled Cython module or its pure-Python twin.

Both expose the same functions (``walk``, ``diff_rows``, ``hash_file``) and the same test suite runs against
both. ``SNAPFS_PURE_PYTHON=1`` forces the twin; ``SNAPFS_REQUIRE_COMPILED=1`` (set by CI) makes a missing or
broken compiled module an import error instead of a 10x slower run. Without either, a fallback is logged.
"""
from __future__ import annotations

import logging
import os
from types import ModuleType

from . import _pure

log = logging.getLogger(__name__)

try:
    from snapfs import _fast as _compiled
    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _compiled = None
    _IMPORT_ERROR = exc

if _compiled is None and os.environ.get("SNAPFS_REQUIRE_COMPILED") == "1":
    raise ImportError(f"snapfs: the compiled kernel snapfs._fast is required but failed to import: {_IMPORT_ERROR}")


def get(name: str | None = None) -> ModuleType:
    """The kernel module by name (``compiled`` or ``python``), or the active one."""
    if name is None:
        name = "python" if os.environ.get("SNAPFS_PURE_PYTHON") == "1" else "compiled"
        if name == "compiled" and _compiled is None:
            log.warning("snapfs: compiled kernel unavailable (%s); using the pure-Python twin", _IMPORT_ERROR)
            return _pure
    if name == "python":
        return _pure
    if name == "compiled":
        if _compiled is None:
            raise ImportError(f"snapfs._fast is not built: {_IMPORT_ERROR}")
        return _compiled
    raise ValueError(f"unknown backend {name!r}")


def active_name() -> str:
    return "compiled" if get() is _compiled else "python"
