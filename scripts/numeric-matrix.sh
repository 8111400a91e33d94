#!/usr/bin/env bash
# Runs the numerical tests (ctest label "numeric": kernels against references, the decoder, the
# PyTorch oracle, data parallel, layout equivalence, the mpirun CLI run) under other OpenBLAS
# kernels and thread counts than this machine's defaults, so that no tolerance fitted to one
# CPU's summation order can pass here and fail on the next machine.
#
# Debian's OpenBLAS picks its kernels at run time; OPENBLAS_CORETYPE forces another choice
# (Haswell: AVX2; SkylakeX: AVX-512; Zen: AVX2 with AMD's blocking), and the thread count
# changes how lattice's own loops and OpenBLAS split their work.
#
#   scripts/numeric-matrix.sh [BUILD_DIR]     (default: build; after scripts/run-tests.sh)
#   LATTICE_MATRIX_CORETYPES="Haswell Zen" LATTICE_MATRIX_THREADS="1" scripts/numeric-matrix.sh
#   LATTICE_MATRIX_SKIP_DEFAULT=1 ...   skip (default kernels, 1 thread): the plain suite ran it
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-${LATTICE_BUILD_DIR:-$ROOT/build}}"
CORETYPES="${LATTICE_MATRIX_CORETYPES:-default Haswell SkylakeX Zen}"
THREADS="${LATTICE_MATRIX_THREADS:-1 2}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1

failed=()
summary=()
for core in $CORETYPES; do
  for threads in $THREADS; do
    label="OPENBLAS_CORETYPE=${core} threads=${threads}"
    if [ "${LATTICE_MATRIX_SKIP_DEFAULT:-0}" = "1" ] && [ "$core" = default ] && [ "$threads" = 1 ]; then
      continue
    fi
    start=$(date +%s)
    env_core=()
    if [ "$core" != "default" ]; then env_core=(OPENBLAS_CORETYPE="$core"); fi
    if env "${env_core[@]}" LATTICE_TEST_THREADS="$threads" \
        ctest --test-dir "$BUILD" -L numeric -j2 --output-on-failure >"$BUILD/numeric-$core-$threads.log" 2>&1; then
      result="passed"
    else
      result="FAILED (log: $BUILD/numeric-$core-$threads.log)"
      failed+=("$label")
    fi
    summary+=("numeric-matrix: $label: $result in $(( $(date +%s) - start )) s")
    echo "${summary[-1]}"
  done
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "numeric-matrix: FAILED for: ${failed[*]}"
  for f in "$BUILD"/numeric-*.log; do grep -E "\*\*\*Failed|\(Failed\)|\(Timeout\)" "$f" || true; done
  exit 1
fi
echo "numeric-matrix: every combination passed"
