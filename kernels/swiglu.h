#ifndef LATTICE_KERNELS_SWIGLU_H_
#define LATTICE_KERNELS_SWIGLU_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// inp (N, 2F) holds [gate | up] per row (gate in columns [0, F), up in [F, 2F)).
// out (N, F) = silu(gate) * up, silu(x) = x * sigmoid(x).
void SwiGluForward(float* out, const float* inp, int64_t n, int64_t f);
// dinp (N, 2F) += d/d[gate|up].
void SwiGluBackward(float* dinp, const float* inp, const float* dout, int64_t n, int64_t f);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_SWIGLU_H_
