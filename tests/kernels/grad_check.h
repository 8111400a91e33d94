// Shared helpers for the kernel tests: seeded random inputs, NaN poisoning, central-difference
// gradients of naive double-precision references, and element-wise comparisons that report
// the first mismatches by index.
#ifndef LATTICE_TESTS_KERNELS_GRAD_CHECK_H_
#define LATTICE_TESTS_KERNELS_GRAD_CHECK_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/simd.h"

namespace lattice::testing {

// Runs `body` once for every vector level (kernels/simd.h) this CPU supports, with that level
// active, then restores the default. The levels round differently (FMA, reduction order), so
// each must pass the same tolerances.
template <typename F>
void ForEachSimdLevel(F&& body) {
  using kernels::cpu::internal::SimdLevel;
  const SimdLevel saved = kernels::cpu::internal::Simd().level;
  for (SimdLevel level : {SimdLevel::kBaseline, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    if (!kernels::cpu::internal::SimdSupported(level)) continue;
    kernels::cpu::internal::SetSimdLevel(level);
    SCOPED_TRACE(std::string("SIMD level ") + kernels::cpu::internal::Simd().name);
    body();
  }
  kernels::cpu::internal::SetSimdLevel(saved);
}

// Uniform in [lo, hi), reproducible for a given seed.
inline std::vector<float> RandomVector(int64_t n, uint64_t seed, float lo = -1.0f,
                                       float hi = 1.0f) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

inline std::vector<int32_t> RandomInts(int64_t n, uint64_t seed, int32_t lo, int32_t hi) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int32_t> dist(lo, hi);
  std::vector<int32_t> v(n);
  for (int32_t& x : v) x = dist(gen);
  return v;
}

// A buffer every element of which a kernel must overwrite: any element left unwritten stays
// NaN and fails the comparison that follows.
inline std::vector<float> Poisoned(int64_t n) {
  return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN());
}

inline std::vector<double> ToDouble(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// sum_i out_i * r_i: the random projection that turns an op into a scalar loss whose gradient
// with respect to out is r (the `dout` handed to the backward kernel).
inline double Project(const std::vector<double>& out, const std::vector<float>& r) {
  double s = 0.0;
  for (size_t i = 0; i < out.size(); ++i) s += out[i] * r[i];
  return s;
}

// Central differences of f at x, all in double: error O(h^2 f''') + O(eps_double * |f| / h),
// about 1e-10 relative for h = 1e-5 and the O(1) inputs used here, far below fp32 rounding
// in the kernels, so the check measures the kernel, not the reference.
template <typename F>
std::vector<double> NumericGradient(F&& f, std::vector<double> x, double h = 1e-5) {
  std::vector<double> g(x.size());
  for (size_t k = 0; k < x.size(); ++k) {
    const double saved = x[k];
    x[k] = saved + h;
    const double fp = f(x);
    x[k] = saved - h;
    const double fm = f(x);
    x[k] = saved;
    g[k] = (fp - fm) / (2.0 * h);
  }
  return g;
}

inline double MaxAbs(const std::vector<double>& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// Expects |actual_i - expected_i| <= atol + rtol * |expected_i| for every i (NaN fails).
template <typename A, typename E>
void ExpectAllNear(const std::vector<A>& actual, const std::vector<E>& expected, double rtol,
                   double atol, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int failures = 0;
  double worst = 0.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double a = static_cast<double>(actual[i]);
    const double e = static_cast<double>(expected[i]);
    const double err = std::fabs(a - e);
    const bool ok = err <= atol + rtol * std::fabs(e);  // false for NaN
    if (!ok) {
      if (failures < 8) {
        ADD_FAILURE() << what << "[" << i << "]: got " << a << ", want " << e << " (|diff| "
                      << err << " > " << atol + rtol * std::fabs(e) << ")";
      }
      ++failures;
    }
    if (std::isfinite(err)) worst = std::max(worst, err);
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << actual.size()
                         << " elements out of tolerance; worst finite |diff| " << worst;
}

// Gradient check: a kernel's fp32 gradient against a double-precision central difference.
// The tolerance is relative to the largest gradient element (plus the element itself): fp32
// kernels round every product and sum at ~6e-8 relative, and with the O(100)-term sums of these
// small shapes (and cancellation in softmax/normalisation backward) the error stays below
// ~1e-5 of the gradient's scale; 1e-4 leaves a margin yet catches any wrong term, which is O(1).
// `term_scale` is a floor for that scale when the gradient is a difference of larger terms that
// cancel (e.g. a normalisation over a single column), since rounding is relative to the terms.
inline void ExpectGradNear(const std::vector<float>& kernel, const std::vector<double>& numeric,
                           const std::string& what, double tol = 1e-4, double term_scale = 1e-3) {
  ExpectAllNear(kernel, numeric, tol, tol * std::max(MaxAbs(numeric), term_scale), what);
}

// For += checks: pre-filled buffer `before`, the kernel's result `after`, and the result
// `fresh` of the same call on a zeroed buffer. Accumulation adds fresh to before with one fp32
// rounding (or a few, where BLAS splits its sum), hence the 1e-6 relative slack.
inline void ExpectAccumulated(const std::vector<float>& after, const std::vector<float>& before,
                              const std::vector<float>& fresh, const std::string& what) {
  std::vector<double> want(before.size());
  double scale = 0.0;
  for (size_t i = 0; i < before.size(); ++i) {
    want[i] = static_cast<double>(before[i]) + fresh[i];
    scale = std::max({scale, std::fabs(static_cast<double>(before[i])),
                      std::fabs(static_cast<double>(fresh[i]))});
  }
  ExpectAllNear(after, want, 1e-6, 1e-6 * scale, what + " (accumulates with +=)");
}

}  // namespace lattice::testing

#endif  // LATTICE_TESTS_KERNELS_GRAD_CHECK_H_
