#ifndef LATTICE_KERNELS_MATMUL_H_
#define LATTICE_KERNELS_MATMUL_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC) ; bias may be null.
void MatmulForward(float* out, const float* inp, const float* weight, const float* bias,
                   int64_t n, int64_t c, int64_t oc);

// dinp (N, C) += dout @ weight ; dweight (OC, C) += dout^T @ inp ; dbias (OC) += sum_rows dout.
// Any of dinp, dweight, dbias may be null (not needed).
void MatmulBackward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                    const float* weight, int64_t n, int64_t c, int64_t oc);

// Threads used by the CPU backend (OpenMP and OpenBLAS). 0 = library default.
void SetNumThreads(int n);
int NumThreads();

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_MATMUL_H_
