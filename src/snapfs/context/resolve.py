"""The build context: where it comes from, where it lands, and where the Dockerfile is.

``fetch_context(spec)`` accepts Kaniko's ``--context`` forms and returns a local directory:

==========================================  ==================================================================
``dir://path`` or a plain path              used in place (never copied, never removed)
``tar://file``, ``tar://stdin``             unpacked (gzip, zstd, bzip2, xz or plain, detected by content)
``https://...`` (also ``http://``)          downloaded, then unpacked
``https://<acct>.blob.core.windows.net/..`` Azure Blob (and the sovereign clouds): see :mod:`.fetch`
``s3://bucket/key``, ``gs://bucket/path``   downloaded, then unpacked; key defaults to ``context.tar.gz``
``git://host/org/repo.git[#ref[#commit]]``  shallow clone: see :mod:`.git`
==========================================  ==================================================================

Downloads stream to a file in ``workdir`` and are unpacked into a temporary directory there by
:mod:`.extract`, which refuses any entry that would land outside it. ``--context-sub-path`` and a
``--dockerfile`` in the context (relative, or absolute under the context directory) are resolved *inside* the
context, a local ``dir://`` one included: ``..`` is refused and symlinks are followed as if the context were the
filesystem root (an absolute target restarts at the context root), so a hostile directory, archive or repository
cannot make the build read (and print, in a parse error) a file outside the context. Symlinks in the context stay
symlinks; the builder must resolve COPY sources the same way (:class:`snapfs.engine.rootfs.RootFS` on ``Context.root``).

Every failure is one line naming the source, credentials masked by :func:`snapfs.redact.redact_url`
(``ContextError``, exit code 3).
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from typing import BinaryIO

from snapfs.engine.rootfs import RootFS
from snapfs.errors import UsageError
from snapfs.redact import redact_url
from .extract import ContextError, extract_context
from .fetch import (download_azure, download_gcs, download_https, download_s3, env_secrets, is_azure_blob_url,
                    scrubbed_logging, split_bucket)
from .git import clone, parse_git_options, parse_git_spec

log = logging.getLogger(__name__)

__all__ = ["Context", "ContextError", "fetch_context", "locate_dockerfile", "mask_spec"]

PREFIXES = ("dir://", "tar://", "https://", "http://", "s3://", "gs://", "git://")


@dataclass(frozen=True)
class Context:
    """A build context on local disk.

    ``root`` is the directory to build from (after ``--context-sub-path``); ``source`` the user's spec with
    credentials masked, for messages; ``temporary`` is True when snapfs created the directory, which
    :meth:`cleanup` then removes (a no-op for ``dir://`` contexts); ``top`` the whole context before
    ``--context-sub-path`` (``root`` when empty).
    """

    root: str
    source: str
    temporary: bool
    top: str = ""
    _owned: str | None = field(default=None, repr=False, compare=False)

    def cleanup(self) -> None:
        if self.temporary and self._owned:
            shutil.rmtree(self._owned, ignore_errors=True)


def mask_spec(spec: str) -> str:
    """The spec fit for messages and logs."""
    return redact_url(spec)


def fetch_context(spec: str, *, workdir: str, sub_path: str = "", git_options: str = "",
                  stdin: BinaryIO | None = None) -> Context:
    """Make the context named by ``spec`` available as a local directory (see the module docstring).

    ``workdir`` holds downloads and unpacked contexts; ``git_options`` is Kaniko's ``--git`` value; ``stdin``
    (default ``sys.stdin.buffer``) is read for ``tar://stdin``.
    """
    if not spec:
        raise UsageError("--context is empty")
    with scrubbed_logging(env_secrets() + _spec_secrets(spec)):
        return _fetch(spec, workdir=workdir, sub_path=sub_path, git_options=git_options, stdin=stdin)


def _spec_secrets(spec: str) -> list[str]:
    """Secrets written into the spec itself: URL userinfo and the query string (SAS tokens, signatures)."""
    rest = spec.partition("://")[2]
    authority = rest.split("/", 1)[0]
    found = []
    if "@" in authority:
        found += [p for p in authority.rpartition("@")[0].split(":") if len(p) >= 4]
    if "?" in rest and not spec.startswith("git://"):
        found.append(rest.partition("?")[2].partition("#")[0])
    return found


def _fetch(spec: str, *, workdir: str, sub_path: str, git_options: str, stdin: BinaryIO | None) -> Context:
    source = mask_spec(spec)
    scheme, sep, rest = spec.partition("://")
    if not sep:
        return _in_place(spec, source, sub_path)
    prefix = scheme.lower() + "://"
    if prefix not in PREFIXES:
        raise UsageError(f"--context {source}: unknown prefix {prefix!r} "
                         "(use dir://, tar://, https://, s3://, gs://, git:// or a path)")
    if prefix == "dir://":
        return _in_place(rest, source, sub_path)
    options = parse_git_options(git_options) if prefix == "git://" else None
    workdir = os.path.abspath(workdir)  # Context.root stays valid whatever the builder's cwd later is
    os.makedirs(workdir, exist_ok=True)
    owned = tempfile.mkdtemp(prefix="context-", dir=workdir)
    try:
        tree = os.path.join(owned, "tree")
        if prefix == "git://":
            clone(parse_git_spec(rest), tree, options=options, what=source)
        else:
            os.mkdir(tree, 0o700)
            _fetch_archive(prefix, rest, spec, tree, owned=owned, source=source, stdin=stdin)
        root = resolve_sub_path(tree, sub_path, source=source)
        return Context(root=root, source=source, temporary=True, top=tree, _owned=owned)
    except BaseException:
        shutil.rmtree(owned, ignore_errors=True)
        raise


def _in_place(path: str, source: str, sub_path: str) -> Context:
    if not path:
        raise UsageError("--context: empty directory path")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ContextError(f"context {source}: no such directory") from None
    except OSError as exc:
        raise ContextError(f"context {source}: cannot open the context directory: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ContextError(f"{source}: not a directory (a context archive needs the tar:// prefix)")
    top = os.path.abspath(path)
    return Context(root=resolve_sub_path(top, sub_path, source=source), source=source, temporary=False, top=top)


def _fetch_archive(prefix: str, rest: str, spec: str, tree: str, *, owned: str, source: str,
                   stdin: BinaryIO | None) -> None:
    if prefix == "tar://":
        if rest == "stdin":
            stream = stdin if stdin is not None else sys.stdin.buffer
            stats = extract_context(stream, tree, what=source)
        else:
            try:
                f = open(rest, "rb")
            except OSError as exc:
                raise ContextError(f"{source}: cannot read the archive: {exc.strerror or exc}") from None
            with f:
                stats = extract_context(f, tree, what=source)
        log.info("%s: unpacked %d entries", source, stats.entries)
        return
    archive = os.path.join(owned, "context.archive")
    if prefix in ("https://", "http://"):
        if prefix == "http://":
            log.warning("%s: downloading over plain http (no integrity or confidentiality)", source)
        if is_azure_blob_url(spec):
            download_azure(spec, archive, what=source)
        else:
            download_https(spec, archive, what=source)
    elif prefix == "s3://":
        bucket, key = split_bucket(rest)
        _need_bucket(bucket, source)
        download_s3(bucket, key, archive, what=f"s3://{bucket}/{key}")
    elif prefix == "gs://":
        bucket, key = split_bucket(rest)
        _need_bucket(bucket, source)
        download_gcs(bucket, key, archive, what=f"gs://{bucket}/{key}")
    try:
        with open(archive, "rb") as f:
            stats = extract_context(f, tree, what=source)
    finally:
        os.unlink(archive)
    log.info("%s: unpacked %d entries", source, stats.entries)


def _need_bucket(bucket: str, source: str) -> None:
    if not bucket:
        raise UsageError(f"--context {source}: no bucket named")


# --- paths inside the context --------------------------------------------------------------------------------

def _inside(root: str, rel: str, *, what: str) -> tuple[str, os.stat_result | None]:
    """The real path of ``rel`` resolved inside ``root`` (symlinks followed as if ``root`` were ``/``), and its
    stat (None when missing). ``..`` is refused outright: a relative path must name something in the context."""
    if "\x00" in rel:
        raise UsageError(f"{what}: path contains a NUL byte")
    if ".." in rel.split("/"):
        raise UsageError(f"{what} {rel!r} must stay inside the context ('..' is not allowed)")
    try:
        with RootFS(root) as rootfs, rootfs.at(rel, follow=True) as (dir_fd, name):
            parent = os.readlink(f"/proc/self/fd/{dir_fd}")
            path = parent if name == "." else os.path.join(parent, name)
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            return path, st
    except (FileNotFoundError, NotADirectoryError):
        return os.path.join(root, rel), None
    except OSError as exc:
        raise ContextError(f"{what} {rel!r}: {exc.strerror or exc}") from None


def resolve_sub_path(root: str, sub_path: str, *, source: str) -> str:
    """The directory ``sub_path`` inside ``root`` (``--context-sub-path``); ``root`` itself when empty."""
    rel = (sub_path or "").strip("/")
    if not rel:
        return root
    path, st = _inside(root, rel, what="--context-sub-path")
    if st is None:
        raise ContextError(f"{source}: --context-sub-path {sub_path!r} does not exist in the context")
    if not stat.S_ISDIR(st.st_mode):
        raise ContextError(f"{source}: --context-sub-path {sub_path!r} is not a directory")
    return path


def locate_dockerfile(ctx: Context, dockerfile: str, *, workdir: str) -> str:
    """A local path to the Dockerfile named by ``--dockerfile``.

    - an ``https://`` (or ``http://``) URL: downloaded into a temporary directory under ``workdir``, with the
      URL's ``user:password@`` sent as Basic auth and masked in every message;
    - a path inside the context (relative, or absolute under the context directory as in
      ``--dockerfile=$CI_PROJECT_DIR/Dockerfile``): resolved inside the context root, symlinks followed as if
      the context were ``/``, so a ``Dockerfile`` that links to a host file never reads that file;
    - an absolute path elsewhere: used as given (the user's own file, outside the context if they say so);
    - a relative path not in the context: the file relative to the working directory, if the working directory
      is outside the context (Kaniko accepts both; a warning says so).

    The returned path is a regular file reached without leaving the context (or the user's own path).
    """
    name = dockerfile or "Dockerfile"
    if name.startswith(("https://", "http://")):
        return _download_dockerfile(name, workdir)
    where = _in_context(ctx, name)
    if where is None:  # the user's own file, named by an absolute path outside the context
        return _regular_file(name, what=f"--dockerfile {name}")
    root, rel = where
    path, st = _inside(root, rel, what="--dockerfile")
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise ContextError(f"{ctx.source}: --dockerfile {name!r} is not a regular file")
        return path
    if not os.path.isabs(name) and _in_context(ctx, os.path.abspath(name)) is None and os.path.isfile(name):
        log.warning("--dockerfile %s: not in the context %s; using %s relative to the working directory",
                    name, ctx.source, os.path.abspath(name))
        return _regular_file(os.path.abspath(name), what=f"--dockerfile {name}")
    link = " (a symlink whose target is not in the context)" if _is_link(root, rel) else ""
    raise ContextError(f"{name}: Dockerfile not found in the context {ctx.source}{link} (set --dockerfile)")


def _in_context(ctx: Context, name: str) -> tuple[str, str] | None:
    """(directory, relative path) when ``name`` names a path in the context: any relative path (under the
    root), or an absolute one under the context directory (lexically); None for an absolute path elsewhere."""
    if not os.path.isabs(name):
        return ctx.root, name
    path = os.path.normpath(name)
    for top in dict.fromkeys((ctx.root, ctx.top or ctx.root)):  # the root first: it is the deeper one
        for base in dict.fromkeys((os.path.abspath(top), os.path.realpath(top))):
            if path == base or path.startswith(base.rstrip("/") + "/"):
                return top, os.path.relpath(path, base)
    return None


def _is_link(root: str, rel: str) -> bool:
    try:
        with RootFS(root) as rootfs:
            st = rootfs.lstat(rel)
    except OSError:
        return False
    return st is not None and stat.S_ISLNK(st.st_mode)


def _regular_file(path: str, *, what: str) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ContextError(f"{what}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ContextError(f"{what}: not a regular file")
    return os.path.realpath(path)


def _download_dockerfile(url: str, workdir: str) -> str:
    what = redact_url(url)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="dockerfile-", dir=workdir)
    path = os.path.join(folder, "Dockerfile")
    if url.startswith("http://"):
        log.warning("--dockerfile %s: downloading over plain http (no integrity or confidentiality)", what)
    try:
        with scrubbed_logging(env_secrets() + _spec_secrets(url)):
            download_https(url, path, what=what)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return path
