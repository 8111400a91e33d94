#!/usr/bin/env bash
# Builds what tests/gpu/run.sh runs on a lent GPU machine, and packs it with the Debian
# libraries it needs into gpu-bundle.tar.gz (git-ignored; the device tool carries it with
# `carry: ["gpu-bundle.tar.gz"]`). The GPU machine has a CUDA toolkit and PyTorch but none of
# lattice's Debian dependencies and no network, so the binaries are built here (nvcc is here)
# for Hopper only (sm_90a) and travel with their libraries: Abseil, yaml-cpp, Boost.Iostreams,
# OpenBLAS (oneDNN is left out of this build: 38 MB more than the 64 MiB the tool carries),
# libgomp and the compression libraries Boost links. The C/C++ runtime, CUDA runtime and cuBLAS
# come from the GPU machine (newer glibc and libstdc++ run these binaries; CUDA 13.0 on both), and
# so does NCCL: libnccl.so.2 is 218 MB, more than the tool carries, and tests/gpu/run.sh finds
# the machine's own (PyTorch's wheels bring one). Only the NCCL test binary needs it (lattice
# links NCCL --as-needed).
#
# Usage: scripts/gpu-bundle.sh [BUILD_DIR]   (default build-gpu)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${1:-$ROOT/build-gpu}"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT

mkdir -p "$BUILD"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLATTICE_CUDA=ON \
  -DLATTICE_CUDA_ARCHITECTURES=90a -DLATTICE_ONEDNN=OFF > "$BUILD/cmake.log"
TARGETS=(kernels_cuda_backend_test parallel_nccl_communicator_mpi_test
         parallel_staged_device_communicator_mpi_test)
cmake --build "$BUILD" --target "${TARGETS[@]}" -j "$(nproc)"

mkdir -p "$STAGE/gpu-bundle/bin" "$STAGE/gpu-bundle/lib"
for t in "${TARGETS[@]}"; do cp "$BUILD/tests/$t" "$STAGE/gpu-bundle/bin/"; done
# Every library the binaries load, except those the GPU machine provides itself.
for bin in "$STAGE"/gpu-bundle/bin/*; do
  ldd "$bin" | awk '$3 ~ /^\// {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
    libcuda.so*|libcudart.so*|libcublas.so*|libcublasLt.so*|libnvidia*|libnccl.so*) ;;
    *) cp -L "$lib" "$STAGE/gpu-bundle/lib/" ;;
  esac
done
git -C "$ROOT" rev-parse HEAD > "$STAGE/gpu-bundle/COMMIT"
git -C "$ROOT" status --short > "$STAGE/gpu-bundle/DIRTY"
tar -C "$STAGE" -czf "$ROOT/gpu-bundle.tar.gz" gpu-bundle
echo "gpu-bundle.tar.gz: $(du -h "$ROOT/gpu-bundle.tar.gz" | cut -f1) ($(find "$STAGE/gpu-bundle/lib" -type f | wc -l) libraries)"
