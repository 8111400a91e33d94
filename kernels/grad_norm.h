#ifndef LATTICE_KERNELS_GRAD_NORM_H_
#define LATTICE_KERNELS_GRAD_NORM_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// Sum of squares in double precision (the global norm is sqrt of the sum over all shards,
// which parallel/ all-reduces before the sqrt).
double SumOfSquares(const float* x, int64_t n);

// x (n) *= scale.
void Scale(float* x, int64_t n, float scale);

// The factor that clips a gradient of global norm `norm` to `max_norm` (torch's
// clip_grad_norm_: max_norm / (norm + 1e-6), capped at 1). max_norm <= 0 disables clipping.
float ClipCoefficient(double norm, float max_norm);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_GRAD_NORM_H_
