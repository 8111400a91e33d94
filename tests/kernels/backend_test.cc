// The backend seam (kernels/backend.h) on the CPU: views, the arena's alignment and counters,
// copies and casts between host and device, the device scalars, argument checks, and the ops
// the seam added (AddRowBias, the position embedding and its gradient) against plain loops.
// The wrapped kernels are the kernels::cpu functions themselves (their own tests cover them);
// a few are compared here bit for bit to show the wrapper passes every argument through.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu_backend.h"
#include "kernels/matmul.h"
#include "kernels/rope.h"
#include "runtime/rng.h"

namespace lattice::kernels {
namespace {

std::vector<float> Random(int64_t n, uint64_t seed) {
  CounterRng rng(seed, "backend_test");
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = rng.Normal(static_cast<uint64_t>(i));
  return v;
}

TEST(Backend, ViewsAndSubViews) {
  std::vector<float> x(10);
  const TensorView v = F32View(x.data(), 10);
  const TensorView s = v.Sub(3, 4);
  EXPECT_EQ(s.f32(), x.data() + 3);
  EXPECT_EQ(s.numel, 4);
  EXPECT_EQ(v.Sub(6).numel, 4);
  const ConstView c = v;
  EXPECT_EQ(c.Sub(2).f32(), x.data() + 2);
  EXPECT_FALSE(TensorView().present());
  EXPECT_FALSE(ViewOf(Tensor()).present());
  Tensor t = Tensor::Zeros({2, 3}, DType::kI32);
  EXPECT_EQ(ViewOf(t).numel, 6);
  EXPECT_EQ(ViewOf(t).dtype, DType::kI32);
}

TEST(Backend, ArenaAlignsEveryTensorTo64Elements) {
  CpuBackend be;
  Arena arena(be, 4096);
  EXPECT_EQ(arena.blocks(), 1);
  EXPECT_EQ(be.storage_allocations(), 1);
  const Tensor a = arena.Allocate({3}, DType::kF32);
  const Tensor b = arena.Allocate({1}, DType::kI32);
  const Tensor c = arena.Allocate({65}, DType::kF32);
  const Tensor d = arena.Allocate({2}, DType::kBF16);
  const auto at = [&](const Tensor& t) {
    return static_cast<const char*>(t.raw()) - static_cast<const char*>(a.raw());
  };
  EXPECT_EQ(at(b), 256);
  EXPECT_EQ(at(c), 512);
  EXPECT_EQ(at(d), 512 + 512) << "65 floats take two 64-element units";
  for (const Tensor* t : {&a, &b, &c, &d}) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t->raw()) % 64, 0u) << "64-byte vector alignment";
    EXPECT_EQ(at(*t) % Arena::kAlignBytes, 0);
  }
  EXPECT_EQ(arena.allocations(), 4);
  EXPECT_EQ(arena.used_bytes(), 256 + 256 + 512 + 256);
  EXPECT_EQ(Arena::AlignedBytes(65, DType::kF32), 512);
  EXPECT_EQ(Arena::AlignedBytes(0, DType::kF32), 0);
  // Memory is zero when handed out.
  for (int64_t i = 0; i < 65; ++i) EXPECT_EQ(c.f32()[i], 0.0f);
  EXPECT_EQ(arena.blocks(), 1) << "all four fit the first block";
  // Past the block: one more block, of the reserved size.
  arena.Reserve(8192);
  EXPECT_EQ(arena.blocks(), 2);
  EXPECT_EQ(arena.capacity_bytes(), 4096 + 8192);
  arena.Allocate({2048}, DType::kF32);
  EXPECT_EQ(arena.blocks(), 2);
  EXPECT_EQ(be.storage_allocations(), 2);
}

TEST(Backend, CopiesAndCastsRoundToNearestEven) {
  CpuBackend be;
  const std::vector<float> host = {1.0f, 1.00390625f, 1.01171875f, -3.5f, 65504.0f, 1e-8f};
  const int64_t n = static_cast<int64_t>(host.size());
  Tensor bf = Tensor::Zeros({n}, DType::kBF16);
  be.CopyFromHost(ViewOf(bf), host.data(), DType::kF32, n);
  std::vector<float> back(n);
  be.CopyToHost(back.data(), DType::kF32, ViewOf(bf), n);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(back[i], Bf16ToFloat(FloatToBf16(host[i]))) << i;
  }
  // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
  EXPECT_EQ(back[1], 1.0f);
  Tensor h = Tensor::Zeros({n}, DType::kF16);
  be.Cast(ViewOf(h), ViewOf(bf));
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(F16ToFloat(h.data<uint16_t>()[i]), F16ToFloat(FloatToF16(back[i]))) << i;
  }
  Tensor f = Tensor::Zeros({n}, DType::kF32);
  be.Copy(ViewOf(f), F32View(host.data(), n));
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(f.f32()[i], host[i]);
  be.Fill(ViewOf(f).Sub(1, 2), 7.0f);
  EXPECT_EQ(f.f32()[0], host[0]);
  EXPECT_EQ(f.f32()[1], 7.0f);
  EXPECT_EQ(f.f32()[2], 7.0f);
  EXPECT_EQ(f.f32()[3], host[3]);
  be.Zero(ViewOf(f));
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(f.f32()[i], 0.0f);
  const std::vector<int32_t> ids = {3, -1, 7};
  Tensor ti = Tensor::Zeros({3}, DType::kI32);
  be.CopyFromHost(ViewOf(ti), ids.data(), DType::kI32, 3);
  EXPECT_EQ(ti.i32()[1], -1);
}

