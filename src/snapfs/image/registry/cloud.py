"""Built-in registry credentials from the pod's cloud identity: ECR, GCR / Artifact Registry, ACR.

Kaniko ships credential helper binaries for the three clouds and uses them for their registries without any
configuration; snapfs does the same in-process, with each cloud's own SDK (optional extras, imported only when a
provider is used):

- ECR (``<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]``, dual-stack ``dkr-ecr...on.aws``): boto3's
  credential chain (environment, web identity / IRSA, profile, container and instance roles) ->
  ``ecr:GetAuthorizationToken``, whose token decodes to ``AWS:<password>``.
- GCR and Artifact Registry (``gcr.io``, ``*.gcr.io``, ``*-docker.pkg.dev``): google-auth's application default
  credentials (``GOOGLE_APPLICATION_CREDENTIALS``, workload identity through the metadata server) -> an access
  token, sent as the password of the user ``oauth2accesstoken``.
- ACR (``*.azurecr.io``, ``.cn``, ``.us``): azure-identity (environment service principal, workload identity,
  managed identity; nothing interactive, no CLI) -> an Azure AD token for the cloud's management scope ->
  ``POST https://<registry>/oauth2/exchange`` -> an ACR refresh token, the password of the null-GUID user.

The exchange is the one request made here rather than by an SDK or the registry client: it runs while the client
asks for credentials, and needs nothing of the client's per-registry options (ACR serves public certificates).
Endpoints are the SDKs' own business (``AWS_ENDPOINT_URL_ECR``, a service-account file's ``token_uri``,
``GCE_METADATA_HOST``, ``AZURE_AUTHORITY_HOST``). Tokens are cached per process until shortly before they expire.
While an SDK runs, its own log records are withheld: its debug output prints request and response bodies, which
hold the tokens. Failures are one line naming the provider, the registry and the reason, never a token.
"""
from __future__ import annotations

import base64
import calendar
import contextvars
import importlib
import json
import logging
import os
import re
import ssl
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from snapfs.errors import RegistryError
from snapfs.redact import scrub

log = logging.getLogger("snapfs.registry")

ACR_USER = "00000000-0000-0000-0000-000000000000"
GCR_USER = "oauth2accesstoken"
GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_REFRESH_MARGIN = 300.0  # fetch a new token this long before the old one expires (or at half its lifetime)
# A failed lookup is not retried for this long: each try may probe a metadata endpoint (google-auth's probe takes
# 3 s where nothing answers). No identity or no SDK will not change while the process runs.
_FAILURE_TTL = {"failed": 60.0, "no-credentials": 3600.0, "missing-sdk": 3600.0}
_DEFAULT_LIFETIME = 3600.0  # when a token does not say how long it lives
_HTTP_TIMEOUT = 30.0
# Values that may appear in an SDK's error text: masked before a message is built from it.
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_PASSWORD",
               "AZURE_CLIENT_CERTIFICATE_PASSWORD")
_SDK_LOGGERS = ("boto3", "botocore", "s3transfer", "urllib3", "requests", "google", "azure", "msal")

_ECR_RE = re.compile(r"(\d{12})\.dkr\.ecr(-fips)?\.([a-z]{2}(?:-[a-z]+)+-\d{1,2})\.amazonaws\.com(?:\.cn)?"
                     r"|(\d{12})\.dkr-ecr(-fips)?\.([a-z]{2}(?:-[a-z]+)+-\d{1,2})\.on\.aws")
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_GCR_RE = re.compile(rf"gcr\.io|{_LABEL}\.gcr\.io|{_LABEL}-docker\.pkg\.dev")
_ACR_RE = re.compile(rf"{_LABEL}\.azurecr\.(io|cn|us)")
# Per sovereign cloud (the registry's suffix): the Azure AD authority and the ARM scope ACR's exchange accepts.
_AZURE_CLOUDS = {
    "io": ("login.microsoftonline.com", "https://management.azure.com/.default"),
    "cn": ("login.chinacloudapi.cn", "https://management.chinacloudapi.cn/.default"),
    "us": ("login.microsoftonline.us", "https://management.usgovcloudapi.net/.default"),
}


@dataclass(frozen=True)
class CloudToken:
    """A registry user name and password from a cloud provider, valid until ``expires_at`` (epoch seconds)."""

    username: str
    password: str = field(repr=False)
    expires_at: float


