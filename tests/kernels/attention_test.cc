#include "kernels/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::AttentionBackward;
using kernels::cpu::AttentionBackwardTo;
using kernels::cpu::AttentionDecode;
using kernels::cpu::AttentionForward;
using testing::ExpectAccumulated;
using testing::ExpectAllNear;
using testing::ExpectGradNear;
using testing::ForEachSimdLevel;
using testing::NumericGradient;
using testing::Poisoned;
using testing::Project;
using testing::RandomVector;
using testing::ToDouble;

struct Shape {
  int64_t b, t, h, kvh, d;
  int64_t row() const { return (h + 2 * kvh) * d; }
  int64_t qkv_size() const { return b * t * row(); }
  int64_t out_size() const { return b * t * h * d; }
  int64_t lse_size() const { return b * h * t; }
};

std::string Name(const Shape& s) {
  return "B=" + std::to_string(s.b) + " T=" + std::to_string(s.t) + " H=" + std::to_string(s.h) +
         " KVH=" + std::to_string(s.kvh) + " D=" + std::to_string(s.d);
}

// Small shapes (finite differences) and the kernel's edge cases: T = 1, GQA/MQA, odd sizes,
// rows not a multiple of the 4-row groups or of the 16-row tiles, and keys past one or two
// vector widths (16 and 32 columns at AVX-512).
const Shape kShapes[] = {
    {1, 1, 1, 1, 4},   // T = 1
    {2, 5, 4, 2, 8},   // GQA
    {2, 7, 4, 1, 6},   // MQA
    {1, 13, 3, 3, 5},  // MHA, odd sizes
    {1, 33, 2, 1, 4},  // several 16-row tiles, a 33rd key column
    {2, 20, 4, 4, 16},
    {1, 37, 1, 1, 33},  // D past two 16-float vectors, with a scalar remainder
};
// Larger shapes with the model's head sizes (D = 32, 64: the register tiles' full widths),
// checked against the analytic backward in double.
const Shape kLargeShapes[] = {
    {2, 70, 2, 1, 32},
    {1, 129, 2, 2, 64},
};

// Causal softmax attention straight from the definition, in double. Fills lse (B,H,T) too.
std::vector<double> NaiveAttention(const std::vector<double>& qkv, const Shape& s,
                                   std::vector<double>* lse = nullptr) {
  const int64_t row = s.row();
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.d));
  std::vector<double> out(s.out_size(), 0.0);
  if (lse != nullptr) lse->assign(s.lse_size(), 0.0);
  std::vector<double> p(s.t);
  for (int64_t b = 0; b < s.b; ++b) {
    for (int64_t h = 0; h < s.h; ++h) {
      const int64_t g = h / (s.h / s.kvh);
      for (int64_t t = 0; t < s.t; ++t) {
        const double* q = &qkv[(b * s.t + t) * row + h * s.d];
        double mx = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          const double* k = &qkv[(b * s.t + j) * row + (s.h + g) * s.d];
          double dot = 0.0;
          for (int64_t i = 0; i < s.d; ++i) dot += q[i] * k[i];
          p[j] = dot * scale;
          mx = std::max(mx, p[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j <= t; ++j) sum += (p[j] = std::exp(p[j] - mx));
        if (lse != nullptr) (*lse)[(b * s.h + h) * s.t + t] = mx + std::log(sum);
        for (int64_t j = 0; j <= t; ++j) {
          p[j] /= sum;
          const double* v = &qkv[(b * s.t + j) * row + (s.h + s.kvh + g) * s.d];
          for (int64_t i = 0; i < s.d; ++i) out[(b * s.t + t) * s.h * s.d + h * s.d + i] += p[j] * v[i];
        }
      }
    }
  }
  return out;
}

// The backward of NaiveAttention for dout, from the definition (softmax Jacobian), in double.
std::vector<double> NaiveAttentionBackward(const std::vector<double>& qkv,
                                           const std::vector<float>& dout, const Shape& s) {
  const int64_t row = s.row();
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.d));
  std::vector<double> dqkv(s.qkv_size(), 0.0), p(s.t), dp(s.t);
  for (int64_t b = 0; b < s.b; ++b) {
    for (int64_t h = 0; h < s.h; ++h) {
      const int64_t g = h / (s.h / s.kvh);
      auto at = [&](int64_t t, int64_t head) { return (b * s.t + t) * row + head * s.d; };
      for (int64_t t = 0; t < s.t; ++t) {
        const double* q = &qkv[at(t, h)];
        double mx = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          double dot = 0.0;
          for (int64_t i = 0; i < s.d; ++i) dot += q[i] * qkv[at(j, s.h + g) + i];
          p[j] = dot * scale;
          mx = std::max(mx, p[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j <= t; ++j) sum += (p[j] = std::exp(p[j] - mx));
        const float* dy = &dout[(b * s.t + t) * s.h * s.d + h * s.d];
        double pdp = 0.0;
        for (int64_t j = 0; j <= t; ++j) {
          p[j] /= sum;
          dp[j] = 0.0;
          for (int64_t i = 0; i < s.d; ++i) dp[j] += dy[i] * qkv[at(j, s.h + s.kvh + g) + i];
          pdp += p[j] * dp[j];
        }
        for (int64_t j = 0; j <= t; ++j) {
          const double ds = p[j] * (dp[j] - pdp) * scale;
          for (int64_t i = 0; i < s.d; ++i) {
            dqkv[at(t, h) + i] += ds * qkv[at(j, s.h + g) + i];
            dqkv[at(j, s.h + g) + i] += ds * q[i];
            dqkv[at(j, s.h + s.kvh + g) + i] += p[j] * dy[i];
          }
        }
      }
    }
  }
  return dqkv;
}

