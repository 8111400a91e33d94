#!/usr/bin/env bash
# Runs the numerical tests (ctest label "numeric": kernels against references, the decoder, the
# PyTorch oracle, data parallel, layout equivalence, checkpoints, the mpirun CLI runs) under
# other GEMM libraries, GEMM kernels and thread counts than this machine's defaults, so that no
# tolerance fitted to one CPU's summation order can pass here and fail on the next machine.
#
# Each entry is GEMM[-KERNELS]:THREADS.
#   GEMM      default (oneDNN when built in, else OpenBLAS), openblas or onednn (LATTICE_GEMM)
#   KERNELS   for openblas an OPENBLAS_CORETYPE (Debian's OpenBLAS picks its kernels at run
#             time: Haswell is AVX2, SkylakeX AVX-512, Zen AVX2 with AMD's blocking); for
#             onednn an ONEDNN_MAX_CPU_ISA cap (AVX2: no AVX-512 kernels)
#   THREADS   LATTICE_TEST_THREADS: how lattice's loops and the GEMMs split their work
# The default entry at 1 thread is what the plain suite runs; it is not repeated here.
#
#   scripts/numeric-matrix.sh [BUILD_DIR]     (default: build; after scripts/run-tests.sh)
#   LATTICE_MATRIX="openblas-Zen:1 default:2" scripts/numeric-matrix.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-${LATTICE_BUILD_DIR:-$ROOT/build}}"
MATRIX="${LATTICE_MATRIX:-default:2 openblas:1 openblas-Haswell:1 openblas-Haswell:2 openblas-SkylakeX:2 openblas-Zen:1 onednn-AVX2:2}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1

have_onednn=0
if ldd "$BUILD/lattice" 2>/dev/null | grep -q libdnnl; then have_onednn=1; fi

failed=()
for entry in $MATRIX; do
  spec="${entry%%:*}"
  threads="${entry##*:}"
  gemm="${spec%%-*}"
  kernels=""
  if [ "$spec" != "$gemm" ]; then kernels="${spec#*-}"; fi
  env_run=(LATTICE_TEST_THREADS="$threads")
  case "$gemm" in
    default) ;;
    openblas)
      env_run+=(LATTICE_GEMM=openblas)
      if [ -n "$kernels" ]; then env_run+=(OPENBLAS_CORETYPE="$kernels"); fi ;;
    onednn)
      if [ "$have_onednn" != 1 ]; then
        echo "numeric-matrix: $entry: skipped, this build has no oneDNN (CMake LATTICE_ONEDNN)"
        continue
      fi
      env_run+=(LATTICE_GEMM=onednn)
      if [ -n "$kernels" ]; then env_run+=(ONEDNN_MAX_CPU_ISA="$kernels"); fi ;;
    *) echo "numeric-matrix: unknown GEMM '$gemm' in '$entry'" >&2; exit 2 ;;
  esac
  log="$BUILD/numeric-${spec}-${threads}.log"
  start=$(date +%s)
  # The 8-rank engine, recompute and precision runs are left to stage 1 (the checkpoint test has
  # only its 8-rank run and stays): they check the same tolerances, derived for the same sums,
  # as the 4-rank runs the matrix keeps, on a larger world (more layouts), and on a slow CI
  # machine they were most of the matrix's time (engine_mpi_test_np8 alone > 600 s).
  if env "${env_run[@]}" ctest --test-dir "$BUILD" -L numeric \
      -E '(engine|recompute|precision)_mpi_test_np8$' -j2 --output-on-failure >"$log" 2>&1; then
    result="passed"
  else
    result="FAILED (log: $log)"
    failed+=("$entry")
  fi
  echo "numeric-matrix: ${env_run[*]}: $result in $(( $(date +%s) - start )) s"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "numeric-matrix: FAILED for: ${failed[*]}"
  for f in "$BUILD"/numeric-*.log; do grep -E "\*\*\*Failed|\(Failed\)|\(Timeout\)" "$f" || true; done
  exit 1
fi
echo "numeric-matrix: every combination passed"
