#include "kernels/adamw.h"
#include "kernels/simd.h"
#include "runtime/profiler.h"
#include "runtime/status.h"

namespace lattice::kernels::cpu {

// The fused pass (torch's order of operations, scalars in double) is in kernels/simd/ops.inl.
void AdamWUpdate(float* param, const float* grad, float* m, float* v, int64_t n,
                 const AdamWArgs& args) {
  profiler::Scope scope("adamw", profiler::Category::kOptimizer, 0, 28.0 * n);
  LATTICE_CHECK_MSG(args.step >= 1, "AdamW step is 1-based (bias correction divides by 1-b^t)");
  internal::Simd().adamw(param, grad, m, v, n, args);
}

}  // namespace lattice::kernels::cpu
