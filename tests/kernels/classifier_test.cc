#include "kernels/classifier.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cross_entropy.h"
#include "kernels/matmul.h"
#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::ClassifierAllReduce;
using kernels::cpu::ClassifierArgs;
using kernels::cpu::ClassifierForward;
using kernels::cpu::ClassifierForwardBackward;
using kernels::cpu::ClassifierLoss;
using kernels::cpu::ClassifierScratchFloats;
using kernels::cpu::ReduceOp;
using testing::ForEachSimdLevel;
using testing::Poisoned;
using testing::RandomInts;
using testing::RandomVector;

// fp32's unit roundoff and Higham's gamma_k = k u / (1 - k u): a sum of k + 1 terms, or a dot
// product of k terms, evaluated in fp32 in ANY order (blocked, vectorised, FMA-contracted, as
// the GEMM libraries and the SIMD loops do) is within gamma_k * (sum of the terms' absolute
// values) of the exact value (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed.,
// sec. 3.1). Two such evaluations differ by at most twice that.
constexpr double kU = 0x1p-24;
double Gamma(int64_t k) { return k * kU / (1.0 - k * kU); }

struct Problem {
  int64_t n, c, v, vp;
  std::vector<float> hidden;   // (N, C)
  std::vector<float> weight;   // (Vp, C)
  std::vector<int32_t> targets;  // (N), -1 = ignored
  std::vector<float> mask;     // (N) or empty
  std::vector<float> dweight0;  // (Vp, C): what dweight holds before the call (it accumulates)
  float dloss = 0;
  const float* mask_ptr() const { return mask.empty() ? nullptr : mask.data(); }
};

Problem MakeProblem(int64_t n, int64_t c, int64_t v, int64_t vp, bool masked, uint64_t seed) {
  Problem p{n, c, v, vp};
  p.hidden = RandomVector(n * c, seed);
  p.weight = RandomVector(vp * c, seed + 1);
  // Padding rows hold values too: the kernel must exclude them by position, not by zeros.
  p.targets = RandomInts(n, seed + 2, 0, static_cast<int32_t>(v - 1));
  for (int64_t i = 0; i < n; i += 5) p.targets[i] = -1;  // ignored rows, the first one too
  p.targets[n - 1] = static_cast<int32_t>(v - 1);      // the last real token
  if (masked) {
    p.mask = RandomVector(n, seed + 3, 0.0f, 1.0f);
    for (int64_t i = 1; i < n; i += 7) p.mask[i] = 0.0f;
  }
  p.dweight0 = RandomVector(vp * c, seed + 4);
  int64_t counted = 0;
  for (int64_t i = 0; i < n; ++i) {
    counted += p.targets[i] >= 0 && (p.mask.empty() || p.mask[i] != 0.0f);
  }
  p.dloss = 1.0f / static_cast<float>(counted);
  return p;
}

struct Result {
  ClassifierLoss loss;
  std::vector<float> dhidden;  // (N, C)
  std::vector<float> dweight;  // (Vp, C)
};

// The unfused head: the whole (N, Vp) logits, kernels/cross_entropy.h, then the GEMM backward.
Result Unfused(const Problem& p) {
  std::vector<float> logits(p.n * p.vp);
  kernels::cpu::MatmulForward(logits.data(), p.hidden.data(), p.weight.data(), nullptr, p.n, p.c,
                              p.vp);
  std::vector<float> losses(p.n);
  Result r;
  r.loss.count = kernels::cpu::CrossEntropyForward(losses.data(), logits.data(),
                                                   p.targets.data(), p.mask_ptr(), p.n, p.v, p.vp);
  for (float l : losses) r.loss.loss_sum += l;
  std::vector<float> dlogits(p.n * p.vp, 0.0f);
  kernels::cpu::CrossEntropyBackward(dlogits.data(), logits.data(), p.targets.data(),
                                     p.mask_ptr(), p.dloss, p.n, p.v, p.vp);
  r.dhidden.assign(p.n * p.c, 0.0f);
  r.dweight = p.dweight0;
  kernels::cpu::MatmulBackward(r.dhidden.data(), r.dweight.data(), nullptr, dlogits.data(),
                               p.hidden.data(), p.weight.data(), p.n, p.c, p.vp);
  return r;
}

