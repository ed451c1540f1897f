"""Test images made locally: busybox from Debian's busybox-static, and small or random layers."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile

from snapfs.engine.compress import DigestWriter, compressing_writer
from snapfs.image.model import Image, Layer, append_layers, empty_image, with_config
from snapfs.mediatypes import layer_media_type
from snapfs.platforms import Platform


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def _write_layer(out_dir: str, fill, *, compression: str = "gzip") -> Layer:
    """Run ``fill(tarfile)`` into a compressed blob in ``out_dir``; digest and diff_id taken while writing."""
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix="layer-")
    with os.fdopen(fd, "wb") as f:
        blob = DigestWriter(f)
        comp = compressing_writer(compression, 1, blob)
        raw = DigestWriter(comp)
        with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            fill(tar)
        comp.close()
    path = os.path.join(out_dir, blob.digest.split(":")[1])
    os.replace(tmp, path)
    return Layer(path=path, digest=blob.digest, diff_id=raw.digest, size=blob.size,
                 media_type=layer_media_type(compression))


def files_layer(out_dir: str, files: dict[str, bytes], *, compression: str = "gzip") -> Layer:
    def fill(tar: tarfile.TarFile) -> None:
        for name in sorted(files):
            info = _reset(tarfile.TarInfo(name))
            info.size, info.mode = len(files[name]), 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return _write_layer(out_dir, fill, compression=compression)


def random_layer(out_dir: str, size: int, *, compression: str = "none", seed: int = 1) -> Layer:
    """One file of ``size`` pseudo-random (incompressible) bytes, written in 1 MiB pieces."""
    class Rand(io.RawIOBase):
        def __init__(self) -> None:
            self.left, self.block = size, os.urandom(1 << 20) if seed < 0 else bytes(
                (i * 131 + seed * 7 + (i >> 8) * 17) & 0xFF for i in range(1 << 20))
            self.n = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            k = min(len(b), self.left, len(self.block))
            if k <= 0:
                return 0
            # Vary each MiB so the data is not trivially repetitive for compressors.
            self.n += 1
            chunk = self.block[:k] if k < 8 else self.n.to_bytes(8, "big") + self.block[8:k]
            b[:k] = chunk
            self.left -= k
            return k

    def fill(tar: tarfile.TarFile) -> None:
        info = _reset(tarfile.TarInfo("data.bin"))
        info.size, info.mode = size, 0o644
        tar.addfile(info, io.BufferedReader(Rand(), 1 << 20))
    return _write_layer(out_dir, fill, compression=compression)


def busybox_rootfs(root: str) -> str:
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy2("/bin/busybox", os.path.join(root, "bin", "busybox"))
    if os.geteuid() == 0:
        subprocess.run(["chroot", root, "/bin/busybox", "--install", "-s"], check=True, capture_output=True)
    else:  # chroot needs root: make the same applet symlinks from busybox's own list
        names = subprocess.run(["/bin/busybox", "--list-full"], check=True, capture_output=True, text=True).stdout
        for rel in names.split():
            link = os.path.join(root, rel)
            if not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink("/bin/busybox", link)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    return root


def dir_layer(out_dir: str, root: str, *, compression: str = "gzip") -> Layer:
    def fill(tar: tarfile.TarFile) -> None:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                full = os.path.join(dirpath, name)
                tar.add(full, arcname=os.path.relpath(full, root), recursive=False, filter=_reset)
    return _write_layer(out_dir, fill, compression=compression)


def image_of(layers: list[Layer], *, platform: Platform | None = None, oci: bool = True,
             cmd: list[str] | None = None) -> Image:
    img = empty_image(platform or Platform("linux", "amd64"), oci=oci)
    cfg = img.config()
    cfg["config"] = {"Cmd": cmd or ["/bin/sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}
    img = with_config(img, cfg)
    return append_layers(img, layers, history=[{"created_by": f"test layer {i}"} for i in range(len(layers))],
                         created="2024-01-01T00:00:00Z")
