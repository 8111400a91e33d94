#include "kernels/gelu.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::BiasGeluForward;
using kernels::cpu::GeluBackward;
using kernels::cpu::GeluBackwardTo;
using kernels::cpu::GeluForward;
using testing::ForEachSimdLevel;
using testing::ExpectAccumulated;
using testing::ExpectAllNear;
using testing::ExpectGradNear;
using testing::NumericGradient;
using testing::Poisoned;
using testing::Project;
using testing::RandomVector;
using testing::ToDouble;

// torch.nn.functional.gelu(x, approximate="tanh") written as torch writes it, in double.
std::vector<double> NaiveGelu(const std::vector<double>& x) {
  const double beta = M_SQRT2 * M_2_SQRTPI * 0.5;
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double inner = beta * (x[i] + 0.044715 * x[i] * x[i] * x[i]);
    y[i] = 0.5 * x[i] * (1.0 + std::tanh(inner));
  }
  return y;
}

TEST(GeluTest, ForwardMatchesNaiveAcrossTheRange) {
  ForEachSimdLevel([&] {
    for (int64_t n : {1, 7, 1000, 4099}) {
      const auto x = RandomVector(n, 1, -12.0f, 12.0f);
      auto y = Poisoned(n);
      GeluForward(y.data(), x.data(), n);
      // fp32 exp to 1 ulp and a few roundings: 1e-6 relative; the absolute floor covers values
      // near the zero of gelu, where the relative error of any fp32 evaluation grows.
      ExpectAllNear(y, NaiveGelu(ToDouble(x)), 1e-6, 1e-7, "n=" + std::to_string(n));
    }
  });
}

TEST(GeluTest, MatchesTorchValues) {
  ForEachSimdLevel([&] {
    // {x, gelu(x), gelu'(x)} from torch 1.13 CPU fp32: F.gelu(x, approximate="tanh") and its
    // autograd gradient. torch evaluates 0.5 x (1 + tanh(u)), which loses relative accuracy where
    // tanh(u) -> -1 (absolute error ~ |x| * 2^-24, e.g. x = -6.5 gives -0), so the comparison is
    // absolute at that level; elsewhere agreement is a few ulp.
    const float table[][3] = {
        {-9.0f, -0.0f, 0.0f},
        {-6.5f, -0.0f, 0.0f},
        {-4.0f, -7.02142715e-05f, -0.000334972079f},
        {-2.5f, -0.0150842965f, -0.037951652f},
        {-1.0f, -0.158807993f, -0.0829640925f},
        {-0.300000012f, -0.114629082f, 0.267704546f},
        {-0.00100000005f, -0.000499601068f, 0.499202132f},
        {0.0f, 0.0f, 0.5f},
        {0.000199999995f, 0.000100015961f, 0.500159621f},
        {0.0500000007f, 0.0259969383f, 0.539860845f},
        {0.699999988f, 0.530570149f, 0.976357222f},
        {1.0f, 0.841192007f, 1.08296406f},
        {2.20000005f, 2.16967845f, 1.06491899f},
        {3.9000001f, 3.89988804f, 1.00051546f},
        {7.5f, 7.5f, 1.0f},
    };
    for (const auto& row : table) {
      float y = NAN;
      GeluForward(&y, &row[0], 1);
      const float one = 1.0f;
      float g = 0.0f;
      GeluBackward(&g, &row[0], &one, 1);
      const double atol = 6e-8 * std::max(1.0f, std::fabs(row[0]));
      EXPECT_NEAR(y, row[1], atol + 1e-6 * std::fabs(row[1])) << "gelu(" << row[0] << ")";
      EXPECT_NEAR(g, row[2], 4 * atol + 1e-6 * std::fabs(row[2])) << "gelu'(" << row[0] << ")";
    }
  });
}

