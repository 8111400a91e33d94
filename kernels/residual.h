#ifndef LATTICE_KERNELS_RESIDUAL_H_
#define LATTICE_KERNELS_RESIDUAL_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// out (n) = a + b. out may alias a.
void ResidualForward(float* out, const float* a, const float* b, int64_t n);
// da (n) += dout ; db (n) += dout.
void ResidualBackward(float* da, float* db, const float* dout, int64_t n);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_RESIDUAL_H_
