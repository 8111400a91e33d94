#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/grad_norm.h"
#include "kernels/math_cpu.h"

namespace lattice::kernels::cpu {
namespace {

// Fixed-size chunks, each summed on its own and then added in chunk order: the result does not
// depend on the thread count, so a run's clipping is reproducible on any machine.
constexpr int64_t kChunk = 1 << 15;

double ChunkSumOfSquares(const float* x, int64_t n) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

}  // namespace

double SumOfSquares(const float* x, int64_t n) {
  if (n <= 0) return 0.0;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  if (chunks == 1) return ChunkSumOfSquares(x, n);
  std::vector<double> partial(chunks);
#pragma omp parallel for schedule(static)
  for (int64_t ci = 0; ci < chunks; ++ci) {
    const int64_t begin = ci * kChunk;
    partial[ci] = ChunkSumOfSquares(x + begin, std::min(kChunk, n - begin));
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

void Scale(float* x, int64_t n, float scale) {
#pragma omp parallel for simd schedule(static) if (internal::Parallel(n))
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

float ClipCoefficient(double norm, float max_norm) {
  if (max_norm <= 0.0f) return 1.0f;
  const double coef = static_cast<double>(max_norm) / (norm + 1e-6);
  return static_cast<float>(std::min(1.0, coef));
}

}  // namespace lattice::kernels::cpu
