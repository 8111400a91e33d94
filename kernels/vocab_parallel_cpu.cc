#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/math_cpu.h"
#include "kernels/vocab_parallel.h"
#include "runtime/status.h"

namespace lattice::kernels::cpu {
namespace {

// Number of leading shard columns that are real tokens (global column < v); the rest of the
// shard is padding. 0 for a shard that lies wholly in the padding.
int64_t RealColumns(int64_t cols, int64_t col_begin, int64_t v) {
  return std::clamp<int64_t>(v - col_begin, 0, cols);
}

void CheckShard(int64_t cols, int64_t col_begin, int64_t v) {
  LATTICE_CHECK(v > 0 && cols >= 0 && col_begin >= 0);
}

// Rows that contribute nothing: ignored target, or a zero loss-mask weight (as cross_entropy).
bool Skipped(const int32_t* targets, const float* loss_mask, int64_t i) {
  return targets[i] < 0 || (loss_mask != nullptr && loss_mask[i] == 0.0f);
}

}  // namespace

void CrossEntropyShardMax(float* row_max, const float* logits, int64_t n, int64_t cols,
                          int64_t col_begin, int64_t v) {
  CheckShard(cols, col_begin, v);
  const int64_t real = RealColumns(cols, col_begin, v);
#pragma omp parallel for schedule(static) if (internal::Parallel(n * cols))
  for (int64_t i = 0; i < n; ++i) {
    const float* x = logits + i * cols;
    float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < real; ++j) mx = x[j] > mx ? x[j] : mx;
    row_max[i] = mx;
  }
}

void CrossEntropyShardStats(float* sum_exp, float* target_logit, const float* logits,
                            const int32_t* targets, const float* row_max, int64_t n, int64_t cols,
                            int64_t col_begin, int64_t v) {
  CheckShard(cols, col_begin, v);
  const int64_t real = RealColumns(cols, col_begin, v);
#pragma omp parallel for schedule(static) if (internal::Parallel(n * cols))
  for (int64_t i = 0; i < n; ++i) {
    const int32_t target = targets[i];
    LATTICE_CHECK_MSG(target < v, "cross-entropy target outside the vocabulary");
    const float* x = logits + i * cols;
    // An all-padding shard sums nothing, so the (global, finite) max is never subtracted from
    // anything here; a -inf local max never meets exp.
    const float mx = row_max[i];
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < real; ++j) sum += internal::ExpF(x[j] - mx);
    sum_exp[i] = sum;
    const int64_t local = static_cast<int64_t>(target) - col_begin;
    // Exactly one rank holds the target, so the sum over ranks is the target's logit.
    target_logit[i] = target >= 0 && local >= 0 && local < cols ? x[local] : 0.0f;
  }
}

int64_t CrossEntropyShardLoss(float* losses, const float* row_max, const float* sum_exp,
                              const float* target_logit, const int32_t* targets,
                              const float* loss_mask, int64_t n) {
  int64_t counted = 0;
#pragma omp parallel for schedule(static) reduction(+ : counted) if (internal::Parallel(n))
  for (int64_t i = 0; i < n; ++i) {
    if (Skipped(targets, loss_mask, i)) {
      losses[i] = 0.0f;
      continue;
    }
    // Same association as CrossEntropyForward: (max + log(sum)) - x[target].
    const float lse = row_max[i] + std::log(sum_exp[i]);
    float loss = lse - target_logit[i];
    if (loss_mask != nullptr) loss *= loss_mask[i];
    losses[i] = loss;
    ++counted;
  }
  return counted;
}

void CrossEntropyShardBackward(float* dlogits, const float* logits, const int32_t* targets,
                               const float* loss_mask, const float* row_max,
                               const float* sum_exp, float dloss, int64_t n, int64_t cols,
                               int64_t col_begin, int64_t v) {
  CheckShard(cols, col_begin, v);
  const int64_t real = RealColumns(cols, col_begin, v);
  // As CrossEntropyBackward: aliased, every element is replaced by the gradient; otherwise the
  // gradient is added and padding columns / skipped rows are left alone.
  const bool in_place = dlogits == logits;
#pragma omp parallel for schedule(static) if (internal::Parallel(n * cols))
  for (int64_t i = 0; i < n; ++i) {
    float* dx = dlogits + i * cols;
    if (Skipped(targets, loss_mask, i)) {
      if (in_place) std::fill(dx, dx + cols, 0.0f);
      continue;
    }
    const int32_t target = targets[i];
    LATTICE_CHECK_MSG(target < v, "cross-entropy target outside the vocabulary");
    const float* x = logits + i * cols;
    const float scale = dloss * (loss_mask != nullptr ? loss_mask[i] : 1.0f);
    const float mx = row_max[i];
    // The same per-element arithmetic as CrossEntropyBackward (exp, then times scale / sum), so
    // with tp = 1 only the order of the exp-sum differs.
    const float factor = scale / sum_exp[i];
    if (in_place) {
#pragma omp simd
      for (int64_t j = 0; j < real; ++j) dx[j] = internal::ExpF(x[j] - mx) * factor;
      std::fill(dx + real, dx + cols, 0.0f);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < real; ++j) dx[j] += internal::ExpF(x[j] - mx) * factor;
    }
    const int64_t local = static_cast<int64_t>(target) - col_begin;
    if (local >= 0 && local < cols) dx[local] -= scale;
  }
}

void EmbeddingShardForward(float* out, const int32_t* tokens, const float* wte_rows,
                           int64_t row_begin, int64_t rows, int64_t n, int64_t c) {
#pragma omp parallel for schedule(static) if (internal::Parallel(n * c))
  for (int64_t i = 0; i < n; ++i) {
    float* y = out + i * c;
    const int64_t local = static_cast<int64_t>(tokens[i]) - row_begin;
    if (local >= 0 && local < rows) {
      const float* e = wte_rows + local * c;
      std::copy(e, e + c, y);
    } else {
      std::fill(y, y + c, 0.0f);
    }
  }
}

void EmbeddingShardBackward(float* dwte_rows, const float* dout, const int32_t* tokens,
                            int64_t row_begin, int64_t rows, int64_t n, int64_t c) {
  // A token may occur many times, so tasks split the columns (as EmbeddingBackward): each one
  // scatters its column block of every token in order. No atomics, deterministic sums.
  const int64_t width = internal::ColumnBlockWidth(c);
  const int64_t blocks = (c + width - 1) / width;
#pragma omp parallel for schedule(static) if (internal::Parallel(n * c))
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t j0 = blk * width;
    const int64_t w = std::min(width, c - j0);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t local = static_cast<int64_t>(tokens[i]) - row_begin;
      if (local < 0 || local >= rows) continue;
      float* dst = dwte_rows + local * c + j0;
      const float* src = dout + i * c + j0;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) dst[j] += src[j];
    }
  }
}

}  // namespace lattice::kernels::cpu
