"""Build stages, ARG/ENV scoping and per-instruction expansion, the way BuildKit's dockerfile2llb does them.

``plan_build`` splits typed instructions into stages, resolves the meta ARGs (those before the first FROM, plus
the predefined platform ARGs) and expands every FROM with them, resolves stage references (``FROM stage``,
``COPY --from``, ``RUN --mount=from=``; names case-insensitive, or an index for ``--from``), picks the target and
lists the stages it needs in build order, and rejects cycles.

Expansion inside a stage depends on the base image's ENV, which only the builder knows, so it is a separate step:
``stage_scope`` gives the scope a stage starts with, ``expand_instruction`` expands one instruction the way Docker
does (which parts of which instruction) and returns the scope after it. ENV always wins over ARG of the same
name; ``--build-arg`` overrides ARG defaults; an ARG without a default inherits the meta ARG of that name.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from collections import ChainMap
from dataclasses import dataclass, field, replace

from snapfs.errors import DockerfileError
from snapfs.platforms import Platform
from .instructions import (Add, Arg, Copy, Env, Expose, From, InlineFile, Instruction, Label, Run, StopSignal, User,
                           Volume, Workdir, parse_instruction, parse_instructions)
from .shellwords import Lexer
from .syntax import Dockerfile, parse, parse_line
from .values import parse_checksum, parse_chmod, parse_mount, parse_port, parse_signal

PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy", "NO_PROXY",
              "no_proxy", "ALL_PROXY", "all_proxy")
PLATFORM_ARGS = ("BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT", "TARGETPLATFORM", "TARGETOS",
                 "TARGETARCH", "TARGETVARIANT")
MAX_SCOPE_CHARS = 8 << 20  # all ARG and ENV values of one stage together


@dataclass(frozen=True, slots=True)
class Stage:
    index: int
    name: str | None  # lower-cased ``AS`` name
    from_: From  # as written
    base: str  # the FROM image after meta-ARG expansion (or the base stage's name)
    platform: str | None  # ``--platform`` after expansion
    base_stage: int | None  # set when ``base`` names an earlier stage
    instructions: tuple[Instruction, ...]  # the stage's instructions after FROM, not expanded
    deps: tuple[int, ...]  # stages this one reads from (base, COPY --from, RUN --mount from=)

    @property
    def display_name(self) -> str:
        return self.name or f"stage-{self.index}"


@dataclass(frozen=True, slots=True)
class Plan:
    file: str
    escape: str
    stages: tuple[Stage, ...]
    meta_args: tuple[tuple[str, str | None], ...]  # global ARGs with their resolved values
    build_args: tuple[tuple[str, str], ...]
    target: int
    needed: tuple[int, ...]  # build order, target last
    unused_build_args: tuple[str, ...]
    target_platform: Platform
    build_platform: Platform

    def find_stage(self, ref: str) -> Stage | None:
        """A stage by name (case-insensitive) or by index."""
        ref = ref.lower()
        for stage in self.stages:
            if stage.name == ref:
                return stage
        if ref.isascii() and ref.isdigit() and int(ref) < len(self.stages):
            return self.stages[int(ref)]
        return None

    def global_args(self) -> dict[str, str]:
        out = {**_platform_args(self.target_platform, "TARGET"), **_platform_args(self.build_platform, "BUILD")}
        out.update((k, v) for k, v in self.meta_args if v is not None)
        return out


@dataclass(frozen=True, slots=True)
class Scope:
    """What ``$VAR`` means at one point of a stage. ``env`` is the image config Env (base image, then ENV);
    ``args`` are the stage's ARGs that have a value. Both are read-only mappings.

    Updates share their parent's maps (a ChainMap, flattened every ``_FLATTEN`` layers), so a stage with
    thousands of ENV lines costs linear time, not quadratic; ``size`` is kept incrementally for the same reason.
    """

    env: Mapping[str, str] = field(default_factory=dict)
    args: Mapping[str, str] = field(default_factory=dict)
    build_args: tuple[tuple[str, str], ...] = ()
    global_args: tuple[tuple[str, str], ...] = ()
    size: int = 0  # characters in all keys and values of env and args

    def __post_init__(self) -> None:
        # Accept pairs as well as mappings, like the first version of this class (env=(("K", "v"),)).
        for name in ("env", "args"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                object.__setattr__(self, name, dict(value))
        if not self.size and (self.env or self.args):
            object.__setattr__(self, "size", sum(len(k) + len(v) for m in (self.env, self.args)
                                                 for k, v in m.items()))

    def lookup(self) -> Mapping[str, str]:
        """The expansion environment: ENV overrides ARG whatever the order they were declared in."""
        return ChainMap(self.env, self.args)  # type: ignore[arg-type]

    def run_env(self) -> dict[str, str]:
        """The environment of a RUN: the lookup plus proxy build args, which need no ARG declaration."""
        out = {k: v for k, v in self.build_args if k in PROXY_ARGS}
        out.update(self.args)
        out.update(self.env)
        return out

    def arg_env(self) -> dict[str, str]:
        """The part of the RUN environment that does not come from ENV: ARG values and proxy build args."""
        out = {k: v for k, v in self.build_args if k in PROXY_ARGS}
        out.update(self.args)
        return {k: v for k, v in out.items() if k not in self.env}

    def with_env(self, pairs: Sequence[tuple[str, str]]) -> Scope:
        env, size = _layer(self.env, dict(pairs), self.size)
        return _checked(replace(self, env=env, size=size))

    def with_args(self, pairs: Sequence[tuple[str, str | None]], *, required: bool = False) -> Scope:
        build, glob = dict(self.build_args), dict(self.global_args)
        delta: dict[str, str] = {}
        for key, default in pairs:
            if key in build:
                delta[key] = build[key]
            elif default is not None:
                delta[key] = default
            elif key in glob:
                delta[key] = glob[key]
            elif required:
                raise DockerfileError(f'missing required argument "{key}"', file="<scope>")
        args, size = _layer(self.args, delta, self.size)
        return _checked(replace(self, args=args, size=size))


_FLATTEN = 16


def _layer(base: Mapping[str, str], delta: dict[str, str], size: int) -> tuple[Mapping[str, str], int]:
    for key, value in delta.items():
        old = base.get(key)
        size += len(value) - (len(old) if old is not None else -len(key))
    if not delta:
        return base, size
    maps = base.maps if isinstance(base, ChainMap) else [base]
    if len(maps) >= _FLATTEN:
        flat: dict[str, str] = {}
        for layer in reversed(maps):  # dict.update per layer runs in C; iterating the ChainMap would not
            flat.update(layer)
        flat.update(delta)
        return flat, size
    return ChainMap(delta, *maps), size


def _checked(scope: Scope) -> Scope:
    if scope.size > MAX_SCOPE_CHARS:
        raise DockerfileError(f"ARG and ENV values exceed {MAX_SCOPE_CHARS} characters", file="<scope>")
    return scope


def _readable_errors(fn):
    """A Dockerfile read with ``surrogateescape`` may put undecodable bytes into an error message: they are shown
    as U+FFFD (what a terminal shows for the raw byte Go prints), not as Python's ``\\udcff`` escapes."""
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        try:
            return fn(*args, **kw)
        except DockerfileError as exc:
            exc.with_context(detail=_SURROGATE.sub("\ufffd", exc.detail),
                             file=_SURROGATE.sub("\ufffd", exc.file) if exc.file else exc.file)
            raise
    return wrapper