// How far two fp32 evaluations of the head (the chunked one and the unfused one, or the
// vocab-parallel one) may differ, derived from the exact values (computed here in double, whose
// own error, ~1e-16 relative, is negligible). First order in u; the second-order terms are
// below 1e-10 relative for these sizes.
struct Bounds {
  double loss_sum = 0;
  std::vector<double> dhidden;  // (N, C)
  std::vector<double> dweight;  // (Vp, C)
};

Bounds DeriveBounds(const Problem& p) {
  const int64_t n = p.n, c = p.c, v = p.v, vp = p.vp;
  Bounds b;
  b.dhidden.assign(n * c, 0.0);
  b.dweight.assign(vp * c, 0.0);
  std::vector<double> dl(n * vp, 0.0);  // exact logit gradients
  std::vector<double> dd(n * vp, 0.0);  // bound on the difference of the two fp32 ones
  double abs_loss_sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<double> x(v), s(v);
    for (int64_t j = 0; j < v; ++j) {
      double dot = 0, abs = 0;
      for (int64_t k = 0; k < c; ++k) {
        const double hw = static_cast<double>(p.hidden[i * c + k]) * p.weight[j * c + k];
        dot += hw;
        abs += std::fabs(hw);
      }
      x[j] = dot;
      s[j] = abs;
    }
    const int32_t t = p.targets[i];
    const double mask = p.mask.empty() ? 1.0 : p.mask[i];
    if (t < 0 || mask == 0.0) continue;  // both paths give exactly 0 loss and gradient
    // Logits: a dot product of C terms, each path within gamma_C * sum|h w| of exact.
    double delta = 0;
    for (int64_t j = 0; j < v; ++j) delta = std::max(delta, 2.0 * Gamma(c) * s[j]);
    const double mx = *std::max_element(x.begin(), x.end());
    const double spread = mx - *std::min_element(x.begin(), x.end());
    double se = 0;
    for (int64_t j = 0; j < v; ++j) se += std::exp(x[j] - mx);
    const double lse = mx + std::log(se);
    const double unmasked = lse - x[t];
    abs_loss_sum += std::fabs(unmasked * mask);
    // One fp32 evaluation's own error on its logits, absolute, on the unmasked loss: each
    // exp(x_j - max) is within 2 ulp (<= 4u relative, kernels/math_cpu.h) and its argument is
    // rounded by u * spread absolute, so every term is within (4 + spread) u relative; their
    // sum of V positive terms adds gamma_V; a relative error r of the sum is an absolute error
    // r of its log; the log rounds by 1 ulp (2u |log s|, |log s| <= log V), max + log and
    // - x_t once each (u |lse|, u |loss|).
    const double eval = Gamma(v) + (4.0 + spread) * kU +
                        2.0 * kU * std::log(static_cast<double>(v)) +
                        kU * (std::fabs(lse) + std::fabs(unmasked));
    // lse and x_t are 1-Lipschitz in the max norm of the logits: 2 delta. Both paths' own
    // errors, scaled by the mask, whose product rounds once more in each (u |loss|).
    b.loss_sum += mask * (2.0 * delta + 2.0 * eval) + 2.0 * kU * std::fabs(unmasked * mask);
    // Gradient: s (p_j - [j = t]) with s = dloss * mask. p_j = exp(x_j - lse) moves by
    // p_j (|dx_j| + |d lse|) <= 2 delta p_j. One evaluation of s p_j rounds the exp
    // ((4 + spread) u), the sum (gamma_V + (4 + spread) u), and at most four products and
    // quotients (1 / sum, times it, times s, s itself: 4u; the unfused kernels take three);
    // the target's "- s" rounds once and carries s's rounding (2u |s|).
    const double scale = static_cast<double>(p.dloss) * mask;
    const double rho = Gamma(v) + 2.0 * (4.0 + spread) * kU + 4.0 * kU;
    for (int64_t j = 0; j < v; ++j) {
      const double pj = std::exp(x[j] - lse);
      dl[i * vp + j] = scale * (pj - (j == t ? 1.0 : 0.0));
      dd[i * vp + j] = scale * (pj * (2.0 * delta + 2.0 * rho) + (j == t ? 4.0 * kU : 0.0));
    }
  }
  // loss_sum: the row losses summed in double in both paths (gamma of double for N terms).
  b.loss_sum += 2.0 * n * 0x1p-53 * abs_loss_sum;
  // dhidden = dlogits (N, Vp) @ weight: a dot product of Vp terms (padding terms are exact 0).
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < c; ++k) {
      double moved = 0, abs = 0;
      for (int64_t j = 0; j < vp; ++j) {
        const double w = std::fabs(static_cast<double>(p.weight[j * c + k]));
        moved += dd[i * vp + j] * w;
        abs += std::fabs(dl[i * vp + j]) * w;
      }
      b.dhidden[i * c + k] = moved + 2.0 * Gamma(vp) * abs;
    }
  }
  // dweight = dweight0 + dlogits^T @ hidden: a sum of N + 1 terms (the chunked path adds the
  // chunks' partial sums in turn: another order of the same sum).
  for (int64_t j = 0; j < vp; ++j) {
    for (int64_t k = 0; k < c; ++k) {
      double moved = 0, abs = std::fabs(static_cast<double>(p.dweight0[j * c + k]));
      for (int64_t i = 0; i < n; ++i) {
        const double h = std::fabs(static_cast<double>(p.hidden[i * c + k]));
        moved += dd[i * vp + j] * h;
        abs += std::fabs(dl[i * vp + j]) * h;
      }
      b.dweight[j * c + k] = moved + 2.0 * Gamma(n + 1) * abs;
    }
  }
  return b;
}

