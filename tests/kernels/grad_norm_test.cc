#include "kernels/grad_norm.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::ClipCoefficient;
using kernels::cpu::Scale;
using kernels::cpu::SumOfSquares;
using testing::ForEachSimdLevel;
using testing::RandomVector;

TEST(GradNormTest, SumOfSquaresMatchesLongDoubleAndIgnoresThreadCount) {
  ForEachSimdLevel([&] {
    // Sizes below, at and across the internal chunking (2^15).
    for (int64_t n : {0, 1, 1000, 32768, 3 * 32768 + 17}) {
      const auto x = RandomVector(n, static_cast<uint64_t>(n) + 1, -3.0f, 3.0f);
      long double want = 0.0L;
      for (float v : x) want += static_cast<long double>(v) * v;
      const double got = SumOfSquares(x.data(), n);
      // Double accumulation of n <= 1e5 positive terms: relative error <= n * 2^-53 ~ 1e-11.
      EXPECT_NEAR(got, static_cast<double>(want), 1e-12 * static_cast<double>(want) + 1e-300)
          << "n=" << n;
      const int threads = omp_get_max_threads();
      omp_set_num_threads(1);
      const double single = SumOfSquares(x.data(), n);
      omp_set_num_threads(threads);
      EXPECT_EQ(single, got) << "n=" << n;
    }
  });
}

TEST(GradNormTest, ScaleMultipliesEveryElement) {
  ForEachSimdLevel([&] {
    const auto x = RandomVector(70001, 5);
    auto y = x;
    Scale(y.data(), static_cast<int64_t>(y.size()), 0.3f);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(y[i], x[i] * 0.3f) << i;
  });
}

TEST(GradNormTest, ClipCoefficientFollowsTorch) {
  ForEachSimdLevel([&] {
    EXPECT_EQ(ClipCoefficient(10.0, 1.0f), static_cast<float>(1.0 / (10.0 + 1e-6)));
    EXPECT_EQ(ClipCoefficient(0.5, 1.0f), 1.0f);     // below the threshold: capped at 1
    // At the threshold the 1e-6 still applies (torch does not clamp it away): slightly below 1.
    EXPECT_EQ(ClipCoefficient(1.0, 1.0f), static_cast<float>(1.0 / (1.0 + 1e-6)));
    EXPECT_LT(ClipCoefficient(1.0, 1.0f), 1.0f);
    EXPECT_EQ(ClipCoefficient(0.0, 1.0f), 1.0f);     // zero gradient: no division by zero
    EXPECT_EQ(ClipCoefficient(100.0, 0.0f), 1.0f);   // max_norm <= 0 disables clipping
    EXPECT_EQ(ClipCoefficient(100.0, -1.0f), 1.0f);
    EXPECT_NEAR(ClipCoefficient(4.0, 2.0f), 0.5f, 1e-6f);
  });
}

}  // namespace
}  // namespace lattice