_SURROGATE = re.compile("[\ud800-\udfff]")


@_readable_errors
def plan_build(source: Dockerfile | str | bytes, *, build_args: Mapping[str, str] | None = None,
               target: str | None = None, target_platform: str | Platform | None = None,
               build_platform: str | Platform | None = None, file: str = "Dockerfile") -> Plan:
    df = source if isinstance(source, Dockerfile) else parse(source, file=file)
    instructions = parse_instructions(df)
    build_args = dict(build_args or {})
    bp = _platform(build_platform) or Platform.host()
    tp = _platform(target_platform) or bp
    lexer = Lexer(escape=df.escape)

    # Meta ARGs: every ARG before the first FROM, expanded with the platform ARGs and earlier meta ARGs.
    glob: dict[str, str] = {**_platform_args(tp, "TARGET"), **_platform_args(bp, "BUILD")}
    meta: list[tuple[str, str | None]] = []
    pos = 0
    while pos < len(instructions) and isinstance(instructions[pos], Arg):
        arg = instructions[pos]
        expanded = _expand_arg(arg, glob, lexer, df.file)
        for key, default in expanded.pairs:
            value = build_args.get(key, default)
            if value is None and arg.required:
                raise _at(arg, df.file, f'missing required argument "{key}"')
            meta.append((key, value))
            if value is not None:
                glob[key] = value
        pos += 1
    if pos < len(instructions) and not isinstance(instructions[pos], From):
        bad = instructions[pos]
        raise DockerfileError(f"no build stage in current context: {bad.node.keyword} must come after FROM",
                              file=df.file, line=bad.node.start_line, column=bad.node.column)
    if pos == len(instructions):
        last = df.nodes[-1]
        raise DockerfileError("dockerfile contains no stages to build (missing FROM)", file=df.file,
                              line=last.start_line, column=last.column)

    # Split into stages and resolve FROM against earlier stages only (so FROM alone can never loop).
    groups: list[list[Instruction]] = []
    for ins in instructions[pos:]:
        if isinstance(ins, From):
            groups.append([ins])
        else:
            groups[-1].append(ins)
    names: dict[str, int] = {}
    drafts = []
    for index, group in enumerate(groups):
        frm = group[0]
        base = _word(frm.base, glob, lexer, frm, df.file)
        plat = _word(frm.platform, glob, lexer, frm, df.file) if frm.platform is not None else None
        if not base:
            raise _at(frm, df.file, f'base name ({frm.base}) should not be blank')
        base_stage = names.get(base.lower())
        if frm.name is not None:
            if frm.name in names:
                raise _at(frm, df.file, f'duplicate stage name "{frm.name}"')
            names[frm.name] = index
        drafts.append((index, frm, base, plat, base_stage, tuple(group[1:])))

    stages = []
    later: list = []  # --from references to a stage defined later: refused once cycles are ruled out
    declared: set[str] = {k for k, _ in meta}
    for index, frm, base, plat, base_stage, body in drafts:
        deps = [base_stage] if base_stage is not None else []
        scope = Scope(build_args=tuple(build_args.items()), global_args=tuple(glob.items()))
        for ins in body:
            if isinstance(ins, Arg):
                declared.update(k for k, _ in ins.pairs)
            ref = _stage_ref(ins, scope, lexer, df.file)
            for r in ref:
                dep = _resolve_ref(r, names, len(drafts), ins, df.file)
                if dep is not None and dep >= index:
                    later.append((index, ins, r))
                if dep is not None:
                    deps.append(dep)
            if isinstance(ins, (Arg, Env)):
                scope = expand_instruction(ins, scope, escape=df.escape, file=df.file)[1]
        stages.append(Stage(index, frm.name, frm, base, plat, base_stage, body, tuple(dict.fromkeys(deps))))

    if target:
        found = names.get(target.lower())
        if found is None:
            raise DockerfileError(f"target stage {target} could not be found", file=df.file)
        target_index = found
    else:
        target_index = len(stages) - 1
    needed = _build_order(stages, target_index, df.file)
    for index, ins, ref in later:
        if index in needed:  # as BuildKit: checked when the stage is dispatched, after the cycle check
            raise _at(ins, df.file, f'cannot copy from stage "{ref}", it needs to be defined before current '
                                    f'stage "{stages[index].display_name}"')
    unused = tuple(sorted(k for k in build_args if k not in declared and k not in PROXY_ARGS
                          and k not in PLATFORM_ARGS and not k.startswith("BUILDKIT_")))
    return Plan(df.file, df.escape, tuple(stages), tuple(meta), tuple(build_args.items()), target_index, needed,
                unused, tp, bp)


