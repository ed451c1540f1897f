"""Clone a git build context with the ``git`` CLI, as Kaniko's ``git://`` contexts behave.

Spec: ``git://host/org/repo.git[#ref[#commit]]``; the transport is https, or http with ``GIT_PULL_METHOD=http``.
``ref`` is a branch or tag name (``main``, ``refs/heads/main``, ``refs/tags/v1``), another ref
(``refs/pull/7/head``) or a commit id; ``commit`` is then checked out. ``--git branch=X`` overrides the ref
(a branch or a tag, as in Kaniko), ``single-branch=false`` fetches every branch tip, ``recurse-submodules=true``
clones submodules, ``insecure-skip-tls=true`` skips certificate checks. Clones are shallow (``--depth 1``);
a commit that is not at a tip is fetched by id and, if the server refuses that, the history is deepened.

Credentials (``GIT_TOKEN`` as the user name with an empty password, as Kaniko sends it; or ``GIT_USERNAME`` and
``GIT_PASSWORD``; or ``user:password@`` in the spec) never reach a command line or a URL: git asks a credential
helper that reads them from its environment, and only for the repository's own host. ``file`` and ``ext``
transports are disabled so a hostile ``.gitmodules`` cannot pull local repositories into the context.

Symlinks in the tree are checked out as symlinks (Docker copies them as symlinks); git itself never writes
through them. Whatever they point to, the context layer resolves paths inside the context root, never outside.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass
from urllib.parse import unquote

from snapfs.errors import UsageError
from snapfs.redact import scrub
from .extract import ContextError
from .fetch import env_secrets

log = logging.getLogger(__name__)

_SHA = re.compile(r"^[0-9a-fA-F]{40}([0-9a-fA-F]{24})?$")
_SHALLOW_UNSUPPORTED = ("does not support shallow", "dumb http transport")
# A credential helper that answers only for one host, from variables git passes down to it.
_HELPER = ('!f() { test "$1" = get || exit 0; h=; while IFS= read -r l && [ -n "$l" ]; do '
           'case "$l" in host=*) h="${l#host=}";; esac; done; '
           '[ "$h" = "$SNAPFS_GIT_HOST" ] || exit 0; '
           'printf "username=%s\\npassword=%s\\n" "$SNAPFS_GIT_USERNAME" "$SNAPFS_GIT_PASSWORD"; }; f')


@dataclass(frozen=True)
class GitOptions:
    """Kaniko's ``--git`` flag: ``branch=..,single-branch=..,recurse-submodules=..,insecure-skip-tls=..``."""

    branch: str = ""
    single_branch: bool | None = None  # None: git's default for shallow clones (the one branch)
    recurse_submodules: bool = False
    insecure_skip_tls: bool = False


def parse_git_options(text: str) -> GitOptions:
    """Parse ``--git`` (comma-separated ``key=value``; booleans as Go's ParseBool)."""
    values: dict = {}
    for item in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise UsageError(f"--git {item!r}: expected key=value")
        if key == "branch":
            values["branch"] = value.strip()
        elif key in ("single-branch", "recurse-submodules", "insecure-skip-tls"):
            values[key.replace("-", "_")] = _parse_bool(key, value)
        else:
            raise UsageError(f"--git: unknown option {key!r} "
                             "(known: branch, single-branch, recurse-submodules, insecure-skip-tls)")
    return GitOptions(**values)


def _parse_bool(key: str, value: str) -> bool:
    v = value.strip()
    if v in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if v in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise UsageError(f"--git {key}={value!r}: expected true or false")


@dataclass(frozen=True)
class GitSpec:
    url: str  # without credentials
    host: str
    ref: str
    commit: str
    username: str | None = None
    password: str | None = None


