"""What the package ships: the Apache-2.0 license text (Kaniko's license), the PEP 561 marker, classifiers from the
official list and project URLs, in pyproject.toml and in the wheel pip builds from it."""
from __future__ import annotations

import email
import glob
import os
import subprocess
import sys
import tomllib
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _is_apache_2(text: str) -> bool:
    """The whole standard text, not a stub: its title, all nine sections and the appendix."""
    sections = ["1. Definitions.", "2. Grant of Copyright License.", "3. Grant of Patent License.",
                "4. Redistribution.", "5. Submission of Contributions.", "6. Trademarks.",
                "7. Disclaimer of Warranty.", "8. Limitation of Liability.", "9. Accepting Warranty or Additional"]
    return (text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
            and all(s in text for s in sections) and "END OF TERMS AND CONDITIONS" in text
            and "APPENDIX: How to apply the Apache License to your work." in text and len(text) > 11000)


def test_license_py_typed_classifiers_and_urls_are_declared():
    trove = pytest.importorskip("trove_classifiers")
    with open(os.path.join(REPO, "LICENSE")) as f:
        assert _is_apache_2(f.read())
    assert os.path.isfile(os.path.join(REPO, "src", "snapfs", "py.typed"))
    project = _pyproject()["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    classifiers = project["classifiers"]
    assert [c for c in classifiers if c not in trove.classifiers] == []
    assert "License :: OSI Approved :: Apache Software License" in classifiers and "Typing :: Typed" in classifiers
    assert f"Programming Language :: Python :: {sys.version_info[0]}.{sys.version_info[1]}" in classifiers
    urls = project["urls"]
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["snapfs"]


@pytest.mark.slow
def test_the_wheel_carries_them(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), REPO],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = glob.glob(str(tmp_path / "snapfs-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "snapfs/py.typed" in names
        (lic,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE")]
        assert _is_apache_2(z.read(lic).decode())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        msg = email.message_from_bytes(z.read(meta))
    assert msg.get_all("Classifier") == _pyproject()["project"]["classifiers"]
    assert {u.split(",")[0] for u in msg.get_all("Project-URL")} == set(_pyproject()["project"]["urls"])
