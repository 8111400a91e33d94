#ifndef LATTICE_KERNELS_MATMUL_H_
#define LATTICE_KERNELS_MATMUL_H_

#include <cstdint>
#include <string>

#include "kernels/threads.h"  // SetNumThreads / NumThreads, used with the GEMMs

namespace lattice::kernels::cpu {

// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC) ; bias may be null.
void MatmulForward(float* out, const float* inp, const float* weight, const float* bias,
                   int64_t n, int64_t c, int64_t oc);

// dinp (N, C) += dout @ weight ; dweight (OC, C) += dout^T @ inp ; dbias (OC) += sum_rows dout.
// Any of dinp, dweight, dbias may be null (not needed).
void MatmulBackward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                    const float* weight, int64_t n, int64_t c, int64_t oc);
// As MatmulBackward, except that dinp (N, C) = dout @ weight is written over dinp (the GEMM's
// beta = 0), not added: for a caller's scratch gradient, which then needs no zeroing pass
// (kernels/README.md). dweight and dbias still accumulate.
void MatmulBackwardTo(float* dinp, float* dweight, float* dbias, const float* dout,
                      const float* inp, const float* weight, int64_t n, int64_t c, int64_t oc);

// The library's own sgemm rate on this machine at the current thread count, in GFLOP/s: C (M, N)
// = A (M, K) B (K, N) repeated on fresh buffers for at least `seconds` after one untimed call.
// The ceiling `lattice bench train-step --profile` compares the step's GEMMs with.
double SgemmRate(int64_t m, int64_t n, int64_t k, double seconds);

// The library that runs the GEMMs. oneDNN's sgemm (JIT-generated AVX-512/AVX2 kernels) when
// lattice was built with it (CMake LATTICE_ONEDNN, on when Debian's libdnnl-dev is found): on
// the benchmark shapes it made the whole training step 10-13% faster than OpenBLAS
// (docs/performance.md). Otherwise OpenBLAS. LATTICE_GEMM=openblas|onednn picks at run time
// (an unknown or unavailable value stops the process). Both are their OpenMP builds: one pool.
// Results differ between the two only by rounding (their own blocking and summation order).
enum class GemmLibrary { kOpenBlas, kOneDnn };
bool GemmLibraryAvailable(GemmLibrary lib);
GemmLibrary ActiveGemmLibrary();
// Tests and benchmarks: makes `lib` (which must be available) the active one.
void SetGemmLibrary(GemmLibrary lib);
// "onednn 2.6.3" or "openblas openmp (SkylakeX)".
std::string GemmLibraryName();
// True when the active library runs its threads on lattice's OpenMP pool.
bool GemmLibrarySharesOpenMpPool();

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_MATMUL_H_
