// Launchers of the CUDA backend's kernels (kernels/cuda/*.cu), called by CudaBackend
// (kernels/cuda/cuda_backend.cc). Plain C++ declarations with no CUDA device code, so the host
// side compiles with the C++ compiler and the .cu files stay free of the host libraries.
// Semantics, shapes and the +=/To conventions are those of kernels/<op>.h; every pointer is
// device memory; every launch goes to `s` and returns at once (the caller checks
// cudaGetLastError and names the op).
#ifndef LATTICE_KERNELS_CUDA_LAUNCH_H_
#define LATTICE_KERNELS_CUDA_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/adamw.h"

namespace lattice::kernels::cuda {

// dtype codes of the cast kernels (runtime/dtype.h's kF32/kBF16/kF16 mapped by the caller).
enum class Float : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// ---- memory, casts, reductions (reduce.cu) ----
void Fill(float* x, int64_t n, float value, cudaStream_t s);
// x = x stored as `storage` (bf16 or fp16, round to nearest even) and loaded back.
void RoundThrough(float* x, int64_t n, Float storage, cudaStream_t s);
void Cast(void* dst, Float dst_type, const void* src, Float src_type, int64_t n, cudaStream_t s);
// Deterministic sums: `partials` holds kReduceBlocks doubles; slot += sum (or sum of squares).
constexpr int kReduceBlocks = 256;
void AccumulateSum(double* slot, const void* x, Float type, int64_t n, bool squares,
                   double* partials, cudaStream_t s);
void Scale(float* x, int64_t n, float scale, cudaStream_t s);
using cpu::AdamWConstants;  // kernels/adamw.h: the scalars both backends use
void AdamW(float* param, const float* grad, float* m, float* v, int64_t n,
           const AdamWConstants& k, cudaStream_t s);
// dbias (oc) += sum over the n rows of dout (n, oc), in row order (deterministic).
void ColumnSum(float* dbias, const float* dout, int64_t n, int64_t oc, cudaStream_t s);
void AddRowBias(float* x, const float* bias, int64_t rows, int64_t c, cudaStream_t s);

// ---- elementwise (elementwise.cu) ----
void GeluForward(float* out, const float* inp, int64_t n, cudaStream_t s);
// accumulate: dinp += ...; else dinp = ...
void GeluBackward(float* dinp, const float* inp, const float* dout, int64_t n, bool accumulate,
                  cudaStream_t s);
void BiasGeluForward(float* pre, float* out, const float* bias, int64_t n, int64_t f,
                     cudaStream_t s);
void SwiGluForward(float* out, const float* inp, int64_t n, int64_t f, cudaStream_t s);
void SwiGluBackward(float* dinp, const float* inp, const float* dout, int64_t n, int64_t f,
                    cudaStream_t s);
// sign = +1 forward rotation, -1 the inverse (the backward).
void Rope(float* x, int64_t b, int64_t t, int64_t heads, int64_t d, int64_t row_stride,
          int64_t pos_offset, float theta, float sign, cudaStream_t s);
void ResidualForward(float* out, const float* a, const float* b, int64_t n, cudaStream_t s);
void ResidualBackward(float* da, float* db, const float* dout, int64_t n, cudaStream_t s);

// ---- norms (norms.cu) ----
void LayerNormForward(float* out, float* mean, float* rstd, const float* inp,
                      const float* weight, const float* bias, int64_t n, int64_t c, float eps,
                      cudaStream_t s);
void LayerNormBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean,
                       const float* rstd, int64_t n, int64_t c, cudaStream_t s);
void RmsNormForward(float* out, float* rstd, const float* inp, const float* weight, int64_t n,
                    int64_t c, float eps, cudaStream_t s);
void RmsNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int64_t n, int64_t c,
                     cudaStream_t s);

// ---- attention (attention.cu) ----
void AttentionForward(float* out, float* lse, const float* qkv, int64_t b, int64_t t, int64_t h,
                      int64_t kvh, int64_t d, cudaStream_t s);
// delta (B, H, T) is scratch the caller provides.
void AttentionBackward(float* dqkv, const float* dout, const float* qkv, const float* out,
                       const float* lse, float* delta, int64_t b, int64_t t, int64_t h,
                       int64_t kvh, int64_t d, bool accumulate, cudaStream_t s);
void AttentionDecode(float* out, const float* q, const float* k_cache, const float* v_cache,
                     int64_t len, int64_t h, int64_t kvh, int64_t d, cudaStream_t s);
// The largest head size the kernels take (a warp holds a row, 8 elements per lane).
constexpr int64_t kMaxHeadDim = 256;

// ---- embeddings and losses (loss.cu) ----
void EmbeddingForward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                      int64_t b, int64_t t, int64_t c, int64_t pos_offset, cudaStream_t s);
void EmbeddingBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                       int64_t b, int64_t t, int64_t c, int64_t pos_offset, cudaStream_t s);
void PositionEmbeddingForward(float* x, const float* wpe, int64_t rows, int64_t c,
                              int64_t first_row, int64_t t, int64_t pos0, cudaStream_t s);
void PositionEmbeddingBackward(float* dwpe, const float* dx, int64_t rows, int64_t c,
                               int64_t first_row, int64_t t, cudaStream_t s);
void EmbeddingShardForward(float* out, const int32_t* tokens, const float* wte_rows,
                           int64_t row_begin, int64_t rows, int64_t n, int64_t c, cudaStream_t s);
void EmbeddingShardBackward(float* dwte_rows, const float* dout, const int32_t* tokens,
                            int64_t row_begin, int64_t rows, int64_t n, int64_t c,
                            cudaStream_t s);
// probs_out: also replace logits by the probabilities (the ...Probs pair's forward).
void CrossEntropyForward(float* losses, float* probs_out, const float* logits,
                         const int32_t* targets, const float* loss_mask, int64_t n, int64_t v,
                         int64_t vp, cudaStream_t s);
// from_probs: logits already hold the probabilities (BackwardProbs, in place).
void CrossEntropyBackward(float* dlogits, const float* logits, const int32_t* targets,
                          const float* loss_mask, float dloss, int64_t n, int64_t v, int64_t vp,
                          bool from_probs, cudaStream_t s);
void CrossEntropyShardMax(float* row_max, const float* logits, int64_t n, int64_t cols,
                          int64_t col_begin, int64_t v, cudaStream_t s);
void CrossEntropyShardStats(float* sum_exp, float* target_logit, const float* logits,
                            const int32_t* targets, const float* row_max, int64_t n,
                            int64_t cols, int64_t col_begin, int64_t v, cudaStream_t s);
void CrossEntropyShardLoss(float* losses, const float* row_max, const float* sum_exp,
                           const float* target_logit, const int32_t* targets,
                           const float* loss_mask, int64_t n, cudaStream_t s);
void CrossEntropyShardBackward(float* dlogits, const float* logits, const int32_t* targets,
                               const float* loss_mask, const float* row_max,
                               const float* sum_exp, float dloss, int64_t n, int64_t cols,
                               int64_t col_begin, int64_t v, cudaStream_t s);

}  // namespace lattice::kernels::cuda

#endif  // LATTICE_KERNELS_CUDA_LAUNCH_H_
