#!/usr/bin/env bash
# Build the snapfs executor image with snapfs itself.
#
#   deploy/build-executor-image.sh [--base IMAGE] [snapfs build flags...]
#
# --base      a Debian bookworm image: a registry reference or a local layout (oci:DIR:REF);
#             default docker.io/library/debian:bookworm
# the rest    goes to `snapfs build`, e.g. --destination registry.example/snapfs/executor:0.1.0,
#             --oci-layout-path out/executor, --no-push, --reproducible
#
# Builds the wheels of snapfs (with its compiled kernel) and of its dependencies, lays out a throwaway context
# (Dockerfile, bundle.py, wheels/) and runs `python -m snapfs build` on it. PYTHON picks the interpreter (a
# CPython 3.11, the version of Debian bookworm's python3, so the compiled wheels fit the image). snapfs need not
# be installed into it: the snapfs that builds is the one just built, installed from those wheels into a
# throwaway directory.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
base=docker.io/library/debian:bookworm
if [ "${1:-}" = "--base" ]; then
  base=$2
  shift 2
fi
if [ $# -eq 0 ]; then
  echo "usage: $0 [--base IMAGE] --destination REF | --oci-layout-path DIR | --tar-path FILE [flags...]" >&2
  exit 2
fi
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "build-executor-image: $PY is not Python 3.11 (Debian bookworm's); set PYTHON" >&2; exit 2; }

ctx=$(mktemp -d "${TMPDIR:-/tmp}/snapfs-executor-context.XXXXXX")
run=$(mktemp -d "${TMPDIR:-/tmp}/snapfs-executor-builder.XXXXXX")
trap 'rm -rf "$ctx" "$run"' EXIT
echo "build-executor-image: building wheels into $ctx/wheels" >&2
"$PY" -m pip wheel -q --disable-pip-version-check --wheel-dir "$ctx/wheels" "$repo[all]" 2>&1 \
  | grep -v -E '^WARNING: (Running pip as|Location)' >&2 || true
ls "$ctx"/wheels/snapfs-*.whl >/dev/null
cp "$repo/deploy/Dockerfile" "$repo/deploy/bundle.py" "$ctx/"
# The builder: this checkout's snapfs and its dependencies from the wheels (no index), whatever $PY has installed.
"$PY" -m pip install -q --disable-pip-version-check --no-index --find-links "$ctx/wheels" --target "$run" snapfs \
  2>&1 | grep -v -E '^WARNING: (Running pip as|Location|Target directory)' >&2 || true
[ -d "$run/snapfs" ] || { echo "build-executor-image: could not install the snapfs wheel" >&2; exit 1; }
# Not exec: the EXIT trap must still remove the wheels (~30 MB) once the build is done.
PYTHONPATH="$run" "$PY" -m snapfs build --context "dir://$ctx" --dockerfile Dockerfile --build-arg "BASE=$base" "$@"
