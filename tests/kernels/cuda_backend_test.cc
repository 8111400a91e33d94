// LATTICE_TEST_LABELS: gpu
// Every op of the CUDA backend against the CPU backend (principle 1: every computation exists
// twice), over shapes that include odd ones. Each case draws fresh random inputs, poisons every
// written-over output with NaN first (an element the kernel fails to write stays NaN and fails),
// gives accumulated outputs the same random start on both backends, and compares by
// ||cuda - cpu|| / ||cpu|| (METHOD: float32 arithmetic lands far under 1e-3).
//
// Without a GPU (this machine, CI) every test skips with the reason; tests/gpu/run.sh runs them
// on a GPU, also under compute-sanitizer.
#include "kernels/cuda/cuda_backend.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu_backend.h"

namespace lattice {
namespace {

using kernels::Backend;
using kernels::ConstView;
using kernels::TensorView;

// fp32 tolerances, relative to the CPU's norm. The two backends sum in other orders (warp
// trees against sequential or SIMD loops, cuBLAS's blocking against oneDNN's), and the GPU's
// expf/tanhf/rsqrtf are within 2 ulp of the correctly rounded value: per element a few ulp
// (1e-7 each), over sums of up to ~10^3 terms of either sign a relative error around 1e-6.
// kElementwise: one op per element, a few ulp. kReduced: a sum or a GEMM per output.
constexpr double kElementwise = 2e-6;
constexpr double kReduced = 2e-5;

// kPositive: an accumulated output that starts in (0, 1) (Adam's second moment).
enum class Kind { kIn, kOut, kInOut, kPositive, kTokens };
struct Arg {
  std::string name;
  Kind kind;
  int64_t n;
  int32_t token_limit = 0;
};

struct Views {
  std::map<std::string, TensorView> v;
  TensorView operator[](const std::string& k) const { return v.at(k); }
  ConstView c(const std::string& k) const { return v.at(k); }
};

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (kernels::cuda::DeviceCount(&why) == 0) GTEST_SKIP() << "no GPU: " << why;
    absl::StatusOr<std::unique_ptr<Backend>> b = kernels::cuda::CreateBackend(0);
    ASSERT_TRUE(b.ok()) << b.status();
    gpu_ = std::move(b).value();
  }
  void TearDown() override {
    if (gpu_ != nullptr) EXPECT_TRUE(kernels::cuda::BackendError(*gpu_).ok())
        << kernels::cuda::BackendError(*gpu_);
  }

