#include "kernels/residual.h"

#include <gtest/gtest.h>

#include <vector>

#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::ResidualBackward;
using kernels::cpu::ResidualForward;
using testing::ForEachSimdLevel;
using testing::ExpectAccumulated;
using testing::ExpectGradNear;
using testing::NumericGradient;
using testing::Poisoned;
using testing::Project;
using testing::RandomVector;
using testing::ToDouble;

TEST(ResidualTest, ForwardAddsAndMayRunInPlace) {
  ForEachSimdLevel([&] {
    for (int64_t n : {1, 17, 1000}) {
      const auto a = RandomVector(n, 1), b = RandomVector(n, 2);
      auto out = Poisoned(n);
      ResidualForward(out.data(), a.data(), b.data(), n);
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(out[i], a[i] + b[i]) << i;
      auto in_place = a;
      ResidualForward(in_place.data(), in_place.data(), b.data(), n);
      EXPECT_EQ(in_place, out);
    }
  });
}

TEST(ResidualTest, BackwardMatchesFiniteDifferencesAndAccumulates) {
  ForEachSimdLevel([&] {
    const int64_t n = 41;
    const auto a = RandomVector(n, 10), b = RandomVector(n, 11), r = RandomVector(n, 12);
    std::vector<float> da(n, 0.0f), db(n, 0.0f);
    ResidualBackward(da.data(), db.data(), r.data(), n);
    const auto ad = ToDouble(a), bd = ToDouble(b);
    auto sum = [&](const std::vector<double>& x, const std::vector<double>& y) {
      std::vector<double> out(n);
      for (int64_t i = 0; i < n; ++i) out[i] = x[i] + y[i];
      return Project(out, r);
    };
    ExpectGradNear(da, NumericGradient([&](const std::vector<double>& x) { return sum(x, bd); }, ad),
                   "da");
    ExpectGradNear(db, NumericGradient([&](const std::vector<double>& y) { return sum(ad, y); }, bd),
                   "db");
    const auto da_before = RandomVector(n, 13), db_before = RandomVector(n, 14);
    auto da_acc = da_before, db_acc = db_before;
    ResidualBackward(da_acc.data(), db_acc.data(), r.data(), n);
    ExpectAccumulated(da_acc, da_before, da, "da");
    ExpectAccumulated(db_acc, db_before, db, "db");
  });
}

}  // namespace
}  // namespace lattice
