"""Local stand-ins for the clouds' identity endpoints, speaking the real protocols to the real SDKs.

- ``GoogleTokenServer``: a service account's ``token_uri`` (checks the RS256-signed JWT assertion against the
  account's public key) and a GCE/GKE metadata server (``Metadata-Flavor: Google``).
- ``AzureAuthority``: an Azure AD authority over HTTPS (OpenID discovery, the v2.0 token endpoint for client
  secrets and workload-identity assertions) plus ACR's ``/oauth2/exchange``.
AWS is moto's own server (``moto_server``). Everything listens on 127.0.0.1 and is stopped by its fixture.
"""
from __future__ import annotations

import base64
import http.server
import json
import secrets
import ssl
import threading
import time
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from registry_servers import free_port

GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
ARM_SCOPE = "https://management.azure.com/.default"


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fake_jwt(claims: dict) -> str:
    """An unsigned JWT-shaped token (ACR's refresh tokens are JWTs; the client only reads ``exp``)."""
    return ".".join((_b64url(b'{"alg":"none","typ":"JWT"}'), _b64url(json.dumps(claims).encode()),
                     _b64url(secrets.token_bytes(16))))


class _Server:
    """A threading HTTP(S) server calling ``self.handle(method, path, headers, body) -> (status, headers, body)``."""

    def __init__(self, *, tls: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.requests: list[tuple[str, str, dict]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = {k: v[0] for k, v in parse_qs(body.decode()).items()} if body else {}
                owner.requests.append((self.command, self.path, form))
                status, headers, out = owner.handle(self.command, self.path, self.headers, form)
                out = out if isinstance(out, bytes) else json.dumps(out).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = _any  # noqa: N815

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self, path_part: str) -> int:
        return sum(1 for _, path, _ in self.requests if path_part in path)

    def handle(self, method: str, path: str, headers, form: dict):
        raise NotImplementedError


class GoogleTokenServer(_Server):
    """OAuth2 JWT-bearer token endpoint for one service account, and a metadata server for workload identity."""

    def __init__(self) -> None:
        super().__init__()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.email = "builder@snapfs-test.iam.gserviceaccount.com"
        self.token_uri = f"{self.url}/token"
        self.access_token = "ya29.sa-" + secrets.token_urlsafe(24)
        self.metadata_token = "ya29.md-" + secrets.token_urlsafe(24)
        self.expires_in = 3600

    def service_account_json(self, key=None) -> dict:
        pem = (key or self.key).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()).decode()
        return {"type": "service_account", "project_id": "snapfs-test", "private_key_id": "k1", "private_key": pem,
                "client_email": self.email, "client_id": "1234567890", "token_uri": self.token_uri}

    def _check_assertion(self, assertion: str) -> bool:
        try:
            header, payload, sig = assertion.split(".")
            self.key.public_key().verify(_b64url_decode(sig), f"{header}.{payload}".encode(), padding.PKCS1v15(),
                                         hashes.SHA256())
        except Exception:
            return False
        claims = json.loads(_b64url_decode(payload))
        # google-auth names Google's token endpoint as the audience whatever token_uri says, as Google expects.
        return (claims.get("iss") == self.email and claims.get("aud") in (self.token_uri, GOOGLE_TOKEN_AUDIENCE)
                and GCP_SCOPE in claims.get("scope", "").split() and claims.get("exp", 0) > time.time())

    def handle(self, method, path, headers, form):
        if path == "/token" and method == "POST":
            if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or \
                    not self._check_assertion(form.get("assertion", "")):
                return 400, {}, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            return 200, {}, {"access_token": self.access_token, "expires_in": self.expires_in,
                             "token_type": "Bearer"}
        # The metadata server: every answer carries the flavor header, every request must send it.
        flavor = {"Metadata-Flavor": "Google"}
        if headers.get("Metadata-Flavor") != "Google":
            return 403, flavor, b"missing Metadata-Flavor header"
        route = urlsplit(path).path
        if route == "/":
            return 200, flavor, b"ok"
        if route == "/computeMetadata/v1/project/project-id":
            return 200, {**flavor, "Content-Type": "text/plain"}, b"snapfs-test"
        if route == "/computeMetadata/v1/instance/service-accounts/default/":
            return 200, flavor, {"email": self.email, "aliases": ["default"], "scopes": [GCP_SCOPE]}
        if route == "/computeMetadata/v1/instance/service-accounts/default/token":
            return 200, flavor, {"access_token": self.metadata_token, "expires_in": self.expires_in,
                                 "token_type": "Bearer"}
        return 404, flavor, b"not found"


class AzureAuthority(_Server):
    """Azure AD (``/<tenant>/v2.0/.well-known/openid-configuration``, ``/<tenant>/oauth2/v2.0/token``) and ACR's
    ``/oauth2/exchange``, over HTTPS."""

    def __init__(self, tls: tuple[str, str]) -> None:
        super().__init__(tls=tls)
        self.tenant = "72f988bf-0000-4000-8000-2d7cd011db47"
        self.client_id = "5d3c1f7e-0000-4000-8000-5e1fb2a0c0de"
        self.client_secret = "Az-Secret~" + secrets.token_urlsafe(16)
        self.federated_token = "eyJhbGciOiJSUzI1NiJ9.federated." + secrets.token_urlsafe(16)
        self.aad_token = "eyJ0eXAiOiJKV1QifQ.aad." + secrets.token_urlsafe(24)
        self.refresh_exp = int(time.time()) + 3 * 3600
        self.refresh_token = fake_jwt({"exp": self.refresh_exp, "tenant": self.tenant})
        self.scopes: list[str] = []
        self.services: list[str] = []

    def handle(self, method, path, headers, form):
        route = urlsplit(path).path
        base = f"{self.url}/{self.tenant}"
        if route == f"/{self.tenant}/v2.0/.well-known/openid-configuration":
            return 200, {}, {"issuer": f"{base}/v2.0", "token_endpoint": f"{base}/oauth2/v2.0/token",
                             "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                             "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                             "jwks_uri": f"{base}/discovery/v2.0/keys"}
        if route == f"/{self.tenant}/oauth2/v2.0/token" and method == "POST":
            self.scopes.append(form.get("scope", ""))
            secret_ok = form.get("client_secret") == self.client_secret
            assertion_ok = (form.get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:"
                            "jwt-bearer" and form.get("client_assertion") == self.federated_token)
            if form.get("grant_type") != "client_credentials" or form.get("client_id") != self.client_id or \
                    not (secret_ok or assertion_ok):
                return 401, {}, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client "
                                 "secret provided. Trace ID: 0000"}
            return 200, {}, {"access_token": self.aad_token, "expires_in": 3600, "ext_expires_in": 3600,
                             "token_type": "Bearer"}
        if route == "/oauth2/exchange" and method == "POST":
            self.services.append(form.get("service", ""))
            if form.get("grant_type") != "access_token" or form.get("access_token") != self.aad_token:
                return 401, {}, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid AAD token"}]}
            return 200, {}, {"refresh_token": self.refresh_token}
        return 404, {}, {"error": "not found"}