  // Runs `op` on both backends over the arguments and compares every written argument.
  void Compare(const std::string& label, const std::vector<Arg>& args,
               const std::function<void(Backend&, const Views&)>& op, double tol) {
    SCOPED_TRACE(label);
    std::map<std::string, std::vector<float>> host;
    std::map<std::string, std::vector<int32_t>> tokens;
    for (const Arg& a : args) {
      if (a.kind == Kind::kTokens) {
        std::uniform_int_distribution<int32_t> u(0, a.token_limit - 1);
        auto& t = tokens[a.name];
        t.resize(a.n);
        for (auto& x : t) x = u(rng_);
      } else if (a.kind == Kind::kOut) {
        host[a.name].assign(a.n, std::numeric_limits<float>::quiet_NaN());
      } else {
        std::uniform_real_distribution<float> u(a.kind == Kind::kPositive ? 0.0f : -1.0f, 1.0f);
        auto& h = host[a.name];
        h.resize(a.n);
        for (auto& x : h) x = u(rng_);
      }
    }
    std::map<std::string, std::vector<float>> results[2];
    kernels::CpuBackend cpu;
    Backend* backends[2] = {&cpu, gpu_.get()};
    for (int which = 0; which < 2; ++which) {
      Backend& be = *backends[which];
      std::vector<std::shared_ptr<Storage>> keep;
      Views views;
      for (const Arg& a : args) {
        const DType dt = a.kind == Kind::kTokens ? DType::kI32 : DType::kF32;
        keep.push_back(be.AllocateStorage(std::max<int64_t>(a.n, 1) * 4));
        TensorView v{keep.back()->data(), dt, a.n};
        if (a.kind == Kind::kTokens) {
          be.CopyFromHost(v, tokens[a.name].data(), DType::kI32, a.n);
        } else {
          be.CopyFromHost(v, host[a.name].data(), DType::kF32, a.n);
        }
        views.v[a.name] = v;
      }
      op(be, views);
      be.stream().Synchronize();
      for (const Arg& a : args) {
        if (a.kind == Kind::kIn || a.kind == Kind::kTokens) continue;
        auto& r = results[which][a.name];
        r.resize(a.n);
        be.CopyToHost(r.data(), DType::kF32, views.c(a.name), a.n);
      }
    }
    ASSERT_TRUE(kernels::cuda::BackendError(*gpu_).ok()) << kernels::cuda::BackendError(*gpu_);
    for (const auto& [name, want] : results[0]) {
      const std::vector<float>& got = results[1].at(name);
      double diff = 0, norm = 0;
      int64_t nan = 0, first_nan = -1;
      for (size_t i = 0; i < want.size(); ++i) {
        if (std::isnan(got[i]) != std::isnan(want[i])) {
          if (first_nan < 0) first_nan = static_cast<int64_t>(i);
          ++nan;
          continue;
        }
        if (std::isnan(want[i])) continue;
        diff += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
        norm += double(want[i]) * want[i];
      }
      EXPECT_EQ(nan, 0) << name << ": " << nan << " elements NaN on one backend only (first "
                        << first_nan << "): unwritten or wrong";
      const double rel = norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
      EXPECT_LE(rel, tol) << name << ": ||cuda - cpu|| / ||cpu|| = " << rel;
    }
  }

  std::unique_ptr<Backend> gpu_;
  std::mt19937 rng_{20261201};
};

struct Rows {
  int64_t n, c;
};
const Rows kRows[] = {{1, 1}, {3, 37}, {64, 64}, {257, 768}, {7, 1031}};

TEST_F(CudaBackendTest, Matmul) {
  struct S { int64_t n, c, oc; };
  for (S s : {S{1, 1, 1}, S{5, 7, 3}, S{64, 128, 96}, S{129, 65, 33}, S{512, 768, 2304}}) {
    const std::string l = "n=" + std::to_string(s.n) + " c=" + std::to_string(s.c) +
                          " oc=" + std::to_string(s.oc);
    Compare("forward " + l,
            {{"out", Kind::kOut, s.n * s.oc}, {"inp", Kind::kIn, s.n * s.c},
             {"w", Kind::kIn, s.oc * s.c}, {"b", Kind::kIn, s.oc}},
            [&](Backend& be, const Views& v) {
              be.MatmulForward(v["out"], v.c("inp"), v.c("w"), v.c("b"), s.n, s.c, s.oc);
            },
            kReduced);
    for (bool to : {false, true}) {
      Compare(std::string(to ? "backward_to " : "backward ") + l,
              {{"dinp", to ? Kind::kOut : Kind::kInOut, s.n * s.c},
               {"dw", Kind::kInOut, s.oc * s.c}, {"db", Kind::kInOut, s.oc},
               {"dout", Kind::kIn, s.n * s.oc}, {"inp", Kind::kIn, s.n * s.c},
               {"w", Kind::kIn, s.oc * s.c}},
              [&](Backend& be, const Views& v) {
                if (to) {
                  be.MatmulBackwardTo(v["dinp"], v["dw"], v["db"], v.c("dout"), v.c("inp"),
                                      v.c("w"), s.n, s.c, s.oc);
                } else {
                  be.MatmulBackward(v["dinp"], v["dw"], v["db"], v.c("dout"), v.c("inp"),
                                    v.c("w"), s.n, s.c, s.oc);
                }
              },
              kReduced);
    }
  }
}