TEST(GeluTest, BackwardMatchesFiniteDifferencesAndAccumulates) {
  ForEachSimdLevel([&] {
    const int64_t n = 257;
    const auto x = RandomVector(n, 10, -6.0f, 6.0f);
    const auto r = RandomVector(n, 11);
    std::vector<float> dx(n, 0.0f);
    GeluBackward(dx.data(), x.data(), r.data(), n);
    ExpectGradNear(dx, NumericGradient([&](const std::vector<double>& v) {
                     return Project(NaiveGelu(v), r);
                   }, ToDouble(x)),
                   "dinp");
    const auto before = RandomVector(n, 12);
    auto acc = before;
    GeluBackward(acc.data(), x.data(), r.data(), n);
    ExpectAccumulated(acc, before, dx, "dinp");
  });
}

TEST(GeluTest, ExtremeInputsStayFinite) {
  ForEachSimdLevel([&] {
    const std::vector<float> x = {-1e30f, -200.0f, -50.0f, 50.0f, 1e6f};
    std::vector<float> y(x.size()), dx(x.size(), 0.0f);
    const std::vector<float> one(x.size(), 1.0f);
    GeluForward(y.data(), x.data(), x.size());
    GeluBackward(dx.data(), x.data(), one.data(), x.size());
    EXPECT_EQ(y[0], 0.0f);
    EXPECT_EQ(y[1], 0.0f);
    EXPECT_EQ(y[3], 50.0f);
    EXPECT_EQ(y[4], 1e6f);
    for (size_t i = 0; i < x.size(); ++i) {
      EXPECT_TRUE(std::isfinite(dx[i])) << "gelu'(" << x[i] << ") = " << dx[i];
    }
    EXPECT_EQ(dx[1], 0.0f);
    EXPECT_EQ(dx[3], 1.0f);
  });
}

// The fused bias + GELU of the MLP equals adding the bias and calling GeluForward: the same
// fp32 sum and the same function, so the results are identical.
TEST(GeluTest, BiasGeluEqualsBiasAddThenGelu) {
  ForEachSimdLevel([&] {
    for (int64_t f : {1, 5, 64, 67}) {
      const int64_t n = 9;
      const auto pre = RandomVector(n * f, 40, -4.0f, 4.0f);
      const auto bias = RandomVector(f, 41);
      std::vector<float> want_pre(n * f);
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < f; ++j) want_pre[i * f + j] = pre[i * f + j] + bias[j];
      }
      auto want = Poisoned(n * f);
      GeluForward(want.data(), want_pre.data(), n * f);
      auto got_pre = pre;
      auto got = Poisoned(n * f);
      BiasGeluForward(got_pre.data(), got.data(), bias.data(), n, f);
      EXPECT_EQ(got_pre, want_pre) << "f=" << f;
      EXPECT_EQ(got, want) << "f=" << f;
      // Without a bias the pre-activation is left as it is.
      got_pre = pre;
      BiasGeluForward(got_pre.data(), got.data(), nullptr, n, f);
      GeluForward(want.data(), pre.data(), n * f);
      EXPECT_EQ(got_pre, pre) << "f=" << f;
      EXPECT_EQ(got, want) << "f=" << f;
    }
  });
}

// The overwriting form equals the accumulating one on a zeroed buffer, whatever was there.
TEST(GeluTest, BackwardToOverwrites) {
  ForEachSimdLevel([&] {
    for (int64_t n : {1, 7, 1000, 40000}) {  // 40000: past the threading threshold
      const auto x = RandomVector(n, 50, -6.0f, 6.0f);
      const auto dy = RandomVector(n, 51);
      std::vector<float> want(n, 0.0f);
      GeluBackward(want.data(), x.data(), dy.data(), n);
      auto got = Poisoned(n);
      GeluBackwardTo(got.data(), x.data(), dy.data(), n);
      EXPECT_EQ(got, want) << "n=" << n;
    }
  });
}

}  // namespace
}  // namespace lattice
