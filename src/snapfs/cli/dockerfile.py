"""``snapfs parse DOCKERFILE``: show the typed instructions of each stage and which stages a target needs.

Needed stages are expanded through ``frontend.plan.expand_plan``, the builder's own expansion path and scope
rules; without a base image to pull, a base's Env is empty and its ONBUILD triggers are not run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from snapfs.errors import InputError, UsageError
from snapfs.frontend.plan import Plan, expand_plan, plan_build
from snapfs.frontend.syntax import parse

MAX_DOCKERFILE = 16 << 20  # bytes


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("parse", help="parse a Dockerfile and print its stages and instructions",
                              description="Parse a Dockerfile like `docker build` would and print the typed "
                                          "instructions per stage; stages the target does not need are marked.")
    p.add_argument("dockerfile", metavar="DOCKERFILE", help="path to the Dockerfile ('-' for stdin)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--target", metavar="STAGE", help="build stage to stop at (default: the last one)")
    p.add_argument("--build-arg", metavar="K=V", action="append", default=[],
                   help="set a build-time variable (bare K takes its value from the environment)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="target platform (default: this machine)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text, name = _read(args.dockerfile)
    build_args = {}
    for item in args.build_arg:
        key, has_value, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid --build-arg {item!r}: expected K=V")
        if has_value:
            build_args[key] = value
        elif key in os.environ:
            build_args[key] = os.environ[key]
    df = parse(text, file=name)
    plan = plan_build(df, build_args=build_args, target=args.target, target_platform=args.platform)
    doc = plan_to_json(plan, directives=dict(df.directives), warnings=list(df.warnings))
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=False, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(_text(doc))
    return 0


def _read(path: str) -> tuple[bytes, str]:
    if path == "-":
        data = sys.stdin.buffer.read(MAX_DOCKERFILE + 1)
        name = "<stdin>"
    else:
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_DOCKERFILE + 1)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None
        name = path
    if len(data) > MAX_DOCKERFILE:
        raise InputError(f"{name}: larger than {MAX_DOCKERFILE} bytes")
    return data, name


def plan_to_json(plan: Plan, *, directives: dict[str, str] | None = None,
                 warnings: list[str] | None = None) -> dict:
    """A JSON-able view of the plan: needed stages with expanded instructions, others as written."""
    expanded = expand_plan(plan)
    stages = []
    for stage in plan.stages:
        steps = expanded.get(stage.index)
        if steps is not None:
            items = []
            for step in steps:
                item = instruction_to_json(step.instruction)
                if item["instruction"] == "RUN":
                    # ENV values are shown by the ENV instructions; repeating the whole environment on every RUN
                    # would make the output quadratic in the number of ENV lines.
                    item["arg_env"] = step.scope.arg_env()
                items.append(item)
        else:
            items = [instruction_to_json(i) for i in stage.instructions]
        stages.append({
            "index": stage.index,
            "name": stage.name,
            "base": stage.base,
            "base_stage": stage.base_stage,
            "platform": stage.platform,
            "line": stage.from_.node.start_line,
            "needed": steps is not None,
            "depends_on": list(stage.deps),
            "instructions": items,
        })
    return {
        "file": plan.file,
        "escape": plan.escape,
        "directives": directives or {},
        "meta_args": [{"name": k, "value": v} for k, v in plan.meta_args],
        "target": plan.stages[plan.target].display_name,
        "build_order": [plan.stages[i].display_name for i in plan.needed],
        "unused_build_args": list(plan.unused_build_args),
        "warnings": warnings or [],
        "stages": stages,
    }


def instruction_to_json(ins: object) -> dict:
    node = ins.node  # type: ignore[attr-defined]
    out: dict[str, object] = {"instruction": node.keyword, "line": node.start_line, "end_line": node.end_line}
    for f in dataclasses.fields(ins):  # type: ignore[arg-type]
        if f.name != "node":
            out[f.name.rstrip("_")] = _jsonable(getattr(ins, f.name))
    return out


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value):
        return {f.name.rstrip("_"): _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _text(doc: dict) -> str:
    lines = []
    for arg in doc["meta_args"]:
        lines.append(f"ARG {arg['name']}" + ("" if arg["value"] is None else f"={arg['value']}"))
    for st in doc["stages"]:
        mark = "build" if st["needed"] else "skip"
        name = f" AS {st['name']}" if st["name"] else ""
        plat = f" --platform={st['platform']}" if st["platform"] else ""
        lines.append(f"[{mark}] stage {st['index']}: FROM{plat} {st['base']}{name} (line {st['line']})")
        for ins in st["instructions"]:
            fields = {k: v for k, v in ins.items() if k not in ("instruction", "line", "end_line")}
            lines.append(f"  {ins['line']}: {ins['instruction']} {json.dumps(fields, ensure_ascii=False)}")
    lines.append(f"target: {doc['target']}; build order: {', '.join(doc['build_order'])}")
    if doc["unused_build_args"]:
        lines.append(f"warning: build args not consumed: {', '.join(doc['unused_build_args'])}")
    for warning in doc["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines) + "\n"
