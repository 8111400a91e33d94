#include "kernels/residual.h"
#include "kernels/math_cpu.h"

namespace lattice::kernels::cpu {

void ResidualForward(float* out, const float* a, const float* b, int64_t n) {
  // No restrict: out may alias a (in-place residual add).
#pragma omp parallel for simd schedule(static) if (internal::Parallel(n))
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void ResidualBackward(float* da, float* db, const float* dout, int64_t n) {
  if (da != nullptr) {
#pragma omp parallel for simd schedule(static) if (internal::Parallel(n))
    for (int64_t i = 0; i < n; ++i) da[i] += dout[i];
  }
  if (db != nullptr) {
#pragma omp parallel for simd schedule(static) if (internal::Parallel(n))
    for (int64_t i = 0; i < n; ++i) db[i] += dout[i];
  }
}

}  // namespace lattice::kernels::cpu