class CloudCredentialError(RegistryError):
    """A provider could not produce credentials. ``kind``: ``missing-sdk``, ``no-credentials`` or ``failed``."""

    def __init__(self, provider: str, registry: str, reason: str, *, kind: str) -> None:
        super().__init__(f"{provider} credentials for {registry}: {reason}")
        self.provider, self.registry, self.reason, self.kind = provider, registry, reason, kind


@dataclass(frozen=True)
class Provider:
    """One cloud's registry credentials: which hosts and helper names it answers for, and how to fetch."""

    name: str  # ECR, GCR or ACR: the word every message starts with
    helpers: tuple[str, ...]  # config.json credHelpers / credsStore names it stands in for
    sdk: str  # the module it needs
    extra: str  # the snapfs extra that installs it
    pattern: re.Pattern = field(repr=False)
    fetch: Callable[[Provider, str], CloudToken] = field(repr=False, compare=False)

    def matches(self, registry: str) -> bool:
        """True when ``registry`` (a host, maybe ``host:443``) is one of this cloud's registry hosts."""
        host = registry.lower()
        if host.endswith(":443"):
            host = host[:-4]
        return self.pattern.fullmatch(host) is not None


class _Failed(Exception):
    def __init__(self, reason: str, kind: str = "failed") -> None:
        super().__init__(reason)
        self.reason, self.kind = reason, kind


# --- the providers ---------------------------------------------------------------------------------------------

def _ecr(provider: Provider, registry: str) -> CloudToken:
    m = provider.pattern.fullmatch(registry.lower().removesuffix(":443"))
    if m is None:
        raise _Failed("not an ECR registry host (<account>.dkr.ecr.<region>.amazonaws.com)")
    account, fips, region = m.group(1, 2, 3) if m.group(1) else m.group(4, 5, 6)
    boto3 = _sdk(provider)
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    no_creds = "no AWS credentials found (env, web identity, profile)"
    try:
        session = boto3.session.Session()
        if session.get_credentials() is None:
            raise _Failed(no_creds, "no-credentials")
        config = Config(use_fips_endpoint=bool(fips), retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=10, read_timeout=_HTTP_TIMEOUT)
        client = session.client("ecr", region_name=region, config=config)
        data = client.get_authorization_token(registryIds=[account])["authorizationData"][0]
    except NoCredentialsError:
        raise _Failed(no_creds, "no-credentials") from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise _Failed(f"{exc.operation_name} failed: {err.get('Code', '')}: {err.get('Message', '')}") from None
    except (BotoCoreError, KeyError, IndexError, ValueError) as exc:
        raise _Failed(f"GetAuthorizationToken failed: {_first_line(exc)}") from None
    try:
        user, sep, password = base64.b64decode(data["authorizationToken"]).decode("utf-8").partition(":")
    except (KeyError, ValueError, TypeError):
        sep = ""
    if not sep:
        raise _Failed("GetAuthorizationToken returned a token that is not base64 AWS:<password>")
    expires = data.get("expiresAt")
    return CloudToken(user, password, expires.timestamp() if hasattr(expires, "timestamp") else 0.0)


def _gcr(provider: Provider, registry: str) -> CloudToken:
    _sdk(provider)
    import google.auth
    import google.auth.exceptions as gexc
    import google.auth.transport.requests

    try:
        credentials, _ = google.auth.default(scopes=[GCP_SCOPE])
    except gexc.DefaultCredentialsError as exc:
        if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):  # named but unusable: say why
            raise _Failed(f"cannot load GOOGLE_APPLICATION_CREDENTIALS: {_first_line(exc)}") from None
        raise _Failed("no Google credentials found (GOOGLE_APPLICATION_CREDENTIALS, workload identity metadata "
                      "server)", "no-credentials") from None
    try:
        credentials.refresh(google.auth.transport.requests.Request())
    except gexc.GoogleAuthError as exc:
        raise _Failed(f"cannot get an access token: {_first_line(exc)}") from None
    if not credentials.token:
        raise _Failed("the token endpoint returned no access token")
    expiry = credentials.expiry  # naive UTC
    return CloudToken(GCR_USER, credentials.token,
                      calendar.timegm(expiry.utctimetuple()) if expiry else time.time() + _DEFAULT_LIFETIME)


