"""Real servers for the context tests, each on a free 127.0.0.1 port and stopped by pid.

- ``Process``: a server program (moto_server, gcp-storage-emulator, azurite-blob) started and stopped by pid.
- ``make_tls``: a throwaway CA and a server certificate (openssl) for 127.0.0.1, localhost and Azure's
  production host name of Azurite's dev account.
- ``HTTPServerThread``: an in-process HTTP(S) server; ``GitHandler`` runs ``git http-backend`` as a CGI for
  ``/smart/...`` (smart protocol), serves ``/dumb/...`` as plain files (dumb protocol) and asks for Basic auth
  under ``/private/`` (user and password) and ``/token/`` (a token as the user name, empty password);
  ``FileHandler`` serves a directory.
"""
from __future__ import annotations

import base64
import http.server
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from urllib.parse import unquote, urlsplit

GIT_USER, GIT_PASSWORD, GIT_TOKEN = "ci-user", "pw-S3cretGitPass", "tok-S3cretGitToken"
AZURE_ACCOUNT = "devstoreaccount1"
# Azurite's documented well-known development key (public, not a secret).
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURE_PROD_HOST = f"{AZURE_ACCOUNT}.blob.core.windows.net"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A server process on ``port``; ``stop()`` ends it by its pid (the process group it leads)."""

    def __init__(self, argv: list[str], port: int, *, log_path: str, env: dict | None = None,
                 timeout: float = 60.0) -> None:
        self.port, self.log_path = port, log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited: {open(log_path, errors='replace').read()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{argv[0]} did not listen on {port}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own session: the server and its children only
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def make_tls(directory: str) -> dict:
    """A CA and a server certificate signed by it; returns their paths."""
    ca_key, ca = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.pem")
    key, csr, cert = (os.path.join(directory, n) for n in ("server.key", "server.csr", "server.pem"))
    ext = os.path.join(directory, "ext.cnf")
    with open(ext, "w") as f:
        f.write(f"subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:{AZURE_PROD_HOST}\n"
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=snapfs test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
        "-days", "2", "-extfile", ext)
    return {"ca": ca, "cert": cert, "key": key}


class HTTPServerThread:
    """An in-process threaded HTTP server (optionally TLS) on a free port."""

    def __init__(self, handler, *, tls: dict | None = None, **attrs) -> None:
        handler = type(handler.__name__, (handler,), attrs)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls["cert"], tls["key"])
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def send_plain(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class FileHandler(_Quiet):
    """Serves files under ``root``; ``/redirect/<path>`` redirects to ``/<path>``."""

    root = "/nonexistent"

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        if path.startswith("/redirect/"):
            self.send_plain(302, headers={"Location": path[len("/redirect"):]})
            return
        full = os.path.join(self.root, path.lstrip("/"))
        if ".." in path.split("/") or not os.path.isfile(full):
            self.send_plain(404, b"not found")
            return
        with open(full, "rb") as f:
            self.send_plain(200, f.read(), {"Content-Type": "application/octet-stream"})


class GitHandler(_Quiet):
    """Smart (git http-backend CGI) and dumb git over HTTP, with optional Basic auth."""

    root = "/nonexistent"  # holds the bare repositories
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        mode, _, rest = path.lstrip("/").partition("/")
        user = None
        if mode in ("private", "token"):
            expected = (GIT_USER, GIT_PASSWORD) if mode == "private" else (GIT_TOKEN, "")
            got = self._basic()
            if got != expected:
                self.send_plain(401, b"auth required", {"WWW-Authenticate": 'Basic realm="git"'})
                return
            user = got[0]
        if mode == "dumb":
            full = os.path.join(self.root, rest)
            if ".." in rest.split("/") or not os.path.isfile(full):
                self.send_plain(404, b"not found")
                return
            with open(full, "rb") as f:
                self.send_plain(200, f.read())
            return
        if mode not in ("smart", "private", "token"):
            self.send_plain(404, b"not found")
            return
        self._cgi("/" + rest, parts.query, user)

    def _basic(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user, password

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))

    def _cgi(self, path_info: str, query: str, user: str | None) -> None:
        body = self._body() if self.command == "POST" else b""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": self.root,
               "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command, "PATH_INFO": path_info,
               "QUERY_STRING": query, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": "127.0.0.1", "GATEWAY_INTERFACE": "CGI/1.1",
               "SERVER_PROTOCOL": "HTTP/1.0", "HOME": self.root}
        if user:
            env["REMOTE_USER"] = user
        for header, var in (("Git-Protocol", "GIT_PROTOCOL"), ("Content-Encoding", "HTTP_CONTENT_ENCODING")):
            if self.headers.get(header):
                env[var] = self.headers[header]
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        headers["Content-Length"] = str(len(payload))  # TLS clients want a delimited body, not a bare close
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)


class BasicAuthFileHandler(FileHandler):
    """``FileHandler`` behind HTTP Basic auth (``user``/``password``); records each request line it saw."""

    user, password = "snapfs", "change-me"
    seen: list = []

    def do_GET(self) -> None:
        self.seen.append(self.requestline)
        want = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if self.headers.get("Authorization") != want:
            self.send_plain(401, b"unauthorized", {"WWW-Authenticate": 'Basic realm="snapfs-test"'})
            return
        super().do_GET()
