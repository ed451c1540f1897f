"""The README's public API resolves, and importing it stays cheap: ``import snapfs`` and the RUN sandbox's init
process load neither the kernel nor the compression and hashing libraries (each RUN step pays for its init)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import snapfs

HEAVY = ("snapfs._fast", "zstandard", "isal", "xxhash", "httpx")
SRC = os.path.dirname(os.path.dirname(os.path.abspath(snapfs.__file__)))


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; import json; print(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {SRC!r}); {code}"],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


@pytest.mark.parametrize("statement", ["import snapfs", "import snapfs.run.sandbox_init"])
def test_light_imports(statement):
    loaded = _loaded_after(statement)
    assert [m for m in HEAVY if m in loaded] == []


def test_readme_names_resolve():
    for name in ("take", "diff", "write_layer", "apply_layers", "build", "load", "save", "BuildOptions",
                 "OutputOptions", "SnapfsError"):
        assert callable(getattr(snapfs, name)), name
    from snapfs.builder.pipeline import BuildOptions
    from snapfs.image.transports import OutputOptions

    assert snapfs.BuildOptions is BuildOptions and snapfs.OutputOptions is OutputOptions
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        snapfs.nope  # noqa: B018