def _platform(value: str | Platform | None) -> Platform | None:
    if value is None or isinstance(value, Platform):
        return value
    return Platform.parse(value)


def _platform_args(p: Platform, prefix: str) -> dict[str, str]:
    """BuildKit's predefined ``TARGETPLATFORM``/``TARGETOS``/... (or ``BUILD...``) ARGs for a platform."""
    return {f"{prefix}PLATFORM": str(p), f"{prefix}OS": p.os, f"{prefix}ARCH": p.architecture,
            f"{prefix}VARIANT": p.variant}


def _at(ins: Instruction, file: str, message: str) -> DockerfileError:
    return DockerfileError(message, file=file, line=ins.node.start_line, column=ins.node.column)


def _word(text: str, env: Mapping[str, str], lexer: Lexer, ins: Instruction, file: str) -> str:
    try:
        return lexer.word(text, env)
    except DockerfileError as exc:
        raise _at(ins, file, exc.detail) from None


def _stage_ref(ins: Instruction, scope: Scope, lexer: Lexer, file: str) -> list[str]:
    refs = []
    if isinstance(ins, Copy) and ins.from_:
        if "$" in ins.from_:  # BuildKit resolves --from before any expansion
            raise _at(ins, file, "variable expansion is not supported for --from, define a new stage with FROM "
                                 "using ARG from global scope as a workaround")
        refs.append(_word(ins.from_, scope.lookup(), lexer, ins, file))
    elif isinstance(ins, Run):
        refs.extend(m.from_ for m in ins.mounts if m.from_)
    return refs


