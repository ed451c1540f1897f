"""Download a build-context archive (or a Dockerfile) to a local file: https, S3, GCS and Azure Blob.

Each downloader streams the object to ``dest`` through a :class:`snapfs.progress.Transfer` (throttled) and turns every
failure into one :class:`~snapfs.context.extract.ContextError` line that names the source with its credentials
masked: a missing object, a rejected key, an unreachable endpoint. Secrets read from the environment are
scrubbed from any text a client library hands us before it reaches a message.

Environment, as Kaniko reads it, plus what its users asked for:

- S3: the standard AWS credential chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, web
  identity, instance roles), ``AWS_REGION``, ``S3_ENDPOINT`` (custom endpoint), ``S3_FORCE_PATH_STYLE``
  (``true``: path-style; ``false``: virtual-hosted; unset: virtual-hosted on AWS, path-style on custom endpoints).
- GCS: Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``), anonymous when there are none;
  ``STORAGE_EMULATOR_HOST`` for an emulator.
- Azure Blob (``https://<account>.blob.core.windows.net/<container>/<blob>`` and the sovereign-cloud hosts), first
  match wins: a SAS token in the URL's query; ``AZURE_STORAGE_ACCESS_KEY`` (shared key, account from the host, as
  Kaniko); ``AZURE_STORAGE_SAS_TOKEN``; ``AZURE_STORAGE_CONNECTION_STRING``; else anonymous (public containers).
  ``AZURE_STORAGE_BLOB_ENDPOINT`` (e.g. ``http://127.0.0.1:10000/devstoreaccount1`` for Azurite) replaces the
  URL's scheme and host; the container and blob still come from the URL.
- Every client trusts ``SSL_CERT_FILE`` when it is set (httpx natively; passed to boto3, GCS, Azure and git).
"""
from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from typing import Iterable, Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

from snapfs.progress import Transfer
from snapfs.redact import redact_url, scrub
from .extract import ContextError

CHUNK = 1 << 20
DEFAULT_OBJECT = "context.tar.gz"  # Kaniko's default key when an s3:// or gs:// spec names only a bucket
AZURE_HOST = re.compile(r"^([a-z0-9]{3,24})\.blob\.core\.(windows\.net|chinacloudapi\.cn|cloudapi\.de|"
                        r"usgovcloudapi\.net)$", re.IGNORECASE)
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_SAS_TOKEN",
              "AZURE_STORAGE_CONNECTION_STRING", "GIT_TOKEN", "GIT_PASSWORD")
# Azure's default retry waits 15 s, then 18 s...: a build should learn sooner that an endpoint is down.
AZURE_RETRY = {"retry_total": 3, "initial_backoff": 1, "increment_base": 2}
GCS_RETRY_SECONDS = 30.0  # the client's default keeps retrying a refused connection for two minutes


# --- masking -------------------------------------------------------------------------------------------------

def env_secrets(env: dict | None = None) -> list[str]:
    """Secret values present in the environment (and the key parts of a connection string), longest first."""
    env = os.environ if env is None else env
    found = []
    for name in SECRET_ENV:
        value = env.get(name, "")
        if len(value) >= 4:
            found.append(value)
            if name == "AZURE_STORAGE_CONNECTION_STRING":
                found += [v for k, _, v in (p.partition("=") for p in value.split(";"))
                          if k.strip().lower() in ("accountkey", "sharedaccesssignature") and len(v) >= 4]
    return sorted(set(found), key=len, reverse=True)


@contextmanager
def scrubbed_logging(secrets: Iterable[str] = ()) -> Iterator[None]:
    """While fetching, every log record (ours and the client libraries', which log request URLs with their SAS
    signatures or presigned queries) has its message scrubbed before any handler sees it."""
    secrets = [s for s in secrets if s]
    old = logging.getLogRecordFactory()

    def factory(*args, **kw):
        record = old(*args, **kw)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logger's problem, not ours
            return record
        clean = scrub(message, secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(old)


# --- progress ------------------------------------------------------------------------------------------------

class _Sink:
    """The destination file; counts what is written into the transfer's progress."""

    def __init__(self, path: str, progress: Transfer) -> None:
        self._f = open(path, "wb")
        self._progress = progress

    def write(self, data) -> int:
        n = self._f.write(data)
        self._progress.update(len(data))
        return n

    def close(self) -> None:
        self._f.close()


def _stream_to(dest: str, what: str, total: int | None, chunks: Iterable[bytes]) -> int:
    with Transfer(what, total=total, summary=True) as progress:
        sink = _Sink(dest, progress)
        try:
            for chunk in chunks:
                sink.write(chunk)
        finally:
            sink.close()
    return progress.done_bytes


def _ca_file() -> str | None:
    return os.environ.get("SSL_CERT_FILE") or None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "t", "true", "yes", "on")


# --- https ---------------------------------------------------------------------------------------------------

