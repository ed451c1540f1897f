"""A fault-injecting proxy in front of the registry: every scenario succeeds within bounded retries or fails
with a clear one-line error, and leaves no corrupt cache entry and no tag."""
from __future__ import annotations

import os

import httpx
import pytest

from imagekit import files_layer, image_of, random_layer
from registry_servers import Fault
from snapfs.errors import RegistryError
from snapfs.image.blobstore import BlobStore
from snapfs.image.layout import validate_image
from snapfs.image.reference import parse_reference
from snapfs.image.registry.pull import pull_image
from snapfs.image.registry.push import push_image

BLOB = r"/blobs/sha256:"


def ref(text):
    return parse_reference(text)


@pytest.fixture
def client_for(proxy, make_client):
    def make(**options):
        options.setdefault("insecure_registries", (proxy.host,))
        client = make_client(**options)
        client.sleeps = []
        client._sleep = client.sleeps.append  # record waits instead of sleeping
        return client
    return make


def _cache_is_clean(store: BlobStore, image_digests=()) -> None:
    blobs = os.path.join(store.root, "blobs", "sha256")
    names = os.listdir(blobs) if os.path.isdir(blobs) else []
    assert not [n for n in names if n.startswith(".tmp")]
    for digest in image_digests:
        assert digest.split(":")[1] not in names


def _tag_absent(registry_host: str, repo: str, tag: str) -> None:
    r = httpx.head(f"http://{registry_host}/v2/{repo}/manifests/{tag}")
    assert r.status_code == 404


def _layer_digest(busybox):
    return busybox[1].layers[0].digest


@pytest.mark.parametrize("fault", [
    Fault("GET", BLOB, "status", times=2, status=503),
    Fault("GET", BLOB, "status", times=1, status=502),
    Fault("GET", BLOB, "truncate", times=2),
    Fault("GET", BLOB, "corrupt", times=2),
    Fault("GET", "/manifests/", "corrupt", times=1),
    Fault("GET", "/manifests/", "truncate", times=1),
], ids=["503x2", "502", "truncated-blob", "corrupt-blob", "corrupt-manifest", "truncated-manifest"])
def test_pull_recovers(plain_registry, proxy, client_for, tmp_path, fault):
    proxy.add(fault)
    client = client_for()
    store = BlobStore(str(tmp_path))
    img = pull_image(client, ref(f"{proxy.host}/library/busybox:1"), store)
    validate_image(img)
    assert fault.hits == fault.times and len(client.sleeps) >= 1
    _cache_is_clean(store)


def test_pull_honours_retry_after(plain_registry, proxy, client_for, tmp_path):
    proxy.add(Fault("GET", "/manifests/", "status", status=429, headers={"Retry-After": "1"}),
              Fault("GET", BLOB, "status", status=503, headers={"Retry-After": "2"}))
    client = client_for()
    pull_image(client, ref(f"{proxy.host}/library/busybox:1"), BlobStore(str(tmp_path)))
    assert client.sleeps == [1.0, 2.0]


@pytest.mark.parametrize("action,message", [
    ("corrupt", r"layer sha256:[0-9a-f]{64}: content digest sha256:[0-9a-f]{64} does not match sha256:[0-9a-f]{64} "
                r"\(after 3 attempts\)$"),
    ("truncate", r"layer sha256:[0-9a-f]{64}: download broke after \d+ bytes: RemoteProtocolError: .* "
                 r"\(after 3 attempts\)$"),
], ids=["corrupt", "truncate"])
def test_pull_gives_up_cleanly(plain_registry, proxy, client_for, tmp_path, busybox, action, message):
    layer = _layer_digest(busybox)
    proxy.add(Fault("GET", f"/blobs/{layer}", action, times=100))
    client = client_for(request_retries=2)
    store = BlobStore(str(tmp_path))
    with pytest.raises(RegistryError, match=message):
        pull_image(client, ref(f"{proxy.host}/library/busybox:1"), store)
    _cache_is_clean(store, [layer])
    assert proxy.count("GET", f"/blobs/{layer}") == 3


