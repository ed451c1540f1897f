"""Built-in cloud registry credentials (ECR, GCR / Artifact Registry, ACR) against real protocol servers.

AWS is moto's server (``AWS_ENDPOINT_URL_ECR`` / ``_STS``); Google is a local OAuth2 token endpoint named by a
service-account file's ``token_uri`` and a metadata server (``GCE_METADATA_HOST``); Azure is a local HTTPS Azure
AD authority (``AZURE_AUTHORITY_HOST``) with ACR's ``/oauth2/exchange``. The credentials each provider returns
push an image to a real token-auth docker-registry that accepts exactly those credentials.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys

import pytest

from cloud_servers import ARM_SCOPE, AzureAuthority, GoogleTokenServer
from imagekit import files_layer, image_of
from registry_servers import (FAST, RegistryProcess, TokenIssuer, free_port, make_ca_and_cert, need, wait_port)
from snapfs.errors import RegistryError
from snapfs.image.reference import parse_reference
from snapfs.image.registry import cloud, credentials
from snapfs.image.registry.client import RegistryClient, RegistryOptions
from snapfs.image.registry.credentials import ANONYMOUS, Credential, CredentialSource, DockerConfig
from snapfs.image.registry.push import push_image

SRC = os.path.dirname(os.path.dirname(os.path.abspath(cloud.__file__ + "/../../..")))
ECR_HOST = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
ECR_PASSWORD = "123456789012-auth-token"  # what moto's GetAuthorizationToken encodes for that registry id
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"


# --- fixtures ------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def cloud_env(monkeypatch, tmp_path):
    """No cloud identity from the machine: every provider sees only what a test gives it."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "GOOGLE_", "GCE_", "AZURE_", "IDENTITY_", "MSI_", "IMDS_", "CLOUDSDK_")) or \
                name in ("DOCKER_CONFIG", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NO_GCE_CHECK"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    closed = f"127.0.0.1:{free_port()}"  # nothing listens: metadata probes fail at once
    for name, value in {"HOME": str(home), "CLOUDSDK_CONFIG": str(home / "gcloud"),
                        "AWS_CONFIG_FILE": str(home / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "none"),
                        "AWS_EC2_METADATA_DISABLED": "true", "GCE_METADATA_IP": closed,
                        "GCE_METADATA_HOST": closed, "AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://{closed}",
                        "DOCKER_CONFIG": str(tmp_path / "docker")}.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "docker").mkdir()
    cloud.clear_cache()
    credentials._reported.clear()
    yield
    cloud.clear_cache()


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    need("moto_server")
    port = free_port()
    log = str(tmp_path_factory.mktemp("moto") / "moto.log")
    with open(log, "wb") as f:
        proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc, log=log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def aws(moto, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", moto)
    return moto


@pytest.fixture(scope="module")
def google():
    server = GoogleTokenServer().start()
    yield server
    server.stop()


@pytest.fixture
def gcp_sa(google, tmp_path, monkeypatch):
    """GOOGLE_APPLICATION_CREDENTIALS names a service account whose token_uri is the local token endpoint."""
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(google.service_account_json()))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    google.requests.clear()
    google.expires_in = 3600
    return google


@pytest.fixture(scope="module")
def azure_tls(tmp_path_factory):
    need("openssl")
    return make_ca_and_cert(str(tmp_path_factory.mktemp("azure-tls")))


@pytest.fixture(scope="module")
def azure_server(azure_tls):
    ca, cert, key = azure_tls
    server = AzureAuthority((cert, key)).start()
    server.ca = ca
    yield server
    server.stop()


@pytest.fixture
def azure(azure_server, monkeypatch):
    """The local authority, trusted through the standard CA variables; no identity configured yet."""
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", azure_server.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", azure_server.ca)
    monkeypatch.setenv("SSL_CERT_FILE", azure_server.ca)
    azure_server.requests.clear()
    return azure_server


