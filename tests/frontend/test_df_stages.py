"""Stages, scopes and expansion through the public API the builder uses."""
from __future__ import annotations

import pytest

from snapfs.errors import DockerfileError
from snapfs.frontend.instructions import Env, Run, Workdir
from snapfs.frontend.plan import Scope, expand_instruction, expand_stage, onbuild_instructions, plan_build

AMD64 = {"target_platform": "linux/amd64", "build_platform": "linux/amd64"}


def test_base_image_env_is_used_and_env_beats_arg():
    plan = plan_build("FROM golang\nARG GOPATH=/from-arg\nWORKDIR $GOPATH/src\nENV GOPATH=/env\nWORKDIR $GOPATH\n",
                      **AMD64)
    steps, scope = expand_stage(plan, 0, base_env=[("GOPATH", "/go"), ("PATH", "/usr/bin")])
    workdirs = [s.instruction.path for s in steps if isinstance(s.instruction, Workdir)]
    assert workdirs == ["/go/src", "/env"]  # the image's ENV wins over the stage's ARG of the same name
    assert dict(scope.env) == {"GOPATH": "/env", "PATH": "/usr/bin"}


def test_run_env_holds_args_env_and_proxies_but_is_taken_before_the_instruction():
    plan = plan_build("FROM alpine\nARG A=1\nRUN echo\nENV B=2\nRUN echo\n", build_args={"https_proxy": "p"},
                      **AMD64)
    steps, _ = expand_stage(plan, 0)
    runs = [dict(s.env) for s in steps if isinstance(s.instruction, Run)]
    assert runs == [{"https_proxy": "p", "A": "1"}, {"https_proxy": "p", "A": "1", "B": "2"}]


def test_env_instruction_expands_against_the_scope_before_it():
    scope = Scope(env=(("abc", "hello"),))
    ins, after = expand_instruction(plan_build("FROM a\nENV abc=bye def=$abc\n", **AMD64).stages[0].instructions[0],
                                    scope)
    assert isinstance(ins, Env) and ins.pairs == (("abc", "bye"), ("def", "hello"))
    assert dict(after.env) == {"abc": "bye", "def": "hello"}


def test_stage_lookup_by_name_or_index_case_insensitive():
    plan = plan_build("FROM alpine AS Build\nFROM build\nCOPY --from=BUILD /a /b\n", **AMD64)
    assert plan.find_stage("BUILD") is plan.stages[0]
    assert plan.find_stage("1") is plan.stages[1]
    assert plan.find_stage("nope") is None
    assert plan.stages[1].base_stage == 0 and plan.stages[1].deps == (0,)


def test_copy_from_refuses_variables_as_buildkit_does():
    with pytest.raises(DockerfileError) as info:
        plan_build("FROM alpine AS v2\nFROM alpine\nARG S=v2\nCOPY --from=$S /a /b\n", **AMD64)
    assert info.value.message == ("Dockerfile:4:1: variable expansion is not supported for --from, define a new "
                                  "stage with FROM using ARG from global scope as a workaround")


def test_copy_from_a_later_stage_is_refused():
    with pytest.raises(DockerfileError) as info:
        plan_build("FROM alpine AS first\nCOPY --from=second /a /b\nFROM alpine AS second\n", target="first",
                   **AMD64)
    assert info.value.message == ('Dockerfile:2:1: cannot copy from stage "second", it needs to be defined before '
                                  'current stage "first"')


def test_cycles_through_mounts_are_found():
    with pytest.raises(DockerfileError) as info:
        plan_build("FROM alpine AS a\nRUN --mount=from=b,target=/b true\nFROM a AS b\n", **AMD64)
    assert info.value.message == "Dockerfile:1:1: circular dependency detected on stage: a"


def test_cycles_among_unneeded_stages_are_errors_too():
    with pytest.raises(DockerfileError) as info:
        plan_build("FROM alpine AS x\nCOPY --from=y /a /a\nFROM alpine AS y\nCOPY --from=x /b /b\nFROM alpine\n",
                   **AMD64)
    assert info.value.message == "Dockerfile:1:1: circular dependency detected on stage: x"


