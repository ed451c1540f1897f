"""Basic auth over TLS, the Bearer token flow, token expiry, credential helpers, no credential leaks."""
from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from imagekit import files_layer, image_of, random_layer
from registry_servers import (FAST, TLS_PASSWORD, TLS_USER, TOKEN_PASSWORD, TOKEN_USER, Fault, FaultProxy,
                              skopeo)
from snapfs.errors import RegistryError
from snapfs.image.blobstore import BlobStore
from snapfs.image.reference import parse_reference
from snapfs.image.registry.client import RegistryClient, RegistryOptions
from snapfs.image.registry.credentials import Credential, CredentialSource, DockerConfig
from snapfs.image.registry.pull import pull_image
from snapfs.image.registry.push import push_image


def ref(text):
    return parse_reference(text)


def test_basic_auth_over_tls_with_ca(tls_registry, tls_creds, make_client, tmp_path, all_logs):
    host = tls_registry.host
    client = make_client(tls_creds, registry_certificates=((host, tls_registry.ca),))
    img = pull_image(client, ref(f"{host}/library/busybox:1"), BlobStore(str(tmp_path / "c")))
    new = image_of([files_layer(str(tmp_path / "l"), {"tls": b"ok"})])
    digest = push_image(client, new, [ref(f"{host}/tls/app:1")])
    info = json.loads(skopeo("inspect", f"--cert-dir={tls_registry.cert_dir}",
                             f"--creds={TLS_USER}:{TLS_PASSWORD}", f"docker://{host}/tls/app:1").stdout)
    assert info["Digest"] == digest and img.layers
    assert TLS_PASSWORD not in all_logs.text


def test_tls_verification_and_skip(tls_registry, tls_creds, make_client, tmp_path):
    host = tls_registry.host
    with pytest.raises(RegistryError, match=f"^{host}: TLS certificate verify failed: unable to get local issuer "):
        pull_image(make_client(tls_creds, request_retries=0), ref(f"{host}/library/busybox:1"),
                   BlobStore(str(tmp_path)))
    img = pull_image(make_client(tls_creds, skip_tls_verify_registries=(host,)), ref(f"{host}/library/busybox:1"),
                     BlobStore(str(tmp_path)))
    assert img.layers


def test_basic_auth_wrong_password_is_clear_and_secret_free(tls_registry, make_client, tmp_path, all_logs):
    host = tls_registry.host
    wrong = "Wr0ng-Pa55-xyz"
    client = make_client({host: Credential(username=TLS_USER, password=wrong)},
                         registry_certificates=((host, tls_registry.ca),))
    with pytest.raises(RegistryError) as exc:
        pull_image(client, ref(f"{host}/library/busybox:1"), BlobStore(str(tmp_path)))
    msg = exc.value.message
    assert msg == (f"{host}/library/busybox:1: HEAD https://{host}/v2/library/busybox/manifests/1: HTTP 401: "
                   "credentials were rejected")
    assert wrong not in all_logs.text and wrong not in repr(client.credential(host))
    anon = make_client(registry_certificates=((host, tls_registry.ca),))
    with pytest.raises(RegistryError, match=r"manifests/1: HTTP 401: authentication required, no credentials configured$"):
        pull_image(anon, ref(f"{host}/library/busybox:1"), BlobStore(str(tmp_path)))


def test_token_auth_pull_push(token_registry, token_creds, make_client, tmp_path, all_logs):
    host = token_registry.host
    client = make_client(token_creds, insecure_registries=(host,))
    base = pull_image(client, ref(f"{host}/library/busybox:1"), BlobStore(str(tmp_path / "c")))
    new = image_of([files_layer(str(tmp_path / "l"), {"tok": b"ok"})])
    from snapfs.image.model import append_layers
    img = append_layers(base, new.layers)
    digest = push_image(client, img, [ref(f"{host}/tok/app:1")], mount_from=[ref(f"{host}/library/busybox:1")])
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"--creds={TOKEN_USER}:{TOKEN_PASSWORD}",
                             f"docker://{host}/tok/app:1").stdout)
    assert info["Digest"] == digest
    # Token requests asked for the mount source's pull scope alongside push.
    scopes = [s for r in token_registry.issuer.requests for s in r["scope"]]
    assert "repository:tok/app:pull,push" in scopes and "repository:library/busybox:pull" in scopes
    assert TOKEN_PASSWORD not in all_logs.text
    basic = base64.b64encode(f"{TOKEN_USER}:{TOKEN_PASSWORD}".encode()).decode()
    assert basic not in all_logs.text and "Bearer eyJ" not in all_logs.text  # no header value, no JWT


