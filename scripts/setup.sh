#!/usr/bin/env bash
# Installs everything snapfs and its tests need on a fresh Debian 12 machine (idempotent, quiet when done).
set -euo pipefail
cd "$(dirname "$0")/.."

# Every program the tests run is in tests/toolcheck.py (checked at the start of the suite); its apt packages here.
APT_PKGS=(docker-registry skopeo umoci buildah busybox-static apache2-utils libcap2-bin attr openssl git tar
          zstd xz-utils bzip2 debootstrap gcc libc6-dev libseccomp2 bash coreutils e2fsprogs mount util-linux)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Azurite (Microsoft's Azure Storage emulator) for the build-context tests; npm only when it is missing.
if ! command -v azurite-blob >/dev/null 2>&1; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup: apt-get install nodejs npm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  echo "setup: npm install -g azurite@3"
  npm install -g --silent azurite@3 >/dev/null
fi

PY=${PYTHON:-python3}
# Editable install compiles the Cython kernel in place (src/snapfs/_fast*.so).
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -E '^(WARNING: (Running pip as|Location))' || true
"$PY" -c 'import snapfs._fast' || { echo "setup: the compiled kernel snapfs._fast did not build" >&2; exit 1; }
