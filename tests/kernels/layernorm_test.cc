#include "kernels/layernorm.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::LayerNormBackward;
using kernels::cpu::LayerNormForward;
using testing::ForEachSimdLevel;
using testing::ExpectAccumulated;
using testing::ExpectAllNear;
using testing::ExpectGradNear;
using testing::NumericGradient;
using testing::Poisoned;
using testing::Project;
using testing::RandomVector;
using testing::ToDouble;

constexpr float kEps = 1e-5f;

struct Shape {
  int64_t n, c;
};

std::string Name(const Shape& s) {
  return "n=" + std::to_string(s.n) + " c=" + std::to_string(s.c);
}

struct NaiveOut {
  std::vector<double> out, mean, rstd;
};

// torch.nn.LayerNorm in double: biased variance, (x - mean) / sqrt(var + eps) * w + b.
NaiveOut NaiveLayerNorm(const std::vector<double>& x, const std::vector<double>& w,
                        const std::vector<double>& b, const Shape& s) {
  NaiveOut r{std::vector<double>(s.n * s.c), std::vector<double>(s.n), std::vector<double>(s.n)};
  for (int64_t i = 0; i < s.n; ++i) {
    double mean = 0.0;
    for (int64_t j = 0; j < s.c; ++j) mean += x[i * s.c + j];
    mean /= s.c;
    double var = 0.0;
    for (int64_t j = 0; j < s.c; ++j) var += (x[i * s.c + j] - mean) * (x[i * s.c + j] - mean);
    var /= s.c;
    const double rstd = 1.0 / std::sqrt(var + kEps);
    for (int64_t j = 0; j < s.c; ++j) {
      r.out[i * s.c + j] = (x[i * s.c + j] - mean) * rstd * w[j] + b[j];
    }
    r.mean[i] = mean;
    r.rstd[i] = rstd;
  }
  return r;
}

const Shape kShapes[] = {{1, 1}, {3, 7}, {5, 64}, {4, 130}, {33, 17}};

TEST(LayerNormTest, ForwardMatchesNaive) {
  ForEachSimdLevel([&] {
    for (const Shape& s : kShapes) {
      // Rows with an offset mean: the two-pass variance must not cancel.
      auto x = RandomVector(s.n * s.c, 1, -2.0f, 2.0f);
      for (int64_t i = 0; i < s.n; ++i) {
        for (int64_t j = 0; j < s.c; ++j) x[i * s.c + j] += 10.0f * static_cast<float>(i % 3);
      }
      const auto w = RandomVector(s.c, 2, 0.5f, 1.5f);
      const auto b = RandomVector(s.c, 3);
      auto out = Poisoned(s.n * s.c), mean = Poisoned(s.n), rstd = Poisoned(s.n);
      LayerNormForward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), s.n, s.c,
                       kEps);
      const NaiveOut want = NaiveLayerNorm(ToDouble(x), ToDouble(w), ToDouble(b), s);
      // fp32 row statistics of <= 130 terms: ~1e-6 relative; outputs are O(1).
      ExpectAllNear(out, want.out, 1e-5, 1e-5, Name(s) + " out");
      ExpectAllNear(mean, want.mean, 1e-6, 1e-6, Name(s) + " mean");
      ExpectAllNear(rstd, want.rstd, 1e-5, 0.0, Name(s) + " rstd");
    }
  });
}

TEST(LayerNormTest, BackwardMatchesFiniteDifferences) {
  ForEachSimdLevel([&] {
    for (const Shape& s : kShapes) {
      const auto x = RandomVector(s.n * s.c, 10, -2.0f, 2.0f);
      const auto w = RandomVector(s.c, 11, 0.5f, 1.5f);
      const auto b = RandomVector(s.c, 12);
      const auto r = RandomVector(s.n * s.c, 13);
      std::vector<float> out(s.n * s.c), mean(s.n), rstd(s.n);
      LayerNormForward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), s.n, s.c,
                       kEps);
      std::vector<float> dx(s.n * s.c, 0.0f), dw(s.c, 0.0f), db(s.c, 0.0f);
      LayerNormBackward(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), mean.data(),
                        rstd.data(), s.n, s.c);
      const auto xd = ToDouble(x), wd = ToDouble(w), bd = ToDouble(b);
      // dinp is rstd * (g - mean(g) - xhat * mean(g xhat)) with g = dout * w: differences of terms
      // of size rstd * |g|, which cancel completely when C = 1 (rstd = 1/sqrt(eps) there).
      double term_scale = 0.0;
      for (int64_t i = 0; i < s.n; ++i) {
        term_scale = std::max(term_scale, static_cast<double>(rstd[i]) * 1.5);  // |r|<1, |w|<1.5
      }
      ExpectGradNear(dx, NumericGradient([&](const std::vector<double>& v) {
                       return Project(NaiveLayerNorm(v, wd, bd, s).out, r);
                     }, xd),
                     Name(s) + " dinp", 1e-4, term_scale);
      ExpectGradNear(dw, NumericGradient([&](const std::vector<double>& v) {
                       return Project(NaiveLayerNorm(xd, v, bd, s).out, r);
                     }, wd),
                     Name(s) + " dweight");
      ExpectGradNear(db, NumericGradient([&](const std::vector<double>& v) {
                       return Project(NaiveLayerNorm(xd, wd, v, s).out, r);
                     }, bd),
                     Name(s) + " dbias");
    }
  });
}

TEST(LayerNormTest, BackwardAccumulatesAndIsThreadCountInvariant) {
  ForEachSimdLevel([&] {
    const Shape s{300, 100};
    const auto x = RandomVector(s.n * s.c, 20);
    const auto w = RandomVector(s.c, 21);
    const auto b = RandomVector(s.c, 22);
    const auto dout = RandomVector(s.n * s.c, 23);
    std::vector<float> out(s.n * s.c), mean(s.n), rstd(s.n);
    LayerNormForward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), s.n, s.c,
                     kEps);
    std::vector<float> dx0(s.n * s.c, 0.0f), dw0(s.c, 0.0f), db0(s.c, 0.0f);
    LayerNormBackward(dx0.data(), dw0.data(), db0.data(), dout.data(), x.data(), w.data(),
                      mean.data(), rstd.data(), s.n, s.c);

    const auto dx_before = RandomVector(s.n * s.c, 24);
    const auto dw_before = RandomVector(s.c, 25);
    const auto db_before = RandomVector(s.c, 26);
    auto dx = dx_before, dw = dw_before, db = db_before;
    LayerNormBackward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                      rstd.data(), s.n, s.c);
    ExpectAccumulated(dx, dx_before, dx0, "dinp");
    ExpectAccumulated(dw, dw_before, dw0, "dweight");
    ExpectAccumulated(db, db_before, db0, "dbias");

    // The parameter-gradient reduction sums each column in row order whatever the threads.
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    std::vector<float> dw1(s.c, 0.0f), db1(s.c, 0.0f);
    LayerNormBackward(nullptr, dw1.data(), db1.data(), dout.data(), x.data(), w.data(), mean.data(),
                      rstd.data(), s.n, s.c);
    omp_set_num_threads(threads);
    EXPECT_EQ(dw1, dw0);
    EXPECT_EQ(db1, db0);
  });
}

}  // namespace
}  // namespace lattice
