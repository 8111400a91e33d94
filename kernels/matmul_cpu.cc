#include <cblas.h>
#include <omp.h>

#include <algorithm>

#include "kernels/matmul.h"
#include "kernels/math_cpu.h"

namespace lattice::kernels::cpu {
void MatmulForward(float* out, const float* inp, const float* weight, const float* bias,
                   int64_t n, int64_t c, int64_t oc) {
  if (n <= 0 || oc <= 0) return;
  if (bias != nullptr) {
#pragma omp parallel for schedule(static) if (internal::Parallel(n * oc))
    for (int64_t i = 0; i < n; ++i) {
      float* row = out + i * oc;
      for (int64_t j = 0; j < oc; ++j) row[j] = bias[j];
    }
  }
  if (c <= 0) {
    // BLAS rejects a zero leading dimension; an empty contraction is the bias (or zero).
    if (bias == nullptr) std::fill(out, out + n * oc, 0.0f);
    return;
  }
  // out (N, OC) = inp (N, C) @ weight^T (C, OC) [+ out]. With beta = 0 OpenBLAS stores the
  // product without reading out (NaN-poisoned buffers are overwritten; tested).
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, oc, c, 1.0f, inp, c, weight, c,
              bias != nullptr ? 1.0f : 0.0f, out, oc);
}

void MatmulBackward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                    const float* weight, int64_t n, int64_t c, int64_t oc) {
  if (n <= 0 || oc <= 0) return;
  if (dinp != nullptr && c > 0) {
    // dinp (N, C) += dout (N, OC) @ weight (OC, C)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, c, oc, 1.0f, dout, oc, weight, c,
                1.0f, dinp, c);
  }
  if (dweight != nullptr && c > 0) {
    // dweight (OC, C) += dout^T (OC, N) @ inp (N, C)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, oc, c, n, 1.0f, dout, oc, inp, c, 1.0f,
                dweight, c);
  }
  if (dbias != nullptr) {
    // Row-major walk over column blocks: contiguous loads, and each column's sum is taken in
    // row order in double whatever the thread count, so the result is deterministic.
    const int64_t width = internal::ColumnBlockWidth(oc);
    const int64_t blocks = (oc + width - 1) / width;
#pragma omp parallel for schedule(static) if (internal::Parallel(n * oc))
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t j0 = blk * width;
      const int64_t w = std::min(width, oc - j0);
      double acc[internal::kMaxColumnBlock] = {};
      for (int64_t i = 0; i < n; ++i) {
        const float* row = dout + i * oc + j0;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) acc[j] += row[j];
      }
      for (int64_t j = 0; j < w; ++j) dbias[j0 + j] += static_cast<float>(acc[j]);
    }
  }
}

void SetNumThreads(int n) {
  if (n <= 0) return;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int NumThreads() { return omp_get_max_threads(); }

}  // namespace lattice::kernels::cpu
