#!/usr/bin/env python3
"""Lay out a self-contained snapfs under one directory (default /snapfs), for the executor image.

Runs inside the Debian stage of deploy/Dockerfile, with Debian's python3, git, patchelf and ca-certificates
installed. In-container mode builds over the container's own ``/`` and deletes everything outside the snapfs
directory between stages (the base image is unpacked over it), so everything snapfs needs at run time lives in
that directory, like Kaniko's static ``/kaniko/executor``:

- ``bin/python3.11`` (``python3``): Debian's interpreter, its ELF interpreter set to ``lib/ld-linux-*.so.2``
  and its RPATH to ``lib/`` (patchelf), so neither the base image's loader nor its libraries are ever used;
- ``lib/``: the C libraries every bundled ELF file needs (glibc included), found with ``ldd``;
- ``lib/python3.11/``: the standard library (``lib-dynload`` included) *and* snapfs with its dependencies,
  unpacked from wheels straight into it, so they import even under ``python -I -S`` (the sandbox's launcher);
  byte-compiled with unchecked hashes (no timestamps: the same bytes every build);
- ``libexec/git-core/``: git, its HTTP(S) helper and ``git-upload-pack`` (local clones), behind ``bin/git``, a
  wrapper that sets ``GIT_EXEC_PATH`` (snapfs runs git for git contexts and ``ADD <git URL>``);
- ``ssl/certs/ca-certificates.crt``: Debian's CA bundle (``SSL_CERT_FILE`` points here);
- ``bin/snapfs``: the command; ``.docker/`` for ``DOCKER_CONFIG``; ``tmp/`` for ``TMPDIR``; ``.snapfs-executor``:
  the marker that tells snapfs it runs in its executor image.

Only the Python standard library is used here: this file runs before any wheel is installed.
"""
from __future__ import annotations

import argparse
import compileall
import glob
import os
import py_compile
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile

# glibc's own objects: copied, never patched (they are loaded by soname and find each other).
GLIBC = ("ld-linux", "libc.so", "libm.so", "libmvec.so", "libpthread.so", "libdl.so", "librt.so", "libresolv.so",
         "libutil.so", "libanl.so", "libnss_", "libBrokenLocale.so", "libcrypt.so")
# Loaded by name at run time (dlopen, NSS), so ldd cannot see them.
EXTRA_LIBS = ("libnss_dns.so.2", "libnss_files.so.2", "libresolv.so.2", "libpthread.so.0", "libdl.so.2",
              "librt.so.1", "libutil.so.1")
STDLIB_SKIP = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "config-3",
               "__pycache__", "site-packages", "dist-packages")
# (name, what it is): git's builtins dispatch on argv[0], so links to the one binary are enough for them.
GIT_HELPERS = (("git-remote-http", None), ("git-remote-https", "git-remote-http"), ("git-upload-pack", "git"))


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def needed_libs(path: str) -> list[str]:
    """The resolved paths of the shared libraries ``path`` needs (ldd; the loader line included)."""
    out = []
    for line in subprocess.run(["ldd", path], capture_output=True, text=True).stdout.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            out.append(parts[2])
        elif parts and parts[0].startswith("/"):
            out.append(parts[0])
    return out


def copy_lib(src: str, libdir: str) -> str:
    dest = os.path.join(libdir, os.path.basename(src))
    if not os.path.exists(dest):
        shutil.copy2(os.path.realpath(src), dest)
        os.chmod(dest, 0o755)
    return dest


def system_lib(name: str) -> str | None:
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
              "/usr/lib/aarch64-linux-gnu", "/lib64", "/lib", "/usr/lib"):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def rpath_of(path: str) -> list[str]:
    text = subprocess.run(["patchelf", "--print-rpath", path], capture_output=True, text=True).stdout.strip()
    return [p for p in text.split(":") if p]


def patch(path: str, *, libdir: str, interpreter: str | None = None) -> None:
    """RPATH (not RUNPATH: it also covers dlopen'ed dependencies) = the file's own $ORIGIN entries + libdir."""
    mode = os.stat(path).st_mode
    os.chmod(path, mode | stat.S_IWUSR)
    keep = [p for p in rpath_of(path) if p.startswith("$ORIGIN")]
    args = ["patchelf", "--force-rpath", "--set-rpath", ":".join(keep + [libdir])]
    if interpreter:
        args += ["--set-interpreter", interpreter]
    subprocess.run(args + [path], check=True)
    os.chmod(path, mode)


