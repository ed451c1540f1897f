"""The image model: canonical JSON, descriptors, platforms, index selection, append/convert."""
from __future__ import annotations

import json

import pytest

from imagekit import files_layer, image_of
from snapfs.errors import InputError
from snapfs.image.model import (Descriptor, Index, Manifest, append_layers, canonical_json, convert,
                                empty_image, image_from_manifest, with_config)
from snapfs.mediatypes import (DOCKER_LAYER_GZIP, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_LAYER_GZIP,
                               OCI_LAYER_ZSTD, OCI_MANIFEST)
from snapfs.platforms import Platform

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


def test_canonical_json_is_sorted_and_compact():
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": "é"}]}) == '{"a":[1,{"c":"é","d":2}],"b":1}'.encode()


def test_index_select_first_match_skips_unknown_types():
    idx = Index(media_type=OCI_INDEX, manifests=(
        Descriptor("application/vnd.example.unknown", D1, 1, platform=Platform("linux", "amd64")),
        Descriptor(OCI_MANIFEST, D2, 2, platform=Platform("linux", "arm64", "v8")),
        Descriptor(OCI_MANIFEST, D3, 3, platform=Platform("linux", "amd64")),
        Descriptor(OCI_MANIFEST, D1, 4, platform=Platform("linux", "amd64")),
    ))
    assert idx.select(Platform("linux", "amd64")).digest == D3
    assert idx.select(Platform("linux", "arm64")).digest == D2
    assert idx.select(Platform("linux", "s390x")) is None
    back = Index.from_bytes(idx.to_bytes())
    assert back == idx


def test_descriptor_rejects_bad_digest_and_size():
    with pytest.raises(InputError, match="invalid digest in descriptor"):
        Descriptor(OCI_MANIFEST, "sha256:../../x", 1)
    with pytest.raises(InputError, match="invalid size -1"):
        Descriptor(OCI_MANIFEST, D1, -1)
    with pytest.raises(InputError, match="manifest is not valid JSON"):
        Manifest.from_bytes(b"{nope")
    with pytest.raises(InputError, match="unsupported manifest media type"):
        Manifest.from_bytes(json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST}).encode())


def test_append_layers_returns_new_value(tmp_path):
    base = image_of([files_layer(str(tmp_path), {"a": b"1"})])
    top = files_layer(str(tmp_path), {"b": b"2"})
    new = append_layers(base, [top], history=[{"created_by": "RUN x"}], created="2025-01-01T00:00:00Z")
    assert len(base.layers) == 1 and len(new.layers) == 2  # the base is untouched
    cfg = new.config()
    assert cfg["rootfs"]["diff_ids"] == [base.layers[0].diff_id, top.diff_id]
    assert cfg["history"][-1] == {"created": "2025-01-01T00:00:00Z", "created_by": "RUN x"}
    assert cfg["created"] == "2025-01-01T00:00:00Z"
    m = Manifest.from_bytes(new.manifest_bytes)
    assert m.config.digest == new.config_digest and [d.digest for d in m.layers] == [x.digest for x in new.layers]
    # Same inputs, same digest: what we write is deterministic.
    again = append_layers(base, [top], history=[{"created_by": "RUN x"}], created="2025-01-01T00:00:00Z")
    assert again.digest == new.digest and again.manifest_bytes == new.manifest_bytes
    with pytest.raises(InputError, match="1 history entries for 2 layers"):
        append_layers(base, [top, top], history=[{}])


def test_docker_base_keeps_docker_types_until_zstd(tmp_path):
    base = image_of([files_layer(str(tmp_path), {"a": b"1"})], oci=False)
    assert base.manifest_media_type == DOCKER_MANIFEST and base.layers[0].media_type == DOCKER_LAYER_GZIP
    gz = append_layers(base, [files_layer(str(tmp_path), {"b": b"2"})])
    assert gz.manifest_media_type == DOCKER_MANIFEST and gz.layers[1].media_type == DOCKER_LAYER_GZIP
    zs = append_layers(base, [files_layer(str(tmp_path), {"c": b"3"}, compression="zstd")])
    assert zs.manifest_media_type == OCI_MANIFEST
    assert [x.media_type for x in zs.layers] == [OCI_LAYER_GZIP, OCI_LAYER_ZSTD]
    with pytest.raises(InputError, match="a Docker manifest cannot carry zstd"):
        convert(zs, oci=False)


def test_image_checks_diff_ids_and_keeps_raw_manifest(tmp_path):
    img = image_of([files_layer(str(tmp_path), {"a": b"1"})])
    cfg = img.config()
    cfg["rootfs"]["diff_ids"] = []
    with pytest.raises(InputError, match="0 diff_ids that do not match its 1 layers"):
        with_config(img, cfg)
    raw = img.manifest_bytes.replace(b'{"annotations"', b'{"annotations"') + b" "  # different bytes, same meaning
    kept = image_from_manifest(raw, img.config_bytes, blob_path=lambda d: str(tmp_path / d))
    assert kept.manifest_bytes == raw and kept.digest != img.digest
    with pytest.raises(InputError, match="image config does not match its digest"):
        image_from_manifest(raw, img.config_bytes + b" ", blob_path=str)


def test_empty_image_is_scratch():
    img = empty_image(Platform("linux", "arm64", "v8"))
    assert img.layers == () and img.config()["rootfs"] == {"type": "layers", "diff_ids": []}
    assert img.platform() == Platform("linux", "arm64", "v8")


def test_a_manifest_that_is_also_an_index_is_refused(tmp_path):
    """CVE-2021-41190: a document with both "layers" and "manifests" reads as an image to one client and as an
    index to another; it is refused whichever type it claims (or none)."""
    from snapfs.image.model import sniff_media_type
    from snapfs.image.layout import read_layout, write_layout

    img = image_of([files_layer(str(tmp_path / "l"), {"a": b"1"})])
    both = json.loads(img.manifest_bytes)
    both["manifests"] = [img.descriptor().to_json()]
    for media_type in (OCI_MANIFEST, OCI_INDEX, None):
        doc = dict(both)
        if media_type:
            doc["mediaType"] = media_type
        else:
            doc.pop("mediaType", None)
        data = canonical_json(doc)
        with pytest.raises(InputError, match=r'^manifest is ambiguous: it holds both "layers" and "manifests"$'):
            sniff_media_type(data)
        with pytest.raises(InputError, match=r'^manifest is ambiguous: it holds both "layers" and "manifests"$'):
            Manifest.from_bytes(data)
        with pytest.raises(InputError, match=r'^image index is ambiguous: it holds both "layers" and '
                                             r'"manifests"$'):
            Index.from_bytes(data)
    # The same document inside an OCI layout on disk (its digest made right, so only the shape is wrong).
    layout = str(tmp_path / "oci")
    write_layout(layout, img, ref_name="x")
    data = canonical_json(both)
    digest = "sha256:" + __import__("hashlib").sha256(data).hexdigest()
    (tmp_path / "oci" / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    index["manifests"][0].update(digest=digest, size=len(data))
    (tmp_path / "oci" / "index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match=r'^manifest is ambiguous: it holds both "layers" and "manifests"$'):
        read_layout(layout, ref_name="x")
