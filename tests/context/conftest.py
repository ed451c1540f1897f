"""Fixtures: real servers on loopback (moto S3 with IAM auth, GCS emulator, Azurite over http and https, an
HTTPS file server, git over smart and dumb HTTP with Basic auth) and the repositories they serve."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from context_servers import (AZURE_ACCOUNT, AZURE_KEY, FileHandler, GitHandler, HTTPServerThread, Process,
                             free_port, make_tls)


def _need(program: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed (run scripts/setup.sh)")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No test sees the machine's credentials or another test's endpoints."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
                 "S3_ENDPOINT", "S3_FORCE_PATH_STYLE", "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS",
                 "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING",
                 "AZURE_STORAGE_BLOB_ENDPOINT", "GIT_TOKEN", "GIT_USERNAME", "GIT_PASSWORD", "GIT_PULL_METHOD",
                 "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "AWS_CA_BUNDLE", "GIT_SSL_CAINFO"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probing on a dev machine


@pytest.fixture(scope="session")
def tls(tmp_path_factory):
    _need("openssl")
    return make_tls(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server with IAM authentication on after the three setup calls below: a wrong key is
    rejected exactly as AWS would (InvalidAccessKeyId, SignatureDoesNotMatch)."""
    _need("moto_server")
    import boto3

    port = free_port()
    log = str(tmp_path_factory.mktemp("moto") / "moto.log")
    proc = Process(["moto_server", "-H", "127.0.0.1", "-p", str(port)], port, log_path=log,
                   env={"INITIAL_NO_AUTH_ACTION_COUNT": "3",
                        # virtual-hosted requests (bucket in the host name) for this custom endpoint
                        "MOTO_S3_CUSTOM_ENDPOINTS": f"http://s3.snapfs.test:{port}"})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="AKIASETUP",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="ctx")
        iam.put_user_policy(UserName="ctx", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="ctx")["AccessKey"]
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        client.create_bucket(Bucket="ctx-bucket")
        yield SimpleNamespace(endpoint=endpoint, port=port, key_id=key["AccessKeyId"], secret=key["SecretAccessKey"],
                              client=client, bucket="ctx-bucket")
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    _need("gcp-storage-emulator")
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = free_port()
    log = str(tmp_path_factory.mktemp("gcs") / "gcs.log")
    proc = Process(["gcp-storage-emulator", "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
                   port, log_path=log)
    host = f"http://127.0.0.1:{port}"
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    try:
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        client.create_bucket("ctx-bucket")
    finally:
        if old is None:
            del os.environ["STORAGE_EMULATOR_HOST"]
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old
    try:
        yield SimpleNamespace(host=host, client=client, bucket="ctx-bucket")
    finally:
        proc.stop()


def _azurite(tmp_path_factory, tls: dict | None):
    _need("azurite-blob")
    from azure.storage.blob import BlobServiceClient

    port = free_port()
    base = tmp_path_factory.mktemp("azurite")
    argv = ["azurite-blob", "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(base / "data"),
            "--skipApiVersionCheck", "--loose", "--disableTelemetry"]
    if tls:
        argv += ["--cert", tls["cert"], "--key", tls["key"]]
    proc = Process(argv, port, log_path=str(base / "azurite.log"))
    scheme = "https" if tls else "http"
    endpoint = f"{scheme}://127.0.0.1:{port}/{AZURE_ACCOUNT}"
    kw = {"connection_verify": tls["ca"]} if tls else {}
    service = BlobServiceClient(endpoint, credential={"account_name": AZURE_ACCOUNT, "account_key": AZURE_KEY}, **kw)
    service.create_container("contexts")
    return proc, SimpleNamespace(port=port, endpoint=endpoint, ca=tls["ca"] if tls else None, container=service.get_container_client("contexts"),
                                 connection_string=(f"DefaultEndpointsProtocol={scheme};AccountName={AZURE_ACCOUNT};"
                                                    f"AccountKey={AZURE_KEY};BlobEndpoint={endpoint};"))


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    proc, ns = _azurite(tmp_path_factory, None)
    try:
        yield ns
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def azurite_tls(tmp_path_factory, tls):
    proc, ns = _azurite(tmp_path_factory, tls)
    try:
        yield ns
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def https_server(tmp_path_factory, tls):
    root = str(tmp_path_factory.mktemp("www"))
    server = HTTPServerThread(FileHandler, tls=tls, root=root)
    try:
        yield SimpleNamespace(root=root, url=f"https://127.0.0.1:{server.port}", ca=tls["ca"])
    finally:
        server.stop()


# --- git -------------------------------------------------------------------------------------------------------

def git(*args: str, cwd: str, env: dict | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env=env or GIT_ENV).stdout.strip()


GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_TERMINAL_PROMPT": "0"}


def _write(root: str, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def _publish(work: str, served: str, name: str) -> str:
    bare = os.path.join(served, name)
    git("clone", "--quiet", "--bare", work, bare, cwd=served)
    git("update-server-info", cwd=bare)
    return bare


@pytest.fixture(scope="session")
def git_server(tmp_path_factory, tls):
    """Repositories served over http and https: ``app.git`` (main, feature, tag v1, refs/pull/7/head),
    ``hostile.git`` (symlinks out of the tree), ``lib.git`` and ``with-sub.git`` (a submodule)."""
    _need("git")
    base = tmp_path_factory.mktemp("git")
    served, work = str(base / "served"), str(base / "work")
    os.makedirs(served)
    http = HTTPServerThread(GitHandler, root=served)
    https = HTTPServerThread(GitHandler, tls=tls, root=served)
    try:
        # app.git
        app = os.path.join(work, "app")
        os.makedirs(app)
        git("init", "--quiet", "-b", "main", cwd=app)
        _write(app, {"Dockerfile": "FROM scratch\n# v1\n", "app/hello.txt": "v1\n",
                     "sub/Dockerfile.sub": "FROM scratch\n"})
        git("add", "-A", cwd=app)
        git("commit", "--quiet", "-m", "one", cwd=app)
        c1 = git("rev-parse", "HEAD", cwd=app)
        git("tag", "v1", cwd=app)
        _write(app, {"app/hello.txt": "v2\n"})
        git("commit", "--quiet", "-am", "two", cwd=app)
        c2 = git("rev-parse", "HEAD", cwd=app)
        git("checkout", "--quiet", "-b", "feature", cwd=app)
        _write(app, {"feature.txt": "feature\n"})
        git("add", "-A", cwd=app)
        git("commit", "--quiet", "-m", "feature", cwd=app)
        git("checkout", "--quiet", "-b", "pr", c2, cwd=app)
        _write(app, {"pr.txt": "pull request\n"})
        git("add", "-A", cwd=app)
        git("commit", "--quiet", "-m", "pr", cwd=app)
        pr = git("rev-parse", "HEAD", cwd=app)
        git("checkout", "--quiet", "main", cwd=app)
        bare = _publish(app, served, "app.git")
        git("update-ref", "refs/pull/7/head", pr, cwd=bare)
        git("branch", "-D", "pr", cwd=bare)
        git("update-server-info", cwd=bare)
        # hostile.git: symlinks that point out of the tree, and a file the Dockerfile symlink lands on inside
        hostile = os.path.join(work, "hostile")
        os.makedirs(hostile)
        git("init", "--quiet", "-b", "main", cwd=hostile)
        _write(hostile, {"etc/passwd": "repo-owned passwd\n", "real/Dockerfile": "FROM scratch\n"})
        os.symlink("/etc/passwd", os.path.join(hostile, "Dockerfile"))
        os.symlink("/", os.path.join(hostile, "escape"))
        os.symlink("../../../../../../..", os.path.join(hostile, "up"))
        os.symlink("/root", os.path.join(hostile, "real/home"))
        git("add", "-A", cwd=hostile)
        git("commit", "--quiet", "-m", "hostile", cwd=hostile)
        _publish(hostile, served, "hostile.git")
        # lib.git, and with-sub.git that has it as a submodule
        lib = os.path.join(work, "lib")
        os.makedirs(lib)
        git("init", "--quiet", "-b", "main", cwd=lib)
        _write(lib, {"lib.txt": "library\n"})
        git("add", "-A", cwd=lib)
        git("commit", "--quiet", "-m", "lib", cwd=lib)
        _publish(lib, served, "lib.git")
        top = os.path.join(work, "top")
        os.makedirs(top)
        git("init", "--quiet", "-b", "main", cwd=top)
        _write(top, {"Dockerfile": "FROM scratch\n"})
        git("submodule", "--quiet", "add", f"http://127.0.0.1:{http.port}/smart/lib.git", "vendor/lib", cwd=top)
        git("add", "-A", cwd=top)
        git("commit", "--quiet", "-m", "top", cwd=top)
        _publish(top, served, "with-sub.git")
        yield SimpleNamespace(http=f"127.0.0.1:{http.port}", https=f"127.0.0.1:{https.port}", ca=tls["ca"],
                              c1=c1, c2=c2, pr=pr, served=served)
    finally:
        http.stop()
        https.stop()
