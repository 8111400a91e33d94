#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cross_entropy.h"
#include "kernels/math_cpu.h"
#include "runtime/status.h"

namespace lattice::kernels::cpu {
namespace {

float RowMax(const float* x, int64_t v) {
  float mx = -std::numeric_limits<float>::infinity();
  // A plain comparison, not std::max (which returns a reference): GCC vectorises this form.
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < v; ++j) mx = x[j] > mx ? x[j] : mx;
  return mx;
}

float SumExp(const float* x, int64_t v, float mx) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < v; ++j) sum += internal::ExpF(x[j] - mx);
  return sum;
}

// Rows that contribute nothing: ignored target, or a zero loss-mask weight.
bool Skipped(const int32_t* targets, const float* loss_mask, int64_t i) {
  return targets[i] < 0 || (loss_mask != nullptr && loss_mask[i] == 0.0f);
}

}  // namespace

int64_t CrossEntropyForward(float* losses, const float* logits, const int32_t* targets,
                            const float* loss_mask, int64_t n, int64_t v, int64_t vp) {
  LATTICE_CHECK(v > 0 && v <= vp);
  int64_t counted = 0;
#pragma omp parallel for schedule(static) reduction(+ : counted) if (internal::Parallel(n * v))
  for (int64_t i = 0; i < n; ++i) {
    if (Skipped(targets, loss_mask, i)) {
      losses[i] = 0.0f;
      continue;
    }
    LATTICE_CHECK_MSG(targets[i] < v, "cross-entropy target outside the vocabulary");
    const float* x = logits + i * vp;
    const float mx = RowMax(x, v);
    // loss = logsumexp(x) - x[target], with the max subtracted before exp.
    const float lse = mx + std::log(SumExp(x, v, mx));
    float loss = lse - x[targets[i]];
    if (loss_mask != nullptr) loss *= loss_mask[i];
    losses[i] = loss;
    ++counted;
  }
  return counted;
}

void CrossEntropyBackward(float* dlogits, const float* logits, const int32_t* targets,
                          const float* loss_mask, float dloss, int64_t n, int64_t v, int64_t vp) {
  LATTICE_CHECK(v > 0 && v <= vp);
  // In the fused (aliased) form the logits are replaced by their gradient, so every column,
  // padding included, must be written; otherwise the gradient is added.
  const bool in_place = dlogits == logits;
#pragma omp parallel for schedule(static) if (internal::Parallel(n * v))
  for (int64_t i = 0; i < n; ++i) {
    float* dx = dlogits + i * vp;
    if (Skipped(targets, loss_mask, i)) {
      if (in_place) std::fill(dx, dx + vp, 0.0f);
      continue;
    }
    const int32_t target = targets[i];
    LATTICE_CHECK_MSG(target < v, "cross-entropy target outside the vocabulary");
    const float* x = logits + i * vp;
    const float scale = dloss * (loss_mask != nullptr ? loss_mask[i] : 1.0f);
    const float mx = RowMax(x, v);
    if (in_place) {
      // Store exp(x - max) while summing, then scale: one exp per element.
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < v; ++j) {
        const float e = internal::ExpF(x[j] - mx);
        dx[j] = e;
        sum += e;
      }
      const float factor = scale / sum;
#pragma omp simd
      for (int64_t j = 0; j < v; ++j) dx[j] *= factor;
      std::fill(dx + v, dx + vp, 0.0f);
    } else {
      const float factor = scale / SumExp(x, v, mx);
#pragma omp simd
      for (int64_t j = 0; j < v; ++j) dx[j] += internal::ExpF(x[j] - mx) * factor;
    }
    dx[target] -= scale;
  }
}

}  // namespace lattice::kernels::cpu
