// The seam's classifier ops (kernels/backend.h): CpuBackend runs kernels::cpu's fused
// classifier (tested against the unfused head in classifier_test.cc); the Backend default,
// which any other device inherits, composes the backend's own matmul and cross-entropy ops
// per chunk. Both run the same kernels on the same rows in the same order, so their gradients
// are the same bits; only the loss sum's double rounding differs (per-chunk partial sums).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/classifier.h"

namespace lattice::kernels {
namespace {

struct Problem {
  int64_t n = 0, c = 0, v = 0, rows = 0;
  std::vector<float> hidden, weight, mask;
  std::vector<int32_t> targets;
};

Problem Make(int64_t n, int64_t c, int64_t v, int64_t rows) {
  Problem p;
  p.n = n;
  p.c = c;
  p.v = v;
  p.rows = rows;
  uint32_t x = 99;
  auto next = [&x] {
    x = x * 1664525u + 1013904223u;
    return static_cast<float>((x >> 8) & 0xffff) / 65536.0f - 0.5f;
  };
  for (int64_t i = 0; i < n * c; ++i) p.hidden.push_back(next());
  for (int64_t i = 0; i < rows * c; ++i) p.weight.push_back(i / c < v ? next() : 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    p.targets.push_back(i % 6 == 2 ? -1 : static_cast<int32_t>((i * 31 + 3) % v));
    p.mask.push_back(i % 5 == 1 ? 0.0f : i % 3 == 0 ? 0.5f : 1.0f);
  }
  return p;
}

struct Out {
  std::vector<float> dhidden, dweight;
  double loss = 0;
};

// The same size and the same bits (empty vectors, an evaluation's gradients, are equal: no
// memcmp of their null data).
bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

Tensor Upload(Backend& be, const void* host, int64_t n, DType dt) {
  Tensor t(be.AllocateStorage(n * 4), 0, {n}, dt);
  be.CopyFromHost(ViewOf(t), host, dt, n);
  return t;
}

// composed: the Backend default (qualified call); else CpuBackend's override.
Out RunHead(const Problem& p, int64_t chunk, bool composed, bool train,
        const cpu::ClassifierAllReduce& reduce) {
  Backend& be = DefaultBackend();
  const Tensor hidden = Upload(be, p.hidden.data(), p.n * p.c, DType::kF32);
  const Tensor weight = Upload(be, p.weight.data(), p.rows * p.c, DType::kF32);
  const Tensor targets = Upload(be, p.targets.data(), p.n, DType::kI32);
  const Tensor mask = Upload(be, p.mask.data(), p.n, DType::kF32);
  const int64_t scratch_n = cpu::ClassifierScratchFloats(chunk, p.rows);
  Tensor scratch(be.AllocateStorage(scratch_n * 4), 0, {scratch_n}, DType::kF32);
  Tensor dhidden(be.AllocateStorage(p.n * p.c * 4), 0, {p.n * p.c}, DType::kF32);
  Tensor dweight(be.AllocateStorage(p.rows * p.c * 4), 0, {p.rows * p.c}, DType::kF32);
  be.Zero(ViewOf(dweight));
  DeviceScalars acc = be.AllocateScalars(1);
  be.ZeroScalars(acc);
  cpu::ClassifierArgs a;
  a.n = p.n;
  a.c = p.c;
  a.v = p.v;
  a.rows = p.rows;
  a.chunk_tokens = chunk;
  a.dloss = 0.01f;
  if (train) {
    if (composed) {
      be.Backend::ClassifierForwardBackward(ViewOf(dhidden), ViewOf(dweight), ViewOf(scratch),
                                            ViewOf(hidden), ViewOf(weight), ViewOf(targets),
                                            ViewOf(mask), a, reduce, acc, 0);
    } else {
      be.ClassifierForwardBackward(ViewOf(dhidden), ViewOf(dweight), ViewOf(scratch),
                                   ViewOf(hidden), ViewOf(weight), ViewOf(targets), ViewOf(mask),
                                   a, reduce, acc, 0);
    }
  } else if (composed) {
    be.Backend::ClassifierForward(ViewOf(scratch), ViewOf(hidden), ViewOf(weight),
                                  ViewOf(targets), ViewOf(mask), a, reduce, acc, 0);
  } else {
    be.ClassifierForward(ViewOf(scratch), ViewOf(hidden), ViewOf(weight), ViewOf(targets),
                         ViewOf(mask), a, reduce, acc, 0);
  }
  Out o;
  be.ReadScalars(acc, &o.loss);
  if (train) {
    o.dhidden.resize(p.n * p.c);
    o.dweight.resize(p.rows * p.c);
    be.CopyToHost(o.dhidden.data(), DType::kF32, ViewOf(dhidden), p.n * p.c);
    be.CopyToHost(o.dweight.data(), DType::kF32, ViewOf(dweight), p.rows * p.c);
  }
  return o;
}

TEST(ClassifierBackend, DefaultCompositionMatchesTheCpuKernel) {
  // A group of one rank: the vocab-parallel kernels run, and the reduction is the identity.
  const cpu::ClassifierAllReduce one_rank = [](float*, int64_t, cpu::ReduceOp) {};
  const Problem p = Make(/*n=*/37, /*c=*/24, /*v=*/50, /*rows=*/64);
  for (bool tp : {false, true}) {
    for (int64_t chunk : {1, 5, 16, 37, 100}) {
      for (bool train : {true, false}) {
        SCOPED_TRACE(std::string(tp ? "vocab-parallel" : "one rank") + " chunk " +
                     std::to_string(chunk) + (train ? " train" : " eval"));
        const cpu::ClassifierAllReduce reduce = tp ? one_rank : nullptr;
        const Out a = RunHead(p, chunk, /*composed=*/true, train, reduce);
        const Out b = RunHead(p, chunk, /*composed=*/false, train, reduce);
        EXPECT_GT(b.loss, 0);
        // The losses are the same floats; their double sum is taken per chunk then added
        // instead of in one pass: 37 additions in double, each within 2^-53 relative of a
        // total of positive terms, so 1e-13 relative bounds the difference with margin.
        EXPECT_NEAR(a.loss, b.loss, 1e-13 * b.loss);
        EXPECT_TRUE(SameBits(a.dhidden, b.dhidden));
        EXPECT_TRUE(SameBits(a.dweight, b.dweight));
      }
    }
  }
}

}  // namespace
}  // namespace lattice::kernels
