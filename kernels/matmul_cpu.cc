#include <cblas.h>
#include <omp.h>

#include "kernels/matmul.h"

namespace lattice::kernels::cpu {

void MatmulForward(float* out, const float* inp, const float* weight, const float* bias,
                   int64_t n, int64_t c, int64_t oc) {
  if (bias != nullptr) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      float* row = out + i * oc;
      for (int64_t j = 0; j < oc; ++j) row[j] = bias[j];
    }
  }
  // out (N, OC) = inp (N, C) @ weight^T (C, OC) [+ out]
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, oc, c, 1.0f, inp, c, weight, c,
              bias != nullptr ? 1.0f : 0.0f, out, oc);
}

void MatmulBackward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                    const float* weight, int64_t n, int64_t c, int64_t oc) {
  if (dinp != nullptr) {
    // dinp (N, C) += dout (N, OC) @ weight (OC, C)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, c, oc, 1.0f, dout, oc, weight, c,
                1.0f, dinp, c);
  }
  if (dweight != nullptr) {
    // dweight (OC, C) += dout^T (OC, N) @ inp (N, C)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, oc, c, n, 1.0f, dout, oc, inp, c, 1.0f,
                dweight, c);
  }
  if (dbias != nullptr) {
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < oc; ++j) {
      float s = 0.0f;
      for (int64_t i = 0; i < n; ++i) s += dout[i * oc + j];
      dbias[j] += s;
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
