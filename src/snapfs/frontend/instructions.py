"""Typed Dockerfile instructions: one frozen dataclass per keyword, validated from syntax nodes.

Values Docker expands later (paths, ``--chown``, ``--chmod``, ports, ...) are kept as written; the planner expands
them with the right scope (see :mod:`.plan`). Where such a value has no ``$`` it is validated here already, so most
mistakes are reported at parse time; the same validators run again after expansion. Flags that are valid Docker
syntax are parsed even when the builder does not support them yet (it refuses them); unknown flags are errors.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from snapfs.errors import DockerfileError
from .syntax import Dockerfile, Heredoc, Node, chomp_heredoc, heredoc_from_word, parse
from .values import (Chmod, Invalid, Mount, Port, parse_checksum, parse_chmod, parse_duration, parse_mount, parse_port,
                     parse_signal)

__all__ = [
    "Add", "Arg", "Cmd", "Copy", "Entrypoint", "Env", "Expose", "From", "Healthcheck", "InlineFile", "Instruction",
    "Invalid", "Label", "Maintainer", "Onbuild", "Run", "Shell", "StopSignal", "User", "Volume", "Workdir",
    "Chmod", "Mount", "Port", "parse_instruction", "parse_instructions", "parse_dockerfile", "located",
]


@dataclass(frozen=True, slots=True)
class InlineFile:
    """A heredoc used as a COPY/ADD source or a RUN script body."""

    name: str
    data: str  # ``<<-`` leading tabs already stripped; expanded by the planner for COPY/ADD when ``expand``
    expand: bool
    chomp: bool = False
    fd: int = 0


@dataclass(frozen=True, slots=True)
class From:
    node: Node
    base: str
    name: str | None  # lower-cased stage name from ``AS name``
    platform: str | None


@dataclass(frozen=True, slots=True)
class Run:
    node: Node
    command: tuple[str, ...]  # shell form: one string; exec form: argv
    shell_form: bool
    heredocs: tuple[InlineFile, ...]
    mounts: tuple[Mount, ...]  # parsed without expansion; ``mount_specs`` are re-parsed with it
    mount_specs: tuple[str, ...]
    network: str | None
    security: str | None


@dataclass(frozen=True, slots=True)
class Cmd:
    node: Node
    command: tuple[str, ...]
    shell_form: bool


@dataclass(frozen=True, slots=True)
class Entrypoint:
    node: Node
    command: tuple[str, ...]
    shell_form: bool


@dataclass(frozen=True, slots=True)
class Shell:
    node: Node
    shell: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Label:
    node: Node
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Env:
    node: Node
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Arg:
    node: Node
    pairs: tuple[tuple[str, str | None], ...]  # None: declared without a default
    required: bool = False  # ``ARG --required``: the build fails when no value is given


@dataclass(frozen=True, slots=True)
class Maintainer:
    node: Node
    name: str


@dataclass(frozen=True, slots=True)
class Expose:
    node: Node
    ports: tuple[str, ...]  # as written; ``values.parse_port`` after expansion


@dataclass(frozen=True, slots=True)
class Copy:
    node: Node
    sources: tuple[str, ...]
    inline: tuple[InlineFile, ...]
    dest: str
    from_: str | None
    chown: str | None
    chmod: str | None
    link: bool
    parents: bool
    excludes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Add:
    node: Node
    sources: tuple[str, ...]
    inline: tuple[InlineFile, ...]
    dest: str
    chown: str | None
    chmod: str | None
    link: bool
    keep_git_dir: bool
    checksum: str | None
    excludes: tuple[str, ...]
    unpack: bool | None  # None: Docker's default (archives from the context are unpacked, URLs are not)


@dataclass(frozen=True, slots=True)
class Volume:
    node: Node
    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class User:
    node: Node
    user: str


@dataclass(frozen=True, slots=True)
class Workdir:
    node: Node
    path: str


@dataclass(frozen=True, slots=True)
class StopSignal:
    node: Node
    signal: str


@dataclass(frozen=True, slots=True)
class Onbuild:
    node: Node
    keyword: str  # the trigger's instruction
    expression: str  # what goes into the image config's OnBuild list, heredoc bodies included


@dataclass(frozen=True, slots=True)
class Healthcheck:
    node: Node
    test: tuple[str, ...]  # ("NONE",) | ("CMD", argv...) | ("CMD-SHELL", command)
    interval: int = 0  # nanoseconds, 0 = inherit the default
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


Instruction = Union[From, Run, Cmd, Entrypoint, Shell, Label, Env, Arg, Maintainer, Expose, Copy, Add, Volume,
                    User, Workdir, StopSignal, Onbuild, Healthcheck]


def located(exc: DockerfileError, node: Node, file: str) -> DockerfileError:
    """Attach a location to an error raised by a value parser or the shell lexer."""
    return DockerfileError(exc.detail, file=file, line=node.start_line, column=node.column)


def parse_dockerfile(text: str | bytes, *, file: str = "Dockerfile") -> tuple[Dockerfile, tuple[Instruction, ...]]:
    df = parse(text, file=file)
    return df, parse_instructions(df)


def parse_instructions(df: Dockerfile) -> tuple[Instruction, ...]:
    return tuple(parse_instruction(node, file=df.file) for node in df.nodes)


def parse_instruction(node: Node, *, file: str = "Dockerfile") -> Instruction:
    """Validate one node; every problem is a ``DockerfileError`` at the node's location."""
    fn = _PARSERS.get(node.keyword)
    if fn is None:
        written = node.original.split(None, 1)[0] if node.original.strip() else node.keyword
        raise DockerfileError(f"unknown instruction: {written}", file=file, line=node.start_line,
                              column=node.column)
    try:
        return fn(_Req(node))
    except Invalid as exc:
        raise DockerfileError(exc.detail, file=file, line=node.start_line,
                              column=node.column + max(exc.offset, 0)) from None


