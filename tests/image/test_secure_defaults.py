"""Secure by default: every option of ``snapfs build``, ``pull`` and ``push`` parses to its documented default,
and what the defaults mean against real registries: TLS verified, plain HTTP refused, credentials kept off it.

The tables below are the documented defaults. A new option fails ``test_*_defaults`` until it is added here
(and to docs/migrating-from-kaniko.md for ``build``), so no option gets a default nobody decided on.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess

import pytest

from registry_servers import TLS_PASSWORD, TLS_USER, RegistryProcess, TcpCounter, need
from snapfs.cli.build import normalize_booleans, options_from_args
from snapfs.cli.main import main, make_parser
from snapfs.errors import RegistryError
from snapfs.image.blobstore import BlobStore
from snapfs.image.layout import read_layout
from snapfs.image.reference import parse_reference
from snapfs.image.registry.client import RegistryClient, RegistryConnectionError, RegistryOptions, RegistryTLSError
from snapfs.image.registry.credentials import ANONYMOUS, Credential
from snapfs.image.registry.pull import pull_image
from snapfs.image.registry.push import push_image

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "migrating-from-kaniko.md")

# dest: (default after parsing a bare command, what the --help text says the default is, or None when it says
# nothing, a phrase the flag's row in the migration guide must hold, or None)
BUILD_DEFAULTS = {
    "context": ("/workspace/", "/workspace/", "default `/workspace/`"),
    "dockerfile": ("Dockerfile", None, None),
    "context_sub_path": ("", None, None),
    "git": ("", None, None),
    "build_arg": ([], None, None),
    "target": (None, None, None),
    "custom_platform": (None, None, None),
    "platform_mismatch": ("error", "error", "default `error`"),
    "destination": ([], None, None),
    "tar_path": (None, None, None),
    "oci_layout_path": (None, None, "written only after every push succeeded"),
    "digest_file": (None, None, None),
    "image_name_with_digest_file": (None, None, None),
    "image_name_tag_with_digest_file": (None, None, None),
    "label": ([], None, None),
    "compression": ("gzip", None, "`gzip` (default"),
    "compression_level": (None, None, None),
    "image_format": ("oci", "oci", "`oci` (default)"),
    "snapshot_mode": ("full", None, "`full` (default)"),
    "ignore_path": ([], None, None),
    "secret": ([], None, None),
    "cache_dir": (None, None, None),
    "cache_repo": (None, "<first destination's repository>/cache", "default `<first destination's repository>/cache`"),
    "cache_ttl": (None, "336h", "default `336h`"),
    "cache_report": (None, None, None),
    "kaniko_dir": (None, None, None),           # KANIKO_DIR when set
    "snapfs_dir": (None, "/snapfs", "default `/snapfs`"),  # SNAPFS_DIR when set; /snapfs in the executor image
    "benchmark_file": (None, None, None),
    "in_container": ("auto", None, "`auto` (default)"),
    "isolation": ("auto", None, None),
    "verbosity": ("info", None, None),
    "log_format": ("text", None, None),
    "no_push": (False, None, None),
    "reproducible": (False, None, None),
    "single_snapshot": (False, None, None),
    "cache": (False, "false", "default false"),
    "cache_copy_layers": (False, "false", "default false"),
    "cache_run_layers": (True, "true", "default true"),
    "no_push_cache": (False, "false", "default false"),
    "use_new_run": (False, None, None),
    "ignore_var_run": (True, None, "default true"),
    "cleanup": (False, None, None),
    "skip_unused_stages": (True, None, "on by default"),
    "log_timestamp": (False, None, None),
    "compressed_caching": (True, None, None),
    "force": (False, None, None),
    "skip_push_permission_check": (False, "false: checked", "default false"),
    # security-relevant: plain HTTP refused, TLS verified, no silent fallback
    "insecure": (False, None, "default false: plain HTTP is refused"),
    "insecure_pull": (False, None, "default false: plain HTTP is refused"),
    "insecure_registry": ([], None, "default false: plain HTTP is refused"),
    "skip_tls_verify": (False, None, "default false: certificates are verified"),
    "skip_tls_verify_pull": (False, None, "default false: certificates are verified"),
    "skip_tls_verify_registry": ([], None, "default false: certificates are verified"),
    "registry_certificate": ([], None, None),
    "registry_client_cert": ([], None, None),
    "registry_mirror": ([], None, None),
    "registry_map": ([], None, None),
    "skip_default_registry_fallback": (False, None, "default false"),
    "push_retry": (0, None, None),
    "image_download_retry": (0, None, None),
    "chunk_size": (None, "64M", None),
    # Kaniko's rarer flags (snapfs.cli.kaniko_compat); KANIKO_NO_PUSH=true would make no_push default to true
    "bucket": (None, None, None),
    "image_fs_extract_retry": (0, None, None),
    "push_ignore_immutable_tag_errors": (False, None, "default false"),
    "force_build_metadata": (False, None, "refused"),
}

_REGISTRY = {k: BUILD_DEFAULTS[k] for k in (
    "insecure", "insecure_pull", "insecure_registry", "skip_tls_verify", "skip_tls_verify_pull",
    "skip_tls_verify_registry", "registry_certificate", "registry_client_cert", "registry_mirror", "registry_map",
    "skip_default_registry_fallback", "push_retry", "image_download_retry", "chunk_size")}
PULL_DEFAULTS = {"ref": ("busybox", None, None), "oci_layout": ("out", None, None),
                 "platform": (None, "host", None), "cache_dir": (None, None, None), "verbose": (0, None, None),
                 **_REGISTRY}
PUSH_DEFAULTS = {"source": ("out", None, None), "ref": (["r.example/x:1"], None, None),
                 "digest_file": (None, None, None), "cache_dir": (None, None, None), "verbose": (0, None, None),
                 **_REGISTRY}
WARM_DEFAULTS = {"image": ([], None, None), "images_file": (None, None, None),
                 "cache_dir": (None, "the one snapfs build uses without --cache-dir", None),
                 "force": (False, None, None), "custom_platform": (None, "the host's", None),
                 "dockerfile": (None, None, None), "build_arg": ([], None, None),  # refused: not supported yet
                 "verbosity": ("info", None, None), "log_format": ("text", None, None),
                 "log_timestamp": (False, None, None), **_REGISTRY}
BARE = {"build": ["build"], "pull": ["pull", "busybox", "--oci-layout", "out"],
        "push": ["push", "out", "r.example/x:1"]}
BARE["warm"] = ["warm"]
TABLES = {"build": BUILD_DEFAULTS, "pull": PULL_DEFAULTS, "push": PUSH_DEFAULTS}
TABLES["warm"] = WARM_DEFAULTS


@pytest.fixture
def parser(monkeypatch):
    for var in ("KANIKO_DIR", "SNAPFS_DIR", "KANIKO_NO_PUSH"):  # defaults read at parser creation
        monkeypatch.delenv(var, raising=False)
    return make_parser()


def _subparser(parser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _doc_rows() -> list[str]:
    with open(DOCS) as f:
        return [line for line in f if line.startswith("| `")]


@pytest.mark.parametrize("command", ["build", "pull", "push", "warm"])
def test_every_option_parses_to_its_documented_default(parser, command):
    table = TABLES[command]
    got = vars(parser.parse_args(BARE[command]))
    got.pop("func"), got.pop("command")
    assert sorted(set(got) - set(table)) == [], "options without an expected default in this test's table"
    assert sorted(set(table) - set(got)) == [], "options in the table that the command no longer has"
    wrong = {dest: (got[dest], want) for dest, (want, _h, _d) in table.items() if got[dest] != want}
    assert wrong == {}, "dest: (parsed, documented)"
    # What --help says about a default is the same as the table (and says nothing it does not mean).
    for action in _subparser(parser, command)._actions:
        if action.dest in table and action.help and action.help != argparse.SUPPRESS:
            said = re.search(r"default:? ([^;)]+)", action.help)
            assert (said.group(1) if said else None) == table[action.dest][1], action.option_strings


def test_every_build_option_is_in_the_migration_guide_with_its_default(parser):
    rows = _doc_rows()
    for action in _subparser(parser, "build")._actions:
        if action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        flag = max(action.option_strings, key=len)
        mine = [r for r in rows if f"`{flag}`" in r.split("|")[1] or f"`{flag} " in r.split("|")[1]]
        assert mine, f"{flag} is not documented in docs/migrating-from-kaniko.md"
        phrase = BUILD_DEFAULTS[action.dest][2]
        if phrase:
            assert any(phrase in r for r in mine), f"{flag}: its row does not say {phrase!r}"


@pytest.mark.parametrize("argv, dest, value", [
    (["--insecure=true"], "insecure", True), (["--insecure=false"], "insecure", False),
    (["--skip-tls-verify=True"], "skip_tls_verify", True), (["--insecure-pull=1"], "insecure_pull", True),
    (["--skip-tls-verify-pull=false"], "skip_tls_verify_pull", False),
    (["--skip-push-permission-check=true"], "skip_push_permission_check", True),
    (["--skip-push-permission-check", "--skip-push-permission-check=false"], "skip_push_permission_check", False),
    (["--ignore-var-run=false"], "ignore_var_run", False),
])
def test_go_style_booleans(parser, argv, dest, value):
    assert getattr(parser.parse_args(["build", *normalize_booleans(argv)]), dest) is value


def test_a_bare_build_has_the_registry_client_defaults(parser):
    opts = options_from_args(parser.parse_args(["build", "--no-push"]))
    assert opts.registry == RegistryOptions()
    assert opts.outputs.check_push_access is True
    for host in ("r.example", "127.0.0.1:5000"):
        for pull in (True, False):
            assert not opts.registry.plain_http_allowed(host, pull=pull)
            assert not opts.registry.skip_verify(host, pull=pull)


# ------------------------------------------------------------------------------ the defaults, against registries

def _bare_build_registry(parser, *flags: str) -> RegistryOptions:
    return options_from_args(parser.parse_args(["build", "--no-push", *flags])).registry


def _client(options: RegistryOptions, creds: dict) -> RegistryClient:
    return RegistryClient(options, credentials=lambda host: creds.get(host, ANONYMOUS))


def test_bare_build_verifies_tls(parser, tls_registry, tls_creds, tmp_path):
    host = tls_registry.host
    image = parse_reference(f"{host}/library/busybox:1")
    with _client(_bare_build_registry(parser), tls_creds) as client:
        with pytest.raises(RegistryTLSError, match=r"TLS certificate verify failed: unable to get local issuer"):
            pull_image(client, image, BlobStore(str(tmp_path / "a")))
    # --skip-tls-verify is the push direction: the pull still verifies.
    with _client(_bare_build_registry(parser, "--skip-tls-verify"), tls_creds) as client:
        with pytest.raises(RegistryTLSError):
            pull_image(client, image, BlobStore(str(tmp_path / "b")))
    for flags in (["--registry-certificate", f"{host}={tls_registry.ca}"], ["--skip-tls-verify-pull"],
                  ["--skip-tls-verify-registry", host]):
        with _client(_bare_build_registry(parser, *flags), tls_creds) as client:
            assert pull_image(client, image, BlobStore(str(tmp_path / "c"))).layers, flags


def test_bare_build_refuses_plain_http_and_never_sends_credentials_over_it(parser, plain_registry, proxy, tmp_path,
                                                                         busybox):
    """The proxy is a plain-HTTP registry; a credential is configured for it. With the defaults, no HTTP request
    reaches it at all (so no Authorization header either), in either direction."""
    host = proxy.host
    creds = {host: Credential(username=TLS_USER, password=TLS_PASSWORD, source="test")}
    hint = "(for a plain-HTTP registry use --insecure-registry)"
    with _client(_bare_build_registry(parser), creds) as client:
        with pytest.raises(RegistryConnectionError) as exc:
            pull_image(client, parse_reference(f"{host}/library/busybox:1"), BlobStore(str(tmp_path)))
        assert exc.value.message.startswith(f"cannot reach registry {host}: GET https://{host}/v2/: ConnectError: "
                                            "[SSL: WRONG_VERSION_NUMBER]") and exc.value.message.endswith(hint)
        with pytest.raises(RegistryConnectionError, match=re.escape(hint)):
            push_image(client, busybox[1], [parse_reference(f"{host}/secure/app:1")])
    assert proxy.log == []
    # --insecure is the push direction only; --insecure-pull opens the pull.
    with _client(_bare_build_registry(parser, "--insecure"), creds) as client:
        with pytest.raises(RegistryConnectionError, match=re.escape(hint)):
            pull_image(client, parse_reference(f"{host}/library/busybox:1"), BlobStore(str(tmp_path)))
    assert proxy.log == []
    with _client(_bare_build_registry(parser, "--insecure-pull"), creds) as client:
        assert pull_image(client, parse_reference(f"{host}/library/busybox:1"), BlobStore(str(tmp_path))).layers
    # The registry asks for no auth, so even now nothing was sent.
    assert proxy.log and not [h for *_, h in proxy.log if "Authorization" in h]


# ------------------------------------------------------------------------- pull and push: their own direction

@pytest.fixture
def docker_config(tmp_path, monkeypatch, tls_registry):
    import base64
    import json

    d = tmp_path / "docker"
    d.mkdir()
    auth = base64.b64encode(f"{TLS_USER}:{TLS_PASSWORD}".encode()).decode()
    (d / "config.json").write_text(json.dumps({"auths": {tls_registry.host: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d


@pytest.mark.parametrize("flag", ["--insecure", "--insecure-pull"])
def test_pull_and_push_insecure_apply_to_their_own_direction(plain_registry, tmp_path, capsys, flag):
    host = plain_registry.host
    out = str(tmp_path / "oci")
    assert main(["pull", f"{host}/library/busybox:1", "--oci-layout", out]) == 6
    assert capsys.readouterr().err.endswith("(for a plain-HTTP registry use --insecure-registry)\n")
    assert main(["pull", f"{host}/library/busybox:1", "--oci-layout", out, flag]) == 0, capsys.readouterr().err
    digest = read_layout(out, ref_name="1").digest
    assert main(["push", f"{out}:1", f"{host}/direction/app:1"]) == 6
    capsys.readouterr()
    assert main(["push", f"{out}:1", f"{host}/direction/app:1", flag]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == digest


@pytest.mark.parametrize("flag", ["--skip-tls-verify", "--skip-tls-verify-pull"])
def test_pull_and_push_skip_tls_verify_apply_to_their_own_direction(tls_registry, docker_config, tmp_path, capsys,
                                                                     flag):
    host = tls_registry.host
    out = str(tmp_path / "oci")
    assert main(["pull", f"{host}/library/busybox:1", "--oci-layout", out]) == 6
    err = capsys.readouterr().err
    assert err.startswith(f"snapfs: {host}: TLS certificate verify failed: ") and "--insecure-registry" not in err
    assert main(["pull", f"{host}/library/busybox:1", "--oci-layout", out, flag]) == 0, capsys.readouterr().err
    assert main(["push", f"{out}:1", f"{host}/direction/tls:1"]) == 6
    capsys.readouterr()
    assert main(["push", f"{out}:1", f"{host}/direction/tls:1", flag]) == 0, capsys.readouterr().err


# --------------------------------------------------------------------------------------- TLS failures, once

@pytest.fixture(scope="session")
def self_signed_registry(regdir):
    """TLS with a self-signed server certificate (no CA at all), no auth; ``.cert`` is that certificate."""
    need("docker-registry", "openssl")
    d = os.path.join(regdir, "self-signed")
    os.makedirs(d, exist_ok=True)
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    reg = RegistryProcess(regdir, name="self-signed",
                          extra_config=f"  tls:\n    certificate: {cert}\n    key: {key}\n").start()
    reg.cert = cert
    try:
        yield reg
    finally:
        reg.stop()


def _fix(host: str) -> str:
    return (f" (trust the registry's CA with --registry-certificate {host}=CA.pem, or skip verification with "
            f"--skip-tls-verify-registry {host})")


@pytest.mark.parametrize("which, problem", [("self_signed_registry", "self-signed certificate"),
                                            ("tls_registry", "unable to get local issuer certificate")])
def test_a_certificate_that_fails_verification_is_tried_once_and_named(request, tmp_path, which, problem):
    reg = request.getfixturevalue(which)
    counter = TcpCounter(reg.port).start()
    try:
        # The client's real retry settings: were the failure retried, there would be 5 connections (x3 pulls).
        options = RegistryOptions(request_retries=4, image_download_retry=2)
        with RegistryClient(options, credentials=lambda host: ANONYMOUS) as client:
            with pytest.raises(RegistryTLSError) as exc:
                pull_image(client, parse_reference(f"{counter.host}/library/busybox:1"), BlobStore(str(tmp_path)))
        assert exc.value.message == f"{counter.host}: TLS certificate verify failed: {problem}{_fix(counter.host)}"
        assert exc.value.exit_code == RegistryError.exit_code
        assert counter.connections == 1
    finally:
        counter.stop()


def test_registry_certificate_fixes_a_self_signed_registry(self_signed_registry, tmp_path, busybox):
    host = self_signed_registry.host
    options = RegistryOptions(registry_certificates=((host, self_signed_registry.cert),))
    with RegistryClient(options, credentials=lambda h: ANONYMOUS) as client:
        digest = push_image(client, busybox[1], [parse_reference(f"{host}/self/signed:1")])
        assert pull_image(client, parse_reference(f"{host}/self/signed:1"), BlobStore(str(tmp_path))).digest == digest
