#include <algorithm>

#include "kernels/embedding.h"
#include "kernels/math_cpu.h"
#include "runtime/profiler.h"

namespace lattice::kernels::cpu {

void EmbeddingForward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                      int64_t b, int64_t t, int64_t c, int64_t pos_offset) {
  profiler::Scope scope("embedding.fwd", profiler::Category::kElementwise);
#pragma omp parallel for collapse(2) schedule(static) if (internal::Parallel(b * t * c))
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t ti = 0; ti < t; ++ti) {
      float* y = out + (bi * t + ti) * c;
      const float* e = wte + static_cast<int64_t>(tokens[bi * t + ti]) * c;
      if (wpe != nullptr) {
        const float* p = wpe + (pos_offset + ti) * c;
#pragma omp simd
        for (int64_t j = 0; j < c; ++j) y[j] = e[j] + p[j];
      } else {
        std::copy(e, e + c, y);
      }
    }
  }
}

void EmbeddingBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                       int64_t b, int64_t t, int64_t c, int64_t pos_offset) {
  profiler::Scope scope("embedding.bwd", profiler::Category::kElementwise);
  // dwte: a token may occur many times, so tasks split the columns (not the tokens): each one
  // scatters its column block of every row, in row order. No atomics, deterministic sums.
  if (dwte != nullptr) {
    const int64_t width = internal::ColumnBlockWidth(c);
    const int64_t blocks = (c + width - 1) / width;
#pragma omp parallel for schedule(static) if (internal::Parallel(b * t * c))
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t j0 = blk * width;
      const int64_t w = std::min(width, c - j0);
      for (int64_t r = 0; r < b * t; ++r) {
        float* dst = dwte + static_cast<int64_t>(tokens[r]) * c + j0;
        const float* src = dout + r * c + j0;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) dst[j] += src[j];
      }
    }
  }
  // dwpe: position t owns its row; sum over the batch in order.
  if (dwpe != nullptr) {
#pragma omp parallel for schedule(static) if (internal::Parallel(b * t * c))
    for (int64_t ti = 0; ti < t; ++ti) {
      float* dst = dwpe + (pos_offset + ti) * c;
      for (int64_t bi = 0; bi < b; ++bi) {
        const float* src = dout + (bi * t + ti) * c;
#pragma omp simd
        for (int64_t j = 0; j < c; ++j) dst[j] += src[j];
      }
    }
  }
}

}  // namespace lattice::kernels::cpu
