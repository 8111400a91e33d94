#ifndef LATTICE_KERNELS_EMBEDDING_H_
#define LATTICE_KERNELS_EMBEDDING_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// out (B, T, C) = wte[tokens[b, t]] + (wpe ? wpe[pos_offset + t] : 0).
// wte (Vp, C), wpe (max_T, C) or null (Llama: positions come from RoPE).
// Token ids are trusted here (checked by the data loader against the vocabulary).
void EmbeddingForward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                      int64_t b, int64_t t, int64_t c, int64_t pos_offset);
// dwte (Vp, C) += scatter of dout by token ; dwpe (max_T, C) += sum over batch (if non-null).
void EmbeddingBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                       int64_t b, int64_t t, int64_t c, int64_t pos_offset);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_EMBEDDING_H_
