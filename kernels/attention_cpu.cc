#include "kernels/attention.h"

#include <algorithm>
#include <vector>

#include "kernels/simd.h"
#include "runtime/profiler.h"
#include "runtime/status.h"

// The blockwise kernels live in kernels/simd/ops.inl (compiled per vector ISA).
namespace lattice::kernels::cpu {
namespace {

// Multiply-adds of the causal score and value products (q.k and p.v over the T(T+1)/2 visible
// pairs of every head): the forward's work; the backward does 2.5 times as much.
double CausalFlops(int64_t b, int64_t t, int64_t h, int64_t d) {
  return 2.0 * 2.0 * static_cast<double>(b * h) * static_cast<double>(t * (t + 1) / 2) *
         static_cast<double>(d);
}

}  // namespace

void AttentionForward(float* out, float* lse, const float* qkv, int64_t b, int64_t t, int64_t h,
                      int64_t kvh, int64_t d) {
  profiler::Scope scope("attention.fwd", profiler::Category::kAttention, CausalFlops(b, t, h, d));
  LATTICE_CHECK_MSG(kvh > 0 && h % kvh == 0, "attention heads must be a multiple of kv heads");
  if (b <= 0 || t <= 0 || h <= 0 || d <= 0) return;
  internal::Simd().attention_forward(out, lse, qkv, b, t, h, kvh, d);
}

namespace {
void Backward(float* dqkv, const float* dout, const float* qkv, const float* out,
              const float* lse, int64_t b, int64_t t, int64_t h, int64_t kvh, int64_t d,
              bool accumulate) {
  profiler::Scope scope("attention.bwd", profiler::Category::kAttention,
                        2.5 * CausalFlops(b, t, h, d));
  LATTICE_CHECK_MSG(kvh > 0 && h % kvh == 0, "attention heads must be a multiple of kv heads");
  if (b <= 0 || t <= 0 || h <= 0 || d <= 0) return;
  internal::Simd().attention_backward(dqkv, dout, qkv, out, lse, b, t, h, kvh, d, accumulate);
}
}  // namespace

void AttentionBackward(float* dqkv, const float* dout, const float* qkv, const float* out,
                       const float* lse, int64_t b, int64_t t, int64_t h, int64_t kvh,
                       int64_t d) {
  Backward(dqkv, dout, qkv, out, lse, b, t, h, kvh, d, /*accumulate=*/true);
}

void AttentionBackwardTo(float* dqkv, const float* dout, const float* qkv, const float* out,
                         const float* lse, int64_t b, int64_t t, int64_t h, int64_t kvh,
                         int64_t d) {
  Backward(dqkv, dout, qkv, out, lse, b, t, h, kvh, d, /*accumulate=*/false);
}

void AttentionDecode(float* out, const float* q, const float* k_cache, const float* v_cache,
                     int64_t len, int64_t h, int64_t kvh, int64_t d) {
  LATTICE_CHECK_MSG(kvh > 0 && h % kvh == 0, "attention heads must be a multiple of kv heads");
  LATTICE_CHECK(len > 0);
  internal::Simd().attention_decode(out, q, k_cache, v_cache, len, h, kvh, d);
}

}  // namespace lattice::kernels::cpu

// ---- Document masking ---------------------------------------------------------------------
//
// Each example of a row is handed to the causal kernels as a batch of one sequence of its own
// length: that is the document mask (no key of another example is ever read, so the blocks
// before doc_start cost nothing) and it makes an example's arithmetic its arithmetic alone
// (kernels/attention.h says where rounding can differ from a padded row). Only lse has another layout per call ((1, H, L) instead of a slice of (B, H, T)), so
// it goes through a per-thread buffer.
namespace lattice::kernels::cpu {

std::vector<std::pair<int64_t, int64_t>> DocumentRuns(const int32_t* doc_starts, int64_t t) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (int64_t i = 0; i < t; ++i) {
    const int64_t s = doc_starts[i];
    if (s == i) {
      if (!runs.empty()) runs.back().second = i;
      runs.emplace_back(i, t);
    } else {
      LATTICE_CHECK_MSG(i > 0 && s == doc_starts[i - 1],
                        "doc_starts must start each example at its own position and repeat "
                        "that position for the example's other tokens");
    }
  }
  return runs;
}

namespace {

// Flops of the causal products over the examples of every row (what the kernels compute).
double DocumentFlops(const int32_t* doc_starts, int64_t b, int64_t t, int64_t h, int64_t d) {
  double pairs = 0;
  for (int64_t bi = 0; bi < b; ++bi) {
    for (const auto& [begin, end] : DocumentRuns(doc_starts + bi * t, t)) {
      const double len = static_cast<double>(end - begin);
      pairs += len * (len + 1) / 2;
    }
  }
  return 2.0 * 2.0 * static_cast<double>(h) * pairs * static_cast<double>(d);
}

}  // namespace

void AttentionForwardDocs(float* out, float* lse, const float* qkv, const int32_t* doc_starts,
                          int64_t b, int64_t t, int64_t h, int64_t kvh, int64_t d) {
  profiler::Scope scope("attention.fwd", profiler::Category::kAttention,
                        DocumentFlops(doc_starts, b, t, h, d));
  LATTICE_CHECK_MSG(kvh > 0 && h % kvh == 0, "attention heads must be a multiple of kv heads");
  if (b <= 0 || t <= 0 || h <= 0 || d <= 0) return;
  const int64_t row = (h + 2 * kvh) * d;
  std::vector<float> run_lse(static_cast<size_t>(h * t));  // (H, L) of one example
  for (int64_t bi = 0; bi < b; ++bi) {
    for (const auto& [begin, end] : DocumentRuns(doc_starts + bi * t, t)) {
      const int64_t len = end - begin, first = bi * t + begin;
      internal::Simd().attention_forward(out + first * h * d, run_lse.data(), qkv + first * row,
                                         1, len, h, kvh, d);
      for (int64_t hi = 0; hi < h; ++hi) {
        std::copy_n(run_lse.data() + hi * len, len, lse + (bi * h + hi) * t + begin);
      }
    }
  }
}

void AttentionBackwardDocsTo(float* dqkv, const float* dout, const float* qkv, const float* out,
                             const float* lse, const int32_t* doc_starts, int64_t b, int64_t t,
                             int64_t h, int64_t kvh, int64_t d) {
  profiler::Scope scope("attention.bwd", profiler::Category::kAttention,
                        2.5 * DocumentFlops(doc_starts, b, t, h, d));
  LATTICE_CHECK_MSG(kvh > 0 && h % kvh == 0, "attention heads must be a multiple of kv heads");
  if (b <= 0 || t <= 0 || h <= 0 || d <= 0) return;
  const int64_t row = (h + 2 * kvh) * d;
  std::vector<float> run_lse(static_cast<size_t>(h * t));
  for (int64_t bi = 0; bi < b; ++bi) {
    for (const auto& [begin, end] : DocumentRuns(doc_starts + bi * t, t)) {
      const int64_t len = end - begin, first = bi * t + begin;
      for (int64_t hi = 0; hi < h; ++hi) {
        std::copy_n(lse + (bi * h + hi) * t + begin, len, run_lse.data() + hi * len);
      }
      internal::Simd().attention_backward(dqkv + first * row, dout + first * h * d,
                                          qkv + first * row, out + first * h * d,
                                          run_lse.data(), 1, len, h, kvh, d,
                                          /*accumulate=*/false);
    }
  }
}

}  // namespace lattice::kernels::cpu
