"""The Docker reference grammar and digest validation."""
from __future__ import annotations

import pytest

from snapfs.errors import InputError
from snapfs.image.reference import parse_reference, split_registry_spec, validate_digest

D = "sha256:" + "ab" * 32

GOOD = [
    # text, registry, repository, tag, digest, str()
    ("busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, "docker.io/library/busybox:1.36"),
    ("user/app", "docker.io", "user/app", "latest", None, "docker.io/user/app:latest"),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox:1", "docker.io", "library/busybox", "1", None,
     "docker.io/library/busybox:1"),
    ("registry-1.docker.io/x/y", "docker.io", "x/y", "latest", None, "docker.io/x/y:latest"),
    ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
    ("localhost:5000/x", "localhost:5000", "x", "latest", None, "localhost:5000/x:latest"),
    ("127.0.0.1:5000/a/b/c:v1", "127.0.0.1:5000", "a/b/c", "v1", None, "127.0.0.1:5000/a/b/c:v1"),
    ("gcr.io/proj/img@" + D, "gcr.io", "proj/img", None, D, "gcr.io/proj/img@" + D),
    ("gcr.io/proj/img:t@" + D, "gcr.io", "proj/img", "t", D, "gcr.io/proj/img:t@" + D),
    ("GHCR.IO/o/r:Tag_1.x-y", "ghcr.io", "o/r", "Tag_1.x-y", None, "ghcr.io/o/r:Tag_1.x-y"),
    ("a.b/c__d/e-f--g.h:1", "a.b", "c__d/e-f--g.h", "1", None, "a.b/c__d/e-f--g.h:1"),
    ("[::1]:5000/x", "[::1]:5000", "x", "latest", None, "[::1]:5000/x:latest"),
]


@pytest.mark.parametrize("text,registry,repo,tag,digest,full", GOOD, ids=[g[0][:40] for g in GOOD])
def test_parse_good(text, registry, repo, tag, digest, full):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repo, tag, digest)
    assert str(ref) == full
    assert parse_reference(str(ref)) == ref  # normalised form is a fixed point


BAD = [
    ("", "empty or contains whitespace"),
    ("a b", "empty or contains whitespace"),
    ("UPPER/case", "repository must be lowercase"),
    ("busybox:", "bad tag"),
    ("busybox:-x", "bad tag"),
    ("busybox:" + "t" * 129, "bad tag"),
    ("busybox@sha256:abc", "bad digest"),
    ("busybox@md5:" + "a" * 32, "bad digest"),
    ("busybox@sha256:" + "AB" * 32, "bad digest"),
    ("x/../y", "repository must be lowercase"),
    ("a//b", "repository must be lowercase"),
    ("-bad.host:5000/x", "bad registry"),
    ("host:99999999/x", "bad registry"),
    ("x" * 300, "name longer than 255"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[b[0][:20] or "empty" for b in BAD])
def test_parse_bad(text, message):
    with pytest.raises(InputError) as exc:
        parse_reference(text)
    assert message in str(exc.value)
    assert str(exc.value).startswith("invalid image reference")


def test_identifier_and_api_host():
    assert parse_reference("busybox").api_host == "registry-1.docker.io"
    assert parse_reference("busybox").identifier == "latest"
    assert parse_reference(f"x.io/a@{D}").identifier == D
    assert parse_reference("x.io/a", default_tag=None).tag is None
    ref = parse_reference("busybox:1").with_registry("mirror.local:5000", prefix="dockerhub")
    assert str(ref) == "mirror.local:5000/dockerhub/library/busybox:1"


@pytest.mark.parametrize("digest", [D, "sha512:" + "0" * 128])
def test_validate_digest_good(digest):
    assert validate_digest(digest) == digest


@pytest.mark.parametrize("digest", ["sha256:" + "a" * 63, "sha256:../../etc/passwd" + "a" * 48, "sha256" + "a" * 64,
                                    "sha256:" + "g" * 64, "SHA256:" + "a" * 64, "sha256:" + "a" * 64 + "\n"])
def test_validate_digest_bad(digest):
    with pytest.raises(InputError, match="^invalid digest .*expected sha256 followed by 64 lowercase hex"):
        validate_digest(digest)


def test_registry_spec():
    assert split_registry_spec("https://mirror.gcr.io") == ("mirror.gcr.io", "")
    assert split_registry_spec("host:5000/pre/fix/") == ("host:5000", "pre/fix")
    assert split_registry_spec("index.docker.io") == ("docker.io", "")
    with pytest.raises(InputError, match="invalid registry"):
        split_registry_spec("/nohost")