TEST_F(CudaBackendTest, Norms) {
  for (Rows r : kRows) {
    const std::string l = "n=" + std::to_string(r.n) + " c=" + std::to_string(r.c);
    Compare("layernorm forward " + l,
            {{"out", Kind::kOut, r.n * r.c}, {"mean", Kind::kOut, r.n}, {"rstd", Kind::kOut, r.n},
             {"inp", Kind::kIn, r.n * r.c}, {"w", Kind::kIn, r.c}, {"b", Kind::kIn, r.c}},
            [&](Backend& be, const Views& v) {
              be.LayerNormForward(v["out"], v["mean"], v["rstd"], v.c("inp"), v.c("w"), v.c("b"),
                                  r.n, r.c, 1e-5f);
            },
            kReduced);
    // The backward's mean and rstd come from the CPU forward's formula on both sides: inputs
    // here (random rstd in (0.5, 1.5) is a valid statistic for the gradient formula).
    Compare("layernorm backward " + l,
            {{"dinp", Kind::kInOut, r.n * r.c}, {"dw", Kind::kInOut, r.c},
             {"db", Kind::kInOut, r.c}, {"dout", Kind::kIn, r.n * r.c},
             {"inp", Kind::kIn, r.n * r.c}, {"w", Kind::kIn, r.c}, {"mean", Kind::kIn, r.n},
             {"rstd", Kind::kIn, r.n}},
            [&](Backend& be, const Views& v) {
              be.LayerNormBackward(v["dinp"], v["dw"], v["db"], v.c("dout"), v.c("inp"),
                                   v.c("w"), v.c("mean"), v.c("rstd"), r.n, r.c);
            },
            kReduced);
    Compare("rmsnorm forward " + l,
            {{"out", Kind::kOut, r.n * r.c}, {"rstd", Kind::kOut, r.n},
             {"inp", Kind::kIn, r.n * r.c}, {"w", Kind::kIn, r.c}},
            [&](Backend& be, const Views& v) {
              be.RmsNormForward(v["out"], v["rstd"], v.c("inp"), v.c("w"), r.n, r.c, 1e-5f);
            },
            kReduced);
    Compare("rmsnorm backward " + l,
            {{"dinp", Kind::kInOut, r.n * r.c}, {"dw", Kind::kInOut, r.c},
             {"dout", Kind::kIn, r.n * r.c}, {"inp", Kind::kIn, r.n * r.c},
             {"w", Kind::kIn, r.c}, {"rstd", Kind::kIn, r.n}},
            [&](Backend& be, const Views& v) {
              be.RmsNormBackward(v["dinp"], v["dw"], v.c("dout"), v.c("inp"), v.c("w"),
                                 v.c("rstd"), r.n, r.c);
            },
            kReduced);
  }
}