def test_token_anonymous_push_denied(token_registry, make_client, tmp_path):
    host = token_registry.host
    client = make_client(insecure_registries=(host,))
    img = image_of([files_layer(str(tmp_path / "l"), {"anon": b"1"})])
    with pytest.raises(RegistryError, match=rf"^{host}/anon/app:1: POST http://{host}/v2/anon/app/blobs/uploads/: "
                                            r"HTTP 401: authentication required, no credentials configured "
                                            r"\(UNAUTHORIZED: authentication required\)$"):
        push_image(client, img, [ref(f"{host}/anon/app:1")])


def test_token_expiring_mid_push(token_registry, token_creds, make_client, tmp_path):
    """The proxy answers 401 to Bearer tokens on a PATCH and the manifest PUT (as if the token had expired)."""
    proxy = token_registry.proxy
    proxy.reset()
    challenge = {"WWW-Authenticate": f'Bearer realm="{token_registry.issuer.realm}",service="snapfs-test",'
                                     'scope="repository:exp/app:pull,push"'}
    proxy.add(Fault("PATCH", "/blobs/uploads/", "unauthorized", headers=challenge),
              Fault("PUT", "/manifests/", "unauthorized", headers=challenge))
    before = token_registry.issuer.issued
    client = make_client(token_creds, insecure_registries=(proxy.host,), chunk_size=65536, monolithic_max=65536)
    img = image_of([random_layer(str(tmp_path / "l"), 200_000)])
    digest = push_image(client, img, [ref(f"{proxy.host}/exp/app:1")])
    assert digest == img.digest
    assert token_registry.issuer.issued - before >= 3  # the first token, then one per rejection
    assert [f.hits for f in proxy.faults] == [1, 1]
    validate = pull_image(client, ref(f"{proxy.host}/exp/app:1"), BlobStore(str(tmp_path / "c")))
    assert validate.digest == digest


def test_short_lived_tokens_are_refreshed(token_registry, token_creds, make_client, tmp_path, monkeypatch):
    """A token is reused while valid and fetched again once its expires_in has passed (clock moved, no sleep)."""
    import snapfs.image.registry.auth as registry_auth

    issuer = token_registry.issuer
    monkeypatch.setattr(issuer, "lifetime", 2)
    client = make_client(token_creds, insecure_registries=(token_registry.host,))
    before = issuer.issued
    pull_image(client, ref(f"{token_registry.host}/library/busybox:1"), BlobStore(str(tmp_path / "a")))
    assert issuer.issued - before == 1  # one token served the whole pull
    real = registry_auth.Authenticator.clock
    monkeypatch.setattr(registry_auth.Authenticator, "clock", staticmethod(lambda: real() + 3))
    pull_image(client, ref(f"{token_registry.host}/library/busybox:1"), BlobStore(str(tmp_path / "b")))
    assert issuer.issued - before == 2


def test_redirect_does_not_forward_authorization(token_registry, plain_registry, token_creds, make_client, tmp_path):
    """Blob GETs are redirected to another origin (a 'storage' proxy in front of a registry holding the same blobs):
    the blob arrives, and the other origin never sees the Authorization header."""
    storage = FaultProxy(plain_registry.port).start()
    try:
        proxy = token_registry.proxy
        proxy.reset()
        proxy.add(Fault("GET", "/blobs/sha256:", "redirect", times=10, target=f"http://{storage.host}"))
        client = make_client(token_creds, insecure_registries=(proxy.host, storage.host))
        img = pull_image(client, ref(f"{proxy.host}/library/busybox:1"), BlobStore(str(tmp_path)))
        assert img.layers
        assert storage.count("GET", "/blobs/") == 2
        assert all("Authorization" not in h for _m, _p, _s, h in storage.log)
        assert any(h.get("Authorization", "").startswith("Bearer") for _m, _p, _s, h in proxy.log)
    finally:
        storage.stop()


