#include "runtime/tensor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "runtime/rng.h"

namespace lattice {
namespace {

TEST(TensorTest, SliceAndViewShareStorage) {
  Tensor t = Tensor::Zeros({4, 3}, DType::kF32);
  Tensor rows = t.Slice(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 3}));
  rows.f32()[0] = 7.0f;
  EXPECT_EQ(t.f32()[3], 7.0f);
  Tensor flat = t.View({12});
  EXPECT_EQ(flat.f32()[3], 7.0f);
}

TEST(TensorTest, ConvertRoundTripsBf16AndF16) {
  Tensor a = Tensor::Zeros({5}, DType::kF32);
  const float vals[5] = {1.0f, -2.5f, 0.1f, 65504.0f, 3.0e-6f};
  for (int i = 0; i < 5; ++i) a.f32()[i] = vals[i];
  for (DType t : {DType::kBF16, DType::kF16}) {
    Tensor h = Tensor::Zeros({5}, t);
    ASSERT_TRUE(ConvertInto(a, h).ok());
    Tensor back = Tensor::Zeros({5}, DType::kF32);
    ASSERT_TRUE(ConvertInto(h, back).ok());
    for (int i = 0; i < 5; ++i) {
      // Round-to-nearest unit roundoff: bf16 keeps 8 significant bits (2^-8 = 3.9e-3 relative),
      // f16 11 (2^-11 = 4.9e-4); 3e-6 is subnormal in f16 (absolute error <= 2^-25), hence
      // the absolute term. Both bounds are twice the unit roundoff.
      const float tol = t == DType::kBF16 ? 8e-3f : 1e-3f;
      EXPECT_NEAR(back.f32()[i], vals[i], std::abs(vals[i]) * tol + 1e-7f) << DTypeName(t);
    }
  }
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToF16(1.0f), 0x3c00);
  EXPECT_EQ(FloatToF16(65504.0f), 0x7bff);
}

// GitHub issue 8: `--set model.d_model=1099511627776` made NumElements overflow a signed
// multiply (undefined behaviour). Products of sizes are now checked.
TEST(TensorTest, CheckedCountsRejectOverflow) {
  constexpr int64_t kD = int64_t{1} << 40;  // the d_model of the issue
  EXPECT_EQ(*CheckedNumElements({}), 1);
  EXPECT_EQ(*CheckedNumElements({3, 4}), 12);
  EXPECT_EQ(*CheckedNumElements({kD, 0}), 0);
  EXPECT_EQ(*CheckedNumBytes({3, 4}, DType::kBF16), 24);
  EXPECT_EQ(*CheckedNumElements({kD, 1 << 22}), int64_t{1} << 62);

  absl::StatusOr<int64_t> n = CheckedNumElements({kD, kD});
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(n.status().message(),
            "shape [1099511627776, 1099511627776] has more elements than int64 holds (2^63 - 1)");
  // A zero dim does not excuse an overflowing product of the others (partial products of
  // such a shape would still overflow).
  EXPECT_FALSE(CheckedNumElements({kD, kD, 0}).ok());
  n = CheckedNumElements({2, -3});
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().message(), "shape [2, -3]: dim 1 is negative");
  EXPECT_FALSE(CheckedNumElements({0, -1}).ok());
  // Elements fit, bytes do not.
  absl::StatusOr<int64_t> b = CheckedNumBytes({kD, 1 << 22}, DType::kF32);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().message(),
            "shape [1099511627776, 4194304] of f32 needs more bytes (4611686018427387904 x 4) "
            "than int64 holds (2^63 - 1)");
}

TEST(TensorDeathTest, OverflowingShapesFailACheckInsteadOfUndefinedBehaviour) {
  constexpr int64_t kD = int64_t{1} << 40;
  EXPECT_DEATH(NumElements({kD, kD}), "has more elements than int64 holds");
  EXPECT_DEATH(NumElements({4, -1}), "dim 1 is negative");
  EXPECT_DEATH(Tensor::Zeros({kD, kD}, DType::kF32), "Tensor::Zeros: shape \\[1099511627776");
  EXPECT_DEATH(Tensor::Zeros({kD, 1 << 22}, DType::kF32), "needs more bytes");
  // A view that claims more bytes than its storage holds.
  Tensor t = Tensor::Zeros({4}, DType::kF32);
  EXPECT_DEATH(t.View({kD, kD}), "has more elements than int64 holds");
}