TEST_F(CudaBackendTest, Attention) {
  struct S { int64_t b, t, h, kvh, d; };
  for (S s : {S{1, 1, 1, 1, 2}, S{2, 17, 4, 2, 16}, S{1, 64, 6, 6, 64}, S{2, 33, 8, 1, 40},
              S{1, 130, 2, 2, 128}, S{1, 9, 4, 2, 256}}) {
    const std::string l = "b=" + std::to_string(s.b) + " t=" + std::to_string(s.t) +
                          " h=" + std::to_string(s.h) + " kvh=" + std::to_string(s.kvh) +
                          " d=" + std::to_string(s.d);
    const int64_t qkv = s.b * s.t * (s.h + 2 * s.kvh) * s.d, o = s.b * s.t * s.h * s.d;
    Compare("forward " + l,
            {{"out", Kind::kOut, o}, {"lse", Kind::kOut, s.b * s.h * s.t}, {"qkv", Kind::kIn, qkv}},
            [&](Backend& be, const Views& v) {
              be.AttentionForward(v["out"], v["lse"], v.c("qkv"), s.b, s.t, s.h, s.kvh, s.d);
            },
            kReduced);
    // The backward on each side from that side's own forward (out, lse): a real pair.
    for (bool to : {false, true}) {
      Compare(std::string(to ? "backward_to " : "backward ") + l,
              {{"dqkv", to ? Kind::kOut : Kind::kInOut, qkv}, {"dout", Kind::kIn, o},
               {"qkv", Kind::kIn, qkv}, {"out", Kind::kOut, o},
               {"lse", Kind::kOut, s.b * s.h * s.t}},
              [&](Backend& be, const Views& v) {
                be.AttentionForward(v["out"], v["lse"], v.c("qkv"), s.b, s.t, s.h, s.kvh, s.d);
                if (to) {
                  be.AttentionBackwardTo(v["dqkv"], v.c("dout"), v.c("qkv"), v.c("out"),
                                         v.c("lse"), s.b, s.t, s.h, s.kvh, s.d);
                } else {
                  be.AttentionBackward(v["dqkv"], v.c("dout"), v.c("qkv"), v.c("out"),
                                       v.c("lse"), s.b, s.t, s.h, s.kvh, s.d);
                }
              },
              kReduced);
    }
    Compare("decode " + l,
            {{"out", Kind::kOut, s.h * s.d}, {"q", Kind::kIn, s.h * s.d},
             {"k", Kind::kIn, s.t * s.kvh * s.d}, {"v", Kind::kIn, s.t * s.kvh * s.d}},
            [&](Backend& be, const Views& v) {
              be.AttentionDecode(v["out"], v.c("q"), v.c("k"), v.c("v"), s.t, s.h, s.kvh, s.d);
            },
            kReduced);
  }
}

TEST_F(CudaBackendTest, Elementwise) {
  for (int64_t n : {1, 31, 1000, 100003}) {
    const std::string l = "n=" + std::to_string(n);
    Compare("gelu forward " + l, {{"out", Kind::kOut, n}, {"inp", Kind::kIn, n}},
            [&](Backend& be, const Views& v) { be.GeluForward(v["out"], v.c("inp"), n); },
            kElementwise);
    Compare("gelu backward " + l,
            {{"dinp", Kind::kInOut, n}, {"inp", Kind::kIn, n}, {"dout", Kind::kIn, n}},
            [&](Backend& be, const Views& v) { be.GeluBackward(v["dinp"], v.c("inp"), v.c("dout"), n); },
            kElementwise);
    Compare("gelu backward_to " + l,
            {{"dinp", Kind::kOut, n}, {"inp", Kind::kIn, n}, {"dout", Kind::kIn, n}},
            [&](Backend& be, const Views& v) {
              be.GeluBackwardTo(v["dinp"], v.c("inp"), v.c("dout"), n);
            },
            kElementwise);
    Compare("residual " + l,
            {{"out", Kind::kOut, n}, {"a", Kind::kIn, n}, {"b", Kind::kIn, n},
             {"da", Kind::kInOut, n}, {"db", Kind::kInOut, n}, {"dout", Kind::kIn, n}},
            [&](Backend& be, const Views& v) {
              be.ResidualForward(v["out"], v.c("a"), v.c("b"), n);
              be.ResidualBackward(v["da"], v["db"], v.c("dout"), n);
            },
            kElementwise);
    Compare("scale " + l, {{"x", Kind::kInOut, n}},
            [&](Backend& be, const Views& v) { be.Scale(v["x"], n, 0.37f); }, kElementwise);
  }
  for (Rows r : kRows) {
    const std::string l = "n=" + std::to_string(r.n) + " f=" + std::to_string(r.c);
    Compare("bias gelu " + l,
            {{"pre", Kind::kInOut, r.n * r.c}, {"out", Kind::kOut, r.n * r.c},
             {"b", Kind::kIn, r.c}},
            [&](Backend& be, const Views& v) {
              be.BiasGeluForward(v["pre"], v["out"], v.c("b"), r.n, r.c);
            },
            kElementwise);
    Compare("swiglu " + l,
            {{"out", Kind::kOut, r.n * r.c}, {"inp", Kind::kIn, r.n * 2 * r.c},
             {"dinp", Kind::kInOut, r.n * 2 * r.c}, {"dout", Kind::kIn, r.n * r.c}},
            [&](Backend& be, const Views& v) {
              be.SwiGluForward(v["out"], v.c("inp"), r.n, r.c);
              be.SwiGluBackward(v["dinp"], v.c("inp"), v.c("dout"), r.n, r.c);
            },
            kElementwise);
    Compare("add row bias " + l, {{"x", Kind::kInOut, r.n * r.c}, {"b", Kind::kIn, r.c}},
            [&](Backend& be, const Views& v) { be.AddRowBias(v["x"], v.c("b"), r.n, r.c); },
            kElementwise);
  }
  struct R { int64_t b, t, heads, d, stride, pos; };
  for (R r : {R{1, 1, 1, 2, 2, 0}, R{2, 17, 4, 16, 96, 3}, R{1, 300, 8, 128, 1536, 4000}}) {
    Compare("rope d=" + std::to_string(r.d) + " t=" + std::to_string(r.t),
            {{"x", Kind::kInOut, r.b * r.t * r.stride}, {"dx", Kind::kInOut, r.b * r.t * r.stride}},
            [&](Backend& be, const Views& v) {
              be.RopeForward(v["x"], r.b, r.t, r.heads, r.d, r.stride, r.pos, 10000.0f);
              be.RopeBackward(v["dx"], r.b, r.t, r.heads, r.d, r.stride, r.pos, 500000.0f);
            },
            // cos/sin of angles up to 4300 rad: the GPU's cosf/sinf and the host's differ by
            // ~1 ulp of the result, the argument reduction of a large angle adds a few.
            1e-5);
  }
}