def download_https(url: str, dest: str, *, what: str, insecure: bool = False) -> int:
    """GET ``url`` into ``dest`` (redirects followed, no credentials sent across hosts); returns the size."""
    import httpx

    secrets = env_secrets()
    try:
        parts = urlsplit(url)
        auth = None
        if parts.username is not None:  # user:password@ in the URL: sent as Basic auth, never logged
            secrets += [s for s in (parts.password or "", parts.username) if len(s) >= 4]
            auth = httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))  # user%40corp: user@corp
            url = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, ""))
        with httpx.Client(follow_redirects=True, verify=not insecure, trust_env=True,
                          timeout=httpx.Timeout(30.0, read=300.0)) as client:
            with client.stream("GET", url, auth=auth) as resp:
                if resp.status_code != 200:
                    raise ContextError(f"{what}: {_http_status(resp.status_code, resp.reason_phrase)}")
                length = resp.headers.get("content-length")
                total = int(length) if length and length.isdigit() else None
                # Raw bytes: a .tar.gz served with Content-Encoding: gzip stays gzip; the format is detected later.
                return _stream_to(dest, what, total, resp.iter_raw(CHUNK))
    except httpx.HTTPError as exc:
        raise ContextError(f"{what}: download failed: {scrub(_exc_text(exc), secrets)}") from None
    except (httpx.InvalidURL, ValueError) as exc:  # e.g. bytes that are not UTF-8 in a URL given as an argument
        raise ContextError(f"{what}: invalid URL: {scrub(_exc_text(exc), secrets)}") from None


def _http_status(code: int, reason: str) -> str:
    if code == 404:
        return "not found (HTTP 404)"
    if code in (401, 403):
        return f"access denied (HTTP {code} {reason})"
    return f"HTTP {code} {reason}".rstrip()


def _exc_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# --- S3 ------------------------------------------------------------------------------------------------------

def split_bucket(rest: str) -> tuple[str, str]:
    """``bucket/key`` -> (bucket, key); an empty key or a trailing slash gets Kaniko's ``context.tar.gz``."""
    bucket, _, key = rest.partition("/")
    if not key or key.endswith("/"):
        key += DEFAULT_OBJECT
    return bucket, key


def download_s3(bucket: str, key: str, dest: str, *, what: str) -> int:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    secrets = env_secrets()
    endpoint = os.environ.get("S3_ENDPOINT") or None
    if endpoint and "://" not in endpoint:
        endpoint = "https://" + endpoint
    force = os.environ.get("S3_FORCE_PATH_STYLE", "").strip()
    # true: bucket in the path; an explicit false: bucket in the host name (what Kaniko does for any endpoint);
    # unset: botocore's choice (virtual-hosted on AWS, path-style on a custom endpoint such as MinIO).
    style = "path" if _truthy(force) else "virtual" if force else "auto"
    config = Config(s3={"addressing_style": style}, retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=20, read_timeout=300)
    verify = os.environ.get("AWS_CA_BUNDLE") or _ca_file()
    try:
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_REGION") or None, config=config,
            verify=verify if verify else None)
        obj = client.get_object(Bucket=bucket, Key=key)
        body = obj["Body"]
        try:
            return _stream_to(dest, what, obj.get("ContentLength"), body.iter_chunks(CHUNK))
        finally:
            body.close()
    except NoCredentialsError:
        raise ContextError(f"{what}: no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                           "AWS_PROFILE, or use a role)") from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise ContextError(f"{what}: object not found ({code})") from None
        if code == "NoSuchBucket":
            raise ContextError(f"{what}: bucket {bucket!r} not found (NoSuchBucket)") from None
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                    "InvalidToken", "403") or status == 403:
            raise ContextError(f"{what}: access denied: the credentials were rejected ({code})") from None
        raise ContextError(f"{what}: S3 error {code}: {scrub(str(err.get('Message', '')), secrets)}") from None
    except (BotoCoreError, ValueError) as exc:
        raise ContextError(f"{what}: S3 request failed: {scrub(_exc_text(exc), secrets)}") from None


# --- GCS -----------------------------------------------------------------------------------------------------