void ExpectWithin(const std::vector<float>& got, const std::vector<float>& want,
                  const std::vector<double>& bound, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  int failures = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(diff <= bound[i])) {  // NaN (an unwritten element) fails
      if (++failures <= 8) {
        ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " vs " << want[i] << ", |diff| "
                      << diff << " > bound " << bound[i];
      }
    }
  }
  EXPECT_EQ(failures, 0) << what;
}

ClassifierArgs ArgsFor(const Problem& p, int64_t rows, int64_t row_begin, int64_t chunk) {
  ClassifierArgs a;
  a.n = p.n;
  a.c = p.c;
  a.v = p.v;
  a.rows = rows;
  a.row_begin = row_begin;
  a.chunk_tokens = chunk;
  a.dloss = p.dloss;
  return a;
}

// A scratch buffer with a guard band after the size the kernel asks for: the guard must come
// back untouched, which shows the kernel used no more than chunk_tokens x rows (+ 4 per row).
class GuardedScratch {
 public:
  GuardedScratch(int64_t chunk, int64_t rows)
      : size_(ClassifierScratchFloats(chunk, rows)), buf_(size_ + kGuard, kSentinel) {}
  float* data() { return buf_.data(); }
  void ExpectGuardIntact() const {
    for (int64_t i = size_; i < size_ + kGuard; ++i) {
      ASSERT_EQ(buf_[i], kSentinel) << "scratch written past its size at " << i;
    }
  }

 private:
  static constexpr int64_t kGuard = 64;
  static constexpr float kSentinel = 12345.0f;
  int64_t size_;
  std::vector<float> buf_;
};