TEST_F(CudaBackendTest, EmbeddingsAndLosses) {
  struct S { int64_t b, t, c, v, vp; };
  for (S s : {S{1, 1, 1, 1, 1}, S{2, 7, 33, 50, 64}, S{4, 64, 128, 1000, 1024}}) {
    const int64_t n = s.b * s.t;
    const std::string l = "b=" + std::to_string(s.b) + " t=" + std::to_string(s.t) +
                          " c=" + std::to_string(s.c) + " v=" + std::to_string(s.v);
    Compare("embedding " + l,
            {{"out", Kind::kOut, n * s.c}, {"tok", Kind::kTokens, n, int32_t(s.v)},
             {"wte", Kind::kIn, s.vp * s.c}, {"wpe", Kind::kIn, (s.t + 2) * s.c},
             {"dwte", Kind::kInOut, s.vp * s.c}, {"dwpe", Kind::kInOut, (s.t + 2) * s.c},
             {"dout", Kind::kIn, n * s.c}},
            [&](Backend& be, const Views& v) {
              be.EmbeddingForward(v["out"], v.c("tok"), v.c("wte"), v.c("wpe"), s.b, s.t, s.c, 2);
              be.EmbeddingBackward(v["dwte"], v["dwpe"], v.c("dout"), v.c("tok"), s.b, s.t, s.c,
                                   2);
            },
            kReduced);
    Compare("position embedding " + l,
            {{"x", Kind::kInOut, n * s.c}, {"wpe", Kind::kIn, (s.t + 1) * s.c},
             {"dwpe", Kind::kInOut, s.t * s.c}, {"dx", Kind::kIn, n * s.c}},
            [&](Backend& be, const Views& v) {
              be.PositionEmbeddingForward(v["x"], v.c("wpe"), n, s.c, 0, s.t, 1);
              be.PositionEmbeddingBackward(v["dwpe"], v.c("dx"), n, s.c, 0, s.t);
            },
            kReduced);
    Compare("embedding shard " + l,
            {{"out", Kind::kOut, n * s.c}, {"tok", Kind::kTokens, n, int32_t(s.v)},
             {"rows", Kind::kIn, (s.vp / 2 + 1) * s.c}, {"drows", Kind::kInOut, (s.vp / 2 + 1) * s.c},
             {"dout", Kind::kIn, n * s.c}},
            [&](Backend& be, const Views& v) {
              be.EmbeddingShardForward(v["out"], v.c("tok"), v.c("rows"), s.vp / 2, s.vp / 2 + 1, n,
                                       s.c);
              be.EmbeddingShardBackward(v["drows"], v.c("dout"), v.c("tok"), s.vp / 2,
                                        s.vp / 2 + 1, n, s.c);
            },
            kReduced);
    for (bool mask : {false, true}) {
      const std::string lm = l + (mask ? " masked" : "");
      std::vector<Arg> args = {{"losses", Kind::kOut, n}, {"logits", Kind::kIn, n * s.vp},
                               {"tgt", Kind::kTokens, n, int32_t(s.v)},
                               {"mask", Kind::kIn, mask ? n : 0},
                               {"dlogits", Kind::kInOut, n * s.vp}};
      Compare("cross entropy " + lm, args, [&](Backend& be, const Views& v) {
        const ConstView m = mask ? v.c("mask") : ConstView();
        be.CrossEntropyForward(v["losses"], v.c("logits"), v.c("tgt"), m, n, s.v, s.vp);
        be.CrossEntropyBackward(v["dlogits"], v.c("logits"), v.c("tgt"), m, 0.25f, n, s.v, s.vp);
      }, kReduced);
      Compare("cross entropy probs " + lm,
              {{"losses", Kind::kOut, n}, {"logits", Kind::kInOut, n * s.vp},
               {"tgt", Kind::kTokens, n, int32_t(s.v)}, {"mask", Kind::kIn, mask ? n : 0}},
              [&](Backend& be, const Views& v) {
                const ConstView m = mask ? v.c("mask") : ConstView();
                be.CrossEntropyForwardProbs(v["losses"], v["logits"], v.c("tgt"), m, n, s.v, s.vp);
                be.CrossEntropyBackwardProbs(v["logits"], v.c("tgt"), m, 0.5f, n, s.v, s.vp);
              },
              kReduced);
      // One shard of two: columns [vp/2, vp).
      const int64_t cols = s.vp - s.vp / 2, begin = s.vp / 2;
      Compare("cross entropy shard " + lm,
              {{"max", Kind::kOut, n}, {"sum", Kind::kOut, n}, {"tl", Kind::kOut, n},
               {"losses", Kind::kOut, n}, {"logits", Kind::kIn, n * cols},
               {"tgt", Kind::kTokens, n, int32_t(s.v)}, {"mask", Kind::kIn, mask ? n : 0},
               {"dlogits", Kind::kInOut, n * cols}},
              [&](Backend& be, const Views& v) {
                const ConstView m = mask ? v.c("mask") : ConstView();
                be.CrossEntropyShardMax(v["max"], v.c("logits"), n, cols, begin, s.v);
                be.CrossEntropyShardStats(v["sum"], v["tl"], v.c("logits"), v.c("tgt"),
                                          v.c("max"), n, cols, begin, s.v);
                be.CrossEntropyShardLoss(v["losses"], v.c("max"), v.c("sum"), v.c("tl"),
                                         v.c("tgt"), m, n);
                be.CrossEntropyShardBackward(v["dlogits"], v.c("logits"), v.c("tgt"), m,
                                             v.c("max"), v.c("sum"), 0.25f, n, cols, begin, s.v);
              },
              kReduced);
    }
  }
}

