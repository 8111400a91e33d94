#include <algorithm>
#include <cmath>

#include "kernels/rmsnorm.h"
#include "kernels/math_cpu.h"
#include "runtime/profiler.h"

namespace lattice::kernels::cpu {
void RmsNormForward(float* out, float* rstd, const float* inp, const float* weight, int64_t n,
                    int64_t c, float eps) {
  profiler::Scope scope("rmsnorm.fwd", profiler::Category::kElementwise);
  const float inv_c = 1.0f / static_cast<float>(c);
#pragma omp parallel for schedule(static) if (internal::Parallel(n * c))
  for (int64_t i = 0; i < n; ++i) {
    const float* x = inp + i * c;
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < c; ++j) sq += x[j] * x[j];
    const float s = 1.0f / std::sqrt(sq * inv_c + eps);
    float* y = out + i * c;
    // LlamaRMSNorm order: weight * (x * rstd).
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) y[j] = weight[j] * (x[j] * s);
    rstd[i] = s;
  }
}

void RmsNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int64_t n, int64_t c) {
  profiler::Scope scope("rmsnorm.bwd", profiler::Category::kElementwise);
  const float inv_c = 1.0f / static_cast<float>(c);
  if (dinp != nullptr) {
    // With xhat = x * rstd and g = dout * weight: dx = rstd * (g - xhat * mean(g * xhat)).
#pragma omp parallel for schedule(static) if (internal::Parallel(n * c))
    for (int64_t i = 0; i < n; ++i) {
      const float* x = inp + i * c;
      const float* dy = dout + i * c;
      const float s = rstd[i];
      float gx_sum = 0.0f;
#pragma omp simd reduction(+ : gx_sum)
      for (int64_t j = 0; j < c; ++j) gx_sum += dy[j] * weight[j] * (x[j] * s);
      const float gx_mean = gx_sum * inv_c;
      float* dx = dinp + i * c;
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) {
        dx[j] += (dy[j] * weight[j] - (x[j] * s) * gx_mean) * s;
      }
    }
  }
  if (dweight == nullptr) return;
  const int64_t width = internal::ColumnBlockWidth(c);
  const int64_t blocks = (c + width - 1) / width;
#pragma omp parallel for schedule(static) if (internal::Parallel(n * c))
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t j0 = blk * width;
    const int64_t w = std::min(width, c - j0);
    double acc[internal::kMaxColumnBlock] = {};
    for (int64_t i = 0; i < n; ++i) {
      const float* x = inp + i * c + j0;
      const float* dy = dout + i * c + j0;
      const float s = rstd[i];
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) acc[j] += static_cast<double>(dy[j] * (x[j] * s));
    }
    for (int64_t j = 0; j < w; ++j) dweight[j0 + j] += static_cast<float>(acc[j]);
  }
}

}  // namespace lattice::kernels::cpu