def _helper(bin_dir, name: str, body: str) -> None:
    path = os.path.join(bin_dir, f"docker-credential-{name}")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_cred_helper_and_config_lookup(tmp_path, monkeypatch, token_registry, make_client):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _helper(bin_dir, "test", f'read server\necho "$server" >> {tmp_path}/asked\n'
            f'printf \'{{"ServerURL":"%s","Username":"{TOKEN_USER}","Secret":"{TOKEN_PASSWORD}"}}\' "$server"\n')
    _helper(bin_dir, "empty", 'echo "credentials not found in native keychain"; exit 1\n')
    _helper(bin_dir, "broken", f'echo "oops {TOKEN_PASSWORD}"; exit 3\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cfg_dir = tmp_path / "dockercfg"
    cfg_dir.mkdir()
    host = token_registry.host
    (cfg_dir / "config.json").write_text(json.dumps({
        "auths": {"https://index.docker.io/v1/": {"auth": "aHViOmh1YnB3"},
                  "other.example": {"username": "u", "password": "p"},
                  "tok.example": {"identitytoken": "refresh-me"}},
        "credHelpers": {host: "test", "none.example": "empty", "bad.example": "broken"},
        "credsStore": "test",
    }))
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg_dir))
    cfg = DockerConfig.load()
    assert cfg.lookup("docker.io") == Credential("hub", "hubpw", source=f"{cfg_dir}/config.json auths"
                                                                      "[https://index.docker.io/v1/]")
    assert cfg.lookup("index.docker.io").username == "hub"
    assert cfg.lookup("other.example").password == "p"
    assert cfg.lookup("tok.example").identity_token == "refresh-me"
    assert cfg.lookup("none.example").username == ""
    with pytest.raises(RegistryError) as exc:
        cfg.lookup("bad.example")
    assert exc.value.message == "credential helper docker-credential-broken failed for bad.example (exit status 3)"
    assert "hubpw" not in repr(cfg.lookup("docker.io"))
    # Hosts with no entry of their own go to the credsStore.
    assert cfg.lookup("store.example") == Credential(TOKEN_USER, TOKEN_PASSWORD, source="helper docker-credential-test")
    # The real helper drives a real token-auth push.
    client = RegistryClient(RegistryOptions(insecure_registries=(host,), **FAST), credentials=CredentialSource())
    with client:
        img = image_of([files_layer(str(tmp_path / "l"), {"helper": b"1"})])
        push_image(client, img, [ref(f"{host}/helper/app:1")])
    assert (tmp_path / "asked").read_text().split() == ["store.example", host]


def test_kaniko_and_home_config_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text(json.dumps({"auths": {"h.example": {"auth": "YTpi"}}}))
    assert DockerConfig.load().lookup("h.example") == Credential("a", "b", source=f"{tmp_path}/.docker/config.json "
                                                                              "auths[h.example]")
    (tmp_path / ".docker" / "config.json").write_text('{"auths": {"h": {"auth": "secret-not-base64!"}}}')
    from snapfs.errors import InputError
    with pytest.raises(InputError, match=r"the auth entry for h is not base64 user:password$"):
        DockerConfig.load()
    (tmp_path / ".docker" / "config.json").write_text('{"auths": {"h": {"auth": "c2VjcmV0LXB3"')
    with pytest.raises(InputError, match=r"config.json is not valid JSON$"):
        DockerConfig.load()


def test_client_certificate(mtls_registry, make_client, tmp_path, busybox):
    host = mtls_registry.host
    cert, key = mtls_registry.client
    with pytest.raises(RegistryError, match=f"cannot reach registry {host}: GET https://{host}/v2/: "):
        push_image(make_client(request_retries=0, registry_certificates=((host, mtls_registry.ca),)), busybox[1],
                   [ref(f"{host}/mtls/app:1")])
    client = make_client(registry_certificates=((host, mtls_registry.ca),), registry_client_certs=((host, cert, key),))
    assert push_image(client, busybox[1], [ref(f"{host}/mtls/app:1")]) == busybox[1].digest
    assert pull_image(client, ref(f"{host}/mtls/app:1"), BlobStore(str(tmp_path))).digest == busybox[1].digest


def test_identity_token_uses_the_oauth2_refresh_flow(token_registry, make_client, tmp_path):
    host = token_registry.host
    cred = Credential(identity_token="identity-token-for-bob")
    client = make_client({host: cred}, insecure_registries=(host,))
    img = image_of([files_layer(str(tmp_path / "l"), {"idtoken": b"1"})])
    assert push_image(client, img, [ref(f"{host}/idtoken/app:1")]) == img.digest
    assert any(r.get("grant_type") == "refresh_token" for r in token_registry.issuer.requests)
    bad = make_client({host: Credential(identity_token="revoked")}, insecure_registries=(host,))
    with pytest.raises(RegistryError, match=rf"^{host}: authentication failed: the token service 127\.0\.0\.1:\d+ "
                                            r"rejected the credentials \(HTTP 401\)$"):
        push_image(bad, img, [ref(f"{host}/idtoken/app:2")])
