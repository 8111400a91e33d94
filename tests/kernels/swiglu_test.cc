#include "kernels/swiglu.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::SwiGluBackward;
using kernels::cpu::SwiGluForward;
using testing::ExpectAccumulated;
using testing::ExpectAllNear;
using testing::ExpectGradNear;
using testing::NumericGradient;
using testing::Poisoned;
using testing::Project;
using testing::RandomVector;
using testing::ToDouble;

// out (N, F) = silu(gate) * up with inp (N, 2F) = [gate | up] per row, in double.
std::vector<double> NaiveSwiGlu(const std::vector<double>& inp, int64_t n, int64_t f) {
  std::vector<double> out(n * f);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < f; ++j) {
      const double g = inp[i * 2 * f + j];
      const double u = inp[i * 2 * f + f + j];
      out[i * f + j] = g / (1.0 + std::exp(-g)) * u;
    }
  }
  return out;
}

struct Shape {
  int64_t n, f;
};

TEST(SwiGluTest, ForwardMatchesNaive) {
  for (const Shape& s : {Shape{1, 1}, Shape{3, 5}, Shape{16, 64}, Shape{7, 129}}) {
    const auto inp = RandomVector(s.n * 2 * s.f, 1, -8.0f, 8.0f);
    auto out = Poisoned(s.n * s.f);
    SwiGluForward(out.data(), inp.data(), s.n, s.f);
    // exp to 1 ulp, a division and a product: a few ulp.
    ExpectAllNear(out, NaiveSwiGlu(ToDouble(inp), s.n, s.f), 1e-6, 1e-7,
                  "n=" + std::to_string(s.n) + " f=" + std::to_string(s.f));
  }
}

TEST(SwiGluTest, SiluMatchesTorchValues) {
  // {x, silu(x), silu'(x)} from torch 1.13 CPU fp32 (F.silu and autograd); up = 1.
  const float table[][3] = {
      {-12.0f, -7.37300943e-05f, -6.75854681e-05f}, {-3.0f, -0.142277613f, -0.0881041065f},
      {-0.5f, -0.188770339f, 0.260038823f},          {0.0f, 0.0f, 0.5f},
      {0.25f, 0.140544131f, 0.623710036f},           {1.5f, 1.22636163f, 1.04129422f},
      {4.0f, 3.92805505f, 1.05266464f},
  };
  for (const auto& row : table) {
    const float inp[2] = {row[0], 1.0f};
    float y = NAN;
    SwiGluForward(&y, inp, 1, 1);
    const float one = 1.0f;
    float d[2] = {0.0f, 0.0f};
    SwiGluBackward(d, inp, &one, 1, 1);
    EXPECT_NEAR(y, row[1], 4e-7 * std::fabs(row[1]) + 1e-9) << "silu(" << row[0] << ")";
    EXPECT_NEAR(d[0], row[2], 1e-6 * std::fabs(row[2]) + 1e-8) << "silu'(" << row[0] << ")";
    EXPECT_EQ(d[1], y) << "d/dup = silu(gate)";
  }
}

TEST(SwiGluTest, BackwardMatchesFiniteDifferencesAndAccumulates) {
  for (const Shape& s : {Shape{1, 1}, Shape{3, 5}, Shape{4, 33}}) {
    const auto inp = RandomVector(s.n * 2 * s.f, 10, -5.0f, 5.0f);
    const auto r = RandomVector(s.n * s.f, 11);
    std::vector<float> dinp(s.n * 2 * s.f, 0.0f);
    SwiGluBackward(dinp.data(), inp.data(), r.data(), s.n, s.f);
    const std::string name = "n=" + std::to_string(s.n) + " f=" + std::to_string(s.f);
    ExpectGradNear(dinp, NumericGradient([&](const std::vector<double>& v) {
                     return Project(NaiveSwiGlu(v, s.n, s.f), r);
                   }, ToDouble(inp)),
                   name + " dinp");
    const auto before = RandomVector(s.n * 2 * s.f, 12);
    auto acc = before;
    SwiGluBackward(acc.data(), inp.data(), r.data(), s.n, s.f);
    ExpectAccumulated(acc, before, dinp, name + " dinp");
  }
}

TEST(SwiGluTest, ExtremeGatesStayFinite) {
  const float inp[6] = {-200.0f, 200.0f, 1e30f, 2.0f, 2.0f, 2.0f};  // gates | ups
  float out[3];
  SwiGluForward(out, inp, 1, 3);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], 400.0f);
  const float dout[3] = {1.0f, 1.0f, 1.0f};
  float d[6] = {};
  SwiGluBackward(d, inp, dout, 1, 3);
  for (float v : d) EXPECT_TRUE(std::isfinite(v));
  EXPECT_EQ(d[0], 0.0f);
  EXPECT_EQ(d[1], 2.0f);
}

}  // namespace
}  // namespace lattice