// A tensor-parallel group simulated in one process: each rank runs on its own thread, and the
// all-reduce callback meets the others there. Only one rank computes at a time (a rank holds
// `compute_` except while it waits in a collective), so the GEMM libraries are never entered
// from two threads at once, and the result does not depend on scheduling.
class SimulatedGroup {
 public:
  explicit SimulatedGroup(int size) : size_(size), data_(size), counts_(size), ops_(size) {}

  void Run(const std::function<void(int rank, const ClassifierAllReduce& reduce)>& body) {
    std::vector<std::thread> threads;
    for (int r = 0; r < size_; ++r) {
      threads.emplace_back([this, r, &body] {
        std::unique_lock<std::mutex> compute(compute_);
        const ClassifierAllReduce reduce = [this, r, &compute](float* d, int64_t count,
                                                               ReduceOp op) {
          compute.unlock();
          AllReduce(r, d, count, op);
          compute.lock();
        };
        body(r, reduce);
      });
    }
    for (std::thread& t : threads) t.join();
  }

  int64_t collectives() const { return collectives_; }

 private:
  void AllReduce(int rank, float* d, int64_t count, ReduceOp op) {
    std::unique_lock<std::mutex> lock(mu_);
    const int64_t generation = generation_;
    data_[rank] = d;
    counts_[rank] = count;
    ops_[rank] = op;
    if (++arrived_ < size_) {
      cv_.wait(lock, [&] { return generation_ != generation; });
      return;
    }
    // The last rank to arrive reduces, in rank order, and hands the result to everyone.
    for (int q = 1; q < size_; ++q) {
      EXPECT_EQ(counts_[q], counts_[0]) << "ranks disagree on a collective's size";
      EXPECT_EQ(ops_[q], ops_[0]) << "ranks disagree on a collective's op";
    }
    std::vector<float> acc(data_[0], data_[0] + count);
    for (int q = 1; q < size_; ++q) {
      for (int64_t i = 0; i < count; ++i) {
        acc[i] = op == ReduceOp::kSum ? acc[i] + data_[q][i] : std::max(acc[i], data_[q][i]);
      }
    }
    for (int q = 0; q < size_; ++q) std::copy(acc.begin(), acc.end(), data_[q]);
    ++collectives_;
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
  }

  const int size_;
  std::mutex compute_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<float*> data_;
  std::vector<int64_t> counts_;
  std::vector<ReduceOp> ops_;
  int arrived_ = 0;
  int64_t generation_ = 0;
  int64_t collectives_ = 0;
};

struct Shape {
  int64_t n, c, v, vp;
  bool masked;
};

std::string Name(const Shape& s, int64_t chunk, int tp) {
  return "n=" + std::to_string(s.n) + " c=" + std::to_string(s.c) + " v=" + std::to_string(s.v) +
         " vp=" + std::to_string(s.vp) + (s.masked ? " masked" : "") +
         " chunk=" + std::to_string(chunk) + " tp=" + std::to_string(tp);
}

// N = 37 is prime: chunks of 5 and 16 leave a short last chunk, 1 is the extreme, 37 and 100
// take everything at once. v < vp: padding columns. The second shape is large enough for the
// kernels' threaded paths (chunk x vp >= 2^15 elements).
const Shape kShapes[] = {{37, 32, 50, 64, false}, {37, 32, 50, 64, true},
                         {203, 48, 500, 512, true}};

