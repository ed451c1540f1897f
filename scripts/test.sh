#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then runs pytest against the compiled kernel
# (each kernel test also runs against the pure-Python twin). Extra arguments go to pytest, e.g. -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SNAPFS_REQUIRE_COMPILED=1
export SNAPFS_NO_SKIP=1  # every test runs here: a skip (a missing tool) fails the run
PY=${PYTHON:-python3}
"$PY" -m pytest -p no:cacheprovider "$@" tests
# The benchmarks run too, briefly (one round each), so they can't rot; figures are printed, never asserted.
SNAPFS_BENCH_SCALE=${SNAPFS_BENCH_SCALE:-0.05} "$PY" -m pytest -p no:cacheprovider -q benchmarks \
  --benchmark-disable-gc --benchmark-min-rounds=1 --benchmark-max-time=0.1 --benchmark-warmup=off
