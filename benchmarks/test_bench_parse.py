"""Parse a 10,000-instruction Dockerfile with snapfs and with BuildKit's parser (the ``dockerfile`` package) in
the same run; print the ratio. ``SNAPFS_BENCH_SCALE`` scales the instruction count. Timings are never asserted."""
from __future__ import annotations

import os

import dockerfile as buildkit
from conftest import best_of

from snapfs.frontend.instructions import parse_instructions
from snapfs.frontend.syntax import parse

SCALE = float(os.environ.get("SNAPFS_BENCH_SCALE", "1.0"))
INSTRUCTIONS = max(100, int(10_000 * SCALE))

# 20 instructions of the kinds real files have: continuations, flags, JSON forms, key/value lists, a heredoc.
BLOCK = """\
FROM --platform=$BUILDPLATFORM golang:1.22-alpine AS build{i}
ARG VERSION=1.{i}
ENV CGO_ENABLED=0 GOFLAGS="-trimpath" VERSION=${{VERSION}}
WORKDIR /src/app{i}
ENV PATH=/out:$PATH
COPY --chown=1000:1000 go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \\
    --mount=type=cache,target=/root/.cache/go-build \\
    go mod download && go build -ldflags="-X main.version=$VERSION" -o /out/app ./cmd/app
RUN apt-get update \\
    && apt-get install -y --no-install-recommends ca-certificates curl \\
    && rm -rf /var/lib/apt/lists/*
COPY <<EOF /etc/app.conf
listen = 0.0.0.0:80{i}
EOF
LABEL org.opencontainers.image.title="app {i}" org.opencontainers.image.version=$VERSION
EXPOSE 8080/tcp 9090
USER 1000:1000
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=3s CMD ["/out/app", "health"]
ENTRYPOINT ["/out/app"]
CMD ["serve", "--port", "8080"]
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/x.tgz /x
ONBUILD COPY . /src
STOPSIGNAL SIGTERM
SHELL ["/bin/sh", "-ec"]
"""
PER_BLOCK = 20


def make_dockerfile(count: int) -> str:
    return "".join(BLOCK.format(i=i) for i in range(max(1, count // PER_BLOCK)))


def test_parse_vs_buildkit(benchmark):
    text = make_dockerfile(INSTRUCTIONS)
    nodes = len(parse(text).nodes)
    assert nodes == len(buildkit.parse_string(text)) == (INSTRUCTIONS // PER_BLOCK) * PER_BLOCK

    result = benchmark.pedantic(lambda: parse_instructions(parse(text)), rounds=3, iterations=1, warmup_rounds=1)
    assert len(result) == nodes
    ours_syntax = best_of(lambda: parse(text))
    ours_typed = best_of(lambda: parse_instructions(parse(text)))
    theirs = best_of(lambda: buildkit.parse_string(text))
    figures = {"instructions": nodes, "snapfs_syntax_s": ours_syntax, "snapfs_typed_s": ours_typed,
               "buildkit_syntax_s": theirs, "ratio_syntax": ours_syntax / theirs, "ratio_typed": ours_typed / theirs}
    for k, v in figures.items():
        benchmark.extra_info[k] = round(v, 4) if isinstance(v, float) else v
    print("\n[bench] dockerfile parse: " + ", ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
