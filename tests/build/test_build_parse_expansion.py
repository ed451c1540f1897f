"""``snapfs parse --json`` and ``snapfs build`` expand through one path (``frontend.plan.expand_stage`` /
``expand_instruction`` with the same scope rules): for a Dockerfile with ARGs in every position both see the
same expanded values. ``parse`` has no base image config, so it expands with an empty base Env; this Dockerfile
does not read the base's Env, so the two must agree exactly."""
from __future__ import annotations

import contextlib
import io
import json

from snapfs.builder import history
from snapfs.cli.main import main

DOCKERFILE = """\
ARG BASE=busybox
ARG GLOBAL=g1
FROM ${BASE} AS first
ARG GLOBAL
ARG NAME=dflt
ARG PORT=80
ARG DIR=/srv
ARG OVERRIDE=from-file
ENV GREETING=hello-${NAME} OTHER=${GLOBAL}-${OVERRIDE}
LABEL org.example.name=${NAME} org.example.${NAME}=x
WORKDIR ${DIR}/${NAME}
COPY ${NAME}.txt ${DIR}/${GLOBAL}/
EXPOSE ${PORT} 53/udp
RUN echo ${NAME} > /made
USER ${NAME}:${PORT}
STOPSIGNAL SIG${OVERRIDE:+TERM}
"""


def _parse_json(tmp_path, build_args: dict[str, str]) -> dict:
    path = tmp_path / "Dockerfile.parse"
    path.write_text(DOCKERFILE)
    argv = ["parse", "--json", str(path)]
    for k, v in build_args.items():
        argv += ["--build-arg", f"{k}={v}"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue())


def test_parse_json_and_build_expand_args_alike(run_build, tmp_path):
    build_args = {"OVERRIDE": "from-cli", "GLOBAL": "g2"}
    doc = _parse_json(tmp_path, build_args)
    steps = {i["instruction"]: i for i in doc["stages"][0]["instructions"]}
    b = run_build(DOCKERFILE, {"dflt.txt": "D"}, build_args=tuple(build_args.items()))
    c = b.config["config"]

    assert doc["stages"][0]["base"] == "busybox"  # FROM ${BASE}, from the meta ARG
    env = [f"{k}={v}" for k, v in steps["ENV"]["pairs"]]
    assert env == ["GREETING=hello-dflt", "OTHER=g2-from-cli"]
    assert [e for e in c["Env"] if e.split("=", 1)[0] in ("GREETING", "OTHER")] == env
    assert {k: v for k, v in steps["LABEL"]["pairs"]} == c["Labels"] == {"org.example.name": "dflt",
                                                                          "org.example.dflt": "x"}
    assert steps["WORKDIR"]["path"] == c["WorkingDir"] == "/srv/dflt"
    assert steps["USER"]["user"] == c["User"] == "dflt:80"
    assert steps["STOPSIGNAL"]["signal"] == c["StopSignal"] == "SIGTERM"
    assert {p if "/" in p else f"{p}/tcp" for p in steps["EXPOSE"]["ports"]} == set(c["ExposedPorts"])

    created = [h["created_by"] for h in b.config["history"]]
    copy = steps["COPY"]
    assert copy["sources"] == ["dflt.txt"] and copy["dest"] == "/srv/g2/"
    assert f"COPY dflt.txt /srv/g2/{history.SUFFIX}" in created
    run = steps["RUN"]
    assert run["shell_form"] and history.run(["/bin/sh", "-c", *run["command"]], list(run["arg_env"].items())) \
        in created, (run, created)
    assert b.read("/made") == b"dflt\n"
