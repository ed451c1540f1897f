"""Remote archives against real servers on loopback: HTTPS, S3 (moto), GCS (emulator), Azure Blob (Azurite).

Every failure must be one line naming the source, and no secret may appear in it, in the logs or on stderr.
"""
from __future__ import annotations

import logging
import os
import re
import socket
from datetime import datetime, timedelta, timezone

import pytest

from context_kit import check_app, compress, make_app, tar_cli, tar_of
from context_servers import AZURE_ACCOUNT, AZURE_KEY, AZURE_PROD_HOST
from snapfs.context.extract import ContextError
from snapfs.context.resolve import fetch_context, locate_dockerfile

WRONG_AZURE_KEY = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXlXcm9uZ0tleQ=="  # base64, not the account's


@pytest.fixture
def app_tgz(tmp_path):
    """The user's scenario: ``tar -C app -zcvf context.tar.gz .``."""
    app = make_app(str(tmp_path / "app"))
    return tar_cli(app, str(tmp_path / "context.tar.gz"))


@pytest.fixture
def workdir(tmp_path):
    return str(tmp_path / "work")


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)  # every library's debug output: it must not carry secrets either
    return caplog


def progress_text(caplog) -> str:
    """The progress lines logged so far (one summary per context download)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "snapfs.progress")


def fails(spec: str, workdir: str, pattern: str, *, secrets=(), logs=None, capsys=None, **kw) -> str:
    """fetch_context fails with one line matching ``pattern``; the secrets appear nowhere."""
    with pytest.raises(ContextError) as info:
        fetch_context(spec, workdir=workdir, **kw)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(pattern, message), message
    seen = [message]
    if logs is not None:
        seen.append(logs.text)
    if capsys is not None:
        seen += list(capsys.readouterr())
    for secret in secrets:
        for text in seen:
            assert secret not in text
    assert not os.path.exists(workdir) or os.listdir(workdir) == []
    return message


# --- https ---------------------------------------------------------------------------------------------------

def test_https_download_with_progress(https_server, app_tgz, workdir, monkeypatch, caplog):
    os.replace(app_tgz, os.path.join(https_server.root, "ctx.tgz"))
    monkeypatch.setenv("SSL_CERT_FILE", https_server.ca)
    caplog.set_level(logging.INFO, logger="snapfs.progress")
    for path in ("ctx.tgz", "redirect/ctx.tgz"):
        ctx = fetch_context(f"{https_server.url}/{path}", workdir=workdir, sub_path="app")
        assert sorted(os.listdir(ctx.root)) == ["data", "hello.sh", "link.sh"]
        ctx.cleanup()
    lines = [r.getMessage() for r in caplog.records if r.name == "snapfs.progress"]
    assert any(line.startswith(f"downloaded {https_server.url}/ctx.tgz: ") for line in lines), lines


@pytest.mark.parametrize("kind", ["zstd", "xz", "none"])
def test_https_other_compressions(https_server, tmp_path, workdir, monkeypatch, kind):
    app = make_app(str(tmp_path / "app2"))
    with open(os.path.join(https_server.root, f"ctx-{kind}"), "wb") as f:
        f.write(compress(tar_of(app), kind))
    monkeypatch.setenv("SSL_CERT_FILE", https_server.ca)
    ctx = fetch_context(f"{https_server.url}/ctx-{kind}", workdir=workdir)
    check_app(ctx.root)
    ctx.cleanup()


def test_https_errors(https_server, workdir, monkeypatch, logs, capsys):
    with open(os.path.join(https_server.root, "garbage.tgz"), "wb") as f:
        f.write(b"\x1f\x8b\x08\x00" + b"\x00" * 100)
    monkeypatch.setenv("SSL_CERT_FILE", https_server.ca)
    fails(f"{https_server.url}/missing.tgz", workdir, rf"^{https_server.url}/missing.tgz: not found \(HTTP 404\)$")
    fails(f"{https_server.url}/garbage.tgz", workdir, r"garbage.tgz: corrupt or truncated compressed data")
    secret = "Pw-InUserinfo-123"
    fails(f"https://bob:{secret}@127.0.0.1:{https_server.url.rsplit(':', 1)[1]}/missing.tgz?sig=SigSecret99",
          workdir, r"^https://\*\*\*@127\.0\.0\.1:\d+/missing\.tgz\?sig=\*\*\*: not found",
          secrets=(secret, "SigSecret99"), logs=logs, capsys=capsys)


def test_https_untrusted_certificate(https_server, app_tgz, workdir):
    os.replace(app_tgz, os.path.join(https_server.root, "ctx2.tgz"))
    fails(f"{https_server.url}/ctx2.tgz", workdir, r"download failed: .*CERTIFICATE_VERIFY_FAILED")


def test_dockerfile_from_https_url(https_server, tmp_path, workdir, monkeypatch):
    with open(os.path.join(https_server.root, "Remote.Dockerfile"), "w") as f:
        f.write("FROM scratch\n# remote\n")
    monkeypatch.setenv("SSL_CERT_FILE", https_server.ca)
    ctx = fetch_context(make_app(str(tmp_path / "a")), workdir=workdir)
    path = locate_dockerfile(ctx, f"{https_server.url}/Remote.Dockerfile", workdir=workdir)
    assert path.startswith(workdir + "/") and open(path).read() == "FROM scratch\n# remote\n"
    with pytest.raises(ContextError, match=r"Nope.Dockerfile: not found \(HTTP 404\)"):
        locate_dockerfile(ctx, f"{https_server.url}/Nope.Dockerfile", workdir=workdir)


# --- S3 ------------------------------------------------------------------------------------------------------

@pytest.fixture
def s3_env(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("S3_FORCE_PATH_STYLE", "true")
    return s3_server


def test_s3_fetch_key_and_default_key(s3_env, app_tgz, workdir, logs):
    s3_env.client.upload_file(app_tgz, s3_env.bucket, "builds/app.tar.gz")
    s3_env.client.upload_file(app_tgz, s3_env.bucket, "context.tar.gz")
    for spec in (f"s3://{s3_env.bucket}/builds/app.tar.gz", f"s3://{s3_env.bucket}"):
        ctx = fetch_context(spec, workdir=workdir)
        check_app(ctx.root)
        assert locate_dockerfile(ctx, "Dockerfile", workdir=workdir) == os.path.join(ctx.root, "Dockerfile")
        ctx.cleanup()
    assert f"downloaded s3://{s3_env.bucket}/context.tar.gz: " in progress_text(logs)
    ctx = fetch_context(f"s3://{s3_env.bucket}/builds/app.tar.gz", workdir=workdir, sub_path="sub")
    assert sorted(os.listdir(ctx.root)) == ["Dockerfile.sub", "x", "x-hard"]
    ctx.cleanup()


def test_s3_errors(s3_env, workdir, monkeypatch, logs, capsys):
    b = s3_env.bucket
    fails(f"s3://{b}/nope.tgz", workdir, rf"^s3://{b}/nope.tgz: object not found \(NoSuchKey\)$")
    fails("s3://no-such-bucket-x/k", workdir, r"bucket 'no-such-bucket-x' not found")
    s3_env.client.put_object(Bucket=b, Key="corrupt.tgz", Body=b"\x1f\x8b\x08\x00" + b"\x07" * 50)
    fails(f"s3://{b}/corrupt.tgz", workdir, rf"^s3://{b}/corrupt.tgz: corrupt or truncated compressed data")
    wrong = "WrongSecretKeyValue0123456789abcdefghij"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    fails(f"s3://{b}/builds/app.tar.gz", workdir,
          r"access denied: the credentials were rejected \(SignatureDoesNotMatch\)$",
          secrets=(wrong, s3_env.secret), logs=logs, capsys=capsys)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")
    fails(f"s3://{b}/builds/app.tar.gz", workdir, r"\(InvalidAccessKeyId\)$", secrets=(wrong,), logs=logs)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    fails(f"s3://{b}/builds/app.tar.gz", workdir, r"no AWS credentials found")


# --- GCS -----------------------------------------------------------------------------------------------------

def test_gcs_fetch_and_errors(gcs_server, app_tgz, workdir, monkeypatch, tls, logs):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.host)
    monkeypatch.setenv("SSL_CERT_FILE", tls["ca"])  # handed to the client's session (the emulator is plain http)
    bucket = gcs_server.client.bucket(gcs_server.bucket)
    bucket.blob("ci/ctx.tar.gz").upload_from_filename(app_tgz)
    bucket.blob("context.tar.gz").upload_from_filename(app_tgz)
    for spec in (f"gs://{gcs_server.bucket}/ci/ctx.tar.gz", f"gs://{gcs_server.bucket}"):
        ctx = fetch_context(spec, workdir=workdir)
        check_app(ctx.root)
        ctx.cleanup()
    assert f"downloaded gs://{gcs_server.bucket}/ci/ctx.tar.gz: " in progress_text(logs)
    ctx = fetch_context(f"gs://{gcs_server.bucket}/ci/ctx.tar.gz", workdir=workdir, sub_path="app/data")
    assert os.listdir(ctx.root) == [".wh.notawhiteout"]
    ctx.cleanup()
    fails(f"gs://{gcs_server.bucket}/missing.tgz", workdir, rf"^gs://{gcs_server.bucket}/missing.tgz: object not found")
    bucket.blob("bad.tgz").upload_from_string(b"not an archive at all " * 50)
    fails(f"gs://{gcs_server.bucket}/bad.tgz", workdir, r"bad.tgz: not a valid tar")


# --- Azure Blob ----------------------------------------------------------------------------------------------

BLOB_URL = f"https://{AZURE_PROD_HOST}/contexts/app/context.tar.gz"


@pytest.fixture
def azure_blob(azurite, app_tgz):
    with open(app_tgz, "rb") as f:
        azurite.container.upload_blob("app/context.tar.gz", f, overwrite=True)
    return azurite


def test_azure_shared_key_with_endpoint_override(azure_blob, workdir, monkeypatch, logs):
    monkeypatch.setenv("AZURE_STORAGE_ACCESS_KEY", AZURE_KEY)
    monkeypatch.setenv("AZURE_STORAGE_BLOB_ENDPOINT", azure_blob.endpoint)
    ctx = fetch_context(BLOB_URL, workdir=workdir)
    check_app(ctx.root)
    ctx.cleanup()
    assert f"downloaded {BLOB_URL}: " in progress_text(logs)


def test_azure_connection_string(azure_blob, workdir, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azure_blob.connection_string)
    ctx = fetch_context(BLOB_URL, workdir=workdir, sub_path="sub")
    assert sorted(os.listdir(ctx.root)) == ["Dockerfile.sub", "x", "x-hard"]
    ctx.cleanup()


def _sas() -> str:
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    return generate_blob_sas(AZURE_ACCOUNT, "contexts", "app/context.tar.gz", account_key=AZURE_KEY,
                             permission=BlobSasPermissions(read=True),
                             expiry=datetime.now(timezone.utc) + timedelta(hours=1))


def test_azure_sas_in_url_and_in_env(azure_blob, workdir, monkeypatch, logs, capsys):
    sas = _sas()
    sig = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    monkeypatch.setenv("AZURE_STORAGE_BLOB_ENDPOINT", azure_blob.endpoint)
    ctx = fetch_context(f"{BLOB_URL}?{sas}", workdir=workdir)
    check_app(ctx.root)
    assert "sig=***" in ctx.source and sig not in ctx.source
    ctx.cleanup()
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "?" + sas)
    ctx = fetch_context(BLOB_URL, workdir=workdir)
    check_app(ctx.root)
    ctx.cleanup()
    # a SAS for another blob is rejected, and neither signature leaks
    fails(BLOB_URL.replace("app/context", "other/context"), workdir, r"access denied|not found",
          secrets=(sig,), logs=logs, capsys=capsys)


def test_azure_errors(azure_blob, workdir, monkeypatch, logs, capsys):
    monkeypatch.setenv("AZURE_STORAGE_BLOB_ENDPOINT", azure_blob.endpoint)
    monkeypatch.setenv("AZURE_STORAGE_ACCESS_KEY", AZURE_KEY)
    fails(f"https://{AZURE_PROD_HOST}/contexts/missing.tgz", workdir,
          rf"^https://{AZURE_PROD_HOST}/contexts/missing.tgz: blob not found \(BlobNotFound\)$")
    fails(f"https://{AZURE_PROD_HOST}/nocontainer/x.tgz", workdir, r"blob not found \(ContainerNotFound\)$")
    azure_blob.container.upload_blob("corrupt.tgz", b"\x28\xb5\x2f\xfd" + b"\x01" * 64, overwrite=True)
    fails(f"https://{AZURE_PROD_HOST}/contexts/corrupt.tgz", workdir, r"corrupt or truncated compressed data")
    monkeypatch.setenv("AZURE_STORAGE_ACCESS_KEY", WRONG_AZURE_KEY)
    fails(BLOB_URL, workdir, r"^https://devstoreaccount1\.blob\.core\.windows\.net/contexts/app/context\.tar\.gz: "
          r"access denied", secrets=(WRONG_AZURE_KEY,), logs=logs, capsys=capsys)
    monkeypatch.setenv("AZURE_STORAGE_ACCESS_KEY", "not base64 at all!")
    fails(BLOB_URL, workdir, r"access denied|Azure Blob request failed", secrets=("not base64 at all!",),
          logs=logs)
    monkeypatch.setattr("snapfs.context.fetch.AZURE_RETRY", {"retry_total": 0})
    monkeypatch.setenv("AZURE_STORAGE_BLOB_ENDPOINT", "http://127.0.0.1:9/devstoreaccount1")
    monkeypatch.setenv("AZURE_STORAGE_ACCESS_KEY", AZURE_KEY)
    fails(BLOB_URL, workdir, r"cannot reach http://127\.0\.0\.1:9/devstoreaccount1")


def test_azure_production_url_over_tls_as_kaniko_users_run_it(azurite_tls, app_tgz, workdir, monkeypatch):
    """Kaniko's form, unchanged: ``https://devstoreaccount1.blob.core.windows.net/<container>/<blob>`` with only
    ``AZURE_STORAGE_ACCESS_KEY`` set and no endpoint override. Azurite serves TLS with a certificate for that host
    name; only name resolution is redirected, inside this test process: ``socket.getaddrinfo`` answers
    127.0.0.1 and Azurite's port for that host (no /etc/hosts edit, no port 443). The request then carries
    the production Host header and SNI, and Azurite takes the account from the host name."""
    with open(app_tgz, "rb") as f:
        azurite_tls.container.upload_blob("app/context.tar.gz", f, overwrite=True)
    real = socket.getaddrinfo

    def resolve(host, port, *args, **kw):
        if host == AZURE_PROD_HOST:
            return real("127.0.0.1", azurite_tls.port, *args, **kw)
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setenv("SSL_CERT_FILE", azurite_tls.ca)
    monkeypatch.setenv("AZURE_STORAGE_ACCESS_KEY", AZURE_KEY)
    ctx = fetch_context(BLOB_URL, workdir=workdir)
    check_app(ctx.root)
    ctx.cleanup()


def test_azure_url_detection():
    from snapfs.context.fetch import is_azure_blob_url

    for host in ("acct.blob.core.windows.net", "acct.blob.core.chinacloudapi.cn", "acct.blob.core.cloudapi.de",
                 "acct.blob.core.usgovcloudapi.net"):
        assert is_azure_blob_url(f"https://{host}/c/b.tgz")
    assert not is_azure_blob_url("https://example.com/acct.blob.core.windows.net/x")
    assert not is_azure_blob_url("http://acct.blob.core.windows.net/c/b")


def test_s3_addressing_style_follows_s3_force_path_style(s3_env, app_tgz, workdir, monkeypatch):
    """With a DNS-named endpoint, S3_FORCE_PATH_STYLE=true keeps the bucket in the path, false puts it in the host
    name (virtual-hosted, as Kaniko), unset lets botocore choose (path-style on a custom endpoint). Names resolve
    to moto through a test-only resolver."""
    s3_env.client.upload_file(app_tgz, s3_env.bucket, "style/ctx.tgz")
    real, looked_up = socket.getaddrinfo, []

    def resolve(host, port, *args, **kw):
        looked_up.append(host)
        if host.endswith("s3.snapfs.test"):
            return real("127.0.0.1", port, *args, **kw)
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setenv("S3_ENDPOINT", f"http://s3.snapfs.test:{s3_env.port}")
    for force, host in (("true", "s3.snapfs.test"), ("false", f"{s3_env.bucket}.s3.snapfs.test"),
                        (None, "s3.snapfs.test")):
        if force is None:
            monkeypatch.delenv("S3_FORCE_PATH_STYLE")
        else:
            monkeypatch.setenv("S3_FORCE_PATH_STYLE", force)
        looked_up.clear()
        ctx = fetch_context(f"s3://{s3_env.bucket}/style/ctx.tgz", workdir=workdir)
        check_app(ctx.root)
        ctx.cleanup()
        assert set(looked_up) == {host}


def test_gcs_broken_credentials_file_is_an_error_not_anonymous(tmp_path, workdir, monkeypatch, logs):
    bad = tmp_path / "sa.json"
    bad.write_text('{"type": "service_account", "private_key": "PRIVATE-KEY-MATERIAL-123"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(bad))
    fails("gs://some-bucket/ctx.tgz", workdir,
          r"^gs://some-bucket/ctx.tgz: cannot load the credentials in GOOGLE_APPLICATION_CREDENTIALS",
          secrets=("PRIVATE-KEY-MATERIAL-123",), logs=logs)


def test_gcs_unreachable_endpoint_gives_up_with_one_line(workdir, monkeypatch):
    monkeypatch.setattr("snapfs.context.fetch.GCS_RETRY_SECONDS", 1.0)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    fails("gs://b/ctx.tgz", workdir, r"^gs://b/ctx.tgz: GCS request failed: .*(refused|Max retries|Timeout)")