TEST(AttentionTest, ForwardMatchesNaive) {
  ForEachSimdLevel([] {
    for (const Shape& s : kShapes) {
      const auto qkv = RandomVector(s.qkv_size(), 1, -2.0f, 2.0f);
      auto out = Poisoned(s.out_size()), lse = Poisoned(s.lse_size());
      AttentionForward(out.data(), lse.data(), qkv.data(), s.b, s.t, s.h, s.kvh, s.d);
      std::vector<double> want_lse;
      const auto want = NaiveAttention(ToDouble(qkv), s, &want_lse);
      // Probabilities from fp32 dots of <= 33 terms of size <= 4 and a 2-ulp exp: ~1e-6
      // relative; outputs are convex combinations of O(1) values, lse an O(1..10) sum's log.
      ExpectAllNear(out, want, 1e-5, 1e-6, Name(s) + " out");
      ExpectAllNear(lse, want_lse, 1e-5, 1e-6, Name(s) + " lse");
    }
  });
}

TEST(AttentionTest, ForwardIsStableForLargeScores) {
  // Scores of several hundred: exp without the max subtracted would overflow.
  const Shape s{1, 9, 2, 1, 8};
  auto qkv = RandomVector(s.qkv_size(), 2, -1.0f, 1.0f);
  for (float& x : qkv) x *= 30.0f;
  ForEachSimdLevel([&] {
    auto out = Poisoned(s.out_size()), lse = Poisoned(s.lse_size());
    AttentionForward(out.data(), lse.data(), qkv.data(), s.b, s.t, s.h, s.kvh, s.d);
    std::vector<double> want_lse;
    const auto want = NaiveAttention(ToDouble(qkv), s, &want_lse);
    // Scores ~1e3 carry fp32 rounding ~1e-4 absolute into exp: relative 1e-4 on
    // probabilities, hence on the outputs (values up to 30) and absolutely on lse.
    ExpectAllNear(lse, want_lse, 1e-5, 1e-3, "lse");
    ExpectAllNear(out, want, 1e-3, 1e-3, "out");
  });
}

TEST(AttentionTest, BackwardMatchesFiniteDifferences) {
  ForEachSimdLevel([] {
    for (const Shape& s : kShapes) {
      const auto qkv = RandomVector(s.qkv_size(), 10, -1.5f, 1.5f);
      const auto r = RandomVector(s.out_size(), 11);
      std::vector<float> out(s.out_size()), lse(s.lse_size());
      AttentionForward(out.data(), lse.data(), qkv.data(), s.b, s.t, s.h, s.kvh, s.d);
      std::vector<float> dqkv(s.qkv_size(), 0.0f);
      AttentionBackward(dqkv.data(), r.data(), qkv.data(), out.data(), lse.data(), s.b, s.t,
                        s.h, s.kvh, s.d);
      ExpectGradNear(dqkv, NumericGradient([&](const std::vector<double>& v) {
                       return Project(NaiveAttention(v, s), r);
                     }, ToDouble(qkv)),
                     Name(s) + " dqkv");
    }
  });
}

TEST(AttentionTest, BackwardMatchesAnalyticAtModelHeadSizes) {
  ForEachSimdLevel([] {
    for (const Shape& s : kLargeShapes) {
      const auto qkv = RandomVector(s.qkv_size(), 12, -1.0f, 1.0f);
      const auto r = RandomVector(s.out_size(), 13);
      std::vector<float> out(s.out_size()), lse(s.lse_size());
      AttentionForward(out.data(), lse.data(), qkv.data(), s.b, s.t, s.h, s.kvh, s.d);
      std::vector<double> want_lse;
      ExpectAllNear(out, NaiveAttention(ToDouble(qkv), s, &want_lse), 1e-5, 1e-6, Name(s) + " out");
      ExpectAllNear(lse, want_lse, 1e-5, 1e-6, Name(s) + " lse");
      std::vector<float> dqkv(s.qkv_size(), 0.0f);
      AttentionBackward(dqkv.data(), r.data(), qkv.data(), out.data(), lse.data(), s.b, s.t,
                        s.h, s.kvh, s.d);
      // Sums of up to 129 keys x 64 terms in fp32 (and a GQA group of 2 heads): rounding
      // ~sqrt(terms) * 6e-8 relative to the gradient's scale, well inside ExpectGradNear's 1e-4.
      ExpectGradNear(dqkv, NaiveAttentionBackward(ToDouble(qkv), r, s), Name(s) + " dqkv");
    }
  });
}

