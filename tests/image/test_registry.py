"""Pull and push against a real registry (plain HTTP), cross-checked with skopeo."""
from __future__ import annotations

import json
import os

import httpx
import pytest

from imagekit import files_layer, image_of, random_layer
from registry_servers import skopeo
from snapfs.errors import InputError, RegistryError
from snapfs.image.blobstore import BlobStore
from snapfs.image.layout import read_layout, validate_image
from snapfs.image.model import Descriptor, Index, convert
from snapfs.image.reference import parse_reference
from snapfs.image.registry.pull import pull_image
from snapfs.image.registry.push import push_image
from snapfs.mediatypes import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX
from snapfs.platforms import Platform

AMD64, ARM64 = Platform("linux", "amd64"), Platform("linux", "arm64", "v8")


def ref(text: str):
    return parse_reference(text)


def test_pull_skopeo_pushed_image(plain_registry, proxy, make_client, tmp_path, busybox):
    client = make_client(insecure_registries=(proxy.host,))
    store = BlobStore(str(tmp_path / "cache"))
    img = pull_image(client, ref(f"{proxy.host}/library/busybox:1"), store)
    assert img.config()["rootfs"]["diff_ids"] == [busybox[1].layers[0].diff_id]
    validate_image(img)
    assert proxy.count("GET", "/blobs/") == 2  # config + one layer
    # The second pull of the same base downloads nothing: a HEAD resolves the tag to a cached manifest.
    proxy.reset()
    again = pull_image(make_client(insecure_registries=(proxy.host,)), ref(f"{proxy.host}/library/busybox:1"),
                       store)
    assert again.digest == img.digest
    assert proxy.count("GET", "/blobs/") == 0 and proxy.count("GET", "/manifests/") == 0
    assert proxy.count("HEAD", "/manifests/1") == 1
    # By digest and cached: no request at all.
    proxy.reset()
    pull_image(make_client(insecure_registries=(proxy.host,)), ref(f"{proxy.host}/library/busybox@{img.digest}"),
               store)
    assert proxy.log == []


def test_push_then_skopeo_inspect_and_copy_back(plain_registry, make_client, tmp_path, busybox):
    host = plain_registry.host
    extra = files_layer(str(tmp_path / "l"), {"etc/motd": b"hello from snapfs\n"})
    from snapfs.image.model import append_layers
    img = append_layers(busybox[1], [extra], history=[{"created_by": "COPY motd /etc/motd"}])
    client = make_client(insecure_registries=(host,))
    digest = push_image(client, img, [ref(f"{host}/team/app:v1"), ref(f"{host}/other/app:v2")],
                        mount_from=[ref(f"{host}/library/busybox:1")])
    assert digest == img.digest
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{host}/team/app:v1").stdout)
    assert info["Digest"] == digest and info["Layers"] == [x.digest for x in img.layers]
    info2 = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{host}/other/app:v2").stdout)
    assert info2["Digest"] == digest
    out = str(tmp_path / "back")
    skopeo("copy", "--src-tls-verify=false", f"docker://{host}/team/app:v1", f"oci:{out}:x")
    back = read_layout(out, ref_name="x")
    assert back.digest == digest
    validate_image(back)


def test_push_skips_existing_and_mounts(plain_registry, proxy, make_client, busybox):
    client = make_client(insecure_registries=(proxy.host,))
    img = busybox[1]
    push_image(client, img, [ref(f"{proxy.host}/mount/target:1")], mount_from=[ref(f"{proxy.host}/library/busybox:1")])
    # Layer and config both live in the base's repository: both mounted, nothing uploaded.
    assert proxy.count("POST", r"mount=") == 2 and proxy.count("PUT", "/blobs/uploads/") == 0
    proxy.reset()
    push_image(client, img, [ref(f"{proxy.host}/mount/target:2")])
    assert proxy.count("POST") == 0 and proxy.count("PUT", "/blobs/") == 0  # everything already there
    assert proxy.count("PUT", "/manifests/2") == 1


def test_chunked_upload_verifies_ranges(plain_registry, proxy, make_client, tmp_path):
    layer = random_layer(str(tmp_path / "l"), 300_000)
    img = image_of([layer])
    client = make_client(insecure_registries=(proxy.host,), chunk_size=65536, monolithic_max=65536)
    push_image(client, img, [ref(f"{proxy.host}/chunked/app:1")])
    assert proxy.count("PATCH") == 5  # 300000 / 65536 rounded up
    store = BlobStore(str(tmp_path / "c"))
    pulled = pull_image(make_client(insecure_registries=(proxy.host,)), ref(f"{proxy.host}/chunked/app:1"), store)
    validate_image(pulled)


