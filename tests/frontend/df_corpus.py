"""A corpus of realistic Dockerfiles for the differential test and the fuzzer's seeds.

``BASE`` holds hand-written files covering the syntax (every instruction, both ENV/LABEL forms, JSON and shell
forms, heredocs, flags, continuations, comments, directives). ``corpus()`` adds variants that real repositories
also contain: CRLF line ends, a BOM, lower-case keywords, extra indentation, comments and empty continuation
lines inside instructions, the backtick escape, and a file without its final newline.
"""
from __future__ import annotations

import re

BASE: dict[str, str] = {}

BASE["node_app"] = """\
# syntax=docker/dockerfile:1
FROM node:20-alpine AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev

FROM node:20-alpine AS build
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY . .
RUN npm run build

FROM node:20-alpine
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build --chown=node:node /app/dist ./dist
COPY --from=deps /app/node_modules ./node_modules
USER node
EXPOSE 3000
CMD ["node", "dist/server.js"]
"""

BASE["python_app"] = """\
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    PIP_NO_CACHE_DIR=1
RUN apt-get update \\
    && apt-get install -y --no-install-recommends build-essential libpq-dev \\
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . /srv
RUN useradd --create-home appuser
USER appuser
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD curl -fsS http://localhost:8000/health || exit 1
ENTRYPOINT ["gunicorn"]
CMD ["-b", "0.0.0.0:8000", "app:app"]
"""

BASE["go_multistage"] = """\
ARG GO_VERSION=1.22
ARG ALPINE_VERSION=3.19
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-alpine${ALPINE_VERSION} AS builder
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \\
    go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \\
    --mount=type=cache,target=/root/.cache/go-build \\
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags="-s -w" -o /out/app ./cmd/app

FROM gcr.io/distroless/static:nonroot
COPY --from=builder /out/app /app
USER nonroot:nonroot
ENTRYPOINT ["/app"]
"""

BASE["nginx_static"] = """\
FROM nginx:1.25-alpine
LABEL maintainer="web team <web@example.com>"
LABEL org.opencontainers.image.source="https://github.com/example/site" \\
      org.opencontainers.image.licenses=MIT
COPY nginx.conf /etc/nginx/nginx.conf
COPY --chmod=0644 public/ /usr/share/nginx/html/
EXPOSE 80 443
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
"""

BASE["java_maven"] = """\
FROM maven:3.9-eclipse-temurin-21 AS build
WORKDIR /workspace
COPY pom.xml .
RUN mvn -B -q dependency:go-offline
COPY src ./src
RUN mvn -B -q package -DskipTests

FROM eclipse-temurin:21-jre
VOLUME /tmp
ARG JAR_FILE=/workspace/target/*.jar
COPY --from=build ${JAR_FILE} app.jar
ENTRYPOINT ["java", "-XX:+UseContainerSupport", "-jar", "/app.jar"]
"""

BASE["rust_cargo"] = """\
FROM rust:1.77 AS chef
RUN cargo install cargo-chef
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN cargo build --release --bin server

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=builder /app/target/release/server /usr/local/bin/server
ENTRYPOINT ["/usr/local/bin/server"]
"""

BASE["heredocs"] = """\
# syntax=docker/dockerfile:1.4
FROM alpine:3.19
RUN <<EOF
set -e
apk add --no-cache curl jq
echo "installed"
EOF
RUN <<-EOT sh -ex
\techo "tabs are stripped"
\tEOT
COPY <<EOF /etc/app.conf
listen = 0.0.0.0:8080
user = ${USER:-app}
EOF
COPY <<'EOF' /usr/local/bin/entry
#!/bin/sh
exec "$@"
EOF
RUN <<FILE1 cat > /file1 && <<FILE2 cat > /file2
content one
FILE1
content two
FILE2
RUN python3 <<PY
print("hi")
PY
"""

BASE["all_instructions"] = """\
ARG BASE=ubuntu:22.04
FROM ${BASE} AS base
MAINTAINER Someone <someone@example.com>
LABEL a=1 b="two words" c='single'
LABEL old form value
ENV ONE=1 TWO="2 2"
ENV THREE three three
ARG FOUR=4
ARG FIVE
RUN echo "$ONE $TWO $THREE $FOUR"
RUN ["/bin/bash", "-c", "echo exec form"]
CMD echo shell form cmd
CMD ["exec", "form"]
ENTRYPOINT /bin/entry --flag
ENTRYPOINT ["/bin/entry"]
EXPOSE 80 443/tcp 53/udp 8000-8100
VOLUME /data
VOLUME ["/a", "/b"]
USER 1000:1000
WORKDIR /work
ONBUILD COPY . /app
ONBUILD RUN make -C /app
STOPSIGNAL SIGTERM
HEALTHCHECK NONE
HEALTHCHECK --start-period=10s --start-interval=1s CMD ["/healthcheck"]
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ADD https://example.com/file.tar.gz /tmp/
ADD --chown=1000:1000 --chmod=755 local.tar.gz /opt/
COPY ["a b", "/dest/"]
"""

