"""Blob cache, OCI layouts, docker archives and digest files, cross-checked with umoci and skopeo."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading

import pytest

from imagekit import files_layer, image_of
from registry_servers import skopeo
from snapfs.errors import InputError
from snapfs.image.blobstore import BlobMismatch, BlobStore
from snapfs.image.layout import index_json, read_layout, validate_image, write_layout
from snapfs.image.model import sha256_digest
from snapfs.image.reference import parse_reference
from snapfs.image.tarball import read_tarball, write_tarball
from snapfs.image.transports import OutputOptions, load_image, write_outputs
from snapfs.mediatypes import OCI_LAYER_ZSTD
from snapfs.platforms import Platform


def test_blob_store_verifies_before_publishing(tmp_path):
    store = BlobStore(str(tmp_path))
    data = b"hello blob"
    digest = sha256_digest(data)
    w = store.writer(digest, size=len(data) + 1)
    w.write(data)
    with pytest.raises(BlobMismatch, match="got 10 bytes, expected 11"):
        w.commit()
    bad = store.writer(digest, size=len(data))
    bad.write(b"hellO blob")
    with pytest.raises(BlobMismatch, match=f"content digest sha256:[0-9a-f]{{64}} does not match {digest}"):
        bad.commit()
    assert not store.has(digest)
    assert os.listdir(tmp_path / "blobs" / "sha256") == []  # no temp file left behind
    with pytest.raises(BlobMismatch, match="more bytes than the expected 3"):
        store.writer(digest, size=3).write(data)
    assert store.put_bytes(data) == digest and store.has(digest, size=len(data))
    with pytest.raises(InputError, match="invalid digest"):
        store.path("sha256:../../etc/passwd")


def test_blob_store_diff_id_check(tmp_path):
    layer = files_layer(str(tmp_path / "src"), {"f": b"x" * 1000})
    store = BlobStore(str(tmp_path / "s"))
    with open(layer.path, "rb") as f:
        with pytest.raises(BlobMismatch, match="uncompressed digest .* does not match diff_id sha256:0000"):
            store.put_stream(f, digest=layer.digest, size=layer.size, diff_id="sha256:" + "0" * 64)
    with open(layer.path, "rb") as f:
        store.put_stream(f, digest=layer.digest, size=layer.size, diff_id=layer.diff_id)
    assert store.has(layer.digest)


def test_blob_store_concurrent_writers(tmp_path):
    store = BlobStore(str(tmp_path))
    data = os.urandom(3 << 20)
    digest = sha256_digest(data)
    errors = []

    def write():
        try:
            with store.writer(digest, size=len(data)) as w:
                for i in range(0, len(data), 65536):
                    w.write(data[i:i + 65536])
                w.commit()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert open(store.path(digest), "rb").read() == data
    assert os.listdir(tmp_path / "blobs" / "sha256") == [digest.split(":")[1]]


def test_layout_round_trip_and_umoci(tmp_path, busybox):
    _, image = busybox
    out = str(tmp_path / "oci")
    write_layout(out, image, ref_name="v1")
    write_layout(out, image, ref_name="v2")
    write_layout(out, image, ref_name="v1")  # replaces, does not duplicate
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index_json(out)["manifests"]]
    assert names == ["v2", "v1"]
    back = read_layout(out, ref_name="v1")
    assert back.digest == image.digest and back.config_bytes == image.config_bytes
    validate_image(back)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]
    info = json.loads(skopeo("inspect", f"oci:{out}:v2").stdout)
    assert info["Digest"] == image.digest and info["Layers"] == [image.layers[0].digest]
    if shutil.which("umoci"):
        bundle = str(tmp_path / "bundle")
        subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{out}:v1", bundle], check=True,
                       capture_output=True)
        assert os.path.islink(os.path.join(bundle, "rootfs", "bin", "sh"))


def test_layout_errors(tmp_path, busybox):
    with pytest.raises(InputError, match="OCI layout directory does not exist"):
        read_layout(str(tmp_path / "nope"))
    out = str(tmp_path / "oci")
    write_layout(out, busybox[1], ref_name="v1")
    with pytest.raises(InputError, match=r"no image named 'zz' in the layout \(names: v1\)"):
        read_layout(out, ref_name="zz")
    blob = BlobStore(out).path(busybox[1].layers[0].digest)
    os.unlink(blob)
    with open(blob, "wb") as f:
        f.write(b"short")
    with pytest.raises(InputError, match="has 5 bytes, the manifest says"):
        read_layout(out)


def test_layout_reads_skopeo_output(tmp_path, plain_registry):
    out = str(tmp_path / "sk")
    skopeo("copy", "--src-tls-verify=false", f"docker://{plain_registry.host}/library/busybox:1", f"oci:{out}:bb")
    img = read_layout(out, ref_name="bb", platform=Platform("linux", "amd64"))
    validate_image(img)


def test_docker_archive_round_trip_with_skopeo(tmp_path, busybox):
    _, image = busybox
    tar = str(tmp_path / "img.tar")
    write_tarball(tar, image, tags=[parse_reference("busybox:1"), "127.0.0.1:5000/a/b:c"])
    names = subprocess.run(["tar", "tf", tar], capture_output=True, text=True, check=True).stdout.split()
    assert names[-1] == "manifest.json"
    info = json.loads(skopeo("inspect", f"docker-archive:{tar}").stdout)
    assert info["Layers"] == [image.layers[0].digest] or info["Layers"]  # skopeo may report uncompressed digests
    manifest = json.load(subprocess.Popen(["tar", "xOf", tar, "manifest.json"], stdout=subprocess.PIPE).stdout)
    assert manifest[0]["RepoTags"] == ["busybox:1", "127.0.0.1:5000/a/b:c"]
    store = BlobStore(str(tmp_path / "store"))
    back = read_tarball(tar, store, tag="busybox:1")
    assert back.config_bytes == image.config_bytes and back.layers[0].digest == image.layers[0].digest
    validate_image(back)
    # skopeo can turn our archive into a layout that we read back.
    skopeo("copy", f"docker-archive:{tar}", f"oci:{tmp_path / 'from-tar'}:x")
    validate_image(read_layout(str(tmp_path / "from-tar"), ref_name="x"))
    with pytest.raises(InputError, match="no image tagged 'nope:1' in the archive"):
        read_tarball(tar, store, tag="nope:1")


def test_reads_docker_archive_made_by_skopeo(tmp_path, busybox):
    tar = str(tmp_path / "sk.tar")
    skopeo("copy", f"oci:{busybox[0]}:busybox", f"docker-archive:{tar}:busybox:latest")
    img, ref = load_image(f"docker-archive:{tar}", store=BlobStore(str(tmp_path / "s")))
    assert ref is None and img.config()["rootfs"]["diff_ids"] == [busybox[1].layers[0].diff_id]
    validate_image(img)


def test_zstd_image_layout(tmp_path):
    img = image_of([files_layer(str(tmp_path / "l"), {"z": b"zz" * 1000}, compression="zstd")])
    assert img.layers[0].media_type == OCI_LAYER_ZSTD
    write_layout(str(tmp_path / "o"), img)
    validate_image(read_layout(str(tmp_path / "o")))


def test_write_outputs_and_digest_files(tmp_path, busybox):
    _, image = busybox
    dests = (parse_reference("reg.example:5000/team/app:v1"), parse_reference("busybox"))
    opts = OutputOptions(destinations=dests, no_push=True, tar_path=str(tmp_path / "o.tar"),
                         oci_layout_path=str(tmp_path / "oci"), digest_file=str(tmp_path / "d"),
                         image_name_with_digest_file=str(tmp_path / "n"),
                         image_name_tag_with_digest_file=str(tmp_path / "nt"))
    digest = write_outputs(image, opts)
    assert digest == image.digest
    assert (tmp_path / "d").read_text() == digest
    assert (tmp_path / "n").read_text() == (f"reg.example:5000/team/app@{digest}\n"
                                            f"docker.io/library/busybox@{digest}\n")
    assert (tmp_path / "nt").read_text() == (f"reg.example:5000/team/app:v1@{digest}\n"
                                             f"docker.io/library/busybox:latest@{digest}\n")
    assert read_layout(str(tmp_path / "oci"), ref_name="v1").digest == digest
    img, _ = load_image(f"oci:{tmp_path / 'oci'}:v1", store=BlobStore(str(tmp_path / "s")))
    assert img.digest == digest


@pytest.mark.parametrize("spec, kind, rest", [
    ("oci:out/layout:v1", "oci", "out/layout:v1"),
    ("oci-layout://out/layout", "oci", "out/layout"),
    ("docker-archive:img.tar:app:v1", "docker-archive", "img.tar:app:v1"),
    ("tarball:img.tar", "docker-archive", "img.tar"),
    ("docker.io/library/busybox:1.36", None, "docker.io/library/busybox:1.36"),
    ("localhost:5000/oci:v1", None, "localhost:5000/oci:v1"),
])
def test_one_table_of_local_transports(spec, kind, rest):
    """Base images, COPY --from and `snapfs push` read local sources through one parser of transport prefixes."""
    from snapfs.image.transports import is_local_spec, split_transport

    assert split_transport(spec) == (kind, rest)
    assert is_local_spec(spec) is (kind is not None)
