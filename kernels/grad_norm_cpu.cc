#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/grad_norm.h"
#include "kernels/math_cpu.h"
#include "kernels/simd.h"
#include "runtime/profiler.h"

namespace lattice::kernels::cpu {

// Fixed-size chunks summed in chunk order (kernels/simd/ops.inl): the result does not depend on
// the thread count, so a run's clipping is reproducible on any machine.
double SumOfSquares(const float* x, int64_t n) {
  profiler::Scope scope("grad_norm", profiler::Category::kOptimizer, 0, 4.0 * n);
  return internal::Simd().sum_of_squares(x, n);
}

void Scale(float* x, int64_t n, float scale) {
#pragma omp parallel for simd schedule(static) if (parallel : internal::Parallel(n))
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

float ClipCoefficient(double norm, float max_norm) {
  if (max_norm <= 0.0f) return 1.0f;
  const double coef = static_cast<double>(max_norm) / (norm + 1e-6);
  return static_cast<float>(std::min(1.0, coef));
}

}  // namespace lattice::kernels::cpu