TEST(AttentionTest, BackwardAccumulates) {
  const Shape s{2, 37, 4, 2, 8};
  const auto qkv = RandomVector(s.qkv_size(), 20);
  const auto dout = RandomVector(s.out_size(), 21);
  ForEachSimdLevel([&] {
    std::vector<float> out(s.out_size()), lse(s.lse_size());
    AttentionForward(out.data(), lse.data(), qkv.data(), s.b, s.t, s.h, s.kvh, s.d);
    std::vector<float> fresh(s.qkv_size(), 0.0f);
    AttentionBackward(fresh.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.b, s.t,
                      s.h, s.kvh, s.d);
    const auto before = RandomVector(s.qkv_size(), 22);
    auto dqkv = before;
    AttentionBackward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.b, s.t,
                      s.h, s.kvh, s.d);
    ExpectAccumulated(dqkv, before, fresh, "dqkv");
  });
}

// The written form stores every element of dqkv (the buffer held NaN) and equals the
// accumulating form into zeros exactly: the same sums, stored instead of added to zero.
TEST(AttentionTest, BackwardToWritesEveryElement) {
  ForEachSimdLevel([&] {
    for (const Shape& s : {Shape{2, 37, 4, 2, 8}, Shape{2, 70, 2, 1, 32}, Shape{1, 9, 3, 3, 5}}) {
      const auto qkv = RandomVector(s.qkv_size(), 25);
      const auto dout = RandomVector(s.out_size(), 26);
      std::vector<float> out(s.out_size()), lse(s.lse_size());
      AttentionForward(out.data(), lse.data(), qkv.data(), s.b, s.t, s.h, s.kvh, s.d);
      std::vector<float> fresh(s.qkv_size(), 0.0f);
      AttentionBackward(fresh.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.b, s.t,
                        s.h, s.kvh, s.d);
      auto written = Poisoned(s.qkv_size());
      AttentionBackwardTo(written.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.b,
                          s.t, s.h, s.kvh, s.d);
      EXPECT_EQ(written, fresh) << Name(s);
    }
  });
}

TEST(AttentionTest, DecodeEqualsLastRowOfForward) {
  ForEachSimdLevel([] {
    std::vector<Shape> shapes(std::begin(kShapes), std::end(kShapes));
    shapes.insert(shapes.end(), std::begin(kLargeShapes), std::end(kLargeShapes));
    for (const Shape& s : shapes) {
      const auto qkv = RandomVector(s.qkv_size(), 30, -2.0f, 2.0f);
      std::vector<float> out(s.out_size()), lse(s.lse_size());
      AttentionForward(out.data(), lse.data(), qkv.data(), s.b, s.t, s.h, s.kvh, s.d);
      const int64_t row = s.row();
      const int64_t capacity = s.t + 3;  // slots past len hold NaN: decode must not read them
      for (int64_t b = 0; b < s.b; ++b) {
        auto k_cache = Poisoned(capacity * s.kvh * s.d);  // (T_ctx, KVH, D)
        auto v_cache = Poisoned(capacity * s.kvh * s.d);
        for (int64_t j = 0; j < s.t; ++j) {
          const float* src = &qkv[(b * s.t + j) * row];
          std::copy(src + s.h * s.d, src + (s.h + s.kvh) * s.d, &k_cache[j * s.kvh * s.d]);
          std::copy(src + (s.h + s.kvh) * s.d, src + (s.h + 2 * s.kvh) * s.d,
                    &v_cache[j * s.kvh * s.d]);
        }
        const float* q = &qkv[(b * s.t + s.t - 1) * row];  // the query heads of the last token
        auto got = Poisoned(s.h * s.d);
        AttentionDecode(got.data(), q, k_cache.data(), v_cache.data(), s.t, s.h, s.kvh, s.d);
        const std::vector<float> want(out.begin() + (b * s.t + s.t - 1) * s.h * s.d,
                                      out.begin() + (b * s.t + s.t) * s.h * s.d);
        // Same per-element arithmetic as the forward's row: identical, not merely close.
        EXPECT_EQ(got, want) << Name(s) << " b=" << b;
      }
    }
  });
}

}  // namespace
}  // namespace lattice