def download_gcs(bucket: str, name: str, dest: str, *, what: str) -> int:
    import google.auth
    from google.api_core import exceptions as gexc
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
    from google.cloud import storage
    from google.cloud.storage.retry import DEFAULT_RETRY

    secrets = env_secrets()
    try:
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            client = storage.Client(project="snapfs", credentials=AnonymousCredentials())
        else:
            try:
                credentials, project = google.auth.default(
                    scopes=["https://www.googleapis.com/auth/devstorage.read_only"])
                client = storage.Client(project=project or "snapfs", credentials=credentials)
            except DefaultCredentialsError as exc:
                if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):  # named but broken: say so, never go anonymous
                    raise ContextError(f"{what}: cannot load the credentials in GOOGLE_APPLICATION_CREDENTIALS: "
                                       f"{scrub(_exc_text(exc), secrets)}") from None
                client = storage.Client.create_anonymous_client()  # no credentials at all: public buckets work
        if _ca_file():
            client._http.verify = _ca_file()  # the client's requests session; it ignores SSL_CERT_FILE itself
        retry = DEFAULT_RETRY.with_timeout(GCS_RETRY_SECONDS)
        blob = client.bucket(bucket).blob(name)
        blob.reload(retry=retry)
        with Transfer(what, total=blob.size, summary=True) as progress:
            tmp = _Sink(dest, progress)
            try:
                blob.download_to_file(tmp, retry=retry)  # verifies the object's checksum as it streams
            finally:
                tmp.close()
        return progress.done_bytes
    except gexc.NotFound:
        raise ContextError(f"{what}: object not found (or no bucket {bucket!r})") from None
    except (gexc.Forbidden, gexc.Unauthorized) as exc:
        raise ContextError(f"{what}: access denied (HTTP {exc.code}); check GOOGLE_APPLICATION_CREDENTIALS") \
            from None
    except gexc.GoogleAPIError as exc:
        raise ContextError(f"{what}: GCS request failed: {scrub(_exc_text(exc), secrets)}") from None
    except (GoogleAuthError, OSError, ValueError) as exc:  # requests' errors are OSErrors
        raise ContextError(f"{what}: GCS request failed: {scrub(_exc_text(exc), secrets)}") from None


# --- Azure Blob ----------------------------------------------------------------------------------------------

def is_azure_blob_url(url: str) -> bool:
    """True for Kaniko's Azure form: an https URL on ``<account>.blob.core.<cloud>``."""
    parts = urlsplit(url)
    return parts.scheme == "https" and AZURE_HOST.match(parts.hostname or "") is not None


def download_azure(url: str, dest: str, *, what: str) -> int:
    from azure.core.exceptions import (AzureError, ClientAuthenticationError, HttpResponseError,
                                       ResourceNotFoundError, ServiceRequestError)
    from azure.storage.blob import BlobServiceClient

    secrets = env_secrets()
    parts = urlsplit(url)
    account = AZURE_HOST.match(parts.hostname or "").group(1)
    container, _, blob_name = parts.path.lstrip("/").partition("/")
    if not container or not blob_name:
        raise ContextError(f"{what}: the URL must name a container and a blob: "
                           "https://<account>.blob.core.windows.net/<container>/<blob>")
    blob_name = unquote(blob_name)
    env = os.environ
    url_sas = parts.query
    if url_sas:
        secrets.append(url_sas)
    endpoint = (env.get("AZURE_STORAGE_BLOB_ENDPOINT") or f"https://{parts.netloc}").rstrip("/")
    kw = {**AZURE_RETRY, "connection_timeout": 20, "read_timeout": 300}
    if _ca_file():
        kw["connection_verify"] = _ca_file()
    try:
        if url_sas:
            service = BlobServiceClient(endpoint, credential=url_sas, **kw)
        elif env.get("AZURE_STORAGE_ACCESS_KEY"):
            credential = {"account_name": account, "account_key": env["AZURE_STORAGE_ACCESS_KEY"]}
            service = BlobServiceClient(endpoint, credential=credential, **kw)
        elif env.get("AZURE_STORAGE_SAS_TOKEN"):
            service = BlobServiceClient(endpoint, credential=env["AZURE_STORAGE_SAS_TOKEN"].lstrip("?"), **kw)
        elif env.get("AZURE_STORAGE_CONNECTION_STRING"):
            service = BlobServiceClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"], **kw)
        else:
            service = BlobServiceClient(endpoint, **kw)
        downloader = service.get_blob_client(container, blob_name).download_blob(max_concurrency=1)
        return _stream_to(dest, what, downloader.size, downloader.chunks())
    except ResourceNotFoundError as exc:
        code = getattr(exc, "error_code", None) or "BlobNotFound"
        raise ContextError(f"{what}: blob not found ({code})") from None
    except ClientAuthenticationError as exc:
        code = getattr(exc, "error_code", None) or "AuthenticationFailed"
        raise ContextError(f"{what}: access denied: the key or SAS token was rejected ({code})") from None
    except HttpResponseError as exc:
        code = getattr(exc, "error_code", None) or exc.reason or ""
        if exc.status_code == 403:
            raise ContextError(f"{what}: access denied ({code})") from None
        raise ContextError(f"{what}: Azure Blob error HTTP {exc.status_code} {code}".rstrip()) from None
    except ServiceRequestError as exc:
        raise ContextError(f"{what}: cannot reach {redact_url(endpoint)}: {scrub(_exc_text(exc), secrets)}") \
            from None
    except (AzureError, ValueError, TypeError) as exc:
        # e.g. an AZURE_STORAGE_ACCESS_KEY that is not base64, or a malformed connection string
        raise ContextError(f"{what}: Azure Blob request failed: {scrub(_exc_text(exc), secrets)}") from None