def _resolve_ref(ref: str, names: Mapping[str, int], count: int, ins: Instruction, file: str) -> int | None:
    """A stage index, or None when ``ref`` names an image (``COPY --from=nginx:latest``)."""
    lowered = ref.lower()
    if lowered in names:
        return names[lowered]
    if lowered.isascii() and lowered.isdigit():
        if int(lowered) >= count:
            raise _at(ins, file, f"invalid stage index {ref}: the Dockerfile has {count} stage(s)")
        return int(lowered)
    return None


def _build_order(stages: Sequence[Stage], target: int, file: str) -> tuple[int, ...]:
    """Stages the target needs, dependencies first. Like BuildKit, a cycle anywhere is an error (even among
    stages the target does not need); it names the first stage of the cycle in file order. Iterative, so a
    chain of thousands of stages cannot exhaust the Python stack."""
    state: dict[int, int] = {}  # 1 = on the current path, 2 = done

    def visit(root: int, order: list[int]) -> None:
        state[root] = 1
        path, stack = [root], [(root, iter(stages[root].deps))]
        while stack:
            node, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                path.pop()
                state[node] = 2
                order.append(node)
            elif state.get(dep) == 1:
                first = stages[min(path[path.index(dep):])]
                raise DockerfileError(f"circular dependency detected on stage: {first.display_name}", file=file,
                                      line=first.from_.node.start_line, column=first.from_.node.column)
            elif dep not in state:
                state[dep] = 1
                path.append(dep)
                stack.append((dep, iter(stages[dep].deps)))

    for index in range(len(stages)):
        if index not in state:
            visit(index, [])
    state.clear()
    needed: list[int] = []
    visit(target, needed)
    return tuple(needed)


# -- expansion ----------------------------------------------------------------------------------------------------
def stage_scope(plan: Plan, index: int, *, base_env: Sequence[tuple[str, str]] = (),
                base_args: Sequence[tuple[str, str]] = ()) -> Scope:
    """The scope at the start of stage ``index`` whose base image (or base stage) has config Env ``base_env``.

    A stage built FROM another stage also starts with that stage's ARG values (``base_args``), as in BuildKit.
    """
    env, args = dict(base_env), dict(base_args)
    size = sum(len(k) + len(v) for k, v in env.items()) + sum(len(k) + len(v) for k, v in args.items())
    return _checked(Scope(env=env, args=args, build_args=plan.build_args,
                          global_args=tuple(plan.global_args().items()), size=size))


