#include "kernels/rmsnorm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::RmsNormBackward;
using kernels::cpu::RmsNormForward;
using testing::ExpectAccumulated;
using testing::ExpectAllNear;
using testing::ExpectGradNear;
using testing::NumericGradient;
using testing::Poisoned;
using testing::Project;
using testing::RandomVector;
using testing::ToDouble;

constexpr float kEps = 1e-6f;

struct Shape {
  int64_t n, c;
};

std::string Name(const Shape& s) {
  return "n=" + std::to_string(s.n) + " c=" + std::to_string(s.c);
}

// LlamaRMSNorm in double: w * (x / sqrt(mean(x^2) + eps)). Returns out; rstd via pointer.
std::vector<double> NaiveRmsNorm(const std::vector<double>& x, const std::vector<double>& w,
                                 const Shape& s, std::vector<double>* rstd = nullptr) {
  std::vector<double> out(s.n * s.c);
  if (rstd != nullptr) rstd->resize(s.n);
  for (int64_t i = 0; i < s.n; ++i) {
    double ms = 0.0;
    for (int64_t j = 0; j < s.c; ++j) ms += x[i * s.c + j] * x[i * s.c + j];
    const double r = 1.0 / std::sqrt(ms / s.c + kEps);
    for (int64_t j = 0; j < s.c; ++j) out[i * s.c + j] = w[j] * (x[i * s.c + j] * r);
    if (rstd != nullptr) (*rstd)[i] = r;
  }
  return out;
}

const Shape kShapes[] = {{1, 1}, {3, 7}, {5, 64}, {4, 130}, {33, 17}};

TEST(RmsNormTest, ForwardMatchesNaive) {
  for (const Shape& s : kShapes) {
    const auto x = RandomVector(s.n * s.c, 1, -3.0f, 3.0f);
    const auto w = RandomVector(s.c, 2, 0.5f, 1.5f);
    auto out = Poisoned(s.n * s.c), rstd = Poisoned(s.n);
    RmsNormForward(out.data(), rstd.data(), x.data(), w.data(), s.n, s.c, kEps);
    std::vector<double> want_rstd;
    const auto want = NaiveRmsNorm(ToDouble(x), ToDouble(w), s, &want_rstd);
    // fp32 sum of <= 130 squares: ~1e-6 relative on rstd; outputs are O(1).
    ExpectAllNear(out, want, 1e-5, 1e-6, Name(s) + " out");
    ExpectAllNear(rstd, want_rstd, 1e-5, 0.0, Name(s) + " rstd");
  }
}

TEST(RmsNormTest, BackwardMatchesFiniteDifferences) {
  for (const Shape& s : kShapes) {
    const auto x = RandomVector(s.n * s.c, 10, -2.0f, 2.0f);
    const auto w = RandomVector(s.c, 11, 0.5f, 1.5f);
    const auto r = RandomVector(s.n * s.c, 12);
    std::vector<float> out(s.n * s.c), rstd(s.n);
    RmsNormForward(out.data(), rstd.data(), x.data(), w.data(), s.n, s.c, kEps);
    std::vector<float> dx(s.n * s.c, 0.0f), dw(s.c, 0.0f);
    RmsNormBackward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), s.n, s.c);
    const auto xd = ToDouble(x), wd = ToDouble(w);
    ExpectGradNear(dx, NumericGradient([&](const std::vector<double>& v) {
                     return Project(NaiveRmsNorm(v, wd, s), r);
                   }, xd),
                   Name(s) + " dinp");
    ExpectGradNear(dw, NumericGradient([&](const std::vector<double>& v) {
                     return Project(NaiveRmsNorm(xd, v, s), r);
                   }, wd),
                   Name(s) + " dweight");
  }
}

TEST(RmsNormTest, BackwardAccumulates) {
  const Shape s{300, 100};
  const auto x = RandomVector(s.n * s.c, 20);
  const auto w = RandomVector(s.c, 21);
  const auto dout = RandomVector(s.n * s.c, 22);
  std::vector<float> out(s.n * s.c), rstd(s.n);
  RmsNormForward(out.data(), rstd.data(), x.data(), w.data(), s.n, s.c, kEps);
  std::vector<float> dx0(s.n * s.c, 0.0f), dw0(s.c, 0.0f);
  RmsNormBackward(dx0.data(), dw0.data(), dout.data(), x.data(), w.data(), rstd.data(), s.n, s.c);
  const auto dx_before = RandomVector(s.n * s.c, 23);
  const auto dw_before = RandomVector(s.c, 24);
  auto dx = dx_before, dw = dw_before;
  RmsNormBackward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), s.n, s.c);
  ExpectAccumulated(dx, dx_before, dx0, "dinp");
  ExpectAccumulated(dw, dw_before, dw0, "dweight");
}

}  // namespace
}  // namespace lattice
