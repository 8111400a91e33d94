#ifndef LATTICE_KERNELS_GELU_H_
#define LATTICE_KERNELS_GELU_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// GELU, tanh approximation (GPT-2's "gelu_new", torch approximate="tanh"): out (n) = gelu(inp).
void GeluForward(float* out, const float* inp, int64_t n);
// dinp (n) += gelu'(inp) * dout.
void GeluBackward(float* dinp, const float* inp, const float* dout, int64_t n);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_GELU_H_
