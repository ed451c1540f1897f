"""ADD's extra sources, fetched into a staging directory that COPY's rules then copy from.

- ``http(s)://`` URLs: streamed to disk, mode 0600, mtime from ``Last-Modified`` (when given), verified against
  ``--checksum`` (sha256/sha384/sha512); not unpacked unless ``--unpack=true``;
- git URLs (``https://host/repo.git#ref``, ``git@host:repo``): shallow clone, ``.git`` dropped unless
  ``--keep-git-dir``;
- local tar archives (plain, gzip, bzip2, xz, zstd; detected by content): extracted with the same containment
  rules as image layers, owners and modes kept, then merged into the destination directory.
"""
from __future__ import annotations

import email.utils
import hashlib
import os
import posixpath
import shutil
import subprocess
from dataclasses import dataclass
from urllib.parse import urlsplit

from snapfs.engine.apply import apply_layer
from snapfs.engine.rootfs import RootFS
from snapfs.errors import BuildError
from snapfs.progress import Transfer
from snapfs.redact import redact_url
from .copier import Source

MAX_DOWNLOAD = 16 << 30


@dataclass(frozen=True)
class Staged:
    """One ADD source made local: copy ``pattern`` from ``source``; ``into_dir`` forces directory semantics."""

    source: Source
    pattern: str
    into_dir: bool = False


def is_url(src: str) -> bool:
    return src.startswith(("http://", "https://"))


def is_git(src: str) -> bool:
    if src.startswith("git@"):
        return True
    if src.startswith("git://"):
        return True
    try:
        path = urlsplit(src).path if is_url(src) else ""
    except ValueError:  # not a URL Python can split (e.g. "http://[::1"): download() says so
        return False
    return is_url(src) and (path.endswith(".git") or ".git#" in src)


def is_archive(path: str) -> bool:
    """A tar archive, compressed or not, judged by its bytes as Docker does: the (decompressed) start must be
    a valid tar header. A gzip of a plain file is not an archive and is copied as it is."""
    import tarfile

    from snapfs.engine.compress import open_decompressed

    try:
        with open(path, "rb") as f:
            head = open_decompressed(f, max_bytes=1 << 20, what=path).read(512)
    except Exception:  # noqa: BLE001 - unreadable or corrupt compressed data: not an archive
        return False
    if len(head) < 512:
        return False
    try:
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def download(url: str, staging: str, *, checksum: str | None, name: str | None = None) -> str:
    """Fetch ``url`` into ``staging``; returns the file path (named after the URL's last path segment)."""
    import httpx

    shown = redact_url(url)
    try:
        base = name or posixpath.basename(urlsplit(url).path.rstrip("/")) or "index.html"
    except ValueError as exc:
        raise BuildError(f"ADD {shown}: invalid URL: {exc}") from None
    path = os.path.join(staging, base)
    algo, _, want = (checksum or "").partition(":")
    if checksum and algo not in ("sha256", "sha384", "sha512"):
        raise BuildError(f"ADD --checksum={checksum}: unsupported digest algorithm {algo!r}")
    h = hashlib.new(algo) if checksum else None
    try:
        with httpx.stream("GET", wire_url(url), follow_redirects=True, timeout=60.0) as resp:
            if resp.status_code != 200:
                raise BuildError(f"ADD {shown}: HTTP {resp.status_code}")
            size = 0
            length = resp.headers.get("content-length", "")
            total = int(length) if length.isdigit() else None
            with open(path, "wb") as out, Transfer(f"ADD {shown}", total=total) as progress:
                for chunk in resp.iter_bytes(1 << 20):
                    size += len(chunk)
                    if size > MAX_DOWNLOAD:
                        raise BuildError(f"ADD {shown}: larger than {MAX_DOWNLOAD} bytes")
                    if h is not None:
                        h.update(chunk)
                    out.write(chunk)
                    progress.update(len(chunk))
            modified = resp.headers.get("last-modified")
    except httpx.HTTPError as exc:
        raise BuildError(f"ADD {shown}: download failed: {type(exc).__name__}") from None
    except (httpx.InvalidURL, ValueError) as exc:
        raise BuildError(f"ADD {shown}: invalid URL: {redact_url(str(exc))}") from None
    if h is not None and h.hexdigest() != want:
        raise BuildError(f"ADD {shown}: checksum mismatch: expected {checksum}, got {algo}:{h.hexdigest()}")
    os.chmod(path, 0o600)
    if modified:
        when = email.utils.parsedate_to_datetime(modified)
        ts = int(when.timestamp())
        os.utime(path, (ts, ts))
    return path


def wire_url(url: str) -> str:
    """``url`` as sent: bytes that are not UTF-8 (a Dockerfile read with ``surrogateescape``) percent-encoded, as
    Go's ``net/url`` sends them; any other URL unchanged."""
    if not any("\udc80" <= c <= "\udcff" for c in url):
        return url
    return "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in url.encode("utf-8", "surrogateescape"))


def clone(url: str, staging: str, *, keep_git_dir: bool) -> str:
    """Shallow clone of ``url[#ref]`` into a new directory under ``staging``."""
    repo, _, ref = url.partition("#")
    dest = os.path.join(staging, "git")
    cmd = ["git", "clone", "--depth", "1", "--quiet"]
    if ref and not _is_sha(ref):
        cmd += ["--branch", ref.removeprefix("refs/heads/").removeprefix("refs/tags/")]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_TERMINAL_PROMPT": "0", "HOME": staging}
    r = subprocess.run(cmd + ["--", repo, dest], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise BuildError(f"ADD {redact_url(repo)}: git clone failed: {_last_line(r.stderr)}")
    if ref and _is_sha(ref):
        for args in (["fetch", "--depth", "1", "origin", ref], ["checkout", "--quiet", ref]):
            r = subprocess.run(["git", "-C", dest, *args], capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise BuildError(f"ADD {redact_url(repo)}#{ref}: {_last_line(r.stderr)}")
    if not keep_git_dir:
        shutil.rmtree(os.path.join(dest, ".git"), ignore_errors=True)
    return dest


def extract(archive: str, staging: str) -> str:
    """Unpack a local archive into a new directory under ``staging`` (layer containment rules)."""
    dest = os.path.join(staging, "x")
    os.makedirs(dest)
    with open(archive, "rb") as f, RootFS(dest) as root:
        apply_layer(f, root)
    return dest


def _is_sha(ref: str) -> bool:
    return len(ref) >= 7 and all(c in "0123456789abcdef" for c in ref.lower())


def _last_line(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return redact_url(lines[-1]) if lines else "unknown error"


def local_source_path(context: Source, pattern: str) -> str | None:
    """The host path of a plain (non-wildcard) local source, resolved inside its root; None if absent."""
    try:
        with RootFS(context.root) as root:
            with root.at(pattern.lstrip("/"), follow=True) as (fd, name):
                real = os.path.realpath(f"/proc/self/fd/{fd}")
                path = os.path.join(real, name)
    except OSError:
        return None
    return path if os.path.isfile(path) else None


__all__ = ["Staged", "clone", "download", "extract", "is_archive", "is_git", "is_url", "local_source_path"]
