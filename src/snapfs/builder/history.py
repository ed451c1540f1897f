"""``created_by`` strings for the image history, written the way BuildKit writes them.

`docker history` and tools that diff images read these, so they follow BuildKit: values are shown expanded,
``key=value`` pairs unquoted, argv lists as Go prints them (``[a b]`` for SHELL and VOLUME, ``["a" "b"]`` for
CMD and ENTRYPOINT), RUN with the stage's ARG values as ``|N K=V ...``, COPY and ADD with their
``--chown``/``--chmod``/``--parents`` flags (never ``--from``) and ``# buildkit`` after the steps that make a
layer. ONBUILD writes no entry.

One difference on purpose: every entry goes through :func:`snapfs.redact.redact_url`, so ``ADD
https://user:password@host/f`` or a presigned URL is recorded as ``ADD https://***@host/f``. BuildKit records the
instruction as written; an image's history is public wherever the image is, credentials must not be.
"""
from __future__ import annotations

import json

from snapfs.frontend import instructions as ins
from snapfs.redact import redact_url

SUFFIX = " # buildkit"


def go_quoted(items) -> str:
    """Go's ``%q`` of a string slice: ``["a" "b c"]``."""
    return "[" + " ".join(json.dumps(s, ensure_ascii=False) for s in items) + "]"


def go_list(items) -> str:
    """Go's ``%v`` of a string slice: ``[a b c]``."""
    return "[" + " ".join(items) + "]"


def metadata(i, *, config: dict, arg_values: dict[str, str]) -> str | None:
    """The entry for a metadata instruction, after it was applied to ``config`` (None: no entry)."""
    text = _metadata(i, config=config, arg_values=arg_values)
    return None if text is None else redact_url(text)


def _metadata(i, *, config: dict, arg_values: dict[str, str]) -> str | None:
    c = config.get("config", {})
    if isinstance(i, ins.Env):
        return "ENV " + " ".join(f"{k}={v}" for k, v in i.pairs)
    if isinstance(i, ins.Label):
        return "LABEL " + " ".join(f"{k}={v}" for k, v in i.pairs)
    if isinstance(i, ins.Arg):
        return "ARG " + " ".join(f"{k}={arg_values[k]}" if k in arg_values else k for k, _ in i.pairs)
    if isinstance(i, ins.Shell):
        return "SHELL " + go_list(i.shell)
    if isinstance(i, ins.Volume):
        return "VOLUME " + go_list(i.paths)
    if isinstance(i, ins.Cmd):
        return "CMD " + go_quoted(c.get("Cmd") or [])
    if isinstance(i, ins.Entrypoint):
        return "ENTRYPOINT " + go_quoted(c.get("Entrypoint") or [])
    if isinstance(i, ins.Workdir):
        return "WORKDIR " + (c.get("WorkingDir") or "/")
    if isinstance(i, ins.User):
        return "USER " + i.user
    if isinstance(i, ins.StopSignal):
        return "STOPSIGNAL " + i.signal
    if isinstance(i, ins.Maintainer):
        return "MAINTAINER " + i.name
    if isinstance(i, ins.Expose):
        ports = sorted(c.get("ExposedPorts") or {})
        return "EXPOSE map[" + " ".join(f"{p}:{{}}" for p in ports) + "]"
    if isinstance(i, ins.Onbuild):
        return None
    return i.node.original.split("\n", 1)[0]


def run(argv, args: list[tuple[str, str]]) -> str:
    prefix = f"|{len(args)} " + " ".join(f"{k}={v}" for k, v in args) + " " if args else ""
    return redact_url("RUN " + prefix + " ".join(argv) + SUFFIX)


def copy(i) -> str:
    word = "COPY" if isinstance(i, ins.Copy) else "ADD"
    flags = []
    if i.chown:
        flags.append(f"--chown={i.chown}")
    if i.chmod:
        flags.append(f"--chmod={i.chmod}")
    if getattr(i, "parents", False):
        flags.append("--parents")
    parts = [word, *flags, *(f"<<{f.name}" for f in i.inline), *i.sources, i.dest]
    return redact_url(" ".join(parts) + SUFFIX)
