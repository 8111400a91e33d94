#include "runtime/tensor.h"

#include <gtest/gtest.h>

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
      const float tol = t == DType::kBF16 ? 8e-3f : 1e-3f;
      EXPECT_NEAR(back.f32()[i], vals[i], std::abs(vals[i]) * tol + 1e-7f) << DTypeName(t);
    }
  }
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToF16(1.0f), 0x3c00);
  EXPECT_EQ(FloatToF16(65504.0f), 0x7bff);
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
  EXPECT_NEAR(sum / 100000, 0.0, 0.02);
  EXPECT_NEAR(sq / 100000, 1.0, 0.02);
}

}  // namespace
}  // namespace lattice
