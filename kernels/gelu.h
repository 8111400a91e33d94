#ifndef LATTICE_KERNELS_GELU_H_
#define LATTICE_KERNELS_GELU_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// GELU, tanh approximation (GPT-2's "gelu_new", torch approximate="tanh"): out (n) = gelu(inp).
void GeluForward(float* out, const float* inp, int64_t n);
// dinp (n) += gelu'(inp) * dout.
void GeluBackward(float* dinp, const float* inp, const float* dout, int64_t n);
// dinp (n) = gelu'(inp) * dout, written over dinp: for a caller's scratch gradient, which then
// needs no zeroing pass (the one exception to "backward outputs accumulate", kernels/README.md).
void GeluBackwardTo(float* dinp, const float* inp, const float* dout, int64_t n);
// The MLP's bias add and GELU in one pass: pre (N, F) += bias (F) (bias may be null), then
// out (N, F) = gelu(pre). Equals adding the bias in the matmul and calling GeluForward.
void BiasGeluForward(float* pre, float* out, const float* bias, int64_t n, int64_t f);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_GELU_H_
