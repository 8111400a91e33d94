#include <omp.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/gemm_cpu.h"
#include "kernels/math_cpu.h"
#include "kernels/simd.h"
#include "runtime/profiler.h"

namespace lattice::kernels::cpu {
namespace {

// On a few cores, a GEMM split into one single-threaded OpenBLAS call per thread (each on its
// own block of rows; inside a parallel region the OpenMP OpenBLAS runs on the calling thread)
// beats OpenBLAS's own threading of the same call, which synchronises its threads around
// shared packed panels several times per call: at 2 threads the kjv-demo step's GEMMs ran at
// ~266 GFLOP/s threaded by OpenBLAS and ~285 split here (docs/performance.md).
// Each block needs enough rows to keep the single-threaded kernel efficient, and the split
// pays only while each thread gets a large share; more threads are left to OpenBLAS.
constexpr int64_t kMinSplitRows = 64;
constexpr int kMaxSplitThreads = 4;
// Above this many multiply-adds per call (e.g. GPT-2 small's 256 x 768 x 3072 layers, or its
// lm head) OpenBLAS's threading was as fast or faster (within the noise of a loaded machine),
// and it reads a large weight once where the split would read it once per thread.
constexpr int64_t kMaxSplitMacs = int64_t{1} << 28;

int SplitThreads(int64_t macs, int64_t rows, int blocks_per_thread = 1) {
  if (omp_in_parallel() || macs > kMaxSplitMacs) return 1;
  const int threads = omp_get_max_threads();
  if (threads < 2 || threads > kMaxSplitThreads) return 1;
  if (rows / (static_cast<int64_t>(threads) * blocks_per_thread) < kMinSplitRows) return 1;
  return threads;
}

// Row range [begin, end) of block `i` of `parts` over `rows` rows.
inline int64_t BlockBegin(int64_t rows, int parts, int i) { return rows * i / parts; }

// out (rows, cols) with row stride ldo = inp (rows, C) @ weight (cols, C)^T [+ bias (cols)].
void ForwardBlock(float* out, int64_t ldo, const float* inp, const float* weight,
                  const float* bias, int64_t rows, int64_t c, int64_t cols) {
  if (bias != nullptr) {
    for (int64_t i = 0; i < rows; ++i) std::copy(bias, bias + cols, out + i * ldo);
  }
  // With beta = 0 the product is stored without reading out (NaN-poisoned buffers are
  // overwritten; tested).
  internal::Sgemm(false, true, rows, cols, c, 1.0f, inp, c, weight, c,
                  bias != nullptr ? 1.0f : 0.0f, out, ldo);
}

// dinp rows [r0, r1) = beta dinp rows + dout rows @ weight (beta 1: accumulate, 0: write).
void BackwardInputRows(float* dinp, const float* dout, const float* weight, int64_t r0,
                       int64_t r1, int64_t c, int64_t oc, float beta) {
  internal::Sgemm(false, false, r1 - r0, c, oc, 1.0f, dout + r0 * oc, oc, weight, c, beta,
                  dinp + r0 * c, c);
}

// dweight rows [o0, o1) += dout[:, o0:o1]^T @ inp.
void BackwardWeightRows(float* dweight, const float* dout, const float* inp, int64_t o0,
                        int64_t o1, int64_t n, int64_t c, int64_t oc) {
  internal::Sgemm(true, false, o1 - o0, c, n, 1.0f, dout + o0, oc, inp, c, 1.0f,
                  dweight + o0 * c, c);
}

}  // namespace

void MatmulForward(float* out, const float* inp, const float* weight, const float* bias,
                   int64_t n, int64_t c, int64_t oc) {
  if (n <= 0 || oc <= 0) return;
  profiler::Scope scope("matmul.fwd", profiler::Category::kGemm, 2.0 * n * c * oc);
  if (c <= 0) {
    // BLAS rejects a zero leading dimension; an empty contraction is the bias (or zero).
    for (int64_t i = 0; i < n; ++i) {
      if (bias != nullptr) {
        std::copy(bias, bias + oc, out + i * oc);
      } else {
        std::fill(out + i * oc, out + (i + 1) * oc, 0.0f);
      }
    }
    return;
  }
  // Each thread's call packs the whole of the operand it does not split: split the larger one
  // (by rows of out when inp is larger, by columns when the weight is, e.g. the lm head), so
  // the smaller is what is read twice.
  const bool by_rows = n >= oc;
  const int parts = SplitThreads(n * c * oc, by_rows ? n : oc);
  if (parts == 1) {
    ForwardBlock(out, oc, inp, weight, bias, n, c, oc);
    return;
  }
#pragma omp parallel for schedule(static, 1) num_threads(parts)
  for (int part = 0; part < parts; ++part) {
    if (by_rows) {
      const int64_t r0 = BlockBegin(n, parts, part), r1 = BlockBegin(n, parts, part + 1);
      ForwardBlock(out + r0 * oc, oc, inp + r0 * c, weight, bias, r1 - r0, c, oc);
    } else {
      const int64_t o0 = BlockBegin(oc, parts, part), o1 = BlockBegin(oc, parts, part + 1);
      ForwardBlock(out + o0, oc, inp, weight + o0 * c, bias != nullptr ? bias + o0 : nullptr, n,
                   c, o1 - o0);
    }
  }
}

namespace {

void Backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
              const float* weight, int64_t n, int64_t c, int64_t oc, bool accumulate) {
  if (n <= 0) return;
  if (oc <= 0) {
    // An empty product: nothing to add, or zeros to write.
    if (!accumulate && dinp != nullptr) std::fill(dinp, dinp + n * c, 0.0f);
    return;
  }
  const float beta = accumulate ? 1.0f : 0.0f;
  const bool want_dinp = dinp != nullptr && c > 0;
  const bool want_dweight = dweight != nullptr && c > 0;
  // Both products cost 2 N C OC: with two of them, half the threads take each (split by rows
  // of dinp and of dweight); with one, all threads split it.
  int parts = 1;
  if (want_dinp && want_dweight) {
    parts = SplitThreads(n * c * oc, std::min(n, oc), 1);
    if (parts % 2 != 0 || std::min(n, oc) / (parts / 2) < kMinSplitRows) parts = 1;
  }
  if (parts > 1) {
    profiler::Scope scope("matmul.bwd", profiler::Category::kGemm, 4.0 * n * c * oc);
    const int half = parts / 2;
#pragma omp parallel for schedule(static, 1) num_threads(parts)
    for (int part = 0; part < parts; ++part) {
      if (part < half) {
        BackwardInputRows(dinp, dout, weight, BlockBegin(n, half, part),
                          BlockBegin(n, half, part + 1), c, oc, beta);
      } else {
        BackwardWeightRows(dweight, dout, inp, BlockBegin(oc, half, part - half),
                           BlockBegin(oc, half, part - half + 1), n, c, oc);
      }
    }
  } else {
    if (want_dinp) {
      profiler::Scope scope("matmul.bwd", profiler::Category::kGemm, 2.0 * n * c * oc);
      BackwardInputRows(dinp, dout, weight, 0, n, c, oc, beta);
    }
    if (want_dweight) {
      profiler::Scope scope("matmul.bwd", profiler::Category::kGemm, 2.0 * n * c * oc);
      BackwardWeightRows(dweight, dout, inp, 0, oc, n, c, oc);
    }
  }
  if (dbias != nullptr) {
    profiler::Scope scope("matmul.bwd.dbias", profiler::Category::kElementwise);
    // Column sums in row order, in double, whatever the thread count: deterministic.
    internal::Simd().column_sums(dbias, dout, n, oc);
  }
}

}  // namespace

void MatmulBackward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                    const float* weight, int64_t n, int64_t c, int64_t oc) {
  Backward(dinp, dweight, dbias, dout, inp, weight, n, c, oc, /*accumulate=*/true);
}

void MatmulBackwardTo(float* dinp, float* dweight, float* dbias, const float* dout,
                      const float* inp, const float* weight, int64_t n, int64_t c, int64_t oc) {
  Backward(dinp, dweight, dbias, dout, inp, weight, n, c, oc, /*accumulate=*/false);
}

double SgemmRate(int64_t m, int64_t n, int64_t k, double seconds) {
  std::vector<float> a(m * k, 0.5f), b(k * n, 0.25f), c(m * n, 0.0f);
  auto run = [&] {
    internal::Sgemm(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c.data(), n);
  };
  run();  // untimed: page faults, OpenBLAS's buffers and thread start-up
  int64_t calls = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  do {
    run();
    ++calls;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } while (elapsed < seconds);
  return 2.0 * m * n * k * calls / elapsed / 1e9;
}

}  // namespace lattice::kernels::cpu