@_readable_errors
def expand_instruction(ins: Instruction, scope: Scope, *, escape: str = "\\",
                       file: str = "Dockerfile") -> tuple[Instruction, Scope]:
    """``ins`` with the parts Docker expands expanded, and the scope after it (changed by ARG and ENV only)."""
    lexer = Lexer(escape=escape)
    env = scope.lookup()

    def word(text: str) -> str:
        return _word(text, env, lexer, ins, file)

    def opt(text: str | None) -> str | None:
        return None if text is None else word(text)

    def check(fn, value: str | None) -> None:
        if value is None:
            return
        try:
            fn(value)
        except DockerfileError as exc:
            raise _at(ins, file, exc.detail) from None

    if isinstance(ins, Env):
        pairs = tuple((word(k), word(v)) for k, v in ins.pairs)
        _no_blank(ins, file, pairs)
        return replace(ins, pairs=pairs), _scoped(scope.with_env, pairs, ins, file)
    if isinstance(ins, Arg):
        expanded = _expand_arg(ins, env, lexer, file)
        try:
            return expanded, scope.with_args(expanded.pairs, required=ins.required)
        except DockerfileError as exc:
            raise _at(ins, file, exc.detail) from None
    if isinstance(ins, Label):
        pairs = tuple((word(k), word(v)) for k, v in ins.pairs)
        return replace(ins, pairs=pairs), scope
    if isinstance(ins, (Copy, Add)):
        changes: dict[str, object] = {
            "sources": tuple(word(s) for s in ins.sources), "dest": word(ins.dest),
            "chown": opt(ins.chown), "chmod": opt(ins.chmod), "excludes": tuple(word(e) for e in ins.excludes),
            "inline": tuple(_expand_inline(f, env, escape, ins, file) for f in ins.inline),
        }
        check(parse_chmod, changes["chmod"])  # type: ignore[arg-type]
        if isinstance(ins, Copy):
            changes["from_"] = opt(ins.from_)
        else:
            changes["checksum"] = opt(ins.checksum)
            check(parse_checksum, changes["checksum"])  # type: ignore[arg-type]
        return replace(ins, **changes), scope
    if isinstance(ins, Expose):
        ports: list[str] = []
        for port in ins.ports:
            try:
                ports.extend(lexer.words(port, env))
            except DockerfileError as exc:
                raise _at(ins, file, exc.detail) from None
        for port in ports:
            check(parse_port, port)
        return replace(ins, ports=tuple(ports)), scope
    if isinstance(ins, Volume):
        paths = tuple(word(p) for p in ins.paths)
        if any(not p.strip() for p in paths):
            raise _at(ins, file, "VOLUME specified can not be an empty string")
        return replace(ins, paths=paths), scope
    if isinstance(ins, User):
        return replace(ins, user=word(ins.user)), scope
    if isinstance(ins, Workdir):
        return replace(ins, path=word(ins.path)), scope
    if isinstance(ins, StopSignal):
        sig = word(ins.signal)
        check(parse_signal, sig)
        return replace(ins, signal=sig), scope
    if isinstance(ins, Run) and ins.mount_specs:
        try:
            mounts = tuple(parse_mount(spec, expand=word) for spec in ins.mount_specs)
        except DockerfileError as exc:
            raise _at(ins, file, exc.detail) from None
        return replace(ins, mounts=mounts), scope
    return ins, scope  # RUN, CMD, ENTRYPOINT, SHELL, HEALTHCHECK, MAINTAINER, ONBUILD: not expanded