TEST(Backend, ScalarsStayOnTheDeviceUntilRead) {
  CpuBackend be;
  DeviceScalars s = be.AllocateScalars(2);
  be.ZeroScalars(s);
  const std::vector<float> x = Random(1000, 1), y = Random(333, 2);
  be.AccumulateSum(s, 0, F32View(x.data(), 1000));
  be.AccumulateSum(s, 0, F32View(y.data(), 333));
  be.AccumulateSumOfSquares(s, 1, F32View(x.data(), 1000));
  double got[2];
  be.ReadScalars(s, got);
  // The same double sums in the same order, the decoder's loss sum of before the seam.
  double sx = 0, sy = 0;
  for (float v : x) sx += v;
  for (float v : y) sy += v;
  EXPECT_EQ(got[0], (0.0 + sx) + sy);
  double sq = 0;
  for (float v : x) sq += static_cast<double>(v) * v;
  // SumOfSquares sums in fixed chunks (kernels/grad_norm.h), not element order: the same n
  // squares in another order differ by at most n * 2^-53 relative.
  EXPECT_NEAR(got[1], sq, 1000 * std::ldexp(1.0, -53) * sq);
}

TEST(Backend, OpsCallTheCpuKernels) {
  CpuBackend be;
  const int64_t n = 5, c = 8, oc = 6;
  const std::vector<float> inp = Random(n * c, 3), w = Random(oc * c, 4), bias = Random(oc, 5);
  std::vector<float> a(n * oc), b(n * oc);
  cpu::MatmulForward(a.data(), inp.data(), w.data(), bias.data(), n, c, oc);
  be.MatmulForward(F32View(b.data(), n * oc), F32View(inp.data(), n * c),
                   F32View(w.data(), oc * c), F32View(bias.data(), oc), n, c, oc);
  EXPECT_EQ(a, b);
  // RoPE on the k heads of a packed row, through a sub-view.
  const int64_t t = 3, heads = 2, d = 4, stride = 3 * heads * d;
  std::vector<float> qa = Random(t * stride, 6), qb = qa;
  cpu::RopeForward(qa.data() + heads * d, 1, t, heads, d, stride, 2, 10000.0f);
  be.RopeForward(F32View(qb.data(), t * stride).Sub(heads * d), 1, t, heads, d, stride, 2,
                 10000.0f);
  EXPECT_EQ(qa, qb);
}

TEST(Backend, AddRowBiasAndPositionEmbedding) {
  CpuBackend be;
  const int64_t rows = 6, c = 5, t = 4, pos0 = 1;
  const std::vector<float> bias = Random(c, 7), wpe = Random((t + pos0) * c, 8);
  const std::vector<float> x0 = Random(rows * c, 9);
  std::vector<float> x = x0;
  be.AddRowBias(F32View(x.data(), rows * c), F32View(bias.data(), c), rows, c);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < c; ++j) EXPECT_EQ(x[i * c + j], x0[i * c + j] + bias[j]);
  }
  // Rows 2.. of the (b*t) token rows: positions (2 + i) % t + pos0.
  x = x0;
  be.PositionEmbeddingForward(F32View(x.data(), rows * c), F32View(wpe.data(), wpe.size()), rows,
                              c, 2, t, pos0);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t p = (2 + i) % t + pos0;
    for (int64_t j = 0; j < c; ++j) EXPECT_EQ(x[i * c + j], x0[i * c + j] + wpe[p * c + j]);
  }
  std::vector<float> dwpe(t * c, 0.0f), want(t * c, 0.0f);
  be.PositionEmbeddingBackward(F32View(dwpe.data(), t * c), F32View(x0.data(), rows * c), rows, c,
                               2, t);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < c; ++j) want[((2 + i) % t) * c + j] += x0[i * c + j];
  }
  EXPECT_EQ(dwpe, want);
}

TEST(BackendDeathTest, RefusesViewsTooSmallOrOfAnotherType) {
  CpuBackend be;
  std::vector<float> x(10), y(4);
  EXPECT_DEATH(be.GeluForward(F32View(y.data(), 4), F32View(x.data(), 10), 10),
               "gelu.fwd: argument out");
  Tensor ints = Tensor::Zeros({10}, DType::kI32);
  EXPECT_DEATH(be.GeluForward(F32View(x.data(), 10), ViewOf(ints), 10), "gelu.fwd: argument inp");
  EXPECT_DEATH(be.ResidualForward(TensorView(), F32View(x.data(), 10), F32View(x.data(), 10), 10),
               "is absent");
}

}  // namespace
}  // namespace lattice::kernels
