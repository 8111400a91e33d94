#ifndef LATTICE_KERNELS_ATTENTION_H_
#define LATTICE_KERNELS_ATTENTION_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// Causal multi-head attention with grouped-query heads (GQA/MQA when kvh < h).
// qkv (B, T, (H + 2*KVH) * D) packs per token [q heads | k heads | v heads]; query head i uses
// kv head i / (H / KVH). Scale 1/sqrt(D).
// out (B, T, H*D); att (B, H, T, T) receives the softmax probabilities (upper triangle zero),
// which backward needs.
void AttentionForward(float* out, float* att, const float* qkv, int64_t b, int64_t t, int64_t h,
                      int64_t kvh, int64_t d);
// dqkv (B, T, (H+2KVH)*D) += ; datt (B, H, T, T) is scratch (overwritten).
void AttentionBackward(float* dqkv, float* datt, const float* dout, const float* qkv,
                       const float* att, int64_t b, int64_t t, int64_t h, int64_t kvh, int64_t d);

// One decoding step against a KV cache (generation). q (H*D) is the new token's query;
// k_cache, v_cache (T_ctx, KVH, D) hold positions [0, len) including the new token.
// out (H*D). Equals row len-1 of AttentionForward over the same q/k/v, bit for bit. The
// probabilities (H*len floats) live in a buffer kept per calling thread, grown as len grows.
void AttentionDecode(float* out, const float* q, const float* k_cache, const float* v_cache,
                     int64_t len, int64_t h, int64_t kvh, int64_t d);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_ATTENTION_H_