TEST(ClassifierTest, ChunkedEqualsUnfusedWithinDerivedBounds) {
  ForEachSimdLevel([&] {
    uint64_t seed = 100;
    for (const Shape& s : kShapes) {
      const Problem p = MakeProblem(s.n, s.c, s.v, s.vp, s.masked, seed++);
      const Result want = Unfused(p);
      const Bounds bound = DeriveBounds(p);
      for (int64_t chunk : {int64_t{1}, int64_t{5}, int64_t{16}, int64_t{64}, s.n, int64_t{1000}}) {
        SCOPED_TRACE(Name(s, chunk, 1));
        GuardedScratch scratch(chunk, s.vp);
        std::vector<float> dhidden = Poisoned(s.n * s.c);  // must be written, not added to
        std::vector<float> dweight = p.dweight0;
        const ClassifierLoss got = ClassifierForwardBackward(
            dhidden.data(), dweight.data(), scratch.data(), p.hidden.data(), p.weight.data(),
            p.targets.data(), p.mask_ptr(), ArgsFor(p, s.vp, 0, chunk));
        scratch.ExpectGuardIntact();
        EXPECT_EQ(got.count, want.loss.count);
        EXPECT_NEAR(got.loss_sum, want.loss.loss_sum, bound.loss_sum);
        ExpectWithin(dhidden, want.dhidden, bound.dhidden, "dhidden");
        ExpectWithin(dweight, want.dweight, bound.dweight, "dweight");
        // Evaluation: the same loss without gradients.
        const ClassifierLoss eval = ClassifierForward(scratch.data(), p.hidden.data(),
                                                      p.weight.data(), p.targets.data(),
                                                      p.mask_ptr(), ArgsFor(p, s.vp, 0, chunk));
        EXPECT_EQ(eval.count, want.loss.count);
        EXPECT_NEAR(eval.loss_sum, want.loss.loss_sum, bound.loss_sum);
      }
    }
  });
}

TEST(ClassifierTest, VocabParallelShardsEqualUnfusedWithinDerivedBounds) {
  struct Case {
    Shape shape;
    int tp;
  };
  // v = 50 of 64: the last shard is part padding; v = 40 with tp = 4: the last shard (rows
  // 48..63) is all padding, its local max -inf.
  const Case cases[] = {{{37, 32, 50, 64, false}, 2},
                        {{37, 32, 50, 64, true}, 4},
                        {{37, 32, 40, 64, true}, 4},
                        {{37, 32, 50, 64, true}, 1},  // a group of one: the shard path itself
                        {{203, 48, 500, 512, true}, 2}};
  uint64_t seed = 200;
  for (const Case& k : cases) {
    const Shape& s = k.shape;
    const Problem p = MakeProblem(s.n, s.c, s.v, s.vp, s.masked, seed++);
    const Result want = Unfused(p);
    const Bounds bound = DeriveBounds(p);
    const int64_t rows = s.vp / k.tp;
    for (int64_t chunk : {int64_t{1}, int64_t{5}, int64_t{64}, int64_t{1000}}) {
      SCOPED_TRACE(Name(s, chunk, k.tp));
      std::vector<std::vector<float>> dhidden(k.tp, Poisoned(s.n * s.c));
      std::vector<float> dweight = p.dweight0;  // each rank accumulates into its rows
      std::vector<ClassifierLoss> loss(k.tp);
      SimulatedGroup group(k.tp);
      group.Run([&](int r, const ClassifierAllReduce& reduce) {
        GuardedScratch scratch(chunk, rows);
        loss[r] = ClassifierForwardBackward(
            dhidden[r].data(), dweight.data() + r * rows * s.c, scratch.data(), p.hidden.data(),
            p.weight.data() + r * rows * s.c, p.targets.data(), p.mask_ptr(),
            ArgsFor(p, rows, r * rows, chunk), reduce);
        scratch.ExpectGuardIntact();
      });
      // One max and one sum per chunk, whatever tp.
      EXPECT_EQ(group.collectives(), 2 * ((s.n + chunk - 1) / chunk));
      for (int r = 0; r < k.tp; ++r) {
        // Every rank computes its losses from the same reduced values: identical.
        EXPECT_EQ(loss[r].count, want.loss.count);
        EXPECT_EQ(loss[r].loss_sum, loss[0].loss_sum);
      }
      EXPECT_NEAR(loss[0].loss_sum, want.loss.loss_sum, bound.loss_sum);
      // The caller's all-reduce of the partial input gradients (here in rank order in fp32:
      // one more order of the same Vp-term sum the bound covers).
      std::vector<float> total = dhidden[0];
      for (int r = 1; r < k.tp; ++r) {
        for (int64_t i = 0; i < s.n * s.c; ++i) total[i] += dhidden[r][i];
      }
      ExpectWithin(total, want.dhidden, bound.dhidden, "dhidden");
      ExpectWithin(dweight, want.dweight, bound.dweight, "dweight");
    }
  }
}

