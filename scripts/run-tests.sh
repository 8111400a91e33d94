#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, builds lattice and runs every test. This is the README's
# test command and exactly what CI runs (.ci/run). Stages, each of which must pass:
#   1. the Release build and the whole ctest suite (unit, mpi, python, numeric labels);
#   2. the numerical tests again under other GEMM libraries, kernels and thread counts
#      (scripts/numeric-matrix.sh), so no tolerance fitted to this CPU passes;
#   3. every libFuzzer target for a bounded time (scripts/fuzz.sh);
#   4. the suite under ASan + UBSan + LeakSanitizer (scripts/run-sanitizers.sh).
# LATTICE_QUICK=1 runs stage 1 only (for a quick local check; CI runs everything).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install-deps.sh
BUILD="${LATTICE_BUILD_DIR:-build}"
stage() { echo; echo "=== run-tests: $* ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"; }

stage "1/4 build and ctest"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release ${LATTICE_CMAKE_ARGS:-}
cmake --build "$BUILD" -j"$(nproc)"
# Open MPI refuses root without these; containers need the single-copy mechanism off.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
# The `slurm` tests submit real jobs to a one-node Slurm on this machine (cluster/slurm/local/),
# up for this ctest only and stopped however it ends. --cpus 8: they run 4 tasks per job, two
# jobs at once under -j2, which Slurm refuses on a 2-core node declared as it is. Required here:
# a Slurm that does not answer fails them instead of skipping them.
bash cluster/slurm/local/start.sh --cpus 8
trap 'bash cluster/slurm/local/stop.sh' EXIT
SLURM_CONF="${LATTICE_SLURM_DIR:-/tmp/lattice-slurm}/slurm.conf" LATTICE_REQUIRE_SLURM=1 \
  ctest --test-dir "$BUILD" --output-on-failure -j2 -LE calibration ${LATTICE_CTEST_ARGS:-}
bash cluster/slurm/local/stop.sh
trap - EXIT
if [ "${LATTICE_QUICK:-0}" = "1" ]; then
  echo "run-tests: LATTICE_QUICK=1: stages 2-4 skipped"
  exit 0
fi

stage "2/4 numerical tests under other GEMM libraries, kernels and thread counts"
# Stage 1 already ran the default kernels with the default threads.
bash scripts/numeric-matrix.sh "$BUILD"

stage "3/4 fuzz targets"
bash scripts/fuzz.sh "${LATTICE_FUZZ_SECONDS:-20}"

stage "4/4 ASan + UBSan + LSan"
bash scripts/run-sanitizers.sh
stage "all stages passed"