@pytest.fixture
def azure_sp(azure, monkeypatch):
    monkeypatch.setenv("AZURE_CLIENT_ID", azure.client_id)
    monkeypatch.setenv("AZURE_TENANT_ID", azure.tenant)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", azure.client_secret)
    return azure


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A token-auth docker-registry whose issuer accepts the users in ``.issuer.users`` (anonymous: pull only)."""
    need("docker-registry")
    d = tmp_path_factory.mktemp("cloud-registry")
    issuer = TokenIssuer(str(d), users={}).start()
    reg = RegistryProcess(str(d), name="cloud", extra_config=issuer.registry_config()).start()
    reg.issuer = issuer
    try:
        yield reg
    finally:
        reg.stop()
        issuer.stop()


def write_config(tmp_path, obj: dict) -> DockerConfig:
    (tmp_path / "docker" / "config.json").write_text(json.dumps(obj))
    return DockerConfig.load()


def push_with(cred: Credential, reg, tmp_path, name: str) -> str:
    opts = RegistryOptions(insecure_registries=(reg.host,), **FAST)
    with RegistryClient(opts, credentials=lambda host: cred) as client:
        img = image_of([files_layer(str(tmp_path / name), {name: name.encode()})])
        assert push_image(client, img, [parse_reference(f"{reg.host}/{name}/app:1")]) == img.digest
        return img.digest


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {SRC!r})\n{code}"],
                          capture_output=True, text=True, env=env or dict(os.environ), timeout=120)


# --- which registry gets which provider ------------------------------------------------------------------------

@pytest.mark.parametrize("host, provider", [
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "ECR"),
    ("123456789012.dkr.ecr.us-gov-west-1.amazonaws.com", "ECR"),
    ("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com", "ECR"),
    ("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", "ECR"),
    ("123456789012.dkr-ecr.eu-west-1.on.aws", "ECR"),
    ("123456789012.DKR.ECR.EU-WEST-1.AMAZONAWS.COM", "ECR"),
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com:443", "ECR"),
    ("gcr.io", "GCR"), ("eu.gcr.io", "GCR"), ("marketplace.gcr.io", "GCR"),
    ("us-central1-docker.pkg.dev", "GCR"), ("europe-docker.pkg.dev", "GCR"),
    ("myregistry.azurecr.io", "ACR"), ("myregistry.azurecr.cn", "ACR"), ("myregistry.azurecr.us", "ACR"),
    ("my-reg-abc123.azurecr.io", "ACR"),
    # look-alikes that must get nothing
    ("dkr.ecr.us-east-1.amazonaws.com.evil.com", None),
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.com", None),
    ("evil.com/x.dkr.ecr.us-east-1.amazonaws.com", None),
    ("12345.dkr.ecr.us-east-1.amazonaws.com", None),
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com:5000", None),
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com.cn.evil.com", None),
    ("x.dkr.ecr.us-east-1.amazonaws.com@evil.com", None),
    ("gcr.io.evil.com", None), ("evilgcr.io", None), ("a.b.gcr.io", None), ("-docker.pkg.dev", None),
    ("docker.pkg.dev", None), ("us-docker.pkg.dev.evil.com", None), ("us-maven.pkg.dev", None),
    ("azurecr.io", None), ("x.azurecr.io.evil.com", None), ("x.azurecr.de", None), ("x.evil.io/azurecr.io", None),
    ("docker.io", None), ("ghcr.io", None), ("127.0.0.1:5000", None), ("", None),
])
def test_host_patterns(host, provider):
    found = cloud.provider_for_host(host)
    assert (found.name if found else None) == provider


def test_helper_names():
    assert {name: cloud.provider_for_helper(name).name for name in ("ecr-login", "gcr", "gcloud", "acr-env")} == \
        {"ecr-login": "ECR", "gcr": "GCR", "gcloud": "GCR", "acr-env": "ACR"}
    assert cloud.provider_for_helper("desktop") is None and cloud.provider_for_helper("pass") is None


def test_sdks_are_imported_only_when_a_provider_runs():
    r = run_python("import snapfs, snapfs.image.registry.credentials, snapfs.image.registry.cloud, json\n"
                   "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
                   "('boto3', 'botocore', 'azure', 'msal', 'google'))))")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


# --- ECR -------------------------------------------------------------------------------------------------------

def test_ecr_automatic_for_its_host_and_push(aws, registry, tmp_path, monkeypatch):
    registry.issuer.users["AWS"] = ECR_PASSWORD
    # No AWS identity: anonymous, and a refused push says why there were no credentials.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    anonymous = DockerConfig.load().lookup(ECR_HOST)
    with pytest.raises(RegistryError, match=r": HTTP 401: authentication required, no credentials \(anonymous: no "
                                            r"AWS credentials found \(env, web identity, profile\)\)"):
        push_with(anonymous, registry, tmp_path, "ecr-anon")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    cloud.clear_cache()
    cred = DockerConfig.load().lookup(ECR_HOST)  # no config.json at all: the host name picks the provider
    assert (cred.username, cred.password, cred.source) == ("AWS", ECR_PASSWORD, "built-in ECR")
    assert "auth-token" not in repr(cred)
    # moto's token "expired" in 2015: taken as valid for a few minutes rather than fetched again per request.
    assert not cred.expiring() and DockerConfig().lookup(ECR_HOST).expires_at == cred.expires_at
    push_with(cred, registry, tmp_path, "ecr")


@pytest.mark.parametrize("host", ["123456789012.dkr.ecr-fips.us-east-1.amazonaws.com",
                                  "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"])
def test_ecr_fips_and_china_hosts(aws, host):
    assert DockerConfig().lookup(host).password == ECR_PASSWORD


def test_ecr_web_identity(moto, monkeypatch, tmp_path):
    """IRSA: a projected service-account token exchanged at STS (AssumeRoleWithWebIdentity), then ECR."""
    token_file = tmp_path / "irsa-token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.projected-sa-token.sig")
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/snapfs-builder")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)  # STS and ECR
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    cred = DockerConfig().lookup(ECR_HOST)
    assert (cred.username, cred.password) == ("AWS", ECR_PASSWORD)


def test_ecr_failures_are_one_line_without_secrets(moto, monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = write_config(tmp_path, {"credHelpers": {ECR_HOST: "ecr-login", "127.0.0.1:5000": "ecr-login"}})
    with pytest.raises(RegistryError) as exc:
        cfg.lookup(ECR_HOST)
    assert exc.value.message == f"ECR credentials for {ECR_HOST}: no AWS credentials found (env, web identity, " \
                                "profile)"
    with pytest.raises(RegistryError) as exc:
        cfg.lookup("127.0.0.1:5000")
    assert exc.value.message == "ECR credentials for 127.0.0.1:5000: not an ECR registry host " \
                                "(<account>.dkr.ecr.<region>.amazonaws.com)"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", f"http://127.0.0.1:{free_port()}")
    cloud.clear_cache()
    with pytest.raises(RegistryError) as exc:
        cfg.lookup(ECR_HOST)
    assert exc.value.message.startswith(f"ECR credentials for {ECR_HOST}: GetAuthorizationToken failed: ")
    assert "\n" not in exc.value.message and AWS_SECRET not in exc.value.message
    assert AWS_SECRET not in caplog.text


# --- GCR / Artifact Registry ----------------------------------------------------------------------------------

def test_gcr_service_account_and_push(gcp_sa, registry, tmp_path):
    cred = DockerConfig.load().lookup("europe-docker.pkg.dev")
    assert (cred.username, cred.password, cred.source) == ("oauth2accesstoken", gcp_sa.access_token, "built-in GCR")
    registry.issuer.users["oauth2accesstoken"] = gcp_sa.access_token
    push_with(cred, registry, tmp_path, "gcr")


def test_gcr_token_cached_per_process_until_near_expiry(gcp_sa):
    for host in ("gcr.io", "eu.gcr.io", "us-central1-docker.pkg.dev"):
        assert DockerConfig().lookup(host).password == gcp_sa.access_token
    assert gcp_sa.count("/token") == 1  # one token for every Google registry
    # A client's CredentialSource keeps a long-lived token, but asks again for one about to expire.
    source = CredentialSource(DockerConfig())
    source("gcr.io")
    cloud.clear_cache()
    source("gcr.io")
    assert gcp_sa.count("/token") == 1
    gcp_sa.expires_in = 30
    cloud.clear_cache()
    short = CredentialSource(DockerConfig())
    assert short("gcr.io").expiring()
    cloud.clear_cache()
    short("gcr.io")
    assert gcp_sa.count("/token") == 3


def test_gcr_workload_identity_metadata_server(google):
    """GKE workload identity: no key file, the metadata server hands out the token (GCE_METADATA_HOST)."""
    google.requests.clear()
    env = dict(os.environ, GCE_METADATA_HOST=f"127.0.0.1:{google.port}", GCE_METADATA_IP=f"127.0.0.1:{google.port}")
    r = run_python("from snapfs.image.registry.credentials import DockerConfig\n"
                   "c = DockerConfig().lookup('us-docker.pkg.dev'); print(c.username, c.password, c.source)", env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["oauth2accesstoken", google.metadata_token, "built-in", "GCR"]
    assert google.count("/service-accounts/default/token") == 1


def test_gcr_failures(google, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    # Nothing configured: the automatic provider says so once and the registry is tried anonymously.
    cred = DockerConfig().lookup("gcr.io")
    assert (cred.username, cred.password) == ("", "")
    assert cred.source.startswith("anonymous: no Google credentials found")
    DockerConfig().lookup("gcr.io")
    lines = [r for r in caplog.records if r.getMessage().startswith("GCR credentials for gcr.io")]
    assert [(r.levelno, r.getMessage()) for r in lines] == [(logging.INFO, (
        "GCR credentials for gcr.io: no Google credentials found (GOOGLE_APPLICATION_CREDENTIALS, workload identity "
        "metadata server); trying gcr.io anonymously"))]
    # A key the token endpoint does not accept: named in credHelpers, an error.
    from cryptography.hazmat.primitives.asymmetric import rsa

    sa = google.service_account_json(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    (tmp_path / "bad.json").write_text(json.dumps(sa))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "bad.json"))
    cloud.clear_cache()
    cfg = write_config(tmp_path, {"credHelpers": {"gcr.io": "gcr"}})
    with pytest.raises(RegistryError) as exc:
        cfg.lookup("gcr.io")
    assert exc.value.message.startswith("GCR credentials for gcr.io: cannot get an access token: invalid_grant")
    assert "\n" not in exc.value.message and "PRIVATE KEY" not in exc.value.message
    assert "PRIVATE KEY" not in caplog.text


# --- ACR -------------------------------------------------------------------------------------------------------

def test_acr_service_principal_exchange_and_push(azure_sp, registry, tmp_path):
    host = f"127.0.0.1:{azure_sp.port}"  # the exchange endpoint stands in for the registry's own
    cfg = write_config(tmp_path, {"credHelpers": {host: "acr-env"}})
    cred = cfg.lookup(host)
    assert (cred.username, cred.password, cred.source) == (cloud.ACR_USER, azure_sp.refresh_token, "built-in ACR")
    assert cred.expires_at == azure_sp.refresh_exp
    assert azure_sp.scopes == [ARM_SCOPE] and azure_sp.services == [host]
    registry.issuer.users[cloud.ACR_USER] = azure_sp.refresh_token
    push_with(cred, registry, tmp_path, "acr")


def test_acr_workload_identity(azure, monkeypatch, tmp_path):
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(azure.federated_token)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AZURE_CLIENT_ID", azure.client_id)
    monkeypatch.setenv("AZURE_TENANT_ID", azure.tenant)
    host = f"127.0.0.1:{azure.port}"
    cred = cloud.get_token(cloud.provider_for_helper("acr-env"), host)
    assert (cred.username, cred.password) == (cloud.ACR_USER, azure.refresh_token)
    assert any(form.get("client_assertion") == azure.federated_token for _, _, form in azure.requests)


def test_acr_failures_are_one_line_without_secrets(azure_sp, monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    host = f"127.0.0.1:{azure_sp.port}"
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "Wrong-Secret~0123456789")
    cfg = write_config(tmp_path, {"credHelpers": {host: "acr-env"}})
    with pytest.raises(RegistryError) as exc:
        cfg.lookup(host)
    msg = exc.value.message
    assert msg.startswith(f"ACR credentials for {host}: Azure AD refused the service principal: ") and \
        "AADSTS7000215" in msg
    assert "\n" not in msg and "Wrong-Secret~0123456789" not in msg
    # No identity at all (managed identity's endpoint does not answer).
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name)
    cloud.clear_cache()
    with pytest.raises(RegistryError) as exc:
        cfg.lookup(host)
    assert exc.value.message == f"ACR credentials for {host}: no Azure credentials found (workload identity, " \
                                "managed identity, environment service principal)"
    assert "Wrong-Secret~0123456789" not in caplog.text
    # The SDK's own multi-line warnings do not add to the one line.
    assert [r.name for r in caplog.records if r.levelno >= logging.WARNING] == []


# --- config.json precedence, helper names, missing SDKs, logs --------------------------------------------------

def test_explicit_auths_entry_wins_over_providers(tmp_path):
    auth = base64.b64encode(b"robot:from-config").decode()
    cfg = write_config(tmp_path, {"auths": {ECR_HOST: {"auth": auth}, "gcr.io": {"auth": auth}},
                                  "credHelpers": {ECR_HOST: "ecr-login"}, "credsStore": "gcr"})
    # No cloud identity is configured: a provider asked here would fail (or go anonymous).
    for host in (ECR_HOST, "gcr.io"):
        assert (cfg.lookup(host).username, cfg.lookup(host).password) == ("robot", "from-config")


def test_cred_helper_names_are_built_in(aws, gcp_sa, azure_sp, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no docker-credential-* programs anywhere
    acr = f"127.0.0.1:{azure_sp.port}"
    cfg = write_config(tmp_path, {"credHelpers": {"registry.example.com": "gcloud", "images.example.com": "gcr",
                                                  acr: "acr-env"},
                                  "credsStore": "ecr-login"})
    assert cfg.lookup("registry.example.com").password == gcp_sa.access_token
    assert cfg.lookup("images.example.com").password == gcp_sa.access_token
    assert cfg.lookup(acr).password == azure_sp.refresh_token
    assert cfg.lookup(ECR_HOST).password == ECR_PASSWORD  # credsStore ecr-login on an ECR host
    assert cfg.lookup("other.example.com") == ANONYMOUS  # ... and nothing (no program run) elsewhere
    assert cfg.lookup("gcr.io").source == "built-in GCR"  # no entry: the automatic provider


@pytest.mark.parametrize("module, helper, host, extra", [
    ("boto3", "ecr-login", ECR_HOST, "aws"),
    ("google.auth", "gcr", "gcr.io", "gcp"),
    ("azure.identity", "acr-env", "myregistry.azurecr.io", "azure"),
])
def test_missing_sdk_names_the_extra(module, helper, host, extra):
    code = f"""
