"""USER, WORKDIR and --chown name lookup end to end: ``root`` and numeric ids need no /etc/passwd (FROM scratch),
WORKDIR creates its directories as the current USER, unknown names follow BuildKit for WORKDIR and fail --chown."""
from __future__ import annotations

import os

import pytest

from snapfs.errors import BuildError


def owner(built, p):
    st = os.lstat(built.path(p))
    return st.st_uid, st.st_gid


def test_workdir_after_user_root_from_scratch(run_build):
    b = run_build("FROM scratch\nCOPY f /f\nUSER root\nWORKDIR /app\nCOPY --chown=root:root f /app/f\n",
                  {"f": "x"})
    assert owner(b, "/app") == (0, 0) and owner(b, "/app/f") == (0, 0)
    assert b.config["config"]["User"] == "root" and b.config["config"]["WorkingDir"] == "/app"


def test_numeric_ids_from_scratch(run_build):
    b = run_build("FROM scratch\nCOPY --chown=1000 f /f1000\nCOPY --chown=:50 f /fg50\nUSER 1000\nWORKDIR /w/sub\n"
                  "USER 1000:2000\nWORKDIR /wg\n", {"f": "x"})
    # what buildah 1.28 gives for the same Dockerfile (checked by hand), and BuildKit's file-op rules
    assert owner(b, "/f1000") == (1000, 1000) and owner(b, "/fg50") == (0, 50)
    assert owner(b, "/w") == (1000, 1000) and owner(b, "/w/sub") == (1000, 1000)
    assert owner(b, "/wg") == (1000, 2000)


def test_workdir_ownership_by_name(run_build):
    # busybox's app is 1000:1000 and in staff (50)
    b = run_build("FROM busybox\nUSER app\nWORKDIR /srv/app\nUSER app:staff\nWORKDIR /srv/shared\n"
                  "USER ghost\nWORKDIR /srv/ghost\nUSER root\nWORKDIR /srv/existing\n")
    assert owner(b, "/srv/app") == (1000, 1000) and owner(b, "/srv") == (1000, 1000)
    assert owner(b, "/srv/shared") == (1000, 50)
    assert owner(b, "/srv/ghost") == (0, 0)  # as BuildKit and buildah: a name not in passwd counts as 0
    assert owner(b, "/srv/existing") == (0, 0)


def test_chown_unknown_name_is_an_error(run_build):
    with pytest.raises(BuildError, match=r"step 2/2 \(COPY at Dockerfile:2\): unable to find user ghost: "
                                         r"no matching entries in passwd file"):
        run_build("FROM scratch\nCOPY --chown=ghost f /f\n", {"f": "x"})