TEST(ClassifierTest, IgnoredRowsGetZeroGradientAndNoWeightGradient) {
  Problem p = MakeProblem(9, 8, 10, 16, false, 7);
  std::fill(p.targets.begin(), p.targets.end(), -1);
  GuardedScratch scratch(4, 16);
  std::vector<float> dhidden = Poisoned(9 * 8);
  std::vector<float> dweight = p.dweight0;
  const ClassifierLoss got = ClassifierForwardBackward(
      dhidden.data(), dweight.data(), scratch.data(), p.hidden.data(), p.weight.data(),
      p.targets.data(), nullptr, ArgsFor(p, 16, 0, 4));
  EXPECT_EQ(got.count, 0);
  EXPECT_EQ(got.loss_sum, 0.0);
  // Zero logit gradients: the products are sums of exact zeros.
  for (float d : dhidden) ASSERT_EQ(d, 0.0f);
  EXPECT_EQ(dweight, p.dweight0);
  // No tokens at all: nothing is touched.
  std::vector<float> untouched = Poisoned(8);
  const ClassifierLoss none = ClassifierForwardBackward(
      untouched.data(), dweight.data(), scratch.data(), p.hidden.data(), p.weight.data(),
      p.targets.data(), nullptr, ArgsFor(Problem{0, 8, 10, 16}, 16, 0, 4));
  EXPECT_EQ(none.count, 0);
  EXPECT_TRUE(std::isnan(untouched[0]));
  // A null dweight: the head's gradient is not wanted, the input gradient still is.
  std::vector<float> dh2 = Poisoned(9 * 8);
  ClassifierForwardBackward(dh2.data(), nullptr, scratch.data(), p.hidden.data(),
                            p.weight.data(), p.targets.data(), nullptr, ArgsFor(p, 16, 0, 4));
  EXPECT_EQ(dh2, dhidden);
}

TEST(ClassifierTest, ScratchIsOneChunkOfLogitsPlusFourFloatsPerRow) {
  EXPECT_EQ(ClassifierScratchFloats(1, 1), 5);
  EXPECT_EQ(ClassifierScratchFloats(256, 131072), 256 * (131072 + 4));
}

TEST(ClassifierDeathTest, ArgumentsAreChecked) {
  // Earlier tests started OpenMP and GEMM thread pools, which a fork()ed child cannot use:
  // each death test runs in a fresh process instead.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const Problem p = MakeProblem(4, 4, 6, 8, false, 3);
  std::vector<float> scratch(ClassifierScratchFloats(2, 8)), dh(16);
  EXPECT_DEATH(ClassifierForwardBackward(dh.data(), nullptr, scratch.data(), p.hidden.data(),
                                         p.weight.data(), p.targets.data(), nullptr,
                                         ArgsFor(p, 8, 0, 0)),
               "chunk_tokens must be positive");
  // A shard's arguments without the reduce that would complete them.
  EXPECT_DEATH(ClassifierForward(scratch.data(), p.hidden.data(), p.weight.data(),
                                 p.targets.data(), nullptr, ArgsFor(p, 4, 4, 2)),
               "needs the whole vocabulary");
  std::vector<int32_t> bad = p.targets;
  bad[2] = 6;  // = v: a padding id is not a valid target
  EXPECT_DEATH(ClassifierForward(scratch.data(), p.hidden.data(), p.weight.data(), bad.data(),
                                 nullptr, ArgsFor(p, 8, 0, 2)),
               "target outside the vocabulary");
}

}  // namespace
}  // namespace lattice
