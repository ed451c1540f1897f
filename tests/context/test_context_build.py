"""The scenario Kaniko users follow, end to end: `tar -C app -zcvf context.tar.gz .`, upload the archive to
object storage (or push the app to git), then `snapfs build --context=<URL> --dockerfile=... --destination=...`
with the credentials in the environment. The pushed image is pulled back, unpacked, and its entry point run in
a chroot; the credentials appear nowhere in the output."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import AZURE_ACCOUNT, AZURE_KEY, GIT_ENV, git
from context_servers import GIT_TOKEN

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "image"))
from basekit import make_busybox_layout  # noqa: E402
from registry_servers import RegistryProcess, skopeo  # noqa: E402

from snapfs import apply_layers  # noqa: E402
from snapfs.image.layout import read_layout  # noqa: E402

APP = {
    "Dockerfile": "FROM busybox\nCOPY hello.sh /usr/local/bin/hello\nRUN chmod 0755 /usr/local/bin/hello\n"
                  "ENTRYPOINT [\"/usr/local/bin/hello\"]\n",
    "hello.sh": "#!/bin/sh\necho \"hello from a context in $SOURCE\"\n",
    "docs/README.md": "not needed in the image\n",
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("ctx-build-registry"))
    reg = RegistryProcess(work, name="ctx-build").start()
    try:
        skopeo("copy", "--dest-tls-verify=false", f"oci:{make_busybox_layout(work)}:busybox",
               f"docker://{reg.host}/library/busybox:latest")
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def app_tgz(tmp_path):
    app = tmp_path / "app"
    for rel, text in APP.items():
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        (app / rel).write_text(text)
    out = tmp_path / "context.tar.gz"
    subprocess.run(["tar", "-C", str(app), "-zcvf", str(out), "."], check=True, capture_output=True)
    return app, out


def build_and_run(registry, tmp_path, context: str, env: dict, secret: str, source: str) -> None:
    dest = f"{registry.host}/ctx/{source}:latest"
    r = subprocess.run([sys.executable, "-m", "snapfs", "build", f"--context={context}", "--dockerfile=Dockerfile",
                        f"--destination={dest}", f"--registry-map=docker.io={registry.host}",
                        f"--insecure-registry={registry.host}", "--skip-default-registry-fallback",
                        f"--cache-dir={tmp_path / 'cache'}"],
                       capture_output=True, text=True, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr[-3000:]
    assert secret not in r.stdout + r.stderr
    pulled = str(tmp_path / "pulled")
    skopeo("copy", "--src-tls-verify=false", f"docker://{dest}", f"oci:{pulled}:x")
    image = read_layout(pulled)
    root = str(tmp_path / "root")
    os.makedirs(root)
    apply_layers([l.path for l in image.layers], root)
    cfg = json.loads(image.config_bytes)
    out = subprocess.run(["/usr/sbin/chroot", root, *cfg["config"]["Entrypoint"]], capture_output=True, text=True,
                         env={"PATH": "/bin", "SOURCE": source}, check=True)
    assert out.stdout == f"hello from a context in {source}\n"
    assert secret not in json.dumps(cfg)


def test_azure_blob_with_kaniko_url_and_key(registry, azurite, app_tgz, tmp_path):
    _, tgz = app_tgz
    with open(tgz, "rb") as f:
        azurite.container.upload_blob("builds/context.tar.gz", f, overwrite=True)
    url = f"https://{AZURE_ACCOUNT}.blob.core.windows.net/contexts/builds/context.tar.gz"
    # Kaniko's URL form; the endpoint override sends it to Azurite instead of Azure.
    build_and_run(registry, tmp_path, url, {"AZURE_STORAGE_ACCESS_KEY": AZURE_KEY,
                                            "AZURE_STORAGE_BLOB_ENDPOINT": azurite.endpoint}, AZURE_KEY, "azure")


def test_s3_bucket(registry, s3_server, app_tgz, tmp_path):
    _, tgz = app_tgz
    s3_server.client.upload_file(str(tgz), s3_server.bucket, "team/context.tar.gz")
    env = {"AWS_ACCESS_KEY_ID": s3_server.key_id, "AWS_SECRET_ACCESS_KEY": s3_server.secret,
           "AWS_REGION": "eu-west-1", "S3_ENDPOINT": s3_server.endpoint, "S3_FORCE_PATH_STYLE": "true",
           "AWS_EC2_METADATA_DISABLED": "true"}
    build_and_run(registry, tmp_path, f"s3://{s3_server.bucket}/team/context.tar.gz", env, s3_server.secret, "s3")


def test_gcs_bucket(registry, gcs_server, app_tgz, tmp_path):
    _, tgz = app_tgz
    gcs_server.client.bucket(gcs_server.bucket).blob("team/context.tar.gz").upload_from_filename(str(tgz))
    build_and_run(registry, tmp_path, f"gs://{gcs_server.bucket}/team/context.tar.gz",
                  {"STORAGE_EMULATOR_HOST": gcs_server.host}, "no-secret-for-the-emulator", "gcs")


def test_git_over_http_with_a_token(registry, git_server, app_tgz, tmp_path):
    app, _ = app_tgz
    git("init", "--quiet", "-b", "main", cwd=str(app))
    git("add", "-A", cwd=str(app))
    git("commit", "--quiet", "-m", "app", cwd=str(app))
    bare = os.path.join(git_server.served, "built-app.git")
    git("clone", "--quiet", "--bare", str(app), bare, cwd=str(tmp_path))
    git("update-server-info", cwd=bare)
    # /token/ answers only to the token (Basic auth), as a private repository would
    build_and_run(registry, tmp_path, f"git://{git_server.http}/token/built-app.git#refs/heads/main",
                  {"GIT_PULL_METHOD": "http", "GIT_TOKEN": GIT_TOKEN, **{k: v for k, v in GIT_ENV.items()
                                                                         if k.startswith("GIT_CONFIG")}},
                  GIT_TOKEN, "git")


def test_https_url_of_a_tarball(registry, https_server, app_tgz, tmp_path):
    _, tgz = app_tgz
    os.replace(tgz, os.path.join(https_server.root, "ctx.tar.gz"))
    build_and_run(registry, tmp_path, f"{https_server.url}/ctx.tar.gz", {"SSL_CERT_FILE": https_server.ca},
                  "no-secret-for-a-public-url", "https")


def test_tar_on_stdin(registry, app_tgz, tmp_path):
    _, tgz = app_tgz
    dest = f"{registry.host}/ctx/stdin:latest"
    with open(tgz, "rb") as f:
        r = subprocess.run([sys.executable, "-m", "snapfs", "build", "--context=tar://stdin", f"--destination={dest}",
                            f"--registry-map=docker.io={registry.host}", f"--insecure-registry={registry.host}",
                            "--skip-default-registry-fallback", f"--cache-dir={tmp_path / 'cache'}"],
                           stdin=f, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{dest}").stdout)
    assert info["Digest"] == r.stdout.strip()


def test_add_from_a_git_repository(registry, git_server, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    repo = f"http://{git_server.http}/smart/app.git"
    (ctx / "Dockerfile").write_text(f"FROM busybox\nADD {repo}#main /src/\nADD --keep-git-dir=true {repo}#v1 /tagged\n")
    layout = tmp_path / "oci"
    r = subprocess.run([sys.executable, "-m", "snapfs", "build", f"--context={ctx}", "--no-push",
                        f"--oci-layout-path={layout}", f"--registry-map=docker.io={registry.host}",
                        f"--insecure-registry={registry.host}", "--skip-default-registry-fallback",
                        f"--cache-dir={tmp_path / 'cache'}"], capture_output=True, text=True,
                       env={**os.environ, **{k: v for k, v in GIT_ENV.items() if k.startswith("GIT_CONFIG")}})
    assert r.returncode == 0, r.stderr[-3000:]
    root = tmp_path / "root"
    root.mkdir()
    apply_layers([l.path for l in read_layout(str(layout)).layers], str(root))
    assert (root / "src/app/hello.txt").read_text() == "v2\n" and not (root / "src/.git").exists()
    assert (root / "tagged/app/hello.txt").read_text() == "v1\n" and (root / "tagged/.git").is_dir()
