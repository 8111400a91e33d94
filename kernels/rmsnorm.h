#ifndef LATTICE_KERNELS_RMSNORM_H_
#define LATTICE_KERNELS_RMSNORM_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// out (N, C) = inp * rstd * weight, rstd = 1/sqrt(mean(inp^2) + eps) ; saves rstd (N).
// Matches Hugging Face LlamaRMSNorm in fp32.
void RmsNormForward(float* out, float* rstd, const float* inp, const float* weight, int64_t n,
                    int64_t c, float eps);
// dinp (N, C) +=, dweight (C) += .
void RmsNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int64_t n, int64_t c);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_RMSNORM_H_
