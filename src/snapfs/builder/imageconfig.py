"""What each Dockerfile instruction does to the image config (no IO).

The config is the OCI/Docker image config as a dict; ``apply_instruction`` returns a new dict and never
touches the filesystem. History entries follow what BuildKit writes, so `docker history` reads the same.

Encoding: a Dockerfile is read as bytes (``surrogateescape``), so bytes that are not UTF-8 reach RUN's argv and
environment unchanged, as in BuildKit (Go strings are bytes). JSON must be UTF-8: :func:`finish` replaces each
such byte with U+FFFD in the written config and history, which is what Go's ``json.Marshal`` does.
"""
from __future__ import annotations

import copy
import posixpath
import re
from dataclasses import dataclass, field

from snapfs.frontend import instructions as ins
from snapfs.frontend.values import parse_port
from snapfs.platforms import Platform

DEFAULT_SHELL = ("/bin/sh", "-c")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILDKIT_COMMENT = "buildkit.dockerfile.v0"


@dataclass
class StageConfig:
    """The config of the stage being built, plus what Docker tracks beside it (CMD set in this stage)."""

    config: dict
    cmd_set: bool = False
    history: list = field(default_factory=list)

    @property
    def inner(self) -> dict:
        return self.config.setdefault("config", {})

    def env(self) -> list[tuple[str, str]]:
        out = []
        for item in self.inner.get("Env") or []:
            key, _, value = item.partition("=")
            out.append((key, value))
        return out

    def shell(self) -> tuple[str, ...]:
        return tuple(self.inner.get("Shell") or DEFAULT_SHELL)

    def workdir(self) -> str:
        return self.inner.get("WorkingDir") or "/"

    def user(self) -> str:
        return self.inner.get("User") or ""


def start_stage(base_config: dict, *, platform: Platform) -> StageConfig:
    """A stage's config starts as its base image's, without history or diff_ids (added back when written)."""
    cfg = copy.deepcopy(base_config)
    cfg.setdefault("config", {})
    cfg.setdefault("os", platform.os)
    cfg.setdefault("architecture", platform.architecture)
    if platform.variant and not cfg.get("variant"):
        cfg["variant"] = platform.variant
    # A base without PATH (scratch included) gets Docker's default one, after its own variables, as buildah 1.28
    # does (Kaniko adds it only to a base without any Env). No WorkingDir is added: FROM scratch leaves it empty,
    # as buildah and Kaniko do (BuildKit writes "/").
    env = cfg["config"].setdefault("Env", None) or []
    if not any(e.startswith("PATH=") for e in env):
        env.append(f"PATH={DEFAULT_PATH}")
    cfg["config"]["Env"] = env
    history = cfg.pop("history", None) or []
    cfg.pop("rootfs", None)
    return StageConfig(cfg, history=list(history))


def set_env(stage: StageConfig, pairs) -> None:
    """A key already set keeps its place in Env (as Docker does); new keys go at the end."""
    env = dict(stage.env())  # dicts keep insertion order, and updating a key keeps its position
    for key, value in pairs:
        env[key] = value
    stage.inner["Env"] = [f"{k}={v}" for k, v in env.items()]


def resolve_workdir(current: str, path: str) -> str:
    """WORKDIR relative to the current one, normalised (``..`` cannot climb above ``/``)."""
    return posixpath.normpath(posixpath.join(current or "/", path)).replace("//", "/") or "/"


def shell_or_exec(stage: StageConfig, command: tuple[str, ...], shell_form: bool) -> list[str]:
    return [*stage.shell(), command[0]] if shell_form else list(command)


def apply_instruction(stage: StageConfig, i) -> None:
    """Change the config for a metadata instruction (everything but RUN/COPY/ADD/FROM/ARG)."""
    c = stage.inner
    if isinstance(i, ins.Env):
        set_env(stage, i.pairs)
    elif isinstance(i, ins.Label):
        labels = c.get("Labels") or {}
        labels.update(dict(i.pairs))
        c["Labels"] = labels
    elif isinstance(i, ins.Maintainer):
        stage.config["author"] = i.name
    elif isinstance(i, ins.Expose):
        ports = c.get("ExposedPorts") or {}
        for text in i.ports:
            for key in parse_port(text).keys():
                ports[key] = {}
        c["ExposedPorts"] = ports
    elif isinstance(i, ins.Volume):
        vols = c.get("Volumes") or {}
        for p in i.paths:
            vols[p] = {}
        c["Volumes"] = vols
    elif isinstance(i, ins.User):
        c["User"] = i.user
    elif isinstance(i, ins.Workdir):
        c["WorkingDir"] = resolve_workdir(stage.workdir(), i.path)
    elif isinstance(i, ins.Cmd):
        c["Cmd"] = shell_or_exec(stage, i.command, i.shell_form)
        stage.cmd_set = True
    elif isinstance(i, ins.Entrypoint):
        c["Entrypoint"] = shell_or_exec(stage, i.command, i.shell_form)
        if not stage.cmd_set:  # an inherited CMD makes no sense with a new ENTRYPOINT
            c["Cmd"] = None
    elif isinstance(i, ins.StopSignal):
        c["StopSignal"] = i.signal
    elif isinstance(i, ins.Shell):
        c["Shell"] = list(i.shell)
    elif isinstance(i, ins.Onbuild):
        c["OnBuild"] = (c.get("OnBuild") or []) + [i.expression]
    elif isinstance(i, ins.Healthcheck):
        hc = {"Test": list(i.test)}
        for key, value in (("Interval", i.interval), ("Timeout", i.timeout), ("StartPeriod", i.start_period),
                           ("StartInterval", i.start_interval), ("Retries", i.retries)):
            if value:
                hc[key] = value
        c["Healthcheck"] = hc
    elif isinstance(i, ins.Arg):
        pass
    else:  # pragma: no cover - the executor routes the others
        raise TypeError(f"not a metadata instruction: {type(i).__name__}")


def add_labels(stage: StageConfig, labels: dict[str, str]) -> None:
    if labels:
        merged = stage.inner.get("Labels") or {}
        merged.update(labels)
        stage.inner["Labels"] = merged


def history_entry(created_by: str, *, created: str, empty_layer: bool) -> dict:
    entry = {"created": created, "created_by": created_by, "comment": BUILDKIT_COMMENT}
    if empty_layer:
        entry["empty_layer"] = True
    return entry


def finish(stage: StageConfig, *, diff_ids: list[str], created: str) -> dict:
    """The config to write: history and rootfs put back, ``created`` set, every string valid UTF-8."""
    cfg = copy.deepcopy(stage.config)
    cfg["created"] = created
    cfg["history"] = stage.history
    cfg["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    return json_safe(cfg)


def json_safe(value):
    """``value`` with every undecodable byte (a lone surrogate from ``surrogateescape``) in its strings, dict keys
    included, replaced by U+FFFD: one replacement per byte, as Go's ``json.Marshal`` writes it."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")
