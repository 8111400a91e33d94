#include "kernels/residual.h"
#include "kernels/simd.h"
#include "runtime/profiler.h"

namespace lattice::kernels::cpu {

void ResidualForward(float* out, const float* a, const float* b, int64_t n) {
  profiler::Scope scope("residual.fwd", profiler::Category::kElementwise);
  internal::Simd().add(out, a, b, n);
}

void ResidualBackward(float* da, float* db, const float* dout, int64_t n) {
  profiler::Scope scope("residual.bwd", profiler::Category::kElementwise);
  if (da != nullptr) internal::Simd().accumulate(da, dout, n);
  if (db != nullptr) internal::Simd().accumulate(db, dout, n);
}

}  // namespace lattice::kernels::cpu