import logging
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
sys.modules[{module!r}] = None  # as if not installed
from snapfs.errors import SnapfsError
from snapfs.image.registry.credentials import DockerConfig
print(DockerConfig().lookup({host!r}).source)
try:
    DockerConfig(cred_helpers=(({host!r}, {helper!r}),)).lookup({host!r})
except SnapfsError as exc:
    print(exc.message)
"""
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    reason = f"needs the {module} package, which is not installed: pip install 'snapfs[{extra}]'"
    name = {"aws": "ECR", "gcp": "GCR", "azure": "ACR"}[extra]
    assert r.stdout.splitlines() == [f"anonymous: {reason}", f"{name} credentials for {host}: {reason}"]
    assert f"WARNING {name} credentials for {host}: {reason}; trying {host} anonymously" in r.stderr.splitlines()


def test_tokens_never_logged(aws, gcp_sa, azure_sp, caplog):
    caplog.set_level(logging.DEBUG)
    acr = f"127.0.0.1:{azure_sp.port}"
    got = [DockerConfig().lookup(ECR_HOST), DockerConfig().lookup("gcr.io"),
           cloud.get_token(cloud.provider_for_helper("acr-env"), acr)]
    secrets = [ECR_PASSWORD, base64.b64encode(f"AWS:{ECR_PASSWORD}".encode()).decode(), gcp_sa.access_token,
               azure_sp.refresh_token, azure_sp.aad_token, azure_sp.client_secret, AWS_SECRET]
    assert [c.password for c in got] == [ECR_PASSWORD, gcp_sa.access_token, azure_sp.refresh_token]
    # The SDKs did log (botocore prints whole response bodies at debug level): their records were withheld.
    assert any(r.name.startswith("botocore") for r in caplog.records)
    assert any("withheld" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage()
        assert not [s for s in secrets if s in text], (record.name, text[:200])