def parse_git_spec(rest: str, *, method: str | None = None) -> GitSpec:
    """``host/org/repo.git[#ref[#commit]]`` (the part after ``git://``)."""
    repo, _, fragment = rest.partition("#")
    ref, _, commit = fragment.partition("#")
    if "#" in commit:
        raise UsageError("git context: expected git://host/repo[#ref[#commit]]")
    username = password = None
    authority, slash, path = repo.partition("/")
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        user, _, pw = userinfo.partition(":")
        username, password = unquote(user), unquote(pw)
    if not authority or not path:
        raise UsageError("git context: expected git://host/org/repo.git[#ref[#commit]]")
    method = method if method is not None else os.environ.get("GIT_PULL_METHOD", "")
    if method not in ("http", "https"):
        method = "https"
    return GitSpec(url=f"{method}://{authority}{slash}{path}", host=authority, ref=ref, commit=commit,
                   username=username, password=password)


def clone(spec: GitSpec, dest: str, *, options: GitOptions, what: str) -> None:
    """Check the repository out into ``dest`` (created by git; must not exist or be empty)."""
    runner = _Git(spec, options, what)
    start = time.monotonic()
    ref = options.branch or spec.ref  # --git branch= wins over the URL's ref, as in Kaniko
    branch = _branch_name(ref)
    if branch is not None:
        args = ["clone", "--quiet", "--depth", "1"]
        if branch:
            args += ["--branch", branch]
        if options.single_branch is False:
            args.append("--no-single-branch")
        if options.recurse_submodules:
            args += ["--recurse-submodules", "--shallow-submodules"]
        runner.run_shallow(args + ["--", spec.url, dest], step="clone")
    else:
        runner.run(["init", "--quiet", dest], step="init")
        runner.run(["-C", dest, "remote", "add", "origin", spec.url], step="remote add")
        runner.run_shallow(["-C", dest, "fetch", "--quiet", "--depth", "1", "origin", ref], step=f"fetch {ref}")
        runner.run(["-C", dest, "checkout", "--quiet", "--detach", "FETCH_HEAD"], step="checkout")
    if spec.commit:
        _checkout_commit(runner, dest, spec.commit)
    if options.recurse_submodules and (branch is None or spec.commit):
        runner.run(["-C", dest, "submodule", "update", "--quiet", "--init", "--recursive", "--depth", "1"],
                   step="submodule update")
    log.info("%s: checked out in %.1fs", what, time.monotonic() - start)
    _warn_escaping_symlinks(dest, what)


def _branch_name(ref: str) -> str | None:
    """The name for ``clone --branch`` ("" for the default branch), or None for a ref or commit to fetch."""
    if not ref:
        return ""
    if ref.startswith("refs/heads/"):
        return ref[len("refs/heads/"):]
    if ref.startswith("refs/tags/"):
        return ref[len("refs/tags/"):]
    if ref.startswith("refs/") or _SHA.match(ref):
        return None
    return ref


def _checkout_commit(runner: _Git, dest: str, commit: str) -> None:
    checkout = ["-C", dest, "checkout", "--quiet", "--detach", commit]
    if runner.try_run(checkout):
        return
    # Not in the shallow history: ask for the commit itself (servers allowing it), else deepen everything.
    if _SHA.match(commit) and runner.try_run(["-C", dest, "fetch", "--quiet", "--depth", "1", "origin", commit]):
        if runner.try_run(["-C", dest, "checkout", "--quiet", "--detach", "FETCH_HEAD"]):
            return
    log.info("%s: commit %s is not at a branch tip; fetching the full history", runner.what, commit)
    if os.path.exists(os.path.join(dest, ".git", "shallow")):
        runner.run(["-C", dest, "fetch", "--quiet", "--unshallow", "origin"], step="fetch --unshallow")
    else:
        runner.run(["-C", dest, "fetch", "--quiet", "origin"], step="fetch")
    runner.run(checkout, step=f"checkout {commit}")


