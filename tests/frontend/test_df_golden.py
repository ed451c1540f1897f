"""Golden cases: ``golden/<case>/Dockerfile`` (+ optional ``args.json``) against ``expected.json`` (the plan as
``snapfs parse --json`` prints it) or ``expected_error.txt`` (the one-line error).

Set ``SNAPFS_UPDATE_GOLDEN=1`` to rewrite the expected files after a deliberate change, then review the diff.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from snapfs.cli.dockerfile import plan_to_json
from snapfs.errors import DockerfileError
from snapfs.frontend.plan import plan_build
from snapfs.frontend.syntax import parse

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "Dockerfile").is_file())
UPDATE = os.environ.get("SNAPFS_UPDATE_GOLDEN") == "1"


def run_case(case: str) -> tuple[str, str]:
    """("json", text) or ("error", message) for one case directory."""
    folder = GOLDEN / case
    opts = json.loads((folder / "args.json").read_text()) if (folder / "args.json").exists() else {}
    data = (folder / "Dockerfile").read_bytes()
    try:
        df = parse(data, file="Dockerfile")
        plan = plan_build(df, build_args=opts.get("build_args"), target=opts.get("target"),
                          target_platform=opts.get("platform", "linux/amd64"), build_platform="linux/amd64")
        doc = plan_to_json(plan, directives=dict(df.directives), warnings=list(df.warnings))
    except DockerfileError as exc:
        return "error", exc.message + "\n"
    return "json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def test_there_are_cases_for_every_area():
    prefixes = {c.split("_", 1)[0] for c in CASES}
    assert prefixes == {"syntax", "ins", "exp", "stages", "err"}
    assert len(CASES) >= 80


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str):
    kind, text = run_case(case)
    folder = GOLDEN / case
    expected_json, expected_err = folder / "expected.json", folder / "expected_error.txt"
    if UPDATE:
        for stale in (expected_json, expected_err):
            stale.unlink(missing_ok=True)
        (expected_json if kind == "json" else expected_err).write_text(text)
    if case.startswith("err_"):
        assert kind == "error", f"{case} should fail but parsed"
        assert text == expected_err.read_text()
    else:
        assert kind == "json", f"{case} failed: {text}"
        assert json.loads(text) == json.loads(expected_json.read_text())