def _push_index(host, repo, tag, images, *, docker: bool, client):
    descs = []
    for img, plat in images:
        push_image(client, img, [ref(f"{host}/{repo}@{img.digest}")])
        descs.append(Descriptor(img.manifest_media_type, img.digest, len(img.manifest_bytes), platform=plat))
    index = Index(DOCKER_MANIFEST_LIST if docker else OCI_INDEX, tuple(descs))
    data = index.to_bytes()
    r = httpx.put(f"http://{host}/v2/{repo}/manifests/{tag}", content=data,
                  headers={"Content-Type": index.media_type})
    assert r.status_code == 201, r.text
    return index


@pytest.mark.parametrize("docker", [False, True], ids=["oci-index", "docker-manifest-list"])
def test_index_platform_selection(plain_registry, make_client, tmp_path, docker):
    host = plain_registry.host
    client = make_client(insecure_registries=(host,))
    images = []
    for plat in (AMD64, ARM64):
        img = image_of([files_layer(str(tmp_path / "l"), {"arch": str(plat).encode()})], platform=plat)
        images.append((convert(img, oci=False) if docker else img, plat))
    _push_index(host, "multi/app", "1", images, docker=docker, client=client)
    for plat, (img, _) in zip((AMD64, Platform("linux", "arm64")), images):
        got = pull_image(client, ref(f"{host}/multi/app:1"), BlobStore(str(tmp_path / "s")), platform=plat)
        assert got.digest == img.digest
        assert got.manifest_media_type == (DOCKER_MANIFEST if docker else img.manifest_media_type)
    with pytest.raises(InputError, match=r"no image for platform linux/s390x \(available: linux/amd64, "
                                         r"linux/arm64/v8\)"):
        pull_image(client, ref(f"{host}/multi/app:1"), BlobStore(str(tmp_path / "s")),
                   platform=Platform("linux", "s390x"))


def test_pull_unknown_and_errors(plain_registry, make_client, tmp_path):
    host = plain_registry.host
    client = make_client(insecure_registries=(host,))
    with pytest.raises(RegistryError, match=f"^{host}/nope/nope:1: manifest unknown \\(HTTP 404\\)$"):
        pull_image(client, ref(f"{host}/nope/nope:1"), BlobStore(str(tmp_path)))
    # Without --insecure-registry, a plain-HTTP registry is not used.
    with pytest.raises(RegistryError, match=f"cannot reach registry {host}: .*use --insecure-registry"):
        pull_image(make_client(request_retries=0), ref(f"{host}/library/busybox:1"), BlobStore(str(tmp_path)))


def test_mirror_and_map_fallback(plain_registry, proxy, make_client, tmp_path):
    host = plain_registry.host
    # A map to a registry that does not have the image falls back to the original...
    client = make_client(insecure_registries=(host, proxy.host),
                         registry_maps=((proxy.host, f"{host}/nothing-here"),))
    img = pull_image(client, ref(f"{proxy.host}/library/busybox:1"), BlobStore(str(tmp_path / "a")))
    assert img.layers and proxy.count("GET", "/blobs/") == 2
    # ...unless told not to.
    strict = make_client(insecure_registries=(host, proxy.host), skip_default_registry_fallback=True,
                         registry_maps=((proxy.host, f"{host}/nothing-here"),))
    with pytest.raises(RegistryError, match="nothing-here/library/busybox:1: manifest unknown"):
        pull_image(strict, ref(f"{proxy.host}/library/busybox:1"), BlobStore(str(tmp_path / "b")))
    # A map to a registry that has it is used first; the original is never asked.
    proxy.reset()
    mapped = make_client(insecure_registries=(host, proxy.host), registry_maps=((proxy.host, host),))
    pull_image(mapped, ref(f"{proxy.host}/library/busybox:1"), BlobStore(str(tmp_path / "c")))
    assert proxy.log == []
    # docker.io with a mirror: served by the mirror (docker.io itself is never contacted here).
    mirrored = make_client(insecure_registries=(host,), registry_mirrors=(host,),
                           skip_default_registry_fallback=True)
    got = pull_image(mirrored, ref("busybox:1"), BlobStore(str(tmp_path / "d")))
    assert got.digest == img.digest


def test_pull_into_cache_is_shared_by_concurrent_pulls(plain_registry, make_client, tmp_path):
    import concurrent.futures
    host = plain_registry.host
    store = BlobStore(str(tmp_path / "shared"))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(pull_image, make_client(insecure_registries=(host,)), ref(f"{host}/library/busybox:1"),
                            store) for _ in range(4)]
        digests = {f.result().digest for f in futs}
    assert len(digests) == 1
    assert not [n for n in os.listdir(tmp_path / "shared" / "blobs" / "sha256") if n.startswith(".tmp")]
