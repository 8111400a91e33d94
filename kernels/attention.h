#ifndef LATTICE_KERNELS_ATTENTION_H_
#define LATTICE_KERNELS_ATTENTION_H_

#include <cstdint>
#include <utility>
#include <vector>

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

// Document-masked attention (packed fine-tuning rows, runtime/data/sft.h). doc_starts (B, T):
// for token t of a row, the position where its example starts; each example is a contiguous
// run (doc_starts[t] == t starts one, doc_starts[t] == doc_starts[t-1] continues it; checked).
// Query t sees keys doc_starts[t] <= j <= t only. Each example is computed by the causal
// kernels above as a sequence of its own length (keys of other examples are never touched), so
// an example packed into a row gives what it gives alone in a padded row, up to the rounding of
// the register tiling (rows are grouped from the example's start, and a padded row groups its
// last rows differently: FMA-contracted tiles of other heights). lse (B, H, T).
void AttentionForwardDocs(float* out, float* lse, const float* qkv, const int32_t* doc_starts,
                          int64_t b, int64_t t, int64_t h, int64_t kvh, int64_t d);
// dqkv = the gradient (written over every element, as AttentionBackwardTo).
void AttentionBackwardDocsTo(float* dqkv, const float* dout, const float* qkv, const float* out,
                             const float* lse, const int32_t* doc_starts, int64_t b, int64_t t,
                             int64_t h, int64_t kvh, int64_t d);
// The examples of one row: [begin, end) runs in order. LATTICE_CHECK that doc_starts (t) is a
// valid segmentation of the row (as described above).
std::vector<std::pair<int64_t, int64_t>> DocumentRuns(const int32_t* doc_starts, int64_t t);

// One decoding step against a KV cache (generation). q (H*D) is the new token's query;
// k_cache, v_cache (T_ctx, KVH, D) hold positions [0, len) including the new token.
// out (H*D). Equals row len-1 of AttentionForward over the same q/k/v, bit for bit (the same
// out-of-line row update over the same key blocks).
void AttentionDecode(float* out, const float* q, const float* k_cache, const float* v_cache,
                     int64_t len, int64_t h, int64_t kvh, int64_t d);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_ATTENTION_H_