def test_pull_persistent_5xx_is_bounded(plain_registry, proxy, client_for, tmp_path, busybox):
    proxy.add(Fault("GET", BLOB, "status", times=100, status=500))
    client = client_for(request_retries=3)
    with pytest.raises(RegistryError, match=r"GET http://127\.0\.0\.1:\d+/v2/library/busybox/blobs/sha256:[0-9a-f]{64}"
                                            r": HTTP 500 \(INJECTED: fault\)$"):
        pull_image(client, ref(f"{proxy.host}/library/busybox:1"), BlobStore(str(tmp_path)))
    assert len(client.sleeps) == 3
    # The whole pull is retried on top with --image-download-retry.
    proxy.reset()
    proxy.add(Fault("GET", BLOB, "status", times=5, status=500))
    client = client_for(request_retries=1, image_download_retry=3)
    img = pull_image(client, ref(f"{proxy.host}/library/busybox:1"), BlobStore(str(tmp_path)))
    assert img.layers


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_never_retried(plain_registry, proxy, client_for, tmp_path, status):
    proxy.add(Fault("GET", BLOB, "status", times=100, status=status))
    client = client_for(image_download_retry=2)
    with pytest.raises(RegistryError, match=f"HTTP {status}"):
        pull_image(client, ref(f"{proxy.host}/library/busybox:1"), BlobStore(str(tmp_path)))
    assert proxy.count("GET", BLOB) in (1, 2)  # config and layer may be requested in parallel, once each
    assert client.sleeps == []


def _image(tmp_path, size=200_000):
    return image_of([random_layer(str(tmp_path / "l"), size, seed=size % 97)])


@pytest.mark.parametrize("faults,options", [
    ([Fault("PUT", "/blobs/uploads/", "reset")], {}),
    ([Fault("PATCH", "/blobs/uploads/", "reset")], {"chunk_size": 65536, "monolithic_max": 65536}),
    ([Fault("PATCH", "/blobs/uploads/", "range")], {"chunk_size": 65536, "monolithic_max": 65536}),
    ([Fault("PATCH", "/blobs/uploads/", "status", status=503, headers={"Retry-After": "1"})],
     {"chunk_size": 65536, "monolithic_max": 65536}),
    ([Fault("POST", "/blobs/uploads/", "status", times=2, status=429, headers={"Retry-After": "1"})], {}),
    ([Fault("PUT", "/manifests/", "status", times=2, status=502)], {}),
    ([Fault("HEAD", BLOB, "reset", times=2)], {}),
], ids=["reset-monolithic", "reset-mid-patch", "wrong-range", "503-patch", "429-post", "502-manifest", "reset-head"])
def test_push_recovers(plain_registry, proxy, client_for, tmp_path, faults, options):
    proxy.add(*faults)
    client = client_for(**options)
    img = _image(tmp_path)
    name = f"faults/{faults[0].method.lower()}-{faults[0].action}"
    assert push_image(client, img, [ref(f"{proxy.host}/{name}:1")]) == img.digest
    assert all(f.hits == f.times for f in faults)
    retry_after = faults[0].headers.get("Retry-After")
    if retry_after is not None:
        assert float(retry_after) in client.sleeps  # the registry's wish was honoured
    pulled = pull_image(client_for(), ref(f"{proxy.host}/{name}:1"), BlobStore(str(tmp_path / "c")))
    validate_image(pulled)


@pytest.mark.parametrize("fault,message", [
    (Fault("PATCH", "/blobs/uploads/", "range", times=100),
     r"upload failed after 3 attempts: registry reported range '0-\d+' after bytes 0-65535$"),
    (Fault("PUT", "/blobs/uploads/", "reset", times=100),
     r"upload failed after 3 attempts: PUT http://127\.0\.0\.1:\d+/v2/faults/never/blobs/uploads/[0-9a-f-]+"
     r"\?_state=\*\*\*&digest=sha256:[0-9a-f]{64}: "
     r"(RemoteProtocolError|ReadError|WriteError|ConnectError).*$"),
    (Fault("PUT", "/blobs/uploads/", "status", times=100, status=500),
     r"upload failed after 3 attempts: PUT http://\S+: HTTP 500 \(INJECTED: fault\)$"),
], ids=["range-always-wrong", "reset-always", "500-always"])
def test_failed_push_never_tags(plain_registry, proxy, client_for, tmp_path, fault, message):
    proxy.add(fault)
    chunked = fault.method == "PATCH"
    client = client_for(upload_restarts=2, **({"chunk_size": 65536, "monolithic_max": 65536} if chunked else {}))
    with pytest.raises(RegistryError, match=message):
        push_image(client, _image(tmp_path, 150_000), [ref(f"{proxy.host}/faults/never:1")])
    assert proxy.count("PUT", "/manifests/") == 0
    _tag_absent(plain_registry.host, "faults/never", "1")


def test_push_retry_restarts_the_whole_push(plain_registry, proxy, client_for, tmp_path):
    proxy.add(Fault("POST", "/blobs/uploads/", "status", times=3, status=500))
    img = image_of([files_layer(str(tmp_path / "l"), {"retry": b"1"})])
    with pytest.raises(RegistryError, match=r"POST http://\S+/v2/faults/retry/blobs/uploads/: HTTP 500"):
        push_image(client_for(request_retries=1), img, [ref(f"{proxy.host}/faults/retry:1")])
    _tag_absent(plain_registry.host, "faults/retry", "1")
    proxy.reset()
    proxy.add(Fault("POST", "/blobs/uploads/", "status", times=3, status=500))
    assert push_image(client_for(request_retries=1, push_retry=2), img,
                      [ref(f"{proxy.host}/faults/retry:1")]) == img.digest


