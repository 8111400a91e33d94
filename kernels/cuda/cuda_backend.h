// The CUDA backend: kernels/backend.h on one GPU (kernels/cuda/*.cu, cuBLAS for the GEMMs).
//
// Status (issue 11, first part): fp32 for every op, with bf16/fp16 for casts, copies and the
// device scalars; the kernels are the correctness-first versions (warp-per-row attention with an
// online softmax, block-per-row cross-entropy, deterministic column sums for every scattered
// gradient). Compiled in every build that finds nvcc (CI compiles it); verified only on a GPU by
// tests/kernels/cuda_backend_test.cc (ctest label `gpu`, run by tests/gpu/run.sh), which
// compares every op with the CPU backend. Nothing here has run on a GPU yet.
//
// A CUDA error is sticky: the op that met it is named in error(), later ops still enqueue (as
// CUDA itself behaves after a fault); callers check error() at the step boundary.
#ifndef LATTICE_KERNELS_CUDA_CUDA_BACKEND_H_
#define LATTICE_KERNELS_CUDA_CUDA_BACKEND_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace lattice::kernels::cuda {

// True when this build has the CUDA backend (CMake found nvcc; LATTICE_CUDA).
bool Built();
// The GPUs the CUDA runtime sees. 0, with the reason in *why, when there are none: a build
// without CUDA, no driver, or no device.
int DeviceCount(std::string* why);
// A backend on GPU `device` (0-based, among the visible ones).
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(int device);
// The first CUDA error an op of `backend` met, naming the op; OK when none, or when `backend`
// is not a CUDA backend.
absl::Status BackendError(const Backend& backend);

}  // namespace lattice::kernels::cuda

#endif  // LATTICE_KERNELS_CUDA_CUDA_BACKEND_H_
