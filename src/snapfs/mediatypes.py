"""The one table of OCI and Docker media types, and the layer type for each compression.

A leaf: imports nothing, so the engine (which labels the layers it writes) and the image model share it.
"""
from __future__ import annotations

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
LAYER_TYPES = frozenset({OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_NONDIST_GZIP, DOCKER_LAYER,
                         DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN})
# What a registry is asked for when resolving a reference, most preferred first.
MANIFEST_ACCEPT = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

# Docker's schema 2 has no zstd or uncompressed layer type of its own: those stay OCI types in either format.
_LAYER_BY_COMPRESSION = {
    (True, "gzip"): OCI_LAYER_GZIP, (True, "zstd"): OCI_LAYER_ZSTD, (True, "none"): OCI_LAYER,
    (False, "gzip"): DOCKER_LAYER_GZIP, (False, "zstd"): OCI_LAYER_ZSTD, (False, "none"): OCI_LAYER,
}


def layer_media_type(compression: str, *, oci: bool = True) -> str:
    """The layer media type for a compression name from ``snapfs.engine.compress`` (gzip, zstd, none)."""
    return _LAYER_BY_COMPRESSION[(oci, compression)]
