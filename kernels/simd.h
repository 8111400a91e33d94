// Run-time choice of the vector instruction set for lattice's own CPU loops (internal to
// kernels/). The default build targets x86-64-v2 (SSE4.2) so that one binary runs on every node
// of a cluster; the loops that dominate a CPU step are therefore compiled three times, from one
// source (kernels/simd/ops.inl), under `#pragma GCC target` for AVX-512 and AVX2+FMA and for
// the build's baseline, and the best level this CPU supports is picked once at start-up.
// OpenMP-outlined parallel regions inherit their function's target (checked with objdump).
//
// LATTICE_CPU_ISA=baseline|avx2|avx512 caps the level (tests run every supported level;
// results differ between levels only by rounding: FMA contraction and vector reduction order).
#ifndef LATTICE_KERNELS_SIMD_H_
#define LATTICE_KERNELS_SIMD_H_

#include <cstdint>

#include "kernels/adamw.h"

// The AVX levels need GCC's `#pragma GCC target` (clang builds keep the baseline only).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LATTICE_SIMD_X86 1
#endif

namespace lattice::kernels::cpu::internal {

enum class SimdLevel : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// One level's implementations. Each function is the whole op (its OpenMP loop included); the
// public kernels in <op>_cpu.cc check arguments, profile, and call through Simd().
struct SimdOps {
  SimdLevel level;
  const char* name;  // "baseline", "avx2", "avx512"
  void (*gelu_forward)(float* out, const float* inp, int64_t n);
  // dinp (n) += (accumulate) or = gelu'(inp) * dout.
  void (*gelu_backward)(float* dinp, const float* inp, const float* dout, int64_t n,
                        bool accumulate);
  // pre (N, F) += bias (F); out (N, F) = gelu(pre).
  void (*bias_gelu_forward)(float* pre, float* out, const float* bias, int64_t n, int64_t f);
  int64_t (*cross_entropy_forward)(float* losses, const float* logits, const int32_t* targets,
                                   const float* loss_mask, int64_t n, int64_t v, int64_t vp);
  void (*cross_entropy_backward)(float* dlogits, const float* logits, const int32_t* targets,
                                 const float* loss_mask, float dloss, int64_t n, int64_t v,
                                 int64_t vp);
  int64_t (*cross_entropy_forward_probs)(float* losses, float* logits, const int32_t* targets,
                                         const float* loss_mask, int64_t n, int64_t v,
                                         int64_t vp);
  void (*cross_entropy_backward_probs)(float* probs, const int32_t* targets,
                                       const float* loss_mask, float dloss, int64_t n, int64_t v,
                                       int64_t vp);
  void (*attention_forward)(float* out, float* lse, const float* qkv, int64_t b, int64_t t,
                            int64_t h, int64_t kvh, int64_t d);
  // dqkv += (accumulate) or = the gradient.
  void (*attention_backward)(float* dqkv, const float* dout, const float* qkv, const float* out,
                             const float* lse, int64_t b, int64_t t, int64_t h, int64_t kvh,
                             int64_t d, bool accumulate);
  void (*attention_decode)(float* out, const float* q, const float* k_cache,
                           const float* v_cache, int64_t len, int64_t h, int64_t kvh, int64_t d);
  void (*layernorm_forward)(float* out, float* mean, float* rstd, const float* inp,
                            const float* weight, const float* bias, int64_t n, int64_t c,
                            float eps);
  void (*layernorm_backward)(float* dinp, float* dweight, float* dbias, const float* dout,
                             const float* inp, const float* weight, const float* mean,
                             const float* rstd, int64_t n, int64_t c);
  void (*adamw)(float* param, const float* grad, float* m, float* v, int64_t n,
                const AdamWArgs& args);
  void (*add)(float* out, const float* a, const float* b, int64_t n);  // out may alias a
  void (*accumulate)(float* dst, const float* src, int64_t n);          // dst += src
  // dst (C) += column sums of x (N, C), each in row order in double.
  void (*column_sums)(float* dst, const float* x, int64_t n, int64_t c);
  double (*sum_of_squares)(const float* x, int64_t n);
  // x (n) = 0 on all threads; with streaming (non-temporal) stores when `streaming`.
  void (*zero)(float* x, int64_t n, bool streaming);
};

// The active level: the best this CPU supports, capped by LATTICE_CPU_ISA.
const SimdOps& Simd();
// Whether `level` is compiled in and this CPU can run it.
bool SimdSupported(SimdLevel level);
// Tests: makes `level` (which must be supported) the active one.
void SetSimdLevel(SimdLevel level);

// Defined by kernels/simd/ops_<level>.cc.
extern const SimdOps kSimdOpsBaseline;
#if defined(LATTICE_SIMD_X86)
extern const SimdOps kSimdOpsAvx2;
extern const SimdOps kSimdOpsAvx512;
#endif

}  // namespace lattice::kernels::cpu::internal

#endif  // LATTICE_KERNELS_SIMD_H_