def test_unused_stages_are_not_needed_even_if_broken_refs_are_images():
    plan = plan_build("FROM alpine AS a\nFROM private.registry/x AS b\nFROM a\n", **AMD64)
    assert plan.needed == (0, 2)
    assert plan.stages[1].base == "private.registry/x"


def test_build_args_not_declared_are_reported():
    plan = plan_build("ARG USED\nFROM alpine\nARG ALSO\n", build_args={"USED": "1", "ALSO": "2", "EXTRA": "3",
                                                                       "HTTP_PROXY": "p"}, **AMD64)
    assert plan.unused_build_args == ("EXTRA",)


def test_scope_size_is_bounded():
    # Each value stays under the 1 MiB expansion limit; A (512 Ki) plus B0..B7 (1 Mi each) pass 8 MiB at B7.
    text = "FROM alpine\nENV A=" + "x" * 64 + "\n" + "ENV A=$A$A\n" * 13 + "".join(
        f"ENV B{i}=$A$A\n" for i in range(9))
    with pytest.raises(DockerfileError) as info:
        plan_build(text, **AMD64)
    assert info.value.message == "Dockerfile:23:1: ARG and ENV values exceed 8388608 characters"


def test_onbuild_triggers_parse_into_instructions():
    got = onbuild_instructions(["COPY . /app/src", "RUN make -C /app/src", "RUN <<EOF\necho hi\nEOF"])
    assert [type(i).__name__ for i in got] == ["Copy", "Run", "Run"]
    assert got[2].heredocs[0].data == "echo hi\n"
    with pytest.raises(DockerfileError) as info:
        onbuild_instructions(["RUN ok", "FROM alpine"])
    assert info.value.message == "<base image ONBUILD>:2:1: FROM isn't allowed as an ONBUILD trigger"
    with pytest.raises(DockerfileError) as info:
        onbuild_instructions(["BOGUS"])
    assert info.value.message == "<base image ONBUILD>:1:1: unknown instruction: BOGUS"


def test_onbuild_expression_round_trips_through_onbuild_instructions():
    plan = plan_build("FROM alpine\nONBUILD RUN <<EOF\necho child\nEOF\nONBUILD COPY --chown=1:1 a b\n", **AMD64)
    expressions = [i.expression for i in plan.stages[0].instructions]
    assert expressions == ["RUN <<EOF\necho child\nEOF", "COPY --chown=1:1 a b"]
    triggers = onbuild_instructions(expressions)
    assert triggers[0].heredocs[0].data == "echo child\n" and triggers[1].chown == "1:1"


def test_required_args():
    text = "ARG --required TOKEN\nFROM alpine\nARG --required=true LEVEL\nARG --required=false OPTIONAL\n"
    with pytest.raises(DockerfileError) as info:
        plan_build(text, **AMD64)
    assert info.value.message == 'Dockerfile:1:1: missing required argument "TOKEN"'
    with pytest.raises(DockerfileError) as info:  # found while planning, before any step runs
        plan_build(text, build_args={"TOKEN": "t"}, **AMD64)
    assert info.value.message == 'Dockerfile:3:1: missing required argument "LEVEL"'
    steps, scope = expand_stage(plan_build(text, build_args={"TOKEN": "t", "LEVEL": "2"}, **AMD64), 0)
    assert dict(scope.args) == {"LEVEL": "2"}


def test_scope_updates_share_layers_and_stay_shallow():
    # Guards the linear cost of long stages: an update adds a layer instead of copying, and layers are flattened.
    scope = Scope(env={"BASE": "1"})
    for i in range(100):
        scope = scope.with_env([(f"K{i}", "v")])
        assert len(getattr(scope.env, "maps", [scope.env])) <= 16
    assert scope.lookup()["K99"] == "v" and scope.lookup()["BASE"] == "1"
    assert scope.size == len("BASE1") + sum(len(f"K{i}v") for i in range(100))
    assert scope.with_env([("BASE", "22")]).size == scope.size + 1
