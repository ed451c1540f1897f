"""Hostile tars the way attackers make them: sparse files from GNU tar, headers patched byte by byte."""
from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

# GNU tar's sparse formats: the old GNU header and the three pax encodings.
SPARSE_FORMATS = {
    "gnu": ["--format=gnu"],
    "pax-0.0": ["--format=posix", "--sparse-version=0.0"],
    "pax-0.1": ["--format=posix", "--sparse-version=0.1"],
    "pax-1.0": ["--format=posix", "--sparse-version=1.0"],
}


def sparse_tar(workdir: Path, size: int, fmt: str, *, data: tuple[tuple[int, bytes], ...] = (),
               name: str = "big") -> tuple[Path, Path]:
    """(tar, source file): GNU tar ``--sparse`` of a ``size``-byte file holding ``data`` at the given offsets
    and holes elsewhere; records of one block, so the tar is as small as the format allows."""
    src = workdir / f"src-{fmt}"
    src.mkdir(parents=True, exist_ok=True)
    path = src / name
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, chunk in data:
            f.seek(offset)
            f.write(chunk)
    out = workdir / f"{name}-{fmt}.tar"
    subprocess.run(["tar", "-b1", "--sparse", *SPARSE_FORMATS[fmt], "-C", str(src), "-cf", str(out), name],
                   check=True)
    return out, path


def patch_header(raw: bytes, offset: int, field: slice, value: bytes) -> bytes:
    """Overwrite one field of the header block at ``offset`` and fix its checksum, as a crafted tar would."""
    block = bytearray(raw[offset:offset + 512])
    block[field] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return raw[:offset] + bytes(block) + raw[offset + 512:]


SIZE_FIELD = slice(124, 136)


def plain_tar(entries: list[tuple[str, bytes]], *, pax: dict | None = None, fmt=tarfile.GNU_FORMAT) -> bytes:
    """Regular files in order; ``pax`` records go on the first one."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for i, (name, data) in enumerate(entries):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_600_000_000
            if i == 0 and pax:
                ti.pax_headers = dict(pax)
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def deep_name(levels: int, leaf: str = "f") -> str:
    """A name ``levels`` components deep: ``d/d/.../leaf``."""
    return "/".join(["d"] * (levels - 1) + [leaf])


def disk_usage(top: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of everything under ``top``, like ``du --apparent-size`` and ``du``."""
    apparent = allocated = 0
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def every_byte(root) -> bytes:
    """Every file below ``root`` (a layout, a cache), compressed blobs also decompressed: what a secret must
    not be found in."""
    from snapfs.engine.compress import open_decompressed

    data = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                raw = f.read()
                f.seek(0)
                data.append(raw)
                if raw[:2] == b"\x1f\x8b" or raw[:4] == b"\x28\xb5\x2f\xfd":
                    data.append(open_decompressed(f).read())
    return b"\n".join(data)