class _Req:
    """A node plus its flags, parsed against the set each instruction declares (BuildKit's ``BFlags``)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.args = node.args

    def flags(self, spec: dict[str, str]) -> dict[str, object]:
        values: dict[str, object] = {name: ([] if kind == "list" else None) for name, kind in spec.items()}
        seen: set[str] = set()
        for raw in self.node.flags:
            body = raw[2:] if raw.startswith("--") else raw
            name, has_value, value = body.partition("=")
            kind = spec.get(name)
            if not raw.startswith("--") or kind is None:
                raise self.invalid(f"unknown flag: {raw.split('=', 1)[0]}", raw)
            if kind != "list" and name in seen:
                raise self.invalid(f"duplicate flag specified: --{name}", raw)
            seen.add(name)
            if kind == "bool":
                if has_value and value.lower() not in ("true", "false"):
                    raise self.invalid(f"expecting boolean value for flag --{name}, not: {value}", raw)
                values[name] = (not has_value) or value.lower() == "true"
            elif not has_value:
                raise self.invalid(f"missing a value on flag: --{name}", raw)
            elif kind == "list":
                values[name].append(value)  # type: ignore[union-attr]
            else:
                values[name] = value
        return values

    def no_flags(self) -> None:
        self.flags({})

    def invalid(self, message: str, near: str | None = None) -> Invalid:
        offset = self.node.original.find(near) if near else -1
        return Invalid(message, offset=max(offset, 0))


def _exactly_one(req: _Req, keyword: str) -> str:
    if len(req.args) != 1:
        raise req.invalid(f"{keyword} requires exactly one argument")
    return req.args[0]


def _at_least_one(req: _Req, keyword: str) -> None:
    if not req.args:
        raise req.invalid(f"{keyword} requires at least one argument")


def _from(req: _Req) -> From:
    args = req.args
    flags = req.flags({"platform": "str"})
    name = None
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _valid_stage_name(name):
            raise req.invalid(f'invalid name for build stage: "{args[2]}", '
                              "name can't start with a number or contain symbols", args[2])
    elif len(args) != 1:
        raise req.invalid("FROM requires either one or three arguments")
    return From(req.node, args[0], name, flags["platform"])  # type: ignore[arg-type]


def _valid_stage_name(name: str) -> bool:
    return bool(name) and name[0].isascii() and name[0].isalpha() and all(
        c.isascii() and (c.isalnum() or c in "-_.") for c in name)


def _inline(req: _Req, heredocs: tuple[Heredoc, ...], *, chomp: bool) -> tuple[InlineFile, ...]:
    return tuple(InlineFile(h.name, chomp_heredoc(h.content) if chomp and h.chomp else h.content, h.expand,
                            h.chomp, h.fd) for h in heredocs)


def _run(req: _Req) -> Run:
    flags = req.flags({"mount": "list", "network": "str", "security": "str"})
    if not req.args and not req.node.json:
        raise req.invalid("RUN requires at least one argument")
    specs = tuple(flags["mount"])  # type: ignore[arg-type]
    mounts = []
    for spec in specs:
        try:
            mounts.append(parse_mount(spec))
        except Invalid as exc:
            raise req.invalid(exc.detail, spec) from None
    network, security = flags["network"], flags["security"]
    if network is not None and network not in ("default", "none", "host"):
        raise req.invalid(f'unsupported network mode "{network}" (use default, none or host)', "--network")
    if security is not None and security not in ("sandbox", "insecure"):
        raise req.invalid(f'unsupported security mode "{security}" (use sandbox or insecure)', "--security")
    return Run(req.node, req.args, not req.node.json, _inline(req, req.node.heredocs, chomp=True),
               tuple(mounts), specs, network, security)  # type: ignore[arg-type]


def _cmd(req: _Req) -> Cmd:
    req.no_flags()
    return Cmd(req.node, req.args, not req.node.json)


def _entrypoint(req: _Req) -> Entrypoint:
    req.no_flags()
    return Entrypoint(req.node, req.args, not req.node.json)


def _shell(req: _Req) -> Shell:
    req.no_flags()
    if not req.node.json:
        raise req.invalid("SHELL requires the arguments to be in JSON form")
    _at_least_one(req, "SHELL")
    return Shell(req.node, req.args)


def _pairs(req: _Req, keyword: str) -> tuple[tuple[str, str], ...]:
    req.no_flags()
    _at_least_one(req, keyword)
    args = req.args
    pairs = tuple((args[i], args[i + 1]) for i in range(0, len(args) - 1, 2))
    if any(not key for key, _ in pairs):
        raise req.invalid(f"{keyword} names can not be blank")
    return pairs


def _label(req: _Req) -> Label:
    return Label(req.node, _pairs(req, "LABEL"))


def _env(req: _Req) -> Env:
    return Env(req.node, _pairs(req, "ENV"))


def _arg(req: _Req) -> Arg:
    flags = req.flags({"required": "bool"})
    _at_least_one(req, "ARG")
    pairs = []
    for word in req.args:
        key, has_value, value = word.partition("=")
        if not key:
            raise req.invalid("ARG names can not be blank")
        pairs.append((key, value if has_value else None))
    return Arg(req.node, tuple(pairs), bool(flags["required"]))


def _maintainer(req: _Req) -> Maintainer:
    req.no_flags()
    return Maintainer(req.node, _exactly_one(req, "MAINTAINER"))


def _expose(req: _Req) -> Expose:
    req.no_flags()
    _at_least_one(req, "EXPOSE")
    for port in req.args:
        if "$" not in port:
            parse_port(port)
    return Expose(req.node, req.args)


def _sources_and_dest(req: _Req, keyword: str) -> tuple[tuple[str, ...], tuple[InlineFile, ...], str]:
    if len(req.args) < 2:
        raise req.invalid(f"{keyword} requires at least two arguments, but only one was provided. "
                          "Destination could not be determined.")
    *srcs, dest = req.args
    if not req.node.json and heredoc_from_word(dest) is not None:
        raise req.invalid(f"{keyword} cannot accept a heredoc as a destination", dest)
    by_name = {h.name: h for h in req.node.heredocs}
    sources, inline = [], []
    for src in srcs:
        doc = None if req.node.json else heredoc_from_word(src)
        if doc is None:
            sources.append(src)
            continue
        body = by_name.get(doc.name)
        content = body.content if body is not None else ""
        if doc.chomp:
            content = chomp_heredoc(content)
        inline.append(InlineFile(doc.name, content, doc.expand, doc.chomp, doc.fd))
    return tuple(sources), tuple(inline), dest


def _check_chmod_chown(req: _Req, flags: dict[str, object]) -> None:
    for name in ("chown", "chmod", "from", "checksum"):
        if flags.get(name) == "":
            flags[name] = None  # ``--chown=`` is accepted by Docker and means the default
    chmod = flags.get("chmod")
    if isinstance(chmod, str) and "$" not in chmod:
        try:
            parse_chmod(chmod)
        except Invalid as exc:
            raise req.invalid(exc.detail, "--chmod") from None


def _copy(req: _Req) -> Copy:
    flags = req.flags({"from": "str", "chown": "str", "chmod": "str", "link": "bool", "parents": "bool",
                       "exclude": "list"})
    sources, inline, dest = _sources_and_dest(req, "COPY")
    _check_chmod_chown(req, flags)
    return Copy(req.node, sources, inline, dest, flags["from"], flags["chown"], flags["chmod"],  # type: ignore
                bool(flags["link"]), bool(flags["parents"]), tuple(flags["exclude"]))  # type: ignore


def _add(req: _Req) -> Add:
    flags = req.flags({"chown": "str", "chmod": "str", "link": "bool", "keep-git-dir": "bool", "checksum": "str",
                       "exclude": "list", "unpack": "bool"})
    sources, inline, dest = _sources_and_dest(req, "ADD")
    _check_chmod_chown(req, flags)
    checksum = flags["checksum"]
    if isinstance(checksum, str) and "$" not in checksum:
        try:
            parse_checksum(checksum)
        except Invalid as exc:
            raise req.invalid(exc.detail, "--checksum") from None
    return Add(req.node, sources, inline, dest, flags["chown"], flags["chmod"], bool(flags["link"]),  # type: ignore
               bool(flags["keep-git-dir"]), checksum, tuple(flags["exclude"]), flags["unpack"])  # type: ignore


def _volume(req: _Req) -> Volume:
    req.no_flags()
    _at_least_one(req, "VOLUME")
    paths = tuple(p.strip() for p in req.args)
    if not all(paths):
        raise req.invalid("VOLUME specified can not be an empty string")
    return Volume(req.node, paths)


def _user(req: _Req) -> User:
    req.no_flags()
    return User(req.node, _exactly_one(req, "USER"))


def _workdir(req: _Req) -> Workdir:
    req.no_flags()
    return Workdir(req.node, _exactly_one(req, "WORKDIR"))


def _stopsignal(req: _Req) -> StopSignal:
    req.no_flags()
    sig = _exactly_one(req, "STOPSIGNAL")
    if "$" not in sig:
        parse_signal(sig)
    return StopSignal(req.node, sig)


def _onbuild(req: _Req) -> Onbuild:
    req.no_flags()
    trigger = req.node.trigger
    if trigger is None:
        raise req.invalid("ONBUILD requires at least one argument")
    keyword = trigger.keyword
    if keyword == "ONBUILD":
        raise req.invalid("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if keyword in ("MAINTAINER", "FROM"):
        raise req.invalid(f"{keyword} isn't allowed as an ONBUILD trigger")
    # Like BuildKit the trigger is only checked when a child image runs it; it is stored as written.
    expression = trigger.original.rstrip("\n")
    return Onbuild(req.node, keyword, expression)


def _healthcheck(req: _Req) -> Healthcheck:
    _at_least_one(req, "HEALTHCHECK")
    kind = req.args[0].upper()
    flags = req.flags({"interval": "str", "timeout": "str", "start-period": "str", "start-interval": "str",
                       "retries": "str"})
    if kind == "NONE":
        if len(req.args) != 1:
            raise req.invalid("HEALTHCHECK NONE takes no arguments")
        return Healthcheck(req.node, ("NONE",))
    if kind != "CMD":
        raise req.invalid(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)')
    cmd = req.args[1:]
    if not cmd:
        raise req.invalid("Missing command after HEALTHCHECK CMD")
    test = ("CMD", *cmd) if req.node.json else ("CMD-SHELL", *cmd)
    durations = {}
    for name in ("interval", "timeout", "start-period", "start-interval"):
        text = flags[name]
        try:
            value = parse_duration(text) if text else 0  # type: ignore[arg-type]
        except Invalid as exc:
            raise req.invalid(exc.detail, f"--{name}") from None
        if 0 < value < 1_000_000 or value < 0:
            raise req.invalid(f'Interval "{name}" cannot be less than 1ms', f"--{name}")
        durations[name.replace("-", "_")] = value
    retries = 0
    if flags["retries"]:
        text = str(flags["retries"])
        if not re.fullmatch(r"[+-]?[0-9]+", text) or abs(int(text)) >= 1 << 31:
            raise req.invalid(f'invalid --retries value "{text}"', "--retries")
        retries = int(text)
        if retries < 0:
            raise req.invalid(f"--retries cannot be negative ({retries})", "--retries")
    return Healthcheck(req.node, test, retries=retries, **durations)


_PARSERS = {
    "FROM": _from, "RUN": _run, "CMD": _cmd, "ENTRYPOINT": _entrypoint, "SHELL": _shell, "LABEL": _label,
    "ENV": _env, "ARG": _arg, "MAINTAINER": _maintainer, "EXPOSE": _expose, "COPY": _copy, "ADD": _add,
    "VOLUME": _volume, "USER": _user, "WORKDIR": _workdir, "STOPSIGNAL": _stopsignal, "ONBUILD": _onbuild,
    "HEALTHCHECK": _healthcheck,
}