def _acr(provider: Provider, registry: str) -> CloudToken:
    m = _ACR_RE.fullmatch(registry.lower().removesuffix(":443"))
    authority, scope = _AZURE_CLOUDS[m.group(1) if m else "io"]
    authority = os.environ.get("AZURE_AUTHORITY_HOST") or authority
    aad_token, aad_expires = _cached(("aad", authority, scope), lambda: _aad_token(provider, authority, scope))
    return _acr_exchange(registry, aad_token, aad_expires)


def _aad_token(provider: Provider, authority: str, scope: str) -> tuple[str, float]:
    """An Azure AD token from the first identity the pod has: a service principal in the environment, workload
    identity (a federated token file), else managed identity. Picked the way DefaultAzureCredential orders them,
    so that a configured identity's own error is reported rather than "nothing found"."""
    identity = _sdk(provider)
    from azure.core.exceptions import AzureError, ClientAuthenticationError

    env = os.environ
    kw: dict = {"authority": authority}
    if env.get("AZURE_AUTHORITY_HOST"):
        # An authority set by the operator (Azure Stack, a private cloud) is trusted as given: Microsoft's instance
        # discovery does not know it.
        kw["disable_instance_discovery"] = True
    has = lambda *names: all(env.get(n) for n in names)  # noqa: E731
    if has("AZURE_CLIENT_ID", "AZURE_TENANT_ID") and (has("AZURE_CLIENT_SECRET") or
                                                      has("AZURE_CLIENT_CERTIFICATE_PATH")):
        credential, what = identity.EnvironmentCredential(**kw), "service principal"
    elif has("AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"):
        credential, what = identity.WorkloadIdentityCredential(authority=authority), "workload identity"
    else:
        # Inside a chain, managed identity first probes the endpoint briefly instead of retrying for a minute.
        credential = identity.ChainedTokenCredential(
            identity.ManagedIdentityCredential(client_id=env.get("AZURE_CLIENT_ID") or None))
        what = "managed identity"
    try:
        token = credential.get_token(scope)
    except ClientAuthenticationError as exc:
        if what == "managed identity":
            raise _Failed("no Azure credentials found (workload identity, managed identity, environment service "
                          "principal)", "no-credentials") from None
        raise _Failed(f"Azure AD refused the {what}: {_first_line(exc)}") from None
    except (AzureError, ValueError, OSError) as exc:
        raise _Failed(f"cannot get an Azure AD token ({what}): {_first_line(exc)}") from None
    return token.token, float(token.expires_on)


def _acr_exchange(registry: str, aad_token: str, aad_expires: float) -> CloudToken:
    """ACR's documented exchange: an Azure AD access token for a registry refresh token."""
    import httpx

    url = f"https://{registry}/oauth2/exchange"
    form = {"grant_type": "access_token", "service": registry, "access_token": aad_token}
    if os.environ.get("AZURE_TENANT_ID"):
        form["tenant"] = os.environ["AZURE_TENANT_ID"]
    try:
        # The system CAs (and SSL_CERT_FILE), no proxies from the environment, no redirects: the AAD token goes
        # to the registry named and nowhere else.
        with httpx.Client(verify=ssl.create_default_context(), trust_env=False, follow_redirects=False,
                          timeout=_HTTP_TIMEOUT) as client:
            resp = client.post(url, data=form)
    except httpx.HTTPError as exc:
        raise _Failed(f"token exchange at {url} failed: {scrub(_first_line(exc), [aad_token])}") from None
    if resp.status_code != 200:
        raise _Failed(f"token exchange at {url} answered HTTP {resp.status_code}")
    try:
        refresh = str(resp.json().get("refresh_token") or "")
    except (ValueError, AttributeError):
        refresh = ""
    if not refresh:
        raise _Failed(f"token exchange at {url} returned no refresh token")
    return CloudToken(ACR_USER, refresh, _jwt_expiry(refresh) or min(aad_expires, time.time() + _DEFAULT_LIFETIME))


