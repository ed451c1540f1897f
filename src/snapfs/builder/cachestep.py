"""A stage's steps through the layer cache: each cacheable step's inputs, looked up before it runs.

What is cached (Kaniko's flags): RUN steps (``--cache-run-layers``, default on) and COPY/ADD steps
(``--cache-copy-layers``, default off); metadata steps and WORKDIR are cheaper to redo than to look up. A step's
inputs (:class:`snapfs.cache.keys.StepInputs`) are its expanded instruction, the ARGs and ENV a RUN sees (proxy
variables excluded, as in Docker), the platform, the layer format, the user/workdir/shell, the stage state before
it, and the files it reads: COPY/ADD sources after ``.dockerignore`` and ``--exclude``, ``RUN --mount=type=bind``
sources. Secret mounts contribute their id and target, never their content; cache mounts nothing. ADD of a URL
is cached only with ``--checksum`` (its content is known only by downloading it), a git source only at a full
commit id. Entries are pushed to a shared repository, so URLs in them are redacted (:func:`snapfs.redact.redact_url`);
an ADD's content is pinned by its checksum or commit whatever credentials fetched it, a RUN's is not, so a RUN
whose URLs carry credentials keeps them in its key as a hash.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import Any

from snapfs.cache.keys import (FileTable, StepInputs, canonical, hashed_values, initial_state, secret_hash, slot_of,
                               state_after)
from snapfs.cache.session import Hit, StepCache
from snapfs.errors import SnapfsError
from snapfs.frontend import instructions as ins
from snapfs.frontend.plan import PROXY_ARGS
from snapfs.frontend.values import parse_mount
from snapfs.redact import redact_url
from . import stage as executor
from .copier import Source, source_table
from .stage import StepTiming

log = logging.getLogger("snapfs.build")

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def _jsonable(value: Any, *, redact: bool = True) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name), redact=redact) for f in dataclasses.fields(value)
                if f.name != "node"}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v, redact=redact) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, redact=redact) for k, v in value.items()}
    if isinstance(value, str) and redact:
        return redact_url(value)
    return value


class StageCache:
    """The cache as one stage sees it: the state chain, lookups, stores and report rows."""

    def __init__(self, cache: StepCache, *, runner, stage_label: str, platform: str, base_chain: str,
                 copy_layers: bool, run_layers: bool) -> None:
        self.cache, self.runner = cache, runner
        self.stage_label, self.platform = stage_label, platform
        self.copy_layers, self.run_layers = copy_layers, run_layers
        opts = runner.opts
        self.layer_format = {"compression": opts.compression, "level": opts.compression_level,
                             "epoch": opts.epoch, "docker": opts.docker_media_types}
        self.state = initial_state(base_chain, runner.state.config.inner)
        self._local: dict[int, StepInputs | str] = {}
        self.first_change: str = ""  # the first step of this stage whose result differs from the stored one

    # -- inputs --------------------------------------------------------------------------------------------

    def inputs(self, i, scope, *, position: int) -> StepInputs | str:
        """The step's inputs on the current state, or why it is not cached."""
        local = self._local.pop(position, None)
        if local is None:
            local = self._local_inputs(i, scope, position=position)
        if isinstance(local, str):
            return local
        cfg = self.runner.state.config
        return dataclasses.replace(local, parent=self.state, config={"user": cfg.user(), "workdir": cfg.workdir(),
                                                                     "shell": list(cfg.shell())})

    def prefetch(self, steps: list[tuple[Any, Any]]) -> None:
        """Compute what can be known now of every step (all but the state) and look all of them up at once.
        A step whose inputs cannot be computed yet (an error that the step itself will report) is skipped."""
        found = []
        for position, (i, scope) in enumerate(steps):
            try:
                local = self._local_inputs(i, scope, position=position)
            except SnapfsError:
                continue
            self._local[position] = local
            if isinstance(local, StepInputs) and self.not_looked_up(i) is None:
                found.append(local)
        self.cache.prefetch(found)

    def not_looked_up(self, i) -> str | None:
        """Why step ``i`` is not looked up ("": it goes without saying), or None when it is."""
        if isinstance(i, ins.Run):
            return None if self.run_layers else "--cache-run-layers=false"
        if isinstance(i, (ins.Copy, ins.Add)):
            return None if self.copy_layers else "COPY/ADD are cached with --cache-copy-layers"
        return ""  # metadata steps and WORKDIR are cheaper to redo than to look up

    def _local_inputs(self, i, scope, *, position: int) -> StepInputs | str:
        """Inputs of a step that can make a layer, also when it is not looked up (the state after it chains on
        them, see :meth:`step`); "" for metadata steps, or why its result cannot be known from its inputs."""
        keyword = i.node.keyword.upper()
        if not isinstance(i, (ins.Run, ins.Copy, ins.Add, ins.Workdir)):
            return ""
        files: dict[str, dict] = {}
        extra: dict[str, str] = {}
        args: dict[str, str] = {}
        env: dict[str, str] = {}
        if isinstance(i, ins.Run):
            run_env = {k: v for k, v in scope.run_env().items() if k not in PROXY_ARGS}
            args = hashed_values({k: v for k, v in scope.args.items() if k not in PROXY_ARGS})
            env = hashed_values(run_env)
            lookup = scope.lookup()
            for spec in i.mount_specs:
                m = parse_mount(spec, expand=lambda s: _expand(s, lookup))
                if m.type == "bind":
                    src = self.runner._source(m.from_) if m.from_ else self.runner.ctx.context
                    files[f"mount:{m.target}"] = FileTable(source_table(src, [m.source or "."],
                                                                        what="RUN --mount")).to_json()
        elif isinstance(i, ins.Add):
            local, why = [], ""
            from . import addsources as add

            for src in i.sources:
                if add.is_git(src):
                    ref = src.partition("#")[2].split(":", 1)[0]
                    if not _SHA.match(ref):
                        why = f"ADD {redact_url(src)}: a git source is cached only at a full commit id"
                    extra[f"git {redact_url(src)}"] = ref
                elif add.is_url(src):
                    if not i.checksum:
                        why = f"ADD {redact_url(src)}: a URL is cached only with --checksum"
                    extra[f"url {redact_url(src)}"] = i.checksum or ""
                else:
                    local.append(src)
            if why:
                return why
            if local:
                files["sources"] = FileTable(source_table(self.runner.ctx.context, local, what="ADD")).to_json()
        elif isinstance(i, ins.Copy):
            source: Source = self.runner._source(i.from_)
            if i.sources:
                files["sources"] = FileTable(source_table(source, list(i.sources), excludes=i.excludes)).to_json()
        instruction = {"keyword": keyword, **_jsonable(i)}
        if isinstance(i, ins.Run):
            raw = {"keyword": keyword, **_jsonable(i, redact=False)}
            if raw != instruction:  # what it downloads may depend on whose credentials: keyed, never kept
                extra["credentials in URLs"] = secret_hash("instruction", canonical(raw).decode("utf-8",
                                                                                                 "surrogateescape"))
        slot = slot_of(f"{self.runner.ctx.plan.file}:{self.stage_label}", position, keyword)
        return StepInputs(slot=slot, instruction=instruction, parent="", platform=self.platform,
                          layer_format=self.layer_format, args=args, env=env, files=files, extra=extra)

    # -- one step ------------------------------------------------------------------------------------------

    def step(self, i, scope, scope_after, *, index: int, position: int, total: int, describe: str) -> StepTiming:
        """Run step ``i`` through the cache: a hit applies the stored layer, a miss runs the step and stores
        its result. Either way the state moves on by the step's result; for a step not looked up (WORKDIR,
        COPY without --cache-copy-layers, ...), by its inputs when they are known: its layer differs from build to
        build by its timestamps alone (without --reproducible), which must not make every later step miss."""
        state = self.runner.state
        config_before = dict(state.config.inner)
        layers_before = len(state.layers)
        t0 = time.perf_counter()
        inputs = self.inputs(i, scope, position=position)
        skipped = inputs if isinstance(inputs, str) else self.not_looked_up(i)
        if skipped is not None:
            timing = self.runner.step(i, scope, scope_after, index=index)
            if skipped:
                self.cache.note(step=index, instruction=describe, key=None, result="uncached", reason=skipped,
                                lookup_seconds=0.0, seconds=time.perf_counter() - t0)
            if isinstance(inputs, StepInputs) and len(state.layers) > layers_before:
                self.state = state_after(self.state, diff_id=inputs.key())  # the inputs stand for the layer
                layers_before = len(state.layers)
        else:
            outcome = self.cache.lookup(inputs)
            looked = time.perf_counter() - t0
            if isinstance(outcome, Hit):
                log.info("step %d/%d %s: cache hit %s", index, total, _short(describe), outcome.key[7:19])
                timing = executor.apply_cached(state, self.runner.opts, outcome.layers, index=index,
                                               created_by=outcome.created_by)
                result, reason = "hit", ""
            else:
                reason = outcome.reason
                if outcome.parent_changed:
                    reason = (f"step {self.first_change} made a different result" if self.first_change else
                              "the base image, or an earlier step that is not cached, changed")
                log.info("step %d/%d %s: cache miss: %s", index, total, _short(describe), reason)
                timing = self.runner.step(i, scope, scope_after, index=index)
                layer = state.layers[-1] if len(state.layers) > layers_before else None
                if not self.first_change and outcome.stored_result != (layer.diff_id if layer else ""):
                    self.first_change = f"{index} ({_short(describe, 40)})"
                history = state.config.history[-1].get("created_by", "") if state.config.history else ""
                self.cache.record(inputs, layer, created_by=history)
                result = "miss"
            self.cache.note(step=index, instruction=describe, key=inputs.key(), result=result, reason=reason,
                            lookup_seconds=looked, seconds=time.perf_counter() - t0)
        self.advance(config_before, layers_before)
        return timing

    def advance(self, config_before: dict, layers_before: int) -> None:
        """Move the state on by what the last step did (a layer, a config change, or nothing)."""
        state = self.runner.state
        if len(state.layers) > layers_before:
            self.state = state_after(self.state, diff_id=state.layers[-1].diff_id)
        if state.config.inner != config_before:
            self.state = state_after(self.state, config=state.config.inner)


def _expand(text: str, lookup) -> str:
    from snapfs.frontend.shellwords import Lexer

    return Lexer().word(text, lookup)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."
