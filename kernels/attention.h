#ifndef LATTICE_KERNELS_ATTENTION_H_
#define LATTICE_KERNELS_ATTENTION_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// Causal multi-head attention with grouped-query heads (GQA/MQA when kvh < h), computed
// blockwise with an online softmax (flash-attention style): the (T, T) probabilities are never
// stored; the backward recomputes them from each row's log-sum-exp.
// qkv (B, T, (H + 2*KVH) * D) packs per token [q heads | k heads | v heads]; query head i uses
// kv head i / (H / KVH). Scale 1/sqrt(D).
// out (B, T, H*D); lse (B, H, T) receives log(sum_j exp(s_tj)) of each row's scaled scores
// s_tj = q_t . k_j / sqrt(D), j <= t, which backward needs (with out).
void AttentionForward(float* out, float* lse, const float* qkv, int64_t b, int64_t t, int64_t h,
                      int64_t kvh, int64_t d);
// dqkv (B, T, (H+2KVH)*D) += the gradient for dout (B, T, H*D), from the forward's qkv, out and
// lse.
void AttentionBackward(float* dqkv, const float* dout, const float* qkv, const float* out,
                       const float* lse, int64_t b, int64_t t, int64_t h, int64_t kvh, int64_t d);
// As AttentionBackward, but dqkv = the gradient, written over dqkv (every element): for a
// caller's scratch gradient, which then needs no zeroing pass (kernels/README.md).
void AttentionBackwardTo(float* dqkv, const float* dout, const float* qkv, const float* out,
                         const float* lse, int64_t b, int64_t t, int64_t h, int64_t kvh,
                         int64_t d);

// One decoding step against a KV cache (generation). q (H*D) is the new token's query;
// k_cache, v_cache (T_ctx, KVH, D) hold positions [0, len) including the new token.
// out (H*D). Equals row len-1 of AttentionForward over the same q/k/v, bit for bit (the same
// out-of-line row update over the same key blocks).
void AttentionDecode(float* out, const float* q, const float* k_cache, const float* v_cache,
                     int64_t len, int64_t h, int64_t kvh, int64_t d);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_ATTENTION_H_