def _jwt_expiry(token: str) -> float:
    """The ``exp`` claim of a JWT, read without verifying it (only to know when to fetch a new one); 0 if none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims.get("exp") or 0)
    except (IndexError, ValueError, TypeError, AttributeError):
        return 0.0


PROVIDERS = (
    Provider("ECR", ("ecr-login",), "boto3", "aws", _ECR_RE, _ecr),
    Provider("GCR", ("gcr", "gcloud"), "google.auth", "gcp", _GCR_RE, _gcr),
    Provider("ACR", ("acr-env",), "azure.identity", "azure", _ACR_RE, _acr),
)


def provider_for_host(registry: str) -> Provider | None:
    """The provider whose registry hosts include ``registry`` (None for any other registry)."""
    return next((p for p in PROVIDERS if p.matches(registry)), None)


def provider_for_helper(name: str) -> Provider | None:
    """The provider standing in for the credential helper ``docker-credential-<name>`` (None: run the helper)."""
    return next((p for p in PROVIDERS if name in p.helpers), None)


# --- cache, SDK loading, messages --------------------------------------------------------------------------------

_cache: dict[tuple, tuple[float, float, object]] = {}  # key -> (fetched at, expires at, value or _Failed)
_cache_lock = threading.RLock()  # re-entered: ACR's fetch caches its Azure AD token


def clear_cache() -> None:
    """Forget every cached token and failure (the next lookup asks the cloud again)."""
    with _cache_lock:
        _cache.clear()


def _cached(key: tuple, fetch: Callable[[], object]) -> object:
    """``fetch()``'s value (or its ``_Failed``), reused until shortly before it expires."""
    with _cache_lock:
        hit = _cache.get(key)
        now = time.time()
        if hit is not None:
            fetched, expires, value = hit
            if now < expires - min(_REFRESH_MARGIN, (expires - fetched) / 2):
                if isinstance(value, _Failed):
                    raise value
                return value
        try:
            value = fetch()
        except _Failed as exc:
            _cache[key] = (now, now + _FAILURE_TTL[exc.kind], exc)
            raise
        expires = value.expires_at if isinstance(value, CloudToken) else value[1]
        if expires <= now:  # "expired" when just issued: a skewed clock; the registry will judge, ask again later
            expires = now + _REFRESH_MARGIN
            value = replace(value, expires_at=expires) if isinstance(value, CloudToken) else (value[0], expires)
        _cache[key] = (now, expires, value)
        return value


def get_token(provider: Provider, registry: str) -> CloudToken:
    """Registry credentials for ``registry`` from ``provider``; raises CloudCredentialError (one line, no token)."""
    key = (provider.name, "gcp" if provider.name == "GCR" else registry.lower())
    try:
        with _sdk_logs_withheld():
            return _cached(key, lambda: provider.fetch(provider, registry))
    except _Failed as exc:
        raise CloudCredentialError(provider.name, registry, scrub(exc.reason, _env_secrets()), kind=exc.kind) \
            from None


def _sdk(provider: Provider):
    try:
        return importlib.import_module(provider.sdk)
    except ImportError:
        raise _Failed(f"needs the {provider.sdk} package, which is not installed: "
                      f"pip install 'snapfs[{provider.extra}]'", "missing-sdk") from None


def _first_line(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    lines = arg.strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def _env_secrets() -> list[str]:
    return [v for v in (os.environ.get(n, "") for n in _SECRET_ENV) if len(v) >= 4]


_withhold = contextvars.ContextVar("snapfs_withhold_sdk_logs", default=False)
_factory_lock = threading.Lock()
_factory_installed = False


def _install_log_factory() -> None:
    """Once per process: a log record factory that, while a provider runs (in that thread only), turns the SDKs'
    records (request and response bodies with the tokens in them, multi-line warnings) into a debug placeholder."""
    global _factory_installed
    with _factory_lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args, **kwargs):
            record = previous(*args, **kwargs)
            if _withhold.get() and record.name.split(".", 1)[0] in _SDK_LOGGERS:
                # Debug records print bodies; warnings repeat, over several lines, the reason our one line gives.
                record.msg, record.args = "(cloud SDK log record withheld: it may hold a registry token)", None
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                record.exc_info = record.exc_text = None
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


class _sdk_logs_withheld:  # noqa: N801 (a context manager used like a function)
    def __enter__(self) -> None:
        _install_log_factory()
        self._token = _withhold.set(True)

    def __exit__(self, *exc) -> None:
        _withhold.reset(self._token)