BASE["copy_add_flags"] = """\
FROM alpine AS source
FROM alpine
COPY --from=source --link /etc/hosts /hosts
COPY --parents ./src/**/*.go /build/
COPY --exclude=*.md --exclude=docs/ . /app/
COPY --chmod=u=rwx,g=rx,o= script.sh /usr/local/bin/
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/a /a
ADD --keep-git-dir=true https://github.com/moby/buildkit.git#v0.12.0 /buildkit
ADD --link --unpack=true archive.tar.xz /opt/
COPY --from=nginx:latest /etc/nginx/nginx.conf /nginx.conf
COPY -- --weird-name /dest
"""

BASE["run_mounts"] = """\
FROM golang:1.22
RUN --mount=type=bind,source=.,target=/src,rw go build ./...
RUN --mount=type=cache,id=apt,target=/var/cache/apt,sharing=locked \\
    --mount=type=cache,target=/var/lib/apt,sharing=locked \\
    apt-get update && apt-get install -y git
RUN --mount=type=tmpfs,target=/tmp,size=100m make test
RUN --mount=type=secret,id=aws,target=/root/.aws/credentials aws s3 ls
RUN --mount=type=secret,id=token,env=TOKEN,required=true ./publish.sh
RUN --mount=type=ssh git clone git@github.com:org/private.git
RUN --network=none --security=sandbox ./offline-test
RUN --mount="type=cache,target=/root/.cache/pip" pip install -r requirements.txt
"""

BASE["comments_everywhere"] = """\
# This is a comment
   # indented comment
FROM debian:12 # not a comment: part of the arguments? no: FROM takes words

RUN apt-get update && \\
    # comment lines inside a continuation are skipped
    apt-get install -y \\
        curl \\
        # another one
        wget \\
    && rm -rf /var/lib/apt/lists/*

# trailing comment
"""

BASE["escape_backtick"] = """\
# escape=`
FROM mcr.microsoft.com/windows/servercore:ltsc2022
SHELL ["powershell", "-Command", "$ErrorActionPreference = 'Stop';"]
RUN New-Item -ItemType Directory C:\\app ; `
    Write-Host 'created'
COPY app\\ C:\\app\\
WORKDIR C:\\app
ENV PATH="C:\\app\\bin;${PATH}"
CMD ["C:\\\\app\\\\app.exe"]
"""

BASE["json_fallback"] = """\
FROM alpine
CMD [not json]
CMD ["unterminated
ENTRYPOINT ["ok", "json"]
RUN [ "spaced" , "array" ]
CMD []
RUN ["with \\"escaped\\" quotes", "\\u00e9"]
VOLUME [bad json
COPY [ "src" , "dst" ]
"""

BASE["env_label_forms"] = """\
FROM busybox
ENV A=1
ENV B 2
ENV C=3 D=4 E="five five"
ENV F="with \\"quotes\\"" G=with\\ escape
ENV H=${A}_$B I=${UNSET:-default}
ENV J one two three
LABEL "quoted.key"="value" plain=value
LABEL com.example.multi="line one" \\
      com.example.other="line two"
LABEL key value with spaces
"""

BASE["arg_forms"] = """\
ARG A
ARG B=default
ARG C="quoted value" D=plain
FROM alpine:${B}
ARG A
ARG E=$B-suffix
ARG F=${A:-fallback}
RUN echo $A $B $E $F
"""

BASE["healthchecks"] = """\
FROM alpine
HEALTHCHECK --interval=5m --timeout=3s CMD curl -f http://localhost/ || exit 1
HEALTHCHECK --interval=1h30m --retries=10 CMD ["wget", "-q", "--spider", "http://localhost"]
HEALTHCHECK --start-period=0s CMD true
HEALTHCHECK NONE
"""

BASE["onbuild"] = """\
FROM python:3.12
ONBUILD COPY requirements.txt /usr/src/app/
ONBUILD RUN pip install --no-cache-dir -r requirements.txt
ONBUILD COPY . /usr/src/app
ONBUILD ENV APP_HOME=/usr/src/app
ONBUILD WORKDIR /usr/src/app
ONBUILD RUN ["make", "install"]
"""