def test_multi_destination_all_or_nothing(plain_registry, proxy, client_for, tmp_path):
    """The second destination's blobs fail: the first destination must not be tagged either."""
    proxy.add(Fault("POST", "/v2/faults/second/blobs/uploads/", "status", times=100, status=403))
    img = image_of([files_layer(str(tmp_path / "l"), {"multi": b"1"})])
    with pytest.raises(RegistryError, match=r"HTTP 403: access denied"):
        push_image(client_for(insecure_registries=(proxy.host, plain_registry.host)), img,
                   [ref(f"{plain_registry.host}/faults/first:1"),
                                       ref(f"{proxy.host}/faults/second:1")])
    _tag_absent(plain_registry.host, "faults/first", "1")


def test_mount_refusal_falls_back_to_upload(plain_registry, proxy, client_for, busybox):
    proxy.add(Fault("POST", "mount=", "status", times=10, status=404))
    img = busybox[1]
    assert push_image(client_for(), img, [ref(f"{proxy.host}/faults/mountless:1")],
                      mount_from=[ref(f"{proxy.host}/library/busybox:1")]) == img.digest
    assert proxy.count("POST", "mount=") == 2 and proxy.count("PUT", "/blobs/uploads/") == 2


def test_a_registry_serving_a_manifest_that_is_also_an_index_is_refused(plain_registry, proxy, client_for, tmp_path,
                                                                        busybox):
    """CVE-2021-41190: a hostile registry answers with a document holding both "layers" and "manifests". It is
    refused with one line naming the image, and never reaches the blob cache."""
    import json

    doc = json.loads(busybox[1].manifest_bytes)
    doc["manifests"] = [busybox[1].descriptor().to_json()]
    body = json.dumps(doc).encode()
    proxy.add(Fault("GET", "/manifests/", "body", body=body, headers={"Content-Type": doc["mediaType"]}))
    store = BlobStore(str(tmp_path))
    name = f"{proxy.host}/library/busybox:1"
    with pytest.raises(RegistryError, match=rf'^{name}: manifest is ambiguous: it holds both "layers" and '
                                            r'"manifests"$'):
        pull_image(client_for(), ref(name), store)
    _cache_is_clean(store)
    blobs = os.path.join(store.root, "blobs", "sha256")
    assert not os.path.isdir(blobs) or os.listdir(blobs) == []


# ECR's refusal of a manifest PUT to an existing tag of an immutable repository (its distribution-style error).
ECR_IMMUTABLE = (b'{"errors":[{"code":"TAG_INVALID","message":"The image tag \'1\' already exists in the '
                 b'\'faults/immutable\' repository and cannot be overwritten because the repository is immutable."}]}')


def test_an_immutable_tag_is_skipped_only_with_the_kaniko_flag(plain_registry, proxy, client_for, tmp_path, caplog):
    img = _image(tmp_path)
    dests = [ref(f"{proxy.host}/faults/immutable:1"), ref(f"{proxy.host}/faults/immutable:2")]

    def tagged(tag: str) -> bool:  # HEAD with the manifest's type: without it the registry says 404 anyway
        return httpx.head(f"http://{plain_registry.host}/v2/faults/immutable/manifests/{tag}",
                          headers={"Accept": img.manifest_media_type}).status_code == 200
    proxy.add(Fault("PUT", "/manifests/1$", "status", status=400, body=ECR_IMMUTABLE))
    with pytest.raises(RegistryError, match=r"HTTP 400 \(TAG_INVALID: .* cannot be overwritten because the "
                                            r"repository is immutable"):
        push_image(client_for(), img, dests)
    assert not tagged("2")
    proxy.reset()
    proxy.add(Fault("PUT", "/manifests/1$", "status", status=400, body=ECR_IMMUTABLE))
    assert push_image(client_for(push_ignore_immutable_tag_errors=True), img, dests) == img.digest
    assert tagged("2") and not tagged("1")
    assert any(f"{proxy.host}/faults/immutable:1: not tagged, the tag is immutable and exists" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")
    # Any other refusal still fails the push, flag or not.
    proxy.reset()
    proxy.add(Fault("PUT", "/manifests/", "status", status=400,
                    body=b'{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid"}]}'))
    with pytest.raises(RegistryError, match="MANIFEST_INVALID"):
        push_image(client_for(push_ignore_immutable_tag_errors=True), img, [ref(f"{proxy.host}/faults/other:1")])
