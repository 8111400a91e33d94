#!/usr/bin/env bash
# The one-shot GPU check (issue 11): everything a lent GPU must prove, in one call that fits the
# lease (about 9 minutes of work, each step under its own timeout), logs under $OUT and a short
# table printed last (the device tool returns the end of the output).
#
#   on this machine:  scripts/gpu-bundle.sh            (builds for sm_90a, packs the libraries)
#                     OUT=/tmp/gpu-out bash tests/gpu/run.sh   (rehearsal: no GPU, steps skip)
#   on the GPU:       device run, carry ["gpu-bundle.tar.gz"], command "bash tests/gpu/run.sh"
#
# Steps: device facts (nvidia-smi, the toolkit); the op tests (every CUDA op against the CPU
# backend, tests/kernels/cuda_backend_test.cc); the device communicators as a world of one (the
# machine has no MPI): the staged one over Self and NCCL on the GPU
# (tests/parallel/*_communicator_mpi_test.cc, with the machine's own libnccl); the op tests under
# compute-sanitizer memcheck; the copy bandwidth and fp32/TF32 GEMM ceilings (the figures
# docs/performance.md needs). Training
# runs and the PyTorch comparison join when the decoder runs on the CUDA backend (issue 11:
# not yet); the table says so instead of reporting nothing.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${OUT:-/tmp/lattice-gpu-out}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
declare -a ROWS=()
row() { ROWS+=("$(printf '%-34s %-9s %s' "$1" "$2" "$3")"); }

echo "== lattice GPU check $(date -u +%FT%TZ) on $(hostname)" | tee "$OUT/summary.log"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv > "$OUT/device.csv" 2>&1
  GPU="$(tail -n 1 "$OUT/device.csv")"
else
  GPU="none (no nvidia-smi)"
fi
row "device" "info" "$GPU"
( command -v nvcc > /dev/null && nvcc --version | tail -n 1 ) > "$OUT/toolkit.txt" 2>&1
row "toolkit" "info" "$(head -c 60 "$OUT/toolkit.txt" 2>/dev/null)"

# The binaries: the carried bundle (scripts/gpu-bundle.sh), else a build dir given in $BUILD.
if [ -f "$ROOT/gpu-bundle.tar.gz" ]; then
  tar -C "$WORK" -xzf "$ROOT/gpu-bundle.tar.gz"
  BIN="$WORK/gpu-bundle/bin"
  CUDA_LIBS=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib; do [ -d "$d" ] && CUDA_LIBS="$CUDA_LIBS$d:"; done
  export LD_LIBRARY_PATH="$WORK/gpu-bundle/lib:${CUDA_LIBS}${LD_LIBRARY_PATH:-}"
  row "binaries" "bundle" "commit $(head -c 12 "$WORK/gpu-bundle/COMMIT")"
elif [ -n "${BUILD:-}" ] && [ -x "$BUILD/tests/kernels_cuda_backend_test" ]; then
  BIN="$BUILD/tests"
  row "binaries" "build" "$BUILD"
else
  row "binaries" "MISSING" "run scripts/gpu-bundle.sh first (or set BUILD=build dir)"
  printf '%s\n' "${ROWS[@]}" | tee -a "$OUT/summary.log"
  exit 1
fi

# A step: name, timeout in seconds, log file, command...; its status goes into the table.
step() {
  local name="$1" limit="$2" log="$3"
  shift 3
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$log" 2>&1
  local rc=$?
  local secs=$((SECONDS - t0))
  local status=ok
  if [ $rc -eq 124 ]; then status=TIMEOUT; elif [ $rc -ne 0 ]; then status=FAIL; fi
  if [ $rc -eq 0 ] && grep -q "SKIPPED \]" "$OUT/$log" && ! grep -q "PASSED  \] [1-9]" "$OUT/$log"; then
    status=skipped
  fi
  row "$name" "$status" "${secs}s, $log: $(grep -E 'PASSED|FAILED|SKIPPED|no GPU|ERROR SUMMARY' "$OUT/$log" | head -n 2 | tr '\n' ' ' | head -c 90)"
}

OPS="$BIN/kernels_cuda_backend_test"
step "op tests (cuda vs cpu)" 300 ops.log "$OPS" --gtest_output="json:$OUT/ops.json"

# The communicators on device buffers, as a world of one. NCCL is not in the bundle (too big):
# the machine's own libnccl.so.2 is used, from the loader's path, the toolkit, or PyTorch's
# nvidia-nccl wheel; the test prints the version it ran with.
find_nccl() {
  if ldconfig -p 2> /dev/null | grep -q 'libnccl\.so\.2'; then echo system; return; fi
  local d
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu \
      $(python3 -c 'import nvidia.nccl as m; print(*[p + "/lib" for p in m.__path__])' 2> /dev/null) \
      $(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")' 2> /dev/null); do
    if [ -e "$d/libnccl.so.2" ]; then echo "$d"; return; fi
  done
}
STAGED="$BIN/parallel_staged_device_communicator_mpi_test"
NCCL_TEST="$BIN/parallel_nccl_communicator_mpi_test"
step "staged device comm (1 rank)" 120 staged.log "$STAGED" --gtest_output="json:$OUT/staged.json"
NCCL_DIR="$(find_nccl)"
if [ -z "$NCCL_DIR" ]; then
  row "nccl comm (1 rank)" "MISSING" "no libnccl.so.2 on this machine (loader path, CUDA, PyTorch)"
else
  [ "$NCCL_DIR" != system ] && export LD_LIBRARY_PATH="$NCCL_DIR:${LD_LIBRARY_PATH:-}"
  step "nccl comm (1 rank)" 150 nccl.log "$NCCL_TEST" --gtest_output="json:$OUT/nccl.json"
  row "  nccl library" "info" "$NCCL_DIR: $(grep -m1 '^NCCL runtime' "$OUT/nccl.log" | head -c 60)"
fi
SANITIZER="$(command -v compute-sanitizer || true)"
for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [ -z "$SANITIZER" ] && [ -x "$c" ] && SANITIZER="$c"
done
if [ -n "$SANITIZER" ]; then
  # Smaller shapes suffice for memory errors; the big GEMM and attention sweeps are the slow part.
  step "memcheck (op tests)" 240 memcheck.log "$SANITIZER" --tool memcheck \
    --error-exitcode 3 "$OPS" --gtest_filter='*Norms*:*Elementwise*:*EmbeddingsAndLosses*:*Optimizer*:*Casts*:*Attention*'
else
  row "memcheck (op tests)" "missing" "compute-sanitizer not on the PATH"
fi
step "ceilings (copy, sgemm)" 120 ceilings.log "$OPS" --gtest_filter='*Ceilings*'
row "  measured" "info" "$(grep -E '^ceiling' "$OUT/ceilings.log" | tr '\n' ' ' | head -c 100)"
row "bf16/fp16 training vs cpu" "not yet" "the decoder does not run on the CUDA backend yet (issue 11)"
row "gpt2-124m bench vs torch" "not yet" "needs the decoder on the CUDA backend (issue 11)"

echo
echo "== summary ($OUT)"
printf '%s\n' "${ROWS[@]}" | tee -a "$OUT/summary.log"
rm -rf "$WORK"
grep -qE ' (FAIL|TIMEOUT|MISSING) ' "$OUT/summary.log" && exit 1
exit 0
