#include "kernels/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::RopeBackward;
using kernels::cpu::RopeForward;
using testing::ExpectAllNear;
using testing::ExpectGradNear;
using testing::NumericGradient;
using testing::Project;
using testing::RandomVector;
using testing::ToDouble;

struct Layout {
  int64_t b, t, heads, d, row_stride, pos_offset;
  float theta;
};

std::string Name(const Layout& l) {
  return "b=" + std::to_string(l.b) + " t=" + std::to_string(l.t) + " heads=" +
         std::to_string(l.heads) + " d=" + std::to_string(l.d) + " stride=" +
         std::to_string(l.row_stride) + " pos=" + std::to_string(l.pos_offset);
}

// Hugging Face rotate-half RoPE on a strided buffer, in double except for the angle, which is
// formed in fp32 exactly as torch does (inv_freq = 1/theta^(2i/D) in fp32, angle = pos * inv_freq
// in fp32): that rounding is part of the definition the model is compared against. Elements
// outside the rotated heads are copied unchanged.
std::vector<double> NaiveRope(const std::vector<double>& x, const Layout& l) {
  std::vector<double> out = x;
  const int64_t half = l.d / 2;
  for (int64_t bi = 0; bi < l.b; ++bi) {
    for (int64_t ti = 0; ti < l.t; ++ti) {
      const int64_t pos = l.pos_offset + ti;
      for (int64_t h = 0; h < l.heads; ++h) {
        const int64_t base = (bi * l.t + ti) * l.row_stride + h * l.d;
        for (int64_t i = 0; i < half; ++i) {
          const float inv_freq =
              1.0f / std::pow(l.theta, static_cast<float>(2 * i) / static_cast<float>(l.d));
          const double angle = static_cast<float>(pos) * inv_freq;
          const double x1 = x[base + i], x2 = x[base + half + i];
          out[base + i] = x1 * std::cos(angle) - x2 * std::sin(angle);
          out[base + half + i] = x2 * std::cos(angle) + x1 * std::sin(angle);
        }
      }
    }
  }
  return out;
}

const Layout kLayouts[] = {
    {1, 1, 1, 2, 2, 0, 10000.0f},
    {2, 5, 3, 8, 24, 0, 10000.0f},
    // q and k heads (3 + 1) rotated inside a packed qkv row of (3 + 2*1) heads; v untouched.
    {2, 5, 4, 8, 40, 3, 10000.0f},
    {3, 7, 2, 6, 12, 100, 500000.0f},
    {1, 4, 2, 64, 200, 2040, 10000.0f},
};

TEST(RopeTest, ForwardMatchesNaiveAndLeavesOtherColumnsAlone) {
  for (const Layout& l : kLayouts) {
    const int64_t size = l.b * l.t * l.row_stride;
    const auto x = RandomVector(size, 1);
    auto y = x;
    RopeForward(y.data(), l.b, l.t, l.heads, l.d, l.row_stride, l.pos_offset, l.theta);
    // Only cos/sin of the same fp32 angle differ (fp32 vs double): a few ulp of O(1) values.
    ExpectAllNear(y, NaiveRope(ToDouble(x), l), 0.0, 5e-7, Name(l));
    for (int64_t r = 0; r < l.b * l.t; ++r) {
      for (int64_t j = l.heads * l.d; j < l.row_stride; ++j) {
        ASSERT_EQ(y[r * l.row_stride + j], x[r * l.row_stride + j]) << Name(l) << " col " << j;
      }
    }
  }
}