// Found by safetensors_fuzz: a U32 file tensor read into an I32 tensor cast 2.6e9 to int32
// (undefined behaviour). Values outside an integer destination's range are an error.
TEST(TensorTest, ConvertIntoIntegersChecksTheRange) {
  Tensor u = Tensor::Zeros({3}, DType::kU32);
  u.data<uint32_t>()[0] = 7;
  u.data<uint32_t>()[1] = 2147483647u;
  Tensor i = Tensor::Zeros({3}, DType::kI32);
  ASSERT_TRUE(ConvertInto(u, i).ok());
  EXPECT_EQ(i.i32()[1], 2147483647);
  u.data<uint32_t>()[2] = 2605780000u;
  absl::Status s = ConvertInto(u, i);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "cannot convert Tensor(u32[3] on cpu) into Tensor(i32[3] on cpu): element "
                         "2 = 2605780000 is outside the range of i32");
  Tensor neg = Tensor::Zeros({1}, DType::kI32);
  neg.i32()[0] = -1;
  EXPECT_FALSE(ConvertInto(neg, Tensor::Zeros({1}, DType::kU16)).ok());
  Tensor f = Tensor::Zeros({2}, DType::kF32);
  f.f32()[0] = 3.75f;
  f.f32()[1] = std::nanf("");
  Tensor to = Tensor::Zeros({2}, DType::kU32);
  s = ConvertInto(f, to);
  EXPECT_THAT(s.message(), ::testing::HasSubstr("element 1 = nan is outside the range of u32"));
  EXPECT_EQ(to.data<uint32_t>()[0], 3u);  // truncated
}

TEST(TensorTest, FirstNonFiniteFindsNanAndInfInEveryFloatDtype) {
  const float kInf = std::numeric_limits<float>::infinity();
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    Tensor f = Tensor::Zeros({2, 3}, DType::kF32);
    for (int i = 0; i < 6; ++i) f.f32()[i] = 0.5f * i - 1.0f;
    f.f32()[5] = 65504.0f;  // the largest finite f16 stays finite
    Tensor t = Tensor::Zeros({2, 3}, dtype);
    ASSERT_TRUE(ConvertInto(f, t).ok());
    EXPECT_EQ(FirstNonFinite(t), -1);
    for (float bad : {std::nanf(""), kInf, -kInf}) {
      f.f32()[4] = bad;
      ASSERT_TRUE(ConvertInto(f, t).ok());
      EXPECT_EQ(FirstNonFinite(t), 4) << bad;
    }
    f.f32()[4] = 0.0f;
  }
  Tensor ints = Tensor::Zeros({3}, DType::kI32);
  ints.i32()[1] = 0x7f800000;  // the bits of +Inf, but an integer
  EXPECT_EQ(FirstNonFinite(ints), -1);
  EXPECT_EQ(FirstNonFinite(Tensor::Zeros({0}, DType::kF32)), -1);
}

TEST(RngTest, ValueDependsOnlyOnSeedNameAndIndex) {
  CounterRng a(1234, "h.0.attn.qkv.weight");
  CounterRng b(1234, "h.0.attn.qkv.weight");
  CounterRng c(1234, "h.1.attn.qkv.weight");
  std::vector<float> full(1000), shard(500);
  a.FillNormal(full.data(), 1000, 0, 0.0f, 0.02f);
  b.FillNormal(shard.data(), 500, 500, 0.0f, 0.02f);  // the second half, as rank 1 of 2 would
  for (int i = 0; i < 500; ++i) EXPECT_EQ(full[500 + i], shard[i]);
  EXPECT_NE(a.Normal(0), c.Normal(0));
  double sum = 0, sq = 0;
  for (int i = 0; i < 100000; ++i) {
    const double x = a.Normal(i);
    sum += x;
    sq += x * x;
  }
  // Mean of 1e5 standard normals: sd 1/sqrt(1e5) = 0.0032, so 0.02 is 6 sd; mean of their
  // squares: sd sqrt(2 / 1e5) = 0.0045, so 0.02 is 4.5 sd (deterministic draws: never flaky).
  EXPECT_NEAR(sum / 100000, 0.0, 0.02);
  EXPECT_NEAR(sq / 100000, 1.0, 0.02);
}

}  // namespace
}  // namespace lattice
