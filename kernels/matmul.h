#ifndef LATTICE_KERNELS_MATMUL_H_
#define LATTICE_KERNELS_MATMUL_H_

#include <cstdint>

#include "kernels/threads.h"  // SetNumThreads / NumThreads, used with the GEMMs

namespace lattice::kernels::cpu {

// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC) ; bias may be null.
void MatmulForward(float* out, const float* inp, const float* weight, const float* bias,
                   int64_t n, int64_t c, int64_t oc);

// dinp (N, C) += dout @ weight ; dweight (OC, C) += dout^T @ inp ; dbias (OC) += sum_rows dout.
// Any of dinp, dweight, dbias may be null (not needed).
void MatmulBackward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                    const float* weight, int64_t n, int64_t c, int64_t oc);

// OpenBLAS's own sgemm rate on this machine at the current thread count, in GFLOP/s: C (M, N) =
// A (M, K) B (K, N) repeated on fresh buffers for at least `seconds` after one untimed call.
// The ceiling `lattice bench train-step --profile` compares the step's GEMMs with.
double SgemmRate(int64_t m, int64_t n, int64_t k, double seconds);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_MATMUL_H_
