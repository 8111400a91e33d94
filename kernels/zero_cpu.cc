#include "kernels/zero.h"

#include "kernels/simd.h"
#include "runtime/profiler.h"

// The loop lives in kernels/simd/ops.inl (compiled per vector ISA, picked at run time).
namespace lattice::kernels::cpu {

void ZeroFill(float* x, int64_t n) {
  if (n <= 0) return;
  internal::Simd().zero(x, n, n * static_cast<int64_t>(sizeof(float)) >= kStreamingZeroBytes);
}

}  // namespace lattice::kernels::cpu