BASE["php_apache"] = """\
FROM php:8.3-apache
RUN docker-php-ext-install pdo pdo_mysql opcache
RUN a2enmod rewrite headers
COPY --chown=www-data:www-data . /var/www/html/
ENV APACHE_DOCUMENT_ROOT /var/www/html/public
RUN sed -ri -e 's!/var/www/html!${APACHE_DOCUMENT_ROOT}!g' /etc/apache2/sites-available/*.conf
EXPOSE 80
"""

BASE["ruby_rails"] = """\
ARG RUBY_VERSION=3.3.0
FROM registry.docker.com/library/ruby:$RUBY_VERSION-slim AS base
WORKDIR /rails
ENV RAILS_ENV="production" \\
    BUNDLE_DEPLOYMENT="1" \\
    BUNDLE_PATH="/usr/local/bundle" \\
    BUNDLE_WITHOUT="development"

FROM base AS build
RUN apt-get update -qq && \\
    apt-get install --no-install-recommends -y build-essential git libvips pkg-config
COPY Gemfile Gemfile.lock ./
RUN bundle install && \\
    rm -rf ~/.bundle/ "${BUNDLE_PATH}"/ruby/*/cache "${BUNDLE_PATH}"/ruby/*/bundler/gems/*/.git
COPY . .
RUN SECRET_KEY_BASE_DUMMY=1 ./bin/rails assets:precompile

FROM base
COPY --from=build /usr/local/bundle /usr/local/bundle
COPY --from=build /rails /rails
RUN useradd rails --create-home --shell /bin/bash && \\
    chown -R rails:rails db log storage tmp
USER rails:rails
ENTRYPOINT ["/rails/bin/docker-entrypoint"]
EXPOSE 3000
CMD ["./bin/rails", "server"]
"""

BASE["dotnet"] = """\
FROM mcr.microsoft.com/dotnet/sdk:8.0 AS build
ARG TARGETARCH
WORKDIR /source
COPY *.csproj .
RUN dotnet restore -a $TARGETARCH
COPY . .
RUN dotnet publish -a $TARGETARCH --no-restore -o /app

FROM mcr.microsoft.com/dotnet/aspnet:8.0
EXPOSE 8080
WORKDIR /app
COPY --from=build /app .
USER $APP_UID
ENTRYPOINT ["./aspnetapp"]
"""

BASE["scratch_static"] = """\
FROM scratch
ADD rootfs.tar.xz /
COPY --chown=0:0 bin/ /bin/
ENV PATH=/bin
CMD ["/bin/sh"]
"""

BASE["flags_edge"] = """\
FROM --platform=linux/amd64 alpine AS amd
FROM --platform=$TARGETPLATFORM alpine
RUN --network=default   echo   spaced   out
COPY   --from=amd   /a   /b
RUN --mount=type=bind,from=amd,source=/etc,target=/mnt/etc cat /mnt/etc/os-release
RUN -- echo after double dash
RUN --network=none -- --looks-like-flag
"""

BASE["continuations"] = """\
FROM alpine
RUN set -eux; \\
    apk add --no-cache \\
        bash \\
        ca-certificates \\
        tzdata; \\
    echo done
LABEL a=1 \\
      b=2 \\
      c=3
ENV LONG="a \\
b \\
c"
RUN echo one \\
\\
    two
CMD ["a", \\
     "b"]
"""

BASE["expose_variants"] = """\
FROM alpine
EXPOSE 80
EXPOSE 80/tcp 80/udp
EXPOSE 7000-7010/tcp
EXPOSE ${PORT}
EXPOSE 8080 8443 9090/udp
"""

BASE["user_workdir_volume"] = """\
FROM alpine
USER root
USER 1001
USER app:staff
WORKDIR /
WORKDIR relative/path
WORKDIR $HOME/src
VOLUME /var/lib/data /var/log
VOLUME ["/srv/one", "/srv/two"]
"""

BASE["shell_variants"] = """\
FROM mcr.microsoft.com/powershell
SHELL ["pwsh", "-Command"]
RUN Write-Output hello
SHELL ["/bin/sh", "-c"]
RUN echo back to sh
SHELL [ "/bin/bash", "-euo", "pipefail", "-c" ]
"""

BASE["many_stages_targets"] = """\
FROM alpine AS base
RUN apk add --no-cache bash

FROM base AS test
COPY . /src
RUN /src/run-tests.sh

FROM base AS lint
COPY . /src
RUN /src/lint.sh

FROM base AS release
COPY --from=test /src/out /out
COPY --from=lint /src/report /report
CMD ["/out/app"]
"""

