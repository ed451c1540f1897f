"""One build step at a time: route each instruction, and run RUN steps through the sandbox.

RUN: the shell or exec form becomes argv (heredocs go to the shell as written, so it expands them the way
BuildKit's runner does; a lone heredoc with a shebang runs as a script file), the environment is the step's
ENV + ARG scope (ARGs never reach the config), the user comes from the stage's own passwd/group, and
``--mount`` sources are prepared on the host: context or stage directories for ``bind``, a locked directory
under the cache dir for ``cache``, the ``--secret`` files for ``secret``. Nothing of a secret reaches a layer
or the history: the history records the command only, and the sandbox removes the mount points it made.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import posixpath
from dataclasses import dataclass
from typing import Callable

from snapfs.engine.rootfs import RootFS
from snapfs.errors import BuildError, NotSupportedError, RunFailedError, UsageError
from snapfs.frontend import instructions as ins
from snapfs.frontend.plan import Plan
from snapfs.frontend.values import parse_mount
from . import stage as executor, history
from .copier import Source
from .stage import StageOptions, StageState, StepTiming

MAX_HEREDOC_SCRIPT = 1 << 20
_run_log = logging.getLogger("snapfs.run.output")
_run_log.setLevel(logging.INFO)  # a step's output shows at any --verbosity, as it does in text mode


@dataclass(frozen=True)
class StageContext:
    """What the steps of one stage read from the build: settings, and the build's services as functions.

    Made by the pipeline when the stage starts; the steps never see the builder itself.
    """

    context: Source  # the build context (with its .dockerignore rules)
    plan: Plan
    scratch: str  # this build's scratch directory
    cache_dir: str
    in_place: str | None  # building over "/": the snapfs directory; else None
    isolation: str
    secrets: tuple[tuple[str, str], ...]
    stage_opts: StageOptions
    built_stages: frozenset[int]  # stages COPY --from / RUN --mount from= may read
    stage_source: Callable[[int], str]  # a built stage's tree
    image_root: Callable[[str], str]  # COPY --from=<image>: the image's flattened root, unpacked once
    filtered_context: Callable[[], str]  # the context less what .dockerignore excludes (for RUN --mount)
    log_run_output: bool = False  # RUN output as log records, one per line (--log-format json)


class StepRunner:
    """Executes the steps of one stage."""

    def __init__(self, ctx: StageContext, state: StageState) -> None:
        self.ctx, self.state = ctx, state

    @property
    def opts(self) -> StageOptions:
        return self.ctx.stage_opts

    def step(self, i, scope, scope_after, *, index: int) -> StepTiming:
        if isinstance(i, ins.Run):
            return self.run(i, scope, index=index)
        if isinstance(i, (ins.Copy, ins.Add)):
            return self.copy(i, index=index)
        describe = lambda config: history.metadata(i, config=config, arg_values=dict(scope_after.lookup()))  # noqa
        if isinstance(i, ins.Workdir):
            owner = self._owner(self.state.config.user()) if self.state.config.user() else (0, 0)
            return executor.workdir_step(self.state, self.opts, i, index=index, describe=describe, owner=owner)
        if isinstance(i, ins.From):
            raise BuildError("FROM inside a stage")  # the planner splits stages; never reached
        return executor.metadata_step(self.state, self.opts, i, index=index, describe=describe)

    # -- COPY / ADD ----------------------------------------------------------------------------------------

    def copy(self, i, *, index: int) -> StepTiming:
        if isinstance(i, ins.Copy):
            for src in i.sources:
                if "://" in src:
                    raise BuildError(f"source can't be a URL for COPY: {src} (use ADD)")
        owner = self._chown(i.chown) if i.chown else None
        created_by = history.copy(i)
        if isinstance(i, ins.Add):
            staged = self._stage_add(i, index)
            return executor.copy_step(self.state, self.opts, i, index=index, created_by=created_by,
                                      source=self.ctx.context, owner=owner, staged=staged)
        source = self._source(i.from_)
        return executor.copy_step(self.state, self.opts, i, index=index, created_by=created_by, source=source,
                                  owner=owner)

    def _stage_add(self, i: ins.Add, index: int) -> list:
        """Every ADD source made local: URLs downloaded, repositories cloned, archives extracted."""
        from . import addsources as add
        from .copier import escape_glob, expand, no_sources

        staging = os.path.join(self.ctx.scratch, f"add-{index}")
        os.makedirs(staging)
        out = []
        for n, src in enumerate(i.sources):
            area = os.path.join(staging, str(n))
            os.makedirs(area)
            if add.is_git(src):
                repo = add.clone(src, area, keep_git_dir=i.keep_git_dir)
                out.append(add.Staged(Source(repo, False, label=src), ".", into_dir=True))
            elif add.is_url(src):
                if i.keep_git_dir:
                    raise UsageError("ADD --keep-git-dir applies only to git sources")
                path = add.download(src, area, checksum=i.checksum)
                if i.unpack and add.is_archive(path):
                    out.append(add.Staged(Source(add.extract(path, area), False, label=src), ".", into_dir=True))
                else:
                    out.append(add.Staged(Source(area, False, label=src), os.path.basename(path)))
            else:
                if i.checksum:
                    raise UsageError("ADD --checksum applies only to URL sources")
                with RootFS(self.ctx.context.root) as root:
                    matches = expand(root, self.ctx.context, [src], what="ADD")
                for m in matches:
                    path = add.local_source_path(self.ctx.context, m.rel)
                    if path is not None and i.unpack is not False and add.is_archive(path):
                        sub = os.path.join(area, f"a{len(out)}")
                        os.makedirs(sub)
                        out.append(add.Staged(Source(add.extract(path, sub), False, label=m.rel), ".",
                                              into_dir=True))
                    else:
                        out.append(add.Staged(self.ctx.context, escape_glob(m.rel)))
        if i.sources and not out:  # every source a wildcard that matched nothing (heredoc files are not sources)
            raise no_sources(list(i.sources), self.ctx.context, "ADD")
        return out

    def _source(self, from_: str | None) -> Source:
        if not from_:
            return self.ctx.context
        stage = self.ctx.plan.find_stage(from_)
        if stage is not None:
            if stage.index not in self.ctx.built_stages:
                raise BuildError(f"--from={from_}: stage has not been built")
            return Source(self.ctx.stage_source(stage.index), False, label=f"stage {from_}")
        return Source(self.ctx.image_root(from_), False, label=f"image {from_}")

    def _owner(self, spec: str) -> tuple[int, int]:
        """Owner of the directories WORKDIR creates under ``USER spec`` (BuildKit's file-op rules)."""
        from snapfs.run.users import resolve_owner

        return resolve_owner(self.state.root, spec)

    def _chown(self, spec: str) -> tuple[int, int]:
        from snapfs.run.users import resolve_chown

        return resolve_chown(self.state.root, spec)

    # -- RUN ----------------------------------------------------------------------------------------------

    def run(self, i: ins.Run, scope, *, index: int) -> StepTiming:
        from snapfs.run import sandbox

        network = i.network or "default"
        if network not in ("default", "none", "host"):
            raise UsageError(f"RUN --network={network}: choose default, none or host")
        from snapfs.run import direct as direct_run

        run = choose_runner(in_place=bool(self.ctx.in_place), isolation=self.ctx.isolation)
        direct = run is direct_run.run_direct
        refused = run_refusal(i, direct=direct)  # ONBUILD triggers were not in the plan's early check
        if refused:
            raise NotSupportedError(refused)
        cfg = self.state.config
        executor.make_volume_dirs(self.state)  # in this step's layer, as the classic builder and buildah do
        env = dict(scope.run_env())
        argv, script = self._argv(i)
        with contextlib.ExitStack() as stack:
            mounts = tuple(m for m in (self._mount(spec, scope, env, stack, direct=direct)
                                       for spec in i.mount_specs) if m)
            if script is not None:
                path = os.path.join(self.ctx.scratch, f"heredoc-{index}")
                with open(path, "w") as f:
                    f.write(script)
                os.chmod(path, 0o755)
                if direct and self.ctx.in_place:
                    argv = [path]  # the scratch dir is inside the root the step sees
                elif direct:
                    raise NotSupportedError("a RUN heredoc with a #! line without isolation outside the container")
                else:
                    mounts += (sandbox.Mount(kind="bind", target="/dev/.snapfs-heredoc", source=path),)
            spec = sandbox.RunSpec(root=self.state.root, argv=tuple(argv), env=tuple(env.items()),
                                   workdir=cfg.workdir(), user=cfg.user(), network=network, mounts=mounts)
            if self.ctx.log_run_output:
                out, err = StepOutput(index, "stdout"), StepOutput(index, "stderr")
                try:
                    result = run(spec, stdout=out, stderr=err)
                finally:
                    out.close()
                    err.close()
            else:  # the step writes straight to our stdout and stderr: no copy, no thread
                result = run(spec)
        if result.exit_code != 0:
            raise RunFailedError(f"RUN {_short(argv)} returned a non-zero code: {result.exit_code}",
                                 status=result.exit_code)
        lookup = scope.lookup()
        args = [(k, lookup.get(k, v)) for k, v in scope.args.items()]
        return executor.commit(self.state, self.opts, index=index, created_by=history.run(argv, args),
                               run_time=result.seconds, extra_ignore=tuple(p.strip("/") for p in result.created),
                               unchanged=result.restored)

    def _argv(self, i: ins.Run) -> tuple[list[str], str | None]:
        shell = list(self.state.config.shell())
        if not i.heredocs:
            return (shell + [i.command[0]] if i.shell_form else list(i.command)), None
        cmd = i.command[0] if i.command else ""
        lone = cmd.strip().lstrip("<-").strip("'\"") == i.heredocs[0].name and len(i.heredocs) == 1
        if lone:
            body = i.heredocs[0].data
            if len(body) > MAX_HEREDOC_SCRIPT:
                raise BuildError("RUN heredoc larger than 1 MiB")
            if body.startswith("#!"):
                return ["/dev/.snapfs-heredoc"], body
            return shell + [body], None
        # The shell sees the command with its heredocs, exactly as written, and expands them itself.
        text = i.node.original.split("\n", 1)
        script = text[1] if len(text) > 1 else ""
        return shell + [cmd + "\n" + script], None

    def _mount(self, spec: str, scope, env: dict, stack: contextlib.ExitStack, *, direct: bool = False):
        """The sandbox mount for one ``--mount`` value, its host side prepared (None: nothing to mount).
        ``direct``: the step runs without namespaces, so a cache is moved in and out rather than mounted, and
        is locked exclusively whatever its ``sharing``."""
        from snapfs.run import sandbox

        lookup = scope.lookup()
        m = parse_mount(spec, expand=lambda s: _expand(s, lookup))
        target = m.target if m.target.startswith("/") else posixpath.join(self.state.config.workdir(), m.target)
        if m.type == "ssh":
            raise NotSupportedError("RUN --mount=type=ssh is not supported yet")
        if m.type == "tmpfs":
            return sandbox.Mount(kind="tmpfs", target=target, readonly=False, size=m.size)
        if m.type == "secret":
            secrets = dict(self.ctx.secrets)
            sid = m.source or m.id or posixpath.basename(m.target)  # BuildKit: source= names the secret too
            src = secrets.get(sid)
            if src is None:
                if m.required:
                    raise BuildError(f"secret {sid} is required but was not given (--secret id={sid},src=...)")
                return None  # an optional secret that was not given is simply absent, as in BuildKit
            if m.env:
                with open(src, "r", errors="surrogateescape") as f:
                    env[m.env] = f.read()
                if not m.target:
                    return None  # env= without target=: only the variable, as in BuildKit
            return sandbox.Mount(kind="secret", target=target if m.target else f"/run/secrets/{sid}", source=src,
                                 mode=m.mode if m.mode is not None else 0o400, uid=m.uid or 0, gid=m.gid or 0)
        if m.type == "cache":
            cid = m.id or target
            key = hashlib.sha256(cid.encode("utf-8", "surrogateescape")).hexdigest()[:32]  # any bytes the id holds
            path = os.path.join(self.ctx.cache_dir, "run-cache", key)
            fresh = not os.path.isdir(path)
            os.makedirs(path, exist_ok=True)
            if fresh:
                os.chmod(path, m.mode if m.mode is not None else 0o755)
                os.chown(path, m.uid or 0, m.gid or 0)
            lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            stack.callback(os.close, lock)
            # Concurrent builds sharing a cache serialise on it unless it is declared private/shared.
            # Moved into a root (direct), its contents are in one place at a time: always exclusive.
            fcntl.flock(lock, fcntl.LOCK_EX if direct or m.sharing in ("", "locked") else fcntl.LOCK_SH)
            return sandbox.Mount(kind="cache", target=target, source=path, readonly=False)
        # bind: from the context (default), a stage or an image; never outside that root
        root = self._source(m.from_).root if m.from_ else self.ctx.filtered_context()
        with RootFS(root) as r:
            if r.lstat(m.source.lstrip("/") or ".") is None and m.source.strip("/"):
                raise BuildError(f"RUN --mount source {m.source!r} not found")
        host = os.path.realpath(os.path.join(root, m.source.lstrip("/")))
        real_root = os.path.realpath(root)
        if os.path.commonpath([real_root, host]) != real_root:
            raise BuildError(f"RUN --mount source {m.source!r} resolves outside its root")
        return sandbox.Mount(kind="bind", target=target, source=host, readonly=m.readonly)


def choose_runner(*, in_place: bool, isolation: str):
    """The function that runs RUN steps: directly when building in place (over "/"), as Kaniko's do;
    otherwise in the sandbox when it is allowed (:func:`snapfs.run.direct.runner`)."""
    from snapfs.run import direct as direct_run

    if in_place:
        direct_run.announce_direct()  # logged once per process
        return direct_run.run_direct
    return direct_run.runner(isolation)


def run_refusal(i: ins.Run, *, direct: bool) -> str | None:
    """Why the RUN ``i`` cannot be run as written (``direct``: without namespaces); None when it can."""
    if i.security and i.security != "sandbox":
        return f"RUN --security={i.security} is not supported yet"
    return direct_refusal(i) if direct else None


def direct_refusal(i: ins.Run) -> str | None:
    """Why the RUN ``i`` cannot run without namespaces (a bind mount, a sized tmpfs, ``--network=none``); None
    when it can. Reads the mounts as parsed without expansion: a mount's type and ``size=`` are literal."""
    from snapfs.run import mountless

    for m in i.mounts:
        why = mountless.refusal(m.type, size=m.size) if m.type != "ssh" else None  # ssh: refused at its step
        if why:
            return why
    return mountless.NETWORK_NONE if i.network == "none" else None


def check_runs(plan: Plan, *, in_place: bool, isolation: str) -> None:
    """Before the first step: when RUN steps will run without namespaces, refuse every RUN of the stages to
    build that needs them (:func:`direct_refusal`), naming its line, so such a build fails in seconds instead
    of after the steps before it. Picks the runner only when there is a RUN (``isolation=namespaces`` where
    namespaces are not allowed is then refused here too)."""
    runs = [i for index in plan.needed for i in plan.stages[index].instructions if isinstance(i, ins.Run)]
    if not runs:
        return
    from snapfs.run import direct as direct_run

    if choose_runner(in_place=in_place, isolation=isolation) is not direct_run.run_direct:
        return
    for i in runs:
        why = direct_refusal(i)
        if why:
            raise NotSupportedError(why, file=plan.file, line=i.node.start_line, column=i.node.column)


class StepOutput:
    """A RUN step's stdout or stderr as log records, one per line, carrying the step number and the stream
    (``--log-format json`` turns each into a JSON line). Bytes arrive in chunks from a pump thread; a line
    longer than ``MAX_LINE`` is cut, so a step that never writes a newline cannot grow the buffer."""

    MAX_LINE = 1 << 16

    def __init__(self, step: int, stream: str) -> None:
        self.step, self.stream = step, stream
        self._buf = b""

    def write(self, data: bytes) -> int:
        self._buf += data
        while True:
            line, nl, rest = self._buf.partition(b"\n")
            if nl:
                self._emit(line)
                self._buf = rest
            elif len(self._buf) >= self.MAX_LINE:
                self._emit(self._buf[:self.MAX_LINE])
                self._buf = self._buf[self.MAX_LINE:]
            else:
                return len(data)

    def close(self) -> None:
        if self._buf:
            self._emit(self._buf)
            self._buf = b""

    def _emit(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        _run_log.info("%s", text, extra={"step": self.step, "stream": self.stream})


def _expand(text: str, env: dict) -> str:
    from snapfs.frontend.shellwords import Lexer

    return Lexer().word(text, env)


def _short(argv, limit: int = 120) -> str:
    text = " ".join(argv)
    return text if not limit or len(text) <= limit else text[:limit - 3] + "..."