TEST_F(CudaBackendTest, OptimizerAndInit) {
  for (int64_t n : {1, 1000, 100003}) {
    for (int64_t step : {1, 2, 1000}) {
      kernels::AdamWArgs a;
      a.lr = 3e-4f;
      a.weight_decay = 0.1f;
      a.step = step;
      a.grad_scale = 0.7f;
      Compare("adamw n=" + std::to_string(n) + " step=" + std::to_string(step),
              {{"p", Kind::kInOut, n}, {"g", Kind::kIn, n}, {"m", Kind::kInOut, n},
               {"v", Kind::kPositive, n}},
              [&](Backend& be, const Views& v) {
                be.AdamWUpdate(v["p"], v.c("g"), v["m"], v["v"], n, a);
              },
              kElementwise);
    }
  }
  Compare("fill normal", {{"x", Kind::kInOut, 40 * 70}},
          [&](Backend& be, const Views& v) {
            be.FillNormal(v["x"], 7, "test/weight", 40, 64, 70, 5, 64, 0.02f);
          },
          0.0);  // both draw on the host with the same generator: identical
}

TEST_F(CudaBackendTest, CastsScalarsAndCopies) {
  std::mt19937 gen(3);
  std::normal_distribution<float> u(0.0f, 100.0f);
  const int64_t n = 100003;
  std::vector<float> x(n);
  for (float& f : x) f = u(gen);
  kernels::CpuBackend cpu;
  for (DType t : {DType::kBF16, DType::kF16}) {
    // Round to nearest even on both sides: bit-identical halves.
    auto half_gpu = gpu_->AllocateStorage(n * 2), f_gpu = gpu_->AllocateStorage(n * 4);
    auto half_cpu = cpu.AllocateStorage(n * 2), f_cpu = cpu.AllocateStorage(n * 4);
    gpu_->CopyFromHost(TensorView{f_gpu->data(), DType::kF32, n}, x.data(), DType::kF32, n);
    cpu.CopyFromHost(TensorView{f_cpu->data(), DType::kF32, n}, x.data(), DType::kF32, n);
    gpu_->Cast(TensorView{half_gpu->data(), t, n}, ConstView(f_gpu->data(), DType::kF32, n));
    cpu.Cast(TensorView{half_cpu->data(), t, n}, ConstView(f_cpu->data(), DType::kF32, n));
    std::vector<uint16_t> a(n), b(n);
    gpu_->CopyToHost(a.data(), t, ConstView(half_gpu->data(), t, n), n);
    cpu.CopyToHost(b.data(), t, ConstView(half_cpu->data(), t, n), n);
    EXPECT_EQ(a, b) << DTypeName(t) << " casts differ";
    // And back to f32 exactly.
    gpu_->Cast(TensorView{f_gpu->data(), DType::kF32, n}, ConstView(half_gpu->data(), t, n));
    std::vector<float> back(n), want(n);
    gpu_->CopyToHost(back.data(), DType::kF32, ConstView(f_gpu->data(), DType::kF32, n), n);
    cpu.Cast(TensorView{f_cpu->data(), DType::kF32, n}, ConstView(half_cpu->data(), t, n));
    cpu.CopyToHost(want.data(), DType::kF32, ConstView(f_cpu->data(), DType::kF32, n), n);
    EXPECT_EQ(back, want);
    // RoundThrough (the mixed-precision storage op): fp32 in place, the same bits as the CPU's.
    gpu_->CopyFromHost(TensorView{f_gpu->data(), DType::kF32, n}, x.data(), DType::kF32, n);
    cpu.CopyFromHost(TensorView{f_cpu->data(), DType::kF32, n}, x.data(), DType::kF32, n);
    gpu_->RoundThrough(TensorView{f_gpu->data(), DType::kF32, n}, t);
    cpu.RoundThrough(TensorView{f_cpu->data(), DType::kF32, n}, t);
    gpu_->CopyToHost(back.data(), DType::kF32, ConstView(f_gpu->data(), DType::kF32, n), n);
    cpu.CopyToHost(want.data(), DType::kF32, ConstView(f_cpu->data(), DType::kF32, n), n);
    EXPECT_EQ(back, want) << DTypeName(t) << " round-through differs";
  }
  // Device scalars: sums in double, deterministic (the same bits on every run).
  auto xs = gpu_->AllocateStorage(n * 4);
  gpu_->CopyFromHost(TensorView{xs->data(), DType::kF32, n}, x.data(), DType::kF32, n);
  kernels::DeviceScalars sc = gpu_->AllocateScalars(2);
  double first[2] = {0, 0};
  for (int run = 0; run < 3; ++run) {
    gpu_->ZeroScalars(sc);
    gpu_->AccumulateSum(sc, 0, ConstView(xs->data(), DType::kF32, n));
    gpu_->AccumulateSumOfSquares(sc, 1, ConstView(xs->data(), DType::kF32, n));
    double got[2];
    gpu_->ReadScalars(sc, got);
    double sum = 0, sq = 0;
    for (float f : x) {
      sum += f;
      sq += double(f) * f;
    }
    // Double sums of 1e5 terms of size 1e2..1e4 in another order: ~1e-12 relative.
    EXPECT_NEAR(got[0], sum, 1e-9 * sq);
    EXPECT_NEAR(got[1], sq, 1e-10 * sq);
    if (run == 0) {
      first[0] = got[0];
      first[1] = got[1];
    } else {
      EXPECT_EQ(got[0], first[0]);
      EXPECT_EQ(got[1], first[1]);
    }
  }
  // Events finish; an unrecorded one counts as finished.
  std::unique_ptr<kernels::Event> e = gpu_->CreateEvent();
  EXPECT_TRUE(e->Query());
  e->Record(gpu_->stream());
  e->Synchronize();
  EXPECT_TRUE(e->Query());
  EXPECT_GT(gpu_->GemmRate(1024, 1024, 1024, 0.05), 1000.0) << "under 1 TFLOP/s fp32 on a GPU";
}