class _Git:
    """Runs git with credentials in the environment only, no prompts, and one-line errors."""

    def __init__(self, spec: GitSpec, options: GitOptions, what: str) -> None:
        self.what = what
        env = dict(os.environ)
        for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"):
            env.pop(name, None)
        env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", SSH_ASKPASS="", LC_ALL="C", GCM_INTERACTIVE="never")
        config = [("protocol.file.allow", "never"), ("protocol.ext.allow", "never"),
                  ("credential.helper", "")]  # the empty value drops helpers configured elsewhere
        username, password = _credentials(spec)
        self.secrets = env_secrets() + [s for s in (password, username if password == "" else None)
                                        if s and len(s) >= 4]
        if username is not None or password is not None:
            config.append(("credential.helper", _HELPER))
            env.update(SNAPFS_GIT_HOST=spec.host, SNAPFS_GIT_USERNAME=username or "",
                       SNAPFS_GIT_PASSWORD=password or "")
        if options.insecure_skip_tls:
            env["GIT_SSL_NO_VERIFY"] = "1"
        elif os.environ.get("SSL_CERT_FILE") and not os.environ.get("GIT_SSL_CAINFO"):
            env["GIT_SSL_CAINFO"] = os.environ["SSL_CERT_FILE"]
        base = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
        for i, (key, value) in enumerate(config, start=base):
            env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
        env["GIT_CONFIG_COUNT"] = str(base + len(config))
        self.env = env

    def _exec(self, args: list[str]) -> subprocess.CompletedProcess:
        log.debug("%s: git %s", self.what, " ".join(args))
        try:
            return subprocess.run(["git", *args], env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, errors="replace")
        except FileNotFoundError:
            raise ContextError(f"{self.what}: git is not installed (needed for git:// contexts)") from None

    def try_run(self, args: list[str]) -> bool:
        return self._exec(args).returncode == 0

    def run(self, args: list[str], *, step: str) -> None:
        result = self._exec(args)
        if result.returncode != 0:
            raise ContextError(f"{self.what}: git {step} failed: {self._reason(result.stderr)}")

    def run_shallow(self, args: list[str], *, step: str) -> None:
        """Run a ``--depth 1`` command; servers that cannot do shallow (dumb http) get the full history."""
        result = self._exec(args)
        if result.returncode == 0:
            return
        if any(s in result.stderr for s in _SHALLOW_UNSUPPORTED):
            log.info("%s: the server cannot send shallow clones; fetching the full history", self.what)
            i = args.index("--depth")
            args = args[:i] + args[i + 2:]
            args = [a for a in args if a != "--shallow-submodules"]
            _clear_partial(args)
            self.run(args, step=step)
            return
        raise ContextError(f"{self.what}: git {step} failed: {self._reason(result.stderr)}")

    def _reason(self, stderr: str) -> str:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
        line = (fatal or lines or ["no output"])[-1]
        line = re.sub(r"^(fatal|error):\s*", "", line)
        if "could not read Username" in line or "Authentication failed" in line:
            line = "authentication failed (set GIT_TOKEN, or GIT_USERNAME and GIT_PASSWORD)"
        return scrub(line, self.secrets)


def _credentials(spec: GitSpec) -> tuple[str | None, str | None]:
    """Kaniko's order: ``GIT_TOKEN`` (as the user name, empty password), then GIT_USERNAME/GIT_PASSWORD; the
    spec's userinfo when the environment has none."""
    token = os.environ.get("GIT_TOKEN", "")
    if token:
        return token, ""
    user, pw = os.environ.get("GIT_USERNAME", ""), os.environ.get("GIT_PASSWORD", "")
    if user or pw:
        return user, pw
    return spec.username, spec.password


def _clear_partial(args: list[str]) -> None:
    """A failed ``clone`` may leave its target behind; git refuses a non-empty target on retry."""
    if args and args[0] == "clone":
        target = args[-1]
        if os.path.isdir(target):
            import shutil

            shutil.rmtree(target)


def _warn_escaping_symlinks(root: str, what: str) -> None:
    """Say which symlinks point outside the tree (they are kept; the context never follows them out)."""
    outside = []
    root_abs = os.path.abspath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        if ".git" in dirnames and dirpath == root:
            dirnames.remove(".git")
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                target = os.readlink(path)
                resolved = os.path.normpath(os.path.join(dirpath, target))
                if target.startswith("/") or not (resolved + "/").startswith(root_abs + "/"):
                    outside.append(os.path.relpath(path, root))
    if outside:
        log.warning("%s: %d symlink(s) point outside the repository (e.g. %s); they stay symlinks and are "
                    "resolved inside the context", what, len(outside), outside[0])