BASE["quotes_in_shell_form"] = """\
FROM alpine
RUN echo "double quoted $HOME" 'single quoted $HOME' \\$escaped
RUN echo "multi \\
line"
CMD echo "it's fine"
ENTRYPOINT ["sh", "-c", "echo \\"$0\\""]
"""

BASE["tabs_and_spaces"] = "FROM\talpine\nRUN\techo\ttabbed\n   ENV   A=1   B=2\nCOPY\t\ta\t\tb\n"

BASE["heredoc_variants"] = """\
FROM ubuntu
RUN <<"EOF" bash
echo "$HOME is literal here"
EOF
RUN cat <<EOF > /etc/motd
Welcome $USER
EOF
COPY --chmod=755 <<EOF /usr/local/bin/hello
#!/bin/sh
echo hello
EOF
RUN <<EOF
EOF
"""

BASE["arg_before_from_many"] = """\
ARG REGISTRY=docker.io
ARG IMAGE=library/alpine
ARG TAG=latest
FROM ${REGISTRY}/${IMAGE}:${TAG} AS base
ARG TAG
LABEL tag=${TAG}
FROM ${REGISTRY}/library/busybox
"""

BASE["stopsignal_maintainer"] = """\
FROM alpine
MAINTAINER a@b.c
STOPSIGNAL 9
STOPSIGNAL SIGRTMIN+3
STOPSIGNAL sigkill
"""

BASE["unicode"] = """\
FROM alpine
LABEL description="Ünïcödé ✓ 日本語"
ENV GREETING=héllo
RUN echo "ça marche" > /tmp/ünï
COPY ["données.txt", "/data/données.txt"]
"""

BASE["windows_paths"] = """\
FROM mcr.microsoft.com/windows/nanoserver:ltsc2022
COPY ["app\\\\", "C:\\\\app"]
WORKDIR C:/app
CMD ["app.exe"]
"""

BASE["directives_only_syntax"] = """\
# syntax = docker/dockerfile:1.7-labs
# check = error=true
FROM alpine
COPY --parents --exclude=*.tmp a/b/ /dst/
"""

BASE["empty_lines_at_end"] = "FROM alpine\nRUN true\n\n\n\n"

BASE["add_variants"] = """\
FROM alpine
ADD file.txt /dest/
ADD *.tar.gz /archives/
ADD --chown=user:group --chmod=0600 secrets/ /secrets/
ADD git@github.com:org/repo.git /repo
ADD ["with space.txt", "/dst/"]
ADD --exclude=*.log --exclude=tmp/ dir/ /dir/
"""

BASE["heredoc_edge"] = """\
FROM alpine
RUN <<E"O"F cat
partly quoted $HOME
EOF
RUN cat <<EOF <<-EOT
one
EOF
\ttwo
\tEOT
COPY <<A <<B /dir/
a
A
b
B
RUN <<EOF
  EOF
not the end: the terminator must be alone on its line
EOF
RUN echo "<<NOT" && echo done
RUN ["sh", "-c", "cat <<EOF"]
ADD <<EOF /added
added
EOF
RUN <<EOF bash -ex
echo "\\$escaped"
EOF
"""


def _lowercase(text: str) -> str:
    return re.sub(r"(?m)^(\s*)(FROM|RUN|COPY|ENV|WORKDIR|CMD|LABEL|EXPOSE|USER|ARG)\b",
                  lambda m: m.group(1) + m.group(2).lower(), text)


def _indent(text: str) -> str:
    # Indents instruction lines only: heredoc bodies and continuation lines keep their meaning either way.
    return re.sub(r"(?m)^(FROM|WORKDIR|EXPOSE|USER|LABEL) ", r"  \1   ", text)


def _comment_in_continuation(text: str) -> str:
    return text.replace(" \\\n", " \\\n# inserted comment\n", 1)


def _empty_continuation(text: str) -> str:
    return text.replace(" \\\n", " \\\n\n", 1)


def _no_final_newline(text: str) -> str:
    return text.rstrip("\n")


VARIANTS = {
    "crlf": lambda t: t.replace("\n", "\r\n"),
    "bom": lambda t: "\ufeff" + t,
    "lower": _lowercase,
    "indent": _indent,
    "comment_cont": _comment_in_continuation,
    "empty_cont": _empty_continuation,
    "no_eol": _no_final_newline,
}


def corpus() -> dict[str, str]:
    """Every base file plus its variants: name -> text."""
    out = dict(BASE)
    for name, text in BASE.items():
        for vname, fn in VARIANTS.items():
            variant = fn(text)
            if variant != text:
                out[f"{name}~{vname}"] = variant
    return out
