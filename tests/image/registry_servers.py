"""Real servers for the registry tests: docker-registry processes, a JWT token issuer and a fault-injecting proxy.

All listen on 127.0.0.1 on free ports and are stopped by the fixture that started them (by pid / by object).
"""
from __future__ import annotations

import base64
import datetime
import http.client
import http.server
import json
import os
import re
import shutil
import socket
import socketserver
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, *, timeout: float = 20.0, proc: subprocess.Popen | None = None, log: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = open(log).read()[-2000:] if log and os.path.exists(log) else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class RegistryProcess:
    """``docker-registry serve CONFIG`` on a free loopback port."""

    def __init__(self, workdir: str, *, extra_config: str = "", name: str = "registry") -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.dir = os.path.join(workdir, name)
        os.makedirs(os.path.join(self.dir, "storage"), exist_ok=True)
        self.config = os.path.join(self.dir, "config.yml")
        self.log = os.path.join(self.dir, "registry.log")
        with open(self.config, "w") as f:
            f.write(f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {self.dir}/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{self.port}
  secret: snapfs-test-secret
{extra_config}""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> RegistryProcess:
        logf = open(self.log, "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", self.config], stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        logf.close()
        wait_port(self.port, proc=self.proc, log=self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------------------------------------ TLS

def make_ca_and_cert(directory: str) -> tuple[str, str, str]:
    """A self-signed CA and a server cert for IP:127.0.0.1 made with ``openssl``; returns (ca, cert, key)."""
    ca_key, ca = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.pem")
    key, csr, cert = (os.path.join(directory, n) for n in ("server.key", "server.csr", "server.pem"))
    ext = os.path.join(directory, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=snapfs test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
        "-days", "2", "-extfile", ext)
    return ca, cert, key


def make_client_cert(directory: str) -> tuple[str, str]:
    """A client certificate signed by the CA ``make_ca_and_cert`` left in ``directory``; returns (cert, key)."""
    key, csr, cert = (os.path.join(directory, n) for n in ("client.key", "client.csr", "client.pem"))
    ext = os.path.join(directory, "client-ext.cnf")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=snapfs client")
    run("openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(directory, "ca.pem"), "-CAkey",
        os.path.join(directory, "ca.key"), "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext)
    return cert, key


# ------------------------------------------------------------------------------------------- token issuer

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """A Docker token service: Basic-authenticated GET realm?service=&scope= -> an ES256 JWT with x5c."""

    def __init__(self, directory: str, *, users: dict[str, str], service: str = "snapfs-test",
                 issuer: str = "snapfs-test-issuer") -> None:
        self.users, self.service, self.issuer = users, service, issuer
        self.lifetime = 300
        self.refresh_tokens = {"identity-token-for-bob"}
        self.issued = 0
        self.requests: list[dict] = []
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "snapfs token issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=2))
                     .sign(self.key, hashes.SHA256()))
        self.bundle = os.path.join(directory, "token-bundle.pem")
        with open(self.bundle, "wb") as f:
            f.write(self.cert.public_bytes(serialization.Encoding.PEM))
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        issuer_self = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                issuer_self._handle(self)

            def do_POST(self) -> None:  # noqa: N802
                issuer_self._handle_refresh(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def registry_config(self) -> str:
        return (f"auth:\n  token:\n    realm: {self.realm}\n    service: {self.service}\n"
                f"    issuer: {self.issuer}\n    rootcertbundle: {self.bundle}\n")

    def start(self) -> TokenIssuer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def token(self, access: list[dict]) -> str:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": "test", "aud": self.service, "exp": now + self.lifetime,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def _handle_refresh(self, h: http.server.BaseHTTPRequestHandler) -> None:
        """The OAuth2 form flow Docker uses for identity tokens: grant_type=refresh_token."""
        from urllib.parse import parse_qs

        form = parse_qs(h.rfile.read(int(h.headers.get("Content-Length") or 0)).decode())
        self.requests.append({"auth": h.headers.get("Authorization", ""), "scope": form.get("scope", []),
                              "grant_type": form.get("grant_type", [""])[0]})
        if form.get("grant_type") != ["refresh_token"] or form.get("refresh_token", [""])[0] not in self.refresh_tokens:
            h.send_response(401)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        access = []
        for scope in " ".join(form.get("scope", [])).split():
            typ, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": typ, "name": name, "actions": actions.split(",")})
        body = json.dumps({"access_token": self.token(access), "expires_in": self.lifetime}).encode()
        self.issued += 1
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        from urllib.parse import parse_qs, urlsplit

        q = parse_qs(urlsplit(h.path).query)
        auth = h.headers.get("Authorization", "")
        self.requests.append({"auth": auth, "scope": q.get("scope", []), "service": q.get("service", [])})
        user = None
        if auth.startswith("Basic "):
            u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(u) != p:
                h.send_response(401)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            user = u
        access = []
        for scope in q.get("scope", []):
            typ, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            # Anonymous users may pull; authenticated ones get what they ask for.
            granted = [a for a in actions.split(",") if user or a == "pull"]
            access.append({"type": typ, "name": name, "actions": granted})
        body = json.dumps({"token": self.token(access), "expires_in": self.lifetime}).encode()
        self.issued += 1
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


# ------------------------------------------------------------------------------------------------- proxy

@dataclass
class Fault:
    """Applied to the next ``times`` requests whose method and path match."""

    method: str
    path: str  # regex searched in the request path
    action: str  # status | reset | truncate | corrupt | range | unauthorized | redirect | body
    times: int = 1
    status: int = 500
    headers: dict = field(default_factory=dict)
    target: str = ""  # redirect: base URL of the other server
    body: bytes = b""  # body: what a hostile registry answers (200, with ``headers``); status: the error body
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.hits < self.times and method == self.method and re.search(self.path, path) is not None


_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultProxy:
    """A threaded HTTP proxy in front of one upstream server, injecting faults and recording requests."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, int, dict]] = []  # (method, path, status, request headers)
        self.lock = threading.Lock()
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any  # noqa: N815

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.log.clear()

    def count(self, method: str, pattern: str = "") -> int:
        with self.lock:
            return sum(1 for m, p, _s, _h in self.log if m == method and re.search(pattern, p))

    def _fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.matches(method, path):
                    f.hits += 1
                    return f
        return None

    def _read_body(self, h) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(h.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    h.rfile.readline()
                    return bytes(out)
                out += h.rfile.read(size)
                h.rfile.readline()
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n else b""

    def _reply(self, h, status: int, headers: dict, body: bytes = b"") -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _handle(self, h) -> None:
        method, path = h.command, h.path
        headers = {k: v for k, v in h.headers.items()}
        fault = self._fault(method, path)
        if fault is not None and fault.action == "reset":
            # Read part of the upload, then abort the connection with a RST.
            n = int(h.headers.get("Content-Length") or 0)
            h.rfile.read(min(n, 65536))
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            self._record(method, path, 0, headers)
            h.connection.close()
            return
        body = self._read_body(h)
        if fault is not None and fault.action == "status":
            self._record(method, path, fault.status, headers)
            self._reply(h, fault.status, fault.headers,
                        fault.body or b'{"errors":[{"code":"INJECTED","message":"fault"}]}')
            return
        if fault is not None and fault.action == "unauthorized" and headers.get("Authorization", "").startswith(
                "Bearer"):
            self._record(method, path, 401, headers)
            self._reply(h, 401, fault.headers, b'{"errors":[{"code":"UNAUTHORIZED","message":"token expired"}]}')
            return
        if fault is not None and fault.action == "body":
            self._record(method, path, 200, headers)
            self._reply(h, 200, fault.headers, fault.body)
            return
        if fault is not None and fault.action == "redirect":
            self._record(method, path, 307, headers)
            self._reply(h, 307, {"Location": fault.target + path})
            return
        if fault is None or fault.action not in ("truncate", "corrupt", "range"):
            fault = None
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        fwd = {k: v for k, v in headers.items() if k.lower() not in _HOP and k.lower() != "host"}
        fwd["Host"] = self.host
        if method in ("PUT", "PATCH", "POST"):
            fwd["Content-Length"] = str(len(body))
        conn.request(method, path, body=body if method in ("PUT", "PATCH", "POST") else None, headers=fwd)
        resp = conn.getresponse()
        rbody = resp.read()
        conn.close()
        rheaders = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP and k.lower() != "content-length"}
        self._record(method, path, resp.status, headers)
        if fault is not None and fault.action == "range" and "Range" in rheaders:
            end = int(rheaders["Range"].split("-")[1])
            rheaders["Range"] = f"0-{max(0, end - 1000)}"
        if fault is not None and fault.action == "corrupt" and rbody:
            mid = len(rbody) // 2
            rbody = rbody[:mid] + bytes([rbody[mid] ^ 0xFF]) + rbody[mid + 1:]
        if fault is not None and fault.action == "truncate" and rbody:
            h.send_response(resp.status)
            for k, v in rheaders.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(rbody)))
            h.end_headers()
            h.wfile.write(rbody[: len(rbody) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if method == "HEAD":
            h.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP:
                    h.send_header(k, v)
            h.end_headers()
            return
        self._reply(h, resp.status, rheaders, rbody)

    def _record(self, method: str, path: str, status: int, headers: dict) -> None:
        with self.lock:
            self.log.append((method, path, status, headers))


class TcpCounter:
    """A TCP forwarder to one upstream port that counts the connections it accepts: how many attempts a client
    made, known as soon as the client call returns (each attempt connects before it can fail its handshake)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> TcpCounter:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            except OSError:
                conn.close()
                continue
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# ------------------------------------------------------------------------------------------ shared bits

TLS_USER, TLS_PASSWORD = "alice", "Tls-S3cret-pw"
TOKEN_USER, TOKEN_PASSWORD = "bob", "T0ken-S3cret-pw"


# Registry options that keep retry tests fast.
FAST = dict(backoff_base=0.01, backoff_max=0.05, max_retry_after=2.0, connect_timeout=5.0, read_timeout=20.0)


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/setup.sh installs them)")


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    need("skopeo")
    proc = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {proc.stderr}")
    return proc
