"""Every corpus case (``tests/build/cases/``) built by snapfs and by ``buildah bud --isolation chroot`` and the
two images compared: each file's type, mode, owner, size, link target, content and hard-link group, the config
(see ``parity.CONFIG_KEYS``); not the layers (see ``parity.py``). An error case must fail with buildah too.

A case opts out only with a reason, in ``expect.toml`` (top level, or a ``[buildah]`` table)::

    buildah = "skip: heredocs need buildah >= 1.33"
    [buildah]
    skip = "..."                          # the same, as a table key
    known = { "config:WorkingDir" = "BuildKit sets ...; buildah ..." }   # difference key -> why

Difference keys are described in ``parity.py``. A known difference that no longer occurs fails the case, so the
list stays true. The terminal summary prints the corpus size and how many cases were compared and matched.
"""
from __future__ import annotations

import os

import pytest
from parity import RESULTS, compare_configs, compare_trees, tree
from test_corpus import CASES, _build_kwargs, _cases, _make_context, _serve, _validate

from snapfs.errors import SnapfsError

pytestmark = pytest.mark.slow


def opt_out(expect: dict) -> tuple[str | None, dict[str, str]]:
    """The case's reason to skip the comparison (or None) and its known differences (validated by _validate)."""
    spec = expect.get("buildah")
    if spec is None:
        return None, {}
    if isinstance(spec, str):
        return spec.removeprefix("skip: "), {}
    return spec.get("skip"), spec.get("known", {})


def _compared_cases() -> list:
    """The cases to compare. Opted-out ones are recorded for the summary, not collected: a skip fails the run
    under scripts/test.sh, and an opt-out with its reason in expect.toml is a decision, not a missing tool."""
    out = []
    for case in _cases():
        name, expect = case.values if hasattr(case, "values") else case
        skip, _ = opt_out(expect)
        if skip:
            RESULTS[name] = f"skipped: {skip}"
        else:
            out.append(case)
    return out


@pytest.mark.parametrize("name,expect", _compared_cases())
def test_same_as_buildah(name, expect, run_build, buildah, tmp_path, monkeypatch):
    _validate(expect)
    _, known = opt_out(expect)
    case_dir = os.path.join(CASES, name)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    with open(os.path.join(case_dir, "Dockerfile")) as f:
        dockerfile = f.read()
    ctx = str(tmp_path / "ctx")
    _make_context(case_dir, ctx, expect.get("context", {}))
    spec = expect.get("build", {})
    kw = _build_kwargs(spec, tmp_path)
    secret_files = dict(kw.get("secrets", ()))
    tag = f"localhost/parity/{name}:latest"
    diffs: dict[str, str] = {}
    outcome = "both built"
    with _serve(case_dir, str(tmp_path / "served"), expect.get("serve")) as url:
        if url is not None:
            dockerfile = dockerfile.replace("{{HTTP}}", url)
        try:
            ours, ours_error = run_build(dockerfile, **kw), None
        except SnapfsError as exc:
            ours, ours_error = None, exc.message
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(dockerfile)
        r = buildah.bud(ctx, tag, build=spec, secret_files=secret_files)
        if r.returncode and ours_error is None:
            # The reference flakes: buildah's chroot RUN failed once in ~2,000 builds here ("exit status 1" for
            # `echo $W > /w`, passing on every rerun). One retry tells that from a real refusal, which repeats.
            first = (r.stderr.strip().splitlines() or ["failed"])[-1]
            r = buildah.bud(ctx, tag, build=spec, secret_files=secret_files)
            if r.returncode == 0:
                print(f"{name}: buildah failed once ({first}) and built on the retry")
    try:
        if ours_error is not None or r.returncode:
            theirs_error = (r.stderr.strip().splitlines() or ["failed"])[-1] if r.returncode else None
            outcome = f"snapfs: {ours_error or 'built'}; buildah: {theirs_error or 'built'}"
            if ours_error is None or theirs_error is None:
                diffs["error"] = outcome
        else:
            rootfs, config = buildah.export(tag, str(tmp_path / "buildah"))
            diffs.update(compare_trees(tree(ours.rootfs), tree(rootfs)))
            diffs.update(compare_configs(ours.config, config))
    finally:
        buildah.remove(tag)
    unexpected = {k: v for k, v in diffs.items() if k not in known}
    stale = sorted(set(known) - set(diffs))
    RESULTS[name] = "differs" if unexpected or stale else ("known" if diffs else "matched")
    assert not unexpected and not stale, f"{name}: differences from buildah:\n  " + "\n  ".join(
        [f"{k}: {v}" for k, v in unexpected.items()]
        + [f"{k}: listed as known but does not occur ({outcome})" for k in stale])