def _scoped(fn, pairs, ins: Instruction, file: str) -> Scope:
    try:
        return fn(pairs)
    except DockerfileError as exc:
        raise _at(ins, file, exc.detail) from None


def _no_blank(ins: Instruction, file: str, pairs) -> None:
    if any(not k for k, _ in pairs):
        raise _at(ins, file, f"{ins.node.keyword} names can not be blank")


def _expand_arg(arg: Arg, env: Mapping[str, str], lexer: Lexer, file: str) -> Arg:
    pairs = []
    for key, value in arg.pairs:
        k = _word(key, env, lexer, arg, file)
        if not k:
            raise _at(arg, file, "ARG names can not be blank")
        pairs.append((k, None if value is None else _word(value, env, lexer, arg, file)))
    return replace(arg, pairs=tuple(pairs))


def _expand_inline(f: InlineFile, env: Mapping[str, str], escape: str, ins: Instruction, file: str) -> InlineFile:
    if not f.expand:
        return f
    lexer = Lexer(escape=escape, skip_quotes=True)  # a heredoc body keeps its quotes
    try:
        return replace(f, data=lexer.word(f.data, env))
    except DockerfileError as exc:
        raise _at(ins, file, exc.detail) from None


@dataclass(frozen=True, slots=True)
class Step:
    instruction: Instruction  # expanded
    scope: Scope  # in effect when the instruction runs (before its own ARG/ENV changes)

    @property
    def env(self) -> dict[str, str]:
        """The RUN environment at this step (ENV, ARG values and proxy build args)."""
        return self.scope.run_env()


def expand_stage(plan: Plan, index: int, *, base_env: Sequence[tuple[str, str]] = (),
                 base_args: Sequence[tuple[str, str]] = ()) -> tuple[tuple[Step, ...], Scope]:
    """Every instruction of a stage expanded in order, and the final scope (its ``env`` is the image Env)."""
    scope = stage_scope(plan, index, base_env=base_env, base_args=base_args)
    steps = []
    for ins in plan.stages[index].instructions:
        expanded, scope_after = expand_instruction(ins, scope, escape=plan.escape, file=plan.file)
        steps.append(Step(expanded, scope))
        scope = scope_after
    return tuple(steps), scope


def expand_plan(plan: Plan) -> dict[int, tuple[Step, ...]]:
    """Expand the needed stages as the builder does (same ``stage_scope`` and ``expand_instruction``), but with
    no base image config: what ``snapfs parse`` shows. A base image's Env is taken as empty and its ONBUILD
    triggers (also an earlier stage's, which the builder reads from that stage's image config) are not shown;
    a stage built FROM another stage inherits that stage's Env and ARG values, as in the build."""
    out: dict[int, tuple[Step, ...]] = {}
    final: dict[int, Scope] = {}
    for index in plan.needed:
        base = plan.stages[index].base_stage
        parent = final.get(base) if base is not None else None
        steps, scope = expand_stage(plan, index, base_env=tuple(parent.env.items()) if parent else (),
                                    base_args=tuple(parent.args.items()) if parent else ())
        out[index] = steps
        final[index] = scope
    return out


def onbuild_instructions(triggers: Sequence[str], *, escape: str = "\\",
                         file: str = "<base image ONBUILD>") -> tuple[Instruction, ...]:
    """Parse a base image's ``OnBuild`` strings into instructions, to run right after the child's FROM."""
    out = []
    for number, text in enumerate(triggers, start=1):
        node = parse_line(text, escape=escape, file=file, line=number)
        if node.keyword in ("ONBUILD", "FROM", "MAINTAINER"):
            raise DockerfileError(f"{node.keyword} isn't allowed as an ONBUILD trigger", file=file, line=number,
                                  column=1)
        out.append(parse_instruction(node, file=file))
    return tuple(out)


__all__ = ["PLATFORM_ARGS", "PROXY_ARGS", "Plan", "Scope", "Stage", "Step",
           "expand_instruction", "expand_plan", "expand_stage", "onbuild_instructions", "plan_build",
           "stage_scope"]