TEST(RopeTest, MatchesTorchValuesAtLargePositions) {
  // HF LlamaRotaryEmbedding + apply_rotary_pos_emb in torch 1.13 CPU fp32, D = 16, theta = 1e4,
  // x[i] = ((i % 7) - 3) * 0.25 + 0.1. At position 30000 an angle formed in double instead of
  // fp32 moves the result by ~6e-5, so the 1e-6 tolerance pins the fp32 angle convention.
  struct Row {
    int64_t pos;
    float out[16];
  };
  const Row rows[] = {
      {0, {-0.649999976f, -0.400000006f, -0.150000006f, 0.100000001f, 0.349999994f, 0.600000024f,
           0.850000024f, -0.649999976f, -0.400000006f, -0.150000006f, 0.100000001f, 0.349999994f,
           0.600000024f, 0.850000024f, -0.649999976f, -0.400000006f}},
      {1, {-0.014608115f, -0.333518595f, -0.159233972f, 0.0888838768f, 0.343982607f, 0.597309113f,
           0.850649595f, -0.649873435f, -0.76307708f, -0.266955733f, 0.0845254064f, 0.352986753f,
           0.603469968f, 0.851893127f, -0.649149656f, -0.400205523f}},
      {7, {-0.227241814f, 0.359838247f, -0.179148108f, 0.0207153484f, 0.307177126f, 0.581039011f,
           0.854529202f, -0.64911294f, -0.728602171f, -0.230253011f, -0.0201484263f, 0.363415569f,
           0.623010635f, 0.863072276f, -0.644034088f, -0.401437849f}},
      {1000, {-0.0347945392f, 0.322762251f, -0.0787112638f, 0.0259854347f, 0.0327376425f,
              -0.582290471f, 1.00621319f, -0.493376434f, -0.762423337f, -0.279865205f,
              0.162186742f, 0.363076776f, -0.693850338f, -0.862228453f, 0.364053816f,
              -0.582305431f}},
      {4095, {-0.356244087f, -0.239648297f, -0.157778472f, 0.145658821f, -0.282464296f,
              0.238720447f, -1.02207708f, 0.207845181f, 0.674974144f, -0.35365051f,
              -0.0872121155f, -0.333591819f, -0.634597421f, 1.012676f, -0.316793889f,
              -0.734370708f}},
      {30000, {0.0666130185f, -0.390413254f, 0.124433339f, 0.126842663f, 0.592119694f,
               -0.00613540411f, -0.511105001f, 0.623942494f, 0.760304332f, 0.173428655f,
               -0.130446717f, 0.341190487f, -0.363172531f, 1.04041457f, -0.940091312f,
               0.439540327f}},
  };
  for (const Row& row : rows) {
    std::vector<float> x(16);
    for (int i = 0; i < 16; ++i) x[i] = static_cast<float>((i % 7) - 3) * 0.25f + 0.1f;
    RopeForward(x.data(), 1, 1, 1, 16, 16, row.pos, 10000.0f);
    for (int i = 0; i < 16; ++i) {
      EXPECT_NEAR(x[i], row.out[i], 1e-6) << "pos " << row.pos << " i " << i;
    }
  }
}

TEST(RopeTest, BackwardMatchesFiniteDifferencesAndInvertsForward) {
  for (const Layout& l : kLayouts) {
    const int64_t size = l.b * l.t * l.row_stride;
    const auto x = RandomVector(size, 10);
    const auto r = RandomVector(size, 11);
    auto dx = r;  // the backward rotates the incoming gradient in place
    RopeBackward(dx.data(), l.b, l.t, l.heads, l.d, l.row_stride, l.pos_offset, l.theta);
    ExpectGradNear(dx, NumericGradient([&](const std::vector<double>& v) {
                     return Project(NaiveRope(v, l), r);
                   }, ToDouble(x)),
                   Name(l) + " dx");
    auto y = x;
    RopeForward(y.data(), l.b, l.t, l.heads, l.d, l.row_stride, l.pos_offset, l.theta);
    RopeBackward(y.data(), l.b, l.t, l.heads, l.d, l.row_stride, l.pos_offset, l.theta);
    // A rotation and its inverse in fp32: a few ulp of O(1) values.
    ExpectAllNear(y, x, 0.0, 1e-6, Name(l) + " backward(forward(x))");
  }
}

TEST(RopeTest, StepwiseDecodeEqualsOneCallAcrossTableRebuilds) {
  // Generation rotates one token at a time with a growing pos_offset, interleaved with other
  // head sizes; the cached cos/sin table is rebuilt and grown along the way. Every step must
  // equal the same row of one call over all positions, bit for bit.
  const int64_t t = 300, heads = 2, d = 8;
  const auto x = RandomVector(t * heads * d, 20);
  auto whole = x;
  RopeForward(whole.data(), 1, t, heads, d, heads * d, 0, 10000.0f);
  auto steps = x;
  std::vector<float> other = RandomVector(6, 21);
  for (int64_t p = 0; p < t; ++p) {
    RopeForward(steps.data() + p * heads * d, 1, 1, heads, d, heads * d, p, 10000.0f);
    if (p % 50 == 0) RopeForward(other.data(), 1, 1, 1, 6, 6, 7, 10000.0f);  // other d
  }
  EXPECT_EQ(steps, whole);
}

}  // namespace
}  // namespace lattice
