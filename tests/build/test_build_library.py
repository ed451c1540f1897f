"""``snapfs.build`` called as a library, the way the README shows it: plain strings where a user would write them."""
from __future__ import annotations

import json

import httpx
import pytest

import snapfs
from snapfs.errors import UsageError
from snapfs.image.reference import Reference
from snapfs.image.registry.client import RegistryOptions


def test_a_destination_given_as_a_string_is_pushed(registry, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo lib > /lib.txt\n")
    dest = f"{registry.host}/library-api/app:1"
    outputs = snapfs.OutputOptions(destinations=(dest,), digest_file=str(tmp_path / "digest"))
    assert outputs.destinations == (Reference(registry.host, "library-api/app", "1", None),)
    reg = RegistryOptions(registry_maps=(("docker.io", registry.host),), insecure_registries=(registry.host,),
                          skip_default_registry_fallback=True)
    result = snapfs.build(snapfs.BuildOptions(context=str(ctx), outputs=outputs, registry=reg,
                                              cache_dir=str(tmp_path / "cache")))
    r = httpx.get(f"http://{registry.host}/v2/library-api/app/manifests/1",
                  headers={"Accept": result.image.manifest_media_type})
    assert r.status_code == 200 and r.headers["docker-content-digest"] == result.digest
    assert json.loads(r.content)["layers"][-1]["digest"] == result.layers[-1].digest
    assert (tmp_path / "digest").read_text() == result.digest


def test_one_string_is_one_destination_and_a_bad_one_is_refused_at_once():
    assert len(snapfs.OutputOptions(destinations="r.example/app:1").destinations) == 1
    with pytest.raises(snapfs.errors.SnapfsError, match="invalid"):
        snapfs.OutputOptions(destinations=("r.example/UPPER:1",))


def test_a_name_file_without_destination_is_a_usage_error_before_any_work(tmp_path):
    outputs = snapfs.OutputOptions(no_push=True, image_name_tag_with_digest_file=str(tmp_path / "n"))
    with pytest.raises(UsageError, match=r"^--image-name-tag-with-digest-file needs a --destination"):
        snapfs.build(snapfs.BuildOptions(context=str(tmp_path / "absent"), outputs=outputs))
