#include "kernels/math_cpu.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace lattice {
namespace {

using kernels::cpu::internal::ColumnBlockWidth;
using kernels::cpu::internal::ExpF;
using kernels::cpu::internal::kMaxColumnBlock;

// |ExpF(x) - exp(x)| in units of the fp32 spacing at exp(x) (denormal spacing below FLT_MIN).
double UlpError(float x) {
  const double want = std::exp(static_cast<double>(x));
  const float rounded = static_cast<float>(want);
  const double ulp = std::max(static_cast<double>(std::numeric_limits<float>::denorm_min()),
                              static_cast<double>(std::nextafter(rounded, INFINITY)) - rounded);
  return std::fabs(static_cast<double>(ExpF(x)) - want) / ulp;
}

TEST(MathCpuTest, ExpIsWithinTwoUlpOverTheFiniteRange) {
  // Every 127th float in [-104, 88.72] (~15M values, all exponents and mantissa patterns);
  // an exhaustive sweep during development measured 1.01 ulp.
  const uint32_t lo_neg = std::bit_cast<uint32_t>(-104.0f);
  const uint32_t hi_pos = std::bit_cast<uint32_t>(88.72f);
  double worst = 0.0;
  float worst_x = 0.0f;
  auto check = [&](uint32_t bits) {
    const float x = std::bit_cast<float>(bits);
    const double e = UlpError(x);
    if (e > worst) {
      worst = e;
      worst_x = x;
    }
  };
  for (uint32_t b = 0; b <= hi_pos; b += 127) check(b);               // +0 .. 88.72
  for (uint32_t b = 0x80000000u; b <= lo_neg; b += 127) check(b);     // -0 .. -104
  EXPECT_LE(worst, 2.0) << "worst at x = " << worst_x;
}

TEST(MathCpuTest, ExpSpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(ExpF(0.0f), 1.0f);
  EXPECT_EQ(ExpF(-0.0f), 1.0f);
  EXPECT_EQ(ExpF(-inf), 0.0f);
  EXPECT_EQ(ExpF(inf), inf);
  EXPECT_TRUE(std::isnan(ExpF(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(ExpF(89.0f), inf);   // exp(89) > FLT_MAX
  EXPECT_EQ(ExpF(1000.0f), inf);
  EXPECT_EQ(ExpF(-105.0f), 0.0f);  // below half the smallest denormal
  EXPECT_GT(ExpF(-100.0f), 0.0f);  // denormal results are kept
  EXPECT_NEAR(ExpF(-100.0f), std::exp(-100.0f), 2 * std::numeric_limits<float>::denorm_min());
  EXPECT_TRUE(std::isfinite(ExpF(88.72f)));
}

TEST(MathCpuTest, ColumnBlocksAreCacheLineMultiplesWithinBounds) {
  for (int64_t c : {1, 15, 16, 100, 768, 4096}) {
    const int64_t w = ColumnBlockWidth(c);
    EXPECT_GE(w, 16) << c;
    EXPECT_LE(w, kMaxColumnBlock) << c;
    EXPECT_EQ(w % 16, 0) << c;
  }
}

}  // namespace
}  // namespace lattice
