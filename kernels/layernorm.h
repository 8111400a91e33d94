#ifndef LATTICE_KERNELS_LAYERNORM_H_
#define LATTICE_KERNELS_LAYERNORM_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// out (N, C) = (inp - mean) * rstd * weight + bias ; saves mean (N) and rstd (N) for backward.
// Population variance (divide by C), as torch.nn.LayerNorm.
void LayerNormForward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                      const float* bias, int64_t n, int64_t c, float eps);
// dinp (N, C) +=, dweight (C) +=, dbias (C) += .
void LayerNormBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean, const float* rstd,
                       int64_t n, int64_t c);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_LAYERNORM_H_