// The two ceilings a GPU's figures are read against (METHOD: measure them once on the machine):
// device-to-device copy bandwidth (bytes read plus written) and the fp32 GEMM rate, plain and
// with TF32. Printed as "ceiling ..." lines for tests/gpu/run.sh's table; the checks only
// reject figures no H100/A100 would give.
TEST_F(CudaBackendTest, Ceilings) {
  const int64_t n = int64_t{1} << 28;  // 1 GiB of floats per buffer: far past the L2
  auto a = gpu_->AllocateStorage(n * 4), b = gpu_->AllocateStorage(n * 4);
  gpu_->Fill(TensorView{a->data(), DType::kF32, n}, 1.5f);
  const ConstView src(a->data(), DType::kF32, n);
  const TensorView dst{b->data(), DType::kF32, n};
  gpu_->Copy(dst, src);  // warm-up
  gpu_->stream().Synchronize();
  const int reps = 20;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) gpu_->Copy(dst, src);
  gpu_->stream().Synchronize();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double gbs = 2.0 * n * 4 * reps / s / 1e9;
  std::printf("ceiling copy_gbs=%.0f\n", gbs);
  EXPECT_GT(gbs, 500.0);
  const double fp32 = gpu_->GemmRate(8192, 8192, 8192, 1.0);
  std::printf("ceiling sgemm_gflops=%.0f\n", fp32);
  ::setenv("LATTICE_TF32", "1", 1);
  absl::StatusOr<std::unique_ptr<Backend>> tf32 = kernels::cuda::CreateBackend(0);
  ::unsetenv("LATTICE_TF32");
  ASSERT_TRUE(tf32.ok()) << tf32.status();
  const double tf = (*tf32)->GemmRate(8192, 8192, 8192, 1.0);
  std::printf("ceiling tf32_gflops=%.0f\n", tf);
  EXPECT_GT(fp32, 5000.0);
  EXPECT_GT(tf, fp32);
}

}  // namespace
}  // namespace lattice
