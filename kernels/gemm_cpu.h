// The sgemm every CPU matmul goes through (internal to kernels/): OpenBLAS, or oneDNN's sgemm
// when lattice was built with it (kernels/matmul.h says how the library is chosen).
#ifndef LATTICE_KERNELS_GEMM_CPU_H_
#define LATTICE_KERNELS_GEMM_CPU_H_

#include <cstdint>

namespace lattice::kernels::cpu::internal {

// Row-major C (M, N) = alpha op(A) op(B) + beta C, op(X) = X or X^T; with beta = 0, C is
// written without being read. Called inside an OpenMP parallel region it runs on the calling
// thread (both libraries' OpenMP builds); outside, on the team SetNumThreads sized.
void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc);

}  // namespace lattice::kernels::cpu::internal

#endif  // LATTICE_KERNELS_GEMM_CPU_H_
