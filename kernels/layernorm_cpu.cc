#include <algorithm>
#include <cmath>

#include "kernels/layernorm.h"
#include "kernels/math_cpu.h"

namespace lattice::kernels::cpu {
void LayerNormForward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                      const float* bias, int64_t n, int64_t c, float eps) {
  const float inv_c = 1.0f / static_cast<float>(c);
#pragma omp parallel for schedule(static) if (internal::Parallel(n * c))
  for (int64_t i = 0; i < n; ++i) {
    const float* x = inp + i * c;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < c; ++j) sum += x[j];
    const float m = sum * inv_c;
    // Two passes (mean, then squared deviations) instead of E[x^2] - m^2, which cancels
    // catastrophically when |mean| >> std.
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < c; ++j) {
      const float dx = x[j] - m;
      sq += dx * dx;
    }
    const float s = 1.0f / std::sqrt(sq * inv_c + eps);
    float* y = out + i * c;
    if (bias != nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) y[j] = (x[j] - m) * s * weight[j] + bias[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) y[j] = (x[j] - m) * s * weight[j];
    }
    mean[i] = m;
    rstd[i] = s;
  }
}

void LayerNormBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean, const float* rstd,
                       int64_t n, int64_t c) {
  const float inv_c = 1.0f / static_cast<float>(c);
  if (dinp != nullptr) {
    // With xhat = (x - mean) * rstd and g = dout * weight:
    //   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
#pragma omp parallel for schedule(static) if (internal::Parallel(n * c))
    for (int64_t i = 0; i < n; ++i) {
      const float* x = inp + i * c;
      const float* dy = dout + i * c;
      const float m = mean[i];
      const float s = rstd[i];
      float g_sum = 0.0f;
      float gx_sum = 0.0f;
#pragma omp simd reduction(+ : g_sum, gx_sum)
      for (int64_t j = 0; j < c; ++j) {
        const float g = dy[j] * weight[j];
        g_sum += g;
        gx_sum += g * ((x[j] - m) * s);
      }
      const float g_mean = g_sum * inv_c;
      const float gx_mean = gx_sum * inv_c;
      float* dx = dinp + i * c;
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) {
        const float xhat = (x[j] - m) * s;
        dx[j] += (dy[j] * weight[j] - g_mean - xhat * gx_mean) * s;
      }
    }
  }
  if (dweight == nullptr && dbias == nullptr) return;
  // Parameter gradients reduce over rows: one task per column block, rows in order, double
  // accumulators, so the sums do not depend on the thread count.
  const int64_t width = internal::ColumnBlockWidth(c);
  const int64_t blocks = (c + width - 1) / width;
#pragma omp parallel for schedule(static) if (internal::Parallel(n * c))
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t j0 = blk * width;
    const int64_t w = std::min(width, c - j0);
    double acc_w[internal::kMaxColumnBlock] = {};
    double acc_b[internal::kMaxColumnBlock] = {};
    for (int64_t i = 0; i < n; ++i) {
      const float* x = inp + i * c + j0;
      const float* dy = dout + i * c + j0;
      const float m = mean[i];
      const float s = rstd[i];
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) {
        acc_w[j] += static_cast<double>(dy[j] * ((x[j] - m) * s));
        acc_b[j] += dy[j];
      }
    }
    if (dweight != nullptr) {
      for (int64_t j = 0; j < w; ++j) dweight[j0 + j] += static_cast<float>(acc_w[j]);
    }
    if (dbias != nullptr) {
      for (int64_t j = 0; j < w; ++j) dbias[j0 + j] += static_cast<float>(acc_b[j]);
    }
  }
}

}  // namespace lattice::kernels::cpu
