"""Every flag of Kaniko 1.23's executor is accepted by `snapfs build` (with an effect, or an INFO line saying why it
has none) or refused with "not supported yet"; never silently dropped. Kaniko's KANIKO_* variables likewise.

The table is Kaniko v1.23's ``cmd/executor/cmd/root.go`` (``addKanikoOptionsFlags``, ``init``, deprecated flags).
"""
from __future__ import annotations

import argparse
import logging

import pytest

from snapfs.cli.build import normalize_booleans, options_from_args
from snapfs.cli.main import main, make_parser
from snapfs.errors import NotSupportedError, UsageError

EFFECT, INFO, REFUSED, CLI = "effect", "info", "refused", "cli"
ANY = "any"  # the layer-cache flags, being implemented elsewhere: any of the three, never silent

KANIKO_1_23 = [
    (["-f", "sub/Dockerfile"], EFFECT), (["--dockerfile=sub/Dockerfile"], EFFECT),
    (["-c", "/src"], EFFECT), (["--context", "dir:///src"], EFFECT), (["--context-sub-path", "app"], EFFECT),
    (["-b", "ctx-bucket"], EFFECT), (["--bucket", "ctx-bucket"], EFFECT),
    (["-d", "r.example/other:2"], EFFECT), (["--destination", "r.example/other:2"], EFFECT),
    (["--snapshot-mode", "redo"], EFFECT), (["--custom-platform", "linux/arm64"], EFFECT),
    (["--build-arg", "A=1"], EFFECT),
    (["--insecure"], EFFECT), (["--skip-tls-verify"], EFFECT), (["--insecure-pull"], EFFECT),
    (["--skip-tls-verify-pull"], EFFECT), (["--push-retry", "2"], EFFECT),
    (["--push-ignore-immutable-tag-errors"], EFFECT), (["--image-fs-extract-retry", "2"], EFFECT),
    (["--image-download-retry", "2"], EFFECT), (["--kaniko-dir", "/k"], INFO), (["--tar-path", "img.tar"], EFFECT),
    (["--single-snapshot"], EFFECT), (["--reproducible"], EFFECT), (["--target", "build"], EFFECT),
    (["--no-push"], EFFECT), (["--no-push-cache"], ANY), (["--cache-repo", "r.example/cache"], ANY),
    (["--cache-dir", "/cache"], ANY), (["--digest-file", "d"], EFFECT),
    (["--image-name-with-digest-file", "n"], EFFECT), (["--image-name-tag-with-digest-file", "t"], EFFECT),
    (["--oci-layout-path", "oci"], EFFECT), (["--compression", "zstd"], EFFECT),
    (["--compression-level", "3"], EFFECT), (["--cache"], ANY), (["--compressed-caching=false"], ANY),
    (["--cleanup"], EFFECT), (["--cache-ttl", "6h"], ANY), (["--insecure-registry", "r.example"], EFFECT),
    (["--skip-tls-verify-registry", "r.example"], EFFECT),
    (["--registry-certificate", "r.example=/ca.pem"], EFFECT),
    (["--registry-client-cert", "r.example=/c.pem,/k.pem"], EFFECT),
    (["--registry-map", "index.docker.io=m.example;quay.io=q.example"], EFFECT),
    (["--registry-mirror", "m.example"], EFFECT), (["--skip-default-registry-fallback"], EFFECT),
    (["--ignore-var-run=false"], EFFECT), (["--label", "a=b"], EFFECT), (["--skip-unused-stages=false"], INFO),
    (["--use-new-run"], INFO), (["--git", "branch=main"], EFFECT), (["--cache-copy-layers"], ANY),
    (["--cache-run-layers"], ANY), (["--ignore-path", "/x"], EFFECT), (["--force-build-metadata"], REFUSED),
    (["--force-build-metadata=false"], EFFECT_NONE := "unchanged"), (["--skip-push-permission-check"], EFFECT),
    (["--snapshotMode", "redo"], EFFECT), (["--customPlatform", "linux/arm64"], EFFECT),
    (["--tarPath", "img.tar"], EFFECT), (["--whitelist-var-run=false"], EFFECT),
    (["-v", "debug"], CLI), (["--verbosity", "debug"], CLI), (["--log-format", "json"], CLI),
    (["--log-timestamp"], CLI), (["--force"], INFO),
]
BASE = ["build", "-d", "r.example/app:1"]


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("KANIKO_DIR", "SNAPFS_DIR", "KANIKO_NO_PUSH", "KANIKO_REGISTRY_MIRROR", "KANIKO_REGISTRY_MAP",
                "BENCHMARK_FILE"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def logs():
    """Lines logged under snapfs (its root logger does not propagate once a build configured logging)."""
    lines: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: lines.append(f"{record.levelname} {record.getMessage()}")
    root = logging.getLogger("snapfs")
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lines
    root.removeHandler(handler)
    root.setLevel(old)


def _options(argv):
    args = make_parser().parse_args(normalize_booleans(argv))
    return args, options_from_args(args)


@pytest.mark.parametrize("flag, outcome", KANIKO_1_23, ids=[" ".join(f) for f, _ in KANIKO_1_23])
def test_every_kaniko_flag_is_honoured_said_or_refused(clean_env, logs, flag, outcome):
    bare_args, bare = _options(BASE)
    logs.clear()
    try:
        args, got = _options(BASE + flag)
    except NotSupportedError as exc:
        assert outcome in (REFUSED, ANY) and "not supported yet" in exc.message and exc.exit_code == 2, exc.message
        return
    name = flag[0].split("=")[0]
    said = [line for line in logs if line.startswith("INFO") and name in line and "no effect" in line]
    if outcome == CLI:  # logging flags: read by setup_logging, not by the build
        assert vars(args) != vars(bare_args)
    elif outcome == "unchanged":  # an explicit Kaniko default
        assert got == bare
    elif outcome == EFFECT:
        assert got != bare, "accepted and changed nothing"
    elif outcome == INFO:
        assert said, f"no INFO line saying why {name} has no effect: {logs}"
    else:
        assert outcome == ANY and (got != bare or said), f"{name} silently ignored"


def test_the_table_is_every_spelling_the_parser_knows_from_kaniko(clean_env):
    build = _build_parser()
    known = {s for a in build._actions for s in a.option_strings}
    missing = [f[0].split("=")[0] for f, _ in KANIKO_1_23 if f[0].split("=")[0] not in known]
    assert missing == []


def _build_parser() -> argparse.ArgumentParser:
    sub = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["build"]


@pytest.mark.parametrize("command", ["build", "pull", "push"])
def test_every_flag_has_help(clean_env, command):
    sub = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    no_help = [a.option_strings for a in sub.choices[command]._actions
               if a.option_strings and a.help != argparse.SUPPRESS and not (a.help or "").strip()]
    assert no_help == []


# ------------------------------------------------------------------------------------------- what the flags do

def test_deprecated_spellings_set_the_current_flag_and_warn(clean_env, logs):
    args, o = _options(BASE + ["--snapshotMode=redo", "--customPlatform=linux/arm64", "--tarPath=x.tar",
                               "--whitelist-var-run=false"])
    assert (o.snapshot_mode, o.custom_platform, o.outputs.tar_path, o.ignore_var_run) == \
        ("redo", "linux/arm64", "x.tar", False)
    assert "WARNING --snapshotMode is deprecated (as in Kaniko): use --snapshot-mode" in logs
    assert "WARNING --whitelist-var-run=false is deprecated (as in Kaniko): use --ignore-var-run=false" in logs
    assert not [line for line in logs if "--no-snapfs" in line]  # the hidden negative form is never shown
    _, o = _options(BASE + ["--whitelist-var-run"])
    assert o.ignore_var_run is True


def test_bucket_is_a_gcs_context(clean_env):
    assert _options(BASE + ["-b", "ctx"])[1].context == "gs://ctx"
    assert _options(BASE + ["-b", "s3://ctx/app.tgz"])[1].context == "s3://ctx/app.tgz"
    assert _options(BASE + ["-b", "ctx", "-c", "gs://other"])[1].context == "gs://ctx"  # Kaniko: bucket wins
    with pytest.raises(UsageError, match=r"^--bucket ctx and the local --context /src: give one of them$"):
        _options(BASE + ["-b", "ctx", "-c", "/src"])


def test_image_fs_extract_retry_retries_the_download(clean_env):
    assert _options(BASE + ["--image-fs-extract-retry=3"])[1].registry.image_download_retry == 3
    assert _options(BASE + ["--image-fs-extract-retry=1", "--image-download-retry=4"])[1] \
        .registry.image_download_retry == 4
    with pytest.raises(UsageError):
        _options(BASE + ["--image-fs-extract-retry=-1"])


def test_kaniko_registry_map_form(clean_env):
    o = _options(BASE + ["--registry-map", "index.docker.io=m.example;quay.io=q.example;q2.example"])[1]
    assert o.registry.registry_maps == (("docker.io", "m.example"), ("quay.io", "q.example"),
                                        ("quay.io", "q2.example"))


@pytest.mark.parametrize("argv, message", [
    (["build", "--no-push", "--image-name-with-digest-file=n"],
     "snapfs: --image-name-with-digest-file needs a --destination (the file lists each destination with the "
     "digest)"),
    (["build", "--no-push", "--image-name-tag-with-digest-file", "t"],
     "snapfs: --image-name-tag-with-digest-file needs a --destination (the file lists each destination with the "
     "digest)"),
    (["build", "--no-push", "--custom-platform", "linux/amd64,linux/arm64"],
     "snapfs: --custom-platform linux/amd64,linux/arm64: one platform per build, as in Kaniko; multi-platform "
     "builds are not supported yet"),
    (["build", "--no-push", "--customPlatform=linux/amd64,linux/arm64/v8"],
     "snapfs: --custom-platform linux/amd64,linux/arm64/v8: one platform per build, as in Kaniko; "
     "multi-platform builds are not supported yet"),
    (["build", "--no-push", "--force-build-metadata=true"],
     "snapfs: --force-build-metadata (a layer for every metadata instruction) is not supported yet"),
])
def test_refused_before_any_work(clean_env, capsys, tmp_path, argv, message):
    # The context does not exist: a refusal that came after any work would say so instead.
    assert main(argv + ["-c", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message


# ----------------------------------------------------------------------------------- Kaniko's environment

def test_kaniko_variables_are_honoured_and_flags_win(clean_env, logs):
    clean_env.setenv("KANIKO_REGISTRY_MIRROR", "mirror.example")
    clean_env.setenv("KANIKO_REGISTRY_MAP", "quay.io=q.example;gcr.io=g.example")
    clean_env.setenv("KANIKO_NO_PUSH", "true")
    clean_env.setenv("BENCHMARK_FILE", "/tmp/bench.json")
    _, o = _options(BASE)
    assert o.registry.registry_mirrors == ("mirror.example",)
    assert o.registry.registry_maps == (("quay.io", "q.example"), ("gcr.io", "g.example"))
    assert o.outputs.no_push is True and o.benchmark_file == "/tmp/bench.json"
    logs.clear()
    _, o = _options(BASE + ["--registry-mirror=flag.example", "--registry-map=quay.io=f.example",
                            "--no-push=false", "--benchmark-file=/tmp/b2.json"])
    assert o.registry.registry_mirrors == ("flag.example",)
    assert o.registry.registry_maps == (("quay.io", "f.example"),)
    assert o.outputs.no_push is False and o.benchmark_file == "/tmp/b2.json"
    assert "INFO KANIKO_REGISTRY_MIRROR ignored: --registry-mirror was given" in logs
    assert "INFO KANIKO_NO_PUSH=true: ignored, --no-push=false was given" in logs


@pytest.mark.parametrize("var, value, line", [
    ("KANIKO_DIR", "/kaniko", "INFO KANIKO_DIR has no effect: snapfs keeps its files in SNAPFS_DIR (--snapfs-dir)"),
    ("KANIKO_FANCY", "1", "WARNING KANIKO_FANCY is ignored: Kaniko's executor does not read it, nor does snapfs"),
    ("BENCHMARK_FILE", "gs://b/bench.json",
     "WARNING BENCHMARK_FILE=gs://b/bench.json ignored: uploading timings to a bucket is not supported yet"),
])
def test_kaniko_variables_not_honoured_are_said(clean_env, logs, var, value, line):
    clean_env.setenv(var, value)
    _options(BASE)
    assert line in logs


def test_a_bad_kaniko_no_push_is_a_usage_error(clean_env):
    clean_env.setenv("KANIKO_NO_PUSH", "yes please")
    with pytest.raises(UsageError, match=r"^KANIKO_NO_PUSH='yes please': expected true or false$"):
        _options(BASE)
