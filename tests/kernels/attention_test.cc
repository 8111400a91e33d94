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
using kernels::cpu::AttentionDecode;
using kernels::cpu::AttentionForward;
using testing::ExpectAccumulated;
using testing::ExpectAllNear;
using testing::ExpectGradNear;
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
  int64_t att_size() const { return b * h * t * t; }
};

std::string Name(const Shape& s) {
  return "B=" + std::to_string(s.b) + " T=" + std::to_string(s.t) + " H=" + std::to_string(s.h) +
         " KVH=" + std::to_string(s.kvh) + " D=" + std::to_string(s.d);
}

const Shape kShapes[] = {
    {1, 1, 1, 1, 4},   // T = 1
    {2, 5, 4, 2, 8},   // GQA
    {2, 7, 4, 1, 6},   // MQA
    {1, 13, 3, 3, 5},  // MHA, odd sizes
    {1, 33, 2, 1, 4},  // several 16-row key blocks in the backward
    {2, 20, 4, 4, 16},
};

// Causal softmax attention straight from the definition, in double. Fills att (B,H,T,T) too.
std::vector<double> NaiveAttention(const std::vector<double>& qkv, const Shape& s,
                                   std::vector<double>* att = nullptr) {
  const int64_t row = s.row();
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.d));
  std::vector<double> out(s.out_size(), 0.0);
  if (att != nullptr) att->assign(s.att_size(), 0.0);
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
        for (int64_t j = 0; j <= t; ++j) {
          p[j] /= sum;
          if (att != nullptr) (*att)[((b * s.h + h) * s.t + t) * s.t + j] = p[j];
          const double* v = &qkv[(b * s.t + j) * row + (s.h + s.kvh + g) * s.d];
          for (int64_t i = 0; i < s.d; ++i) out[(b * s.t + t) * s.h * s.d + h * s.d + i] += p[j] * v[i];
        }
      }
    }
  }
  return out;
}

TEST(AttentionTest, ForwardMatchesNaiveWithZeroUpperTriangle) {
  for (const Shape& s : kShapes) {
    const auto qkv = RandomVector(s.qkv_size(), 1, -2.0f, 2.0f);
    auto out = Poisoned(s.out_size()), att = Poisoned(s.att_size());
    AttentionForward(out.data(), att.data(), qkv.data(), s.b, s.t, s.h, s.kvh, s.d);
    std::vector<double> want_att;
    const auto want = NaiveAttention(ToDouble(qkv), s, &want_att);
    // Probabilities from fp32 dots of <= 16 terms and a 1-ulp exp: ~1e-6 relative; outputs
    // are convex combinations of O(1) values.
    ExpectAllNear(out, want, 1e-5, 1e-6, Name(s) + " out");
    ExpectAllNear(att, want_att, 1e-5, 1e-7, Name(s) + " att");
    for (int64_t bh = 0; bh < s.b * s.h; ++bh) {
      for (int64_t t = 0; t < s.t; ++t) {
        for (int64_t j = t + 1; j < s.t; ++j) {
          ASSERT_EQ(att[(bh * s.t + t) * s.t + j], 0.0f) << Name(s) << " above the diagonal";
        }
      }
    }
  }
}

TEST(AttentionTest, ForwardIsStableForLargeScores) {
  // Scores of several hundred: exp without the max subtracted would overflow.
  const Shape s{1, 9, 2, 1, 8};
  auto qkv = RandomVector(s.qkv_size(), 2, -1.0f, 1.0f);
  for (float& x : qkv) x *= 30.0f;
  auto out = Poisoned(s.out_size()), att = Poisoned(s.att_size());
  AttentionForward(out.data(), att.data(), qkv.data(), s.b, s.t, s.h, s.kvh, s.d);
  std::vector<double> want_att;
  const auto want = NaiveAttention(ToDouble(qkv), s, &want_att);
  // Scores ~1e3 carry fp32 rounding ~1e-4 absolute into exp: relative 1e-4 on probabilities.
  ExpectAllNear(att, want_att, 1e-3, 1e-6, "att");
  ExpectAllNear(out, want, 1e-3, 1e-3, "out");
}

TEST(AttentionTest, BackwardMatchesFiniteDifferences) {
  for (const Shape& s : kShapes) {
    const auto qkv = RandomVector(s.qkv_size(), 10, -1.5f, 1.5f);
    const auto r = RandomVector(s.out_size(), 11);
    std::vector<float> out(s.out_size()), att(s.att_size());
    AttentionForward(out.data(), att.data(), qkv.data(), s.b, s.t, s.h, s.kvh, s.d);
    std::vector<float> dqkv(s.qkv_size(), 0.0f);
    auto datt = Poisoned(s.att_size());  // scratch: must be written before it is read
    AttentionBackward(dqkv.data(), datt.data(), r.data(), qkv.data(), att.data(), s.b, s.t, s.h,
                      s.kvh, s.d);
    ExpectGradNear(dqkv, NumericGradient([&](const std::vector<double>& v) {
                     return Project(NaiveAttention(v, s), r);
                   }, ToDouble(qkv)),
                   Name(s) + " dqkv");
  }
}

TEST(AttentionTest, BackwardAccumulates) {
  const Shape s{2, 37, 4, 2, 8};
  const auto qkv = RandomVector(s.qkv_size(), 20);
  const auto dout = RandomVector(s.out_size(), 21);
  std::vector<float> out(s.out_size()), att(s.att_size()), datt(s.att_size());
  AttentionForward(out.data(), att.data(), qkv.data(), s.b, s.t, s.h, s.kvh, s.d);
  std::vector<float> fresh(s.qkv_size(), 0.0f);
  AttentionBackward(fresh.data(), datt.data(), dout.data(), qkv.data(), att.data(), s.b, s.t, s.h,
                    s.kvh, s.d);
  const auto before = RandomVector(s.qkv_size(), 22);
  auto dqkv = before;
  AttentionBackward(dqkv.data(), datt.data(), dout.data(), qkv.data(), att.data(), s.b, s.t, s.h,
                    s.kvh, s.d);
  ExpectAccumulated(dqkv, before, fresh, "dqkv");
}

TEST(AttentionTest, DecodeEqualsLastRowOfForward) {
  for (const Shape& s : kShapes) {
    const auto qkv = RandomVector(s.qkv_size(), 30, -2.0f, 2.0f);
    std::vector<float> out(s.out_size()), att(s.att_size());
    AttentionForward(out.data(), att.data(), qkv.data(), s.b, s.t, s.h, s.kvh, s.d);
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
      // Same per-row routine as the forward: identical, not merely close.
      EXPECT_EQ(got, want) << Name(s) << " b=" << b;
    }
  }
}

}  // namespace
}  // namespace lattice
