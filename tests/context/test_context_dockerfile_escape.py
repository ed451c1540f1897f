"""A ``dir://`` context whose Dockerfile (or .dockerignore, or a directory on the way to them) is a symlink to a
host file: the build reads the Dockerfile inside the context only, and never prints a byte of the host file.

Each build runs the real command line over a real directory; the Dockerfiles are ``FROM scratch`` plus metadata,
so no registry is involved and each build takes a fraction of a second."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SECRET = "TOPSECRET_hunter2_do_not_print"


@pytest.fixture
def host_secret(tmp_path):
    """A host file outside every context, and a host directory holding a file named ``Dockerfile``."""
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "secret").write_text(f"{SECRET}=1\n")
    (outside / "Dockerfile").write_text(f"{SECRET} in a host Dockerfile\n")
    (outside / ".dockerignore").write_text(f"{SECRET}\n")
    return outside


@pytest.fixture
def ctx(tmp_path):
    path = tmp_path / "ctx"
    path.mkdir()
    return path


def build(tmp_path, *args, cwd=None):
    out = tmp_path / f"out-{len(os.listdir(tmp_path))}"
    cmd = [sys.executable, "-m", "snapfs", "build", "--no-push", f"--oci-layout-path={out}",
           f"--cache-dir={tmp_path / 'cache'}", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    assert SECRET not in r.stdout + r.stderr and "Traceback" not in r.stderr, r.stderr
    return r, out


def labels(out) -> dict:
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    config = json.loads((out / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_text())
    return config["config"].get("Labels") or {}


@pytest.mark.parametrize("spec", ["plain", "dir://"])
def test_dockerfile_symlink_to_a_host_file_is_not_read(tmp_path, ctx, host_secret, spec):
    os.symlink(host_secret / "secret", ctx / "Dockerfile")
    r, out = build(tmp_path, "-c", ("dir://" if spec == "dir://" else "") + str(ctx))
    assert r.returncode == 3
    assert r.stderr.strip().endswith("Dockerfile not found in the context "
                                     f"{'dir://' if spec == 'dir://' else ''}{ctx} (a symlink whose target is not "
                                     "in the context) (set --dockerfile)")
    assert not out.exists()


def test_working_directory_inside_the_context_is_no_way_out(tmp_path, ctx, host_secret):
    """``snapfs build -c .`` from the context itself: the relative name is not retried on the host."""
    os.symlink(host_secret / "secret", ctx / "Dockerfile")
    r, _ = build(tmp_path, "-c", ".", cwd=ctx)
    assert r.returncode == 3 and "Dockerfile: Dockerfile not found in the context ." in r.stderr


def test_absolute_dockerfile_path_inside_the_context_resolves_in_the_context(tmp_path, ctx, host_secret):
    """GitLab's Kaniko recipe: ``--dockerfile=$CI_PROJECT_DIR/Dockerfile --context=$CI_PROJECT_DIR``."""
    os.symlink(host_secret / "secret", ctx / "Dockerfile")
    r, _ = build(tmp_path, "-c", str(ctx), f"--dockerfile={ctx}/Dockerfile")
    assert r.returncode == 3 and f"{ctx}/Dockerfile: Dockerfile not found in the context" in r.stderr


def test_directory_symlink_on_the_way_to_the_dockerfile(tmp_path, ctx, host_secret):
    os.symlink(host_secret, ctx / "docker")
    r, _ = build(tmp_path, "-c", str(ctx), "--dockerfile=docker/Dockerfile", cwd=ctx)
    assert r.returncode == 3 and "docker/Dockerfile: Dockerfile not found in the context" in r.stderr


def test_sub_path_context_cannot_reach_the_host_either(tmp_path, ctx, host_secret):
    (ctx / "app").mkdir()
    os.symlink(host_secret / "secret", ctx / "app" / "Dockerfile")
    r, _ = build(tmp_path, "-c", str(ctx), "--context-sub-path=app", cwd=ctx)
    assert r.returncode == 3 and "Dockerfile not found in the context" in r.stderr


def test_links_that_stay_inside_are_followed_as_if_the_context_were_root(tmp_path, ctx, host_secret):
    """An absolute target restarts at the context root (as Docker follows a Dockerfile link in its context)."""
    (ctx / "build").mkdir()
    (ctx / "build" / "Dockerfile.real").write_text('FROM scratch\nLABEL from="build/Dockerfile.real"\n')
    os.symlink("/build/Dockerfile.real", ctx / "Dockerfile")
    os.symlink("build/Dockerfile.real", ctx / "Relative.Dockerfile")
    r, out = build(tmp_path, "-c", str(ctx))
    assert r.returncode == 0, r.stderr
    assert labels(out) == {"from": "build/Dockerfile.real"}
    r, out = build(tmp_path, "-c", str(ctx), "-f", "Relative.Dockerfile")
    assert r.returncode == 0 and labels(out) == {"from": "build/Dockerfile.real"}


def test_dockerignore_symlink_out_of_the_context_is_refused_without_reading_it(tmp_path, ctx, host_secret):
    (ctx / "Dockerfile").write_text("FROM scratch\nLABEL a=b\n")
    os.symlink(host_secret / ".dockerignore", ctx / ".dockerignore")
    r, out = build(tmp_path, "-c", str(ctx))
    assert r.returncode == 7
    assert r.stderr.strip() == f"snapfs: {ctx}/.dockerignore: ignore file is a symlink that points outside the " \
                               "build context"
    assert not out.exists()


def test_dockerfile_outside_the_context_by_the_users_own_absolute_path_still_works(tmp_path, ctx):
    """The one way to name a file outside the context: the user's own absolute path (Kaniko and Docker agree)."""
    own = tmp_path / "own.Dockerfile"
    own.write_text('FROM scratch\nLABEL own="yes"\n')
    r, out = build(tmp_path, "-c", str(ctx), f"--dockerfile={own}")
    assert r.returncode == 0, r.stderr
    assert labels(out) == {"own": "yes"}
