"""One realistic Dockerfile built by snapfs and by `buildah bud --isolation chroot` (a reference that follows
Docker's semantics): the images' filesystems and configs must agree, apart from what buildah is known to add.
The corpus gets the same comparison case by case in test_parity_buildah.py; both use parity.py."""
from __future__ import annotations

import pytest
from parity import compare_configs, compare_trees, tree

pytestmark = pytest.mark.slow

DOCKERFILE = """FROM busybox
ENV APP=/srv/app
WORKDIR $APP
COPY --chown=app:staff files/ ./
COPY --chmod=0755 run.sh /usr/local/bin/
RUN mkdir -p /data/sub && echo hi > /data/x && chmod 0750 /data && ln -s /data/x /data/link \\
 && ln /data/x /data/hard && rm /etc/group && mkdir /tmp/gone && rm -r /tmp/gone
RUN echo more >> /data/x && chown 1000:50 /data/sub
USER app
EXPOSE 8080/tcp 53/udp
LABEL org.example.team=builders
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/run.sh"]
CMD ["--serve"]
"""
FILES = {"files/a.txt": "A\n", "files/sub/b.txt": "B\n", "run.sh": "#!/bin/sh\necho run\n"}


def test_same_filesystem_and_config_as_buildah(run_build, buildah, tmp_path):
    built = run_build(DOCKERFILE, FILES)
    ctx = tmp_path / "ctx"   # run_build's context: the Dockerfile and FILES
    r = buildah.bud(str(ctx), "localhost/parity/realistic:latest", build={}, secret_files={})
    assert r.returncode == 0, r.stderr[-3000:]
    try:
        rootfs, config = buildah.export("localhost/parity/realistic:latest", str(tmp_path / "buildah"))
    finally:
        buildah.remove("localhost/parity/realistic:latest")
    ours = tree(built.rootfs)
    assert ours["/data/hard"]["links"] == ("/data/x",) and ours["/srv/app/sub/b.txt"]["uid"] == 1000
    assert compare_trees(ours, tree(rootfs)) == {}
    assert compare_configs(built.config, config) == {}
