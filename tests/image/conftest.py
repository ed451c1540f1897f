"""Fixtures: real docker-registry servers (plain HTTP, htpasswd+TLS, token auth), a fault proxy, a busybox base."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess

import pytest

from imagekit import busybox_rootfs, dir_layer, image_of
from registry_servers import (FAST, TLS_PASSWORD, TLS_USER, TOKEN_PASSWORD, TOKEN_USER, FaultProxy,
                              RegistryProcess, TokenIssuer, make_ca_and_cert, make_client_cert, need, skopeo)
from snapfs.image.layout import write_layout
from snapfs.image.registry.client import RegistryClient, RegistryOptions
from snapfs.image.registry.credentials import ANONYMOUS, Credential


@pytest.fixture(scope="session")
def regdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="session")
def busybox(regdir):
    """The busybox base image as an OCI layout (ref name ``busybox``) and its Image value."""
    need("busybox")
    root = busybox_rootfs(os.path.join(regdir, "busybox-root"))
    layer = dir_layer(os.path.join(regdir, "busybox-blobs"), root)
    image = image_of([layer])
    layout = os.path.join(regdir, "busybox-oci")
    write_layout(layout, image, ref_name="busybox")
    return layout, image


@pytest.fixture(scope="session")
def plain_registry(regdir, busybox):
    """A plain-HTTP registry seeded by skopeo with ``library/busybox:1``."""
    need("docker-registry")
    reg = RegistryProcess(regdir, name="plain").start()
    try:
        skopeo("copy", "--dest-tls-verify=false", f"oci:{busybox[0]}:busybox",
               f"docker://{reg.host}/library/busybox:1")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def plain_proxy_server(plain_registry):
    proxy = FaultProxy(plain_registry.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxy(plain_proxy_server):
    """The fault proxy in front of the plain registry, with no faults and an empty request log."""
    plain_proxy_server.reset()
    yield plain_proxy_server
    plain_proxy_server.reset()


@pytest.fixture(scope="session")
def tls_registry(regdir, busybox):
    """htpasswd Basic auth behind TLS with a self-signed CA; ``.ca`` is the CA file."""
    need("docker-registry", "htpasswd", "openssl")
    d = os.path.join(regdir, "tls-certs")
    os.makedirs(d, exist_ok=True)
    ca, cert, key = make_ca_and_cert(d)
    htpasswd = os.path.join(d, "htpasswd")
    out = subprocess.run(["htpasswd", "-Bbn", TLS_USER, TLS_PASSWORD], check=True, capture_output=True, text=True)
    with open(htpasswd, "w") as f:
        f.write(out.stdout)
    extra = (f"  tls:\n    certificate: {cert}\n    key: {key}\n"
             f"auth:\n  htpasswd:\n    realm: snapfs-test\n    path: {htpasswd}\n")
    reg = RegistryProcess(regdir, name="tls", extra_config=extra).start()
    reg.ca = ca
    # skopeo's cert dir must hold only CA files (*.crt); a stray *.key is taken for a client cert.
    reg.cert_dir = os.path.join(regdir, "tls-skopeo")
    os.makedirs(reg.cert_dir, exist_ok=True)
    shutil.copy(ca, os.path.join(reg.cert_dir, "ca.crt"))
    try:
        skopeo("copy", f"--dest-cert-dir={reg.cert_dir}",
               f"--dest-creds={TLS_USER}:{TLS_PASSWORD}", f"oci:{busybox[0]}:busybox",
               f"docker://{reg.host}/library/busybox:1")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def mtls_registry(regdir, tls_registry, busybox):
    """TLS that requires a client certificate signed by the test CA (no other auth); ``.client`` = (cert, key)."""
    d = os.path.join(regdir, "tls-certs")
    client = make_client_cert(d)
    extra = (f"  tls:\n    certificate: {d}/server.pem\n    key: {d}/server.key\n"
             f"    clientcas:\n      - {tls_registry.ca}\n")
    reg = RegistryProcess(regdir, name="mtls", extra_config=extra).start()
    reg.ca, reg.client = tls_registry.ca, client
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def token_registry(regdir, busybox):
    """Token auth: a JWT issuer (``.issuer``) and a plain-HTTP registry trusting it, behind ``.proxy``."""
    need("docker-registry")
    d = os.path.join(regdir, "token")
    os.makedirs(d, exist_ok=True)
    issuer = TokenIssuer(d, users={TOKEN_USER: TOKEN_PASSWORD}).start()
    reg = RegistryProcess(regdir, name="token", extra_config=issuer.registry_config()).start()
    reg.issuer = issuer
    reg.proxy = FaultProxy(reg.port).start()
    try:
        skopeo("copy", "--dest-tls-verify=false", f"--dest-creds={TOKEN_USER}:{TOKEN_PASSWORD}",
               f"oci:{busybox[0]}:busybox", f"docker://{reg.host}/library/busybox:1")
        yield reg
    finally:
        reg.proxy.stop()
        reg.stop()
        issuer.stop()


@pytest.fixture
def make_client():
    """``make_client(creds={host: Credential}, **options)``: a RegistryClient with fast retries; closed after."""
    made = []

    def make(creds: dict | None = None, **options) -> RegistryClient:
        opts = dict(FAST)
        opts.update(options)
        table = creds or {}
        client = RegistryClient(RegistryOptions(**opts), credentials=lambda host: table.get(host, ANONYMOUS))
        made.append(client)
        return client

    yield make
    for c in made:
        c.close()


@pytest.fixture
def tls_creds(tls_registry):
    return {tls_registry.host: Credential(username=TLS_USER, password=TLS_PASSWORD, source="test")}


@pytest.fixture
def token_creds(token_registry):
    cred = Credential(username=TOKEN_USER, password=TOKEN_PASSWORD, source="test")
    return {token_registry.host: cred, token_registry.proxy.host: cred}


@pytest.fixture
def all_logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog
