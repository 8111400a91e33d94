#ifndef LATTICE_KERNELS_ROPE_H_
#define LATTICE_KERNELS_ROPE_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// Rotary position embedding, Hugging Face "rotate-half" convention: each head of size D is
// split in halves x1 = x[:D/2], x2 = x[D/2:], and with inv_freq[i] = theta^(-2i/D),
// angle = pos * inv_freq[i]:  out1 = x1*cos - x2*sin ; out2 = x2*cos + x1*sin.
//
// Applied IN PLACE to `heads` heads of size `d` per token. Token (b, t) starts at
// x + (b*T + t) * row_stride (so q and k can be rotated inside a packed qkv row), and has
// position pos_offset + t. D must be even.
void RopeForward(float* x, int64_t b, int64_t t, int64_t heads, int64_t d, int64_t row_stride,
                 int64_t pos_offset, float theta);
// The backward of a rotation is the inverse rotation, also in place on the gradient.
void RopeBackward(float* dx, int64_t b, int64_t t, int64_t heads, int64_t d, int64_t row_stride,
                  int64_t pos_offset, float theta);
// The same with the position of token (b, t) = t - doc_starts[b*T + t] (packed examples: each
// restarts at 0, runtime/data/sft.h); doc_starts (B, T) with 0 <= doc_starts[t] <= t.
void RopeForwardDocs(float* x, const int32_t* doc_starts, int64_t b, int64_t t, int64_t heads,
                     int64_t d, int64_t row_stride, float theta);
void RopeBackwardDocs(float* dx, const int32_t* doc_starts, int64_t b, int64_t t, int64_t heads,
                      int64_t d, int64_t row_stride, float theta);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_ROPE_H_
