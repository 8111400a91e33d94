// Helpers shared by the CPU kernels (internal to kernels/, not an op API).
//
// glibc's expf is a scalar call that GCC only vectorises under -ffast-math, and softmax,
// cross-entropy, SiLU and GELU spend most of their time in exp. These inline versions are
// plain branch-free arithmetic, so `#pragma omp simd` loops calling them compile to vector code.
#ifndef LATTICE_KERNELS_MATH_CPU_H_
#define LATTICE_KERNELS_MATH_CPU_H_

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include <omp.h>

namespace lattice::kernels::cpu::internal {

// exp(x) in fp32, within 2 ulp of the correctly rounded value over the whole range (tested in
// tests/kernels/math_cpu_test.cc). Cody-Waite reduction x = n*ln2 + r with |r| <= ln2/2, a
// degree-7 Taylor-like polynomial for exp(r) (the Cephes expf coefficients), and 2^n applied
// as two factors 2^(n/2) so that results in the denormal range and overflow to +inf come out of
// ordinary float multiplication. exp(-inf) = 0, exp(+inf) = +inf, exp(NaN) = NaN.
inline float ExpF(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;     // ln 2 = kLn2Hi + kLn2Lo, kLn2Hi exact in 9 bits
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kLo = -104.0f;             // exp(-104) < FLT_TRUE_MIN / 2: rounds to 0
  constexpr float kHi = 89.0f;               // exp(89) > FLT_MAX: overflows to +inf
  // max(kLo, x) maps NaN to kLo (std::max returns its first argument when unordered), so the
  // integer conversion below never sees a NaN; NaN is restored at the end.
  const float xc = std::min(std::max(kLo, x), kHi);
  // nearbyint, not floor(t + 0.5): GCC will not vectorise floor without -fno-trapping-math.
  const float fn = std::nearbyint(xc * kLog2e);
  float r = xc - fn * kLn2Hi;
  r = r - fn * kLn2Lo;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + 1.0f;
  const int32_t n = static_cast<int32_t>(fn);  // in [-150, 129]
  const int32_t n1 = n / 2;
  const int32_t n2 = n - n1;
  const float s1 = std::bit_cast<float>(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = std::bit_cast<float>(static_cast<uint32_t>(n2 + 127) << 23);
  const float y = p * s1 * s2;
  return x != x ? x : y;
}

// Below this much work (elements touched, or multiply-adds; ~10 us on one core) a kernel runs
// on the calling thread: waking the OpenMP team costs microseconds on an idle machine and up to
// a scheduler time slice on a busy one, which dominated the step of a tiny model.
constexpr int64_t kParallelMinWork = int64_t{1} << 15;
inline bool Parallel(int64_t work) { return work >= kParallelMinWork; }

// Parameter gradients (dweight, dbias) reduce an (N, C) array over its rows. The kernels do it
// one task per block of columns: each task walks all rows in order, reading one contiguous
// stretch of each, with the partial sums in a stack array of kMaxColumnBlock doubles. Every
// column is then summed in row order whatever the thread count, so results are reproducible.
// The block is narrowed (down to 16 columns, one cache line) so that small C still gives every
// thread a task.
constexpr int64_t kMaxColumnBlock = 64;
inline int64_t ColumnBlockWidth(int64_t c) {
  const int64_t threads = std::max(1, omp_get_max_threads());
  const int64_t per_thread = (c + threads - 1) / threads;
  return std::clamp<int64_t>((per_thread + 15) / 16 * 16, 16, kMaxColumnBlock);
}

}  // namespace lattice::kernels::cpu::internal

#endif  // LATTICE_KERNELS_MATH_CPU_H_
