#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, builds lattice and runs the whole test suite.
# This is the README's test command and exactly what CI runs (.ci/run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install-deps.sh
BUILD="${LATTICE_BUILD_DIR:-build}"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release ${LATTICE_CMAKE_ARGS:-}
cmake --build "$BUILD" -j"$(nproc)"
# Open MPI refuses root without these; containers need the single-copy mechanism off.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
ctest --test-dir "$BUILD" --output-on-failure -j2 ${LATTICE_CTEST_ARGS:-}