def install_wheel(wheel: str, target: str) -> None:
    """A wheel is a zip: its purelib/platlib contents go to ``target`` (no scripts, no metadata needed)."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            parts = name.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                name = "/".join(parts[2:])
            if name.endswith("/"):
                continue
            dest = os.path.join(target, name)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(dest, mode if mode else 0o644)


def bundle(dest: str, wheels: str, *, with_git: bool) -> None:
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    bindir, libdir = os.path.join(dest, "bin"), os.path.join(dest, "lib")
    pylib = os.path.join(libdir, ver)
    for d in (bindir, libdir, os.path.join(dest, ".docker"), os.path.join(dest, "ssl", "certs")):
        os.makedirs(d, exist_ok=True)

    # the interpreter and its standard library
    python = os.path.join(bindir, ver)
    shutil.copy2(os.path.realpath(sys.executable), python)
    os.symlink(ver, os.path.join(bindir, "python3"))
    stdlib = sysconfig.get_paths()["stdlib"]
    shutil.copytree(stdlib, pylib, symlinks=True, ignore=lambda d, names: [
        n for n in names if n in STDLIB_SKIP or n.startswith("config-")])
    dynload = os.path.join(stdlib, "lib-dynload")
    if not os.path.isdir(os.path.join(pylib, "lib-dynload")):
        shutil.copytree(dynload, os.path.join(pylib, "lib-dynload"))
    # snapfs and its dependencies, importable from the stdlib directory itself
    found = sorted(glob.glob(os.path.join(wheels, "*.whl")))
    if not any(os.path.basename(w).startswith("snapfs-") for w in found):
        sys.exit(f"bundle: no snapfs wheel in {wheels}")
    for w in found:
        install_wheel(w, pylib)

    # git, behind a wrapper that knows where its helpers are
    if with_git:
        gitcore = os.path.join(dest, "libexec", "git-core")
        os.makedirs(gitcore)
        shutil.copy2(os.path.realpath(shutil.which("git")), os.path.join(gitcore, "git"))
        for helper, link in GIT_HELPERS:
            if link:
                os.symlink(link, os.path.join(gitcore, helper))
            else:
                shutil.copy2(os.path.realpath(os.path.join("/usr/lib/git-core", helper)), os.path.join(gitcore, helper))
        templates = os.path.join(dest, "share", "git-core", "templates")
        os.makedirs(templates)
        write(os.path.join(bindir, "git"), GIT_WRAPPER.format(dest=dest, ver=ver), 0o755)

    # every ELF file's libraries, then loader and RPATH pointing into the bundle
    elves = [os.path.join(d, n) for d, _, names in os.walk(dest) for n in names
             if not os.path.islink(os.path.join(d, n)) and is_elf(os.path.join(d, n))]
    queue = list(elves)
    seen: set[str] = set()
    while queue:
        path = queue.pop()
        for lib in needed_libs(path):
            if lib.startswith(dest + "/") or lib in seen:
                continue
            seen.add(lib)
            queue.append(copy_lib(lib, libdir))
    for name in EXTRA_LIBS:
        src = system_lib(name)
        if src:
            copy_lib(src, libdir)
    loader = [n for n in os.listdir(libdir) if n.startswith("ld-linux")]
    if len(loader) != 1:
        sys.exit(f"bundle: expected one dynamic loader, found {loader}")
    interp = os.path.join(libdir, loader[0])
    for d, _, names in os.walk(dest):
        for n in sorted(names):
            path = os.path.join(d, n)
            if os.path.islink(path) or not is_elf(path) or (d == libdir and n.startswith(GLIBC)):
                continue
            executable = d in (bindir, os.path.join(dest, "libexec", "git-core"))
            patch(path, libdir=libdir, interpreter=interp if executable else None)

    # certificates, the command, the marker
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt", os.path.join(dest, "ssl", "certs", "ca-certificates.crt"))
    write(os.path.join(bindir, "snapfs"), SNAPFS_SCRIPT.format(python=os.path.join(bindir, "python3")), 0o755)
    write(os.path.join(dest, ".snapfs-executor"), "snapfs executor image: in-container mode builds over /\n", 0o644)
    os.makedirs(os.path.join(dest, "tmp"))
    os.chmod(os.path.join(dest, "tmp"), 0o1777)
    # Byte-code without timestamps: the same .pyc bytes in every build of the image.
    compileall.compile_dir(pylib, quiet=1, workers=1,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def write(path: str, text: str, mode: int) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


SNAPFS_SCRIPT = """#!{python}
import sys

from snapfs.cli.main import main

sys.exit(main())
"""

GIT_WRAPPER = """#!{dest}/bin/python3
# git from the executor image, whatever the environment it is called with.
import os
import sys

env = dict(os.environ)
env.setdefault("GIT_EXEC_PATH", "{dest}/libexec/git-core")
env.setdefault("GIT_TEMPLATE_DIR", "{dest}/share/git-core/templates")
env.setdefault("GIT_SSL_CAINFO", env.get("SSL_CERT_FILE") or "{dest}/ssl/certs/ca-certificates.crt")
env.setdefault("GIT_CONFIG_NOSYSTEM", "1")
os.execve("{dest}/libexec/git-core/git", ["git", *sys.argv[1:]], env)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--dest", default="/snapfs")
    p.add_argument("--wheels", required=True, help="directory with the snapfs wheel and its dependencies' wheels")
    p.add_argument("--no-git", action="store_true", help="leave git out (no git contexts, no ADD <git URL>)")
    args = p.parse_args()
    bundle(os.path.abspath(args.dest), args.wheels, with_git=not args.no_git)


if __name__ == "__main__":
    main()
