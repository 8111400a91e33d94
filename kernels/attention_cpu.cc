#include "kernels/attention.h"
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
