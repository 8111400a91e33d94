#include "kernels/cross_entropy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::CrossEntropyBackward;
using kernels::cpu::CrossEntropyBackwardProbs;
using kernels::cpu::CrossEntropyForward;
using kernels::cpu::CrossEntropyForwardProbs;
using testing::ExpectAccumulated;
using testing::ForEachSimdLevel;
using testing::ExpectAllNear;
using testing::ExpectGradNear;
using testing::NumericGradient;
using testing::Poisoned;
using testing::RandomInts;
using testing::RandomVector;
using testing::ToDouble;

struct Case {
  int64_t n, v, vp;
  bool mask;
};

std::string Name(const Case& c) {
  return "n=" + std::to_string(c.n) + " v=" + std::to_string(c.v) + " vp=" +
         std::to_string(c.vp) + (c.mask ? " masked" : "");
}

const Case kCases[] = {
    {1, 1, 1, false}, {6, 11, 16, false}, {6, 11, 16, true}, {5, 50, 50, true}, {9, 3, 8, false},
};

// Targets with a few ignored (-1) rows; a mask with zeros and fractional weights.
std::vector<int32_t> Targets(const Case& c, uint64_t seed) {
  auto t = RandomInts(c.n, seed, 0, static_cast<int32_t>(c.v - 1));
  for (int64_t i = 2; i < c.n; i += 3) t[i] = -1;
  return t;
}
std::vector<float> Mask(const Case& c, uint64_t seed) {
  auto m = RandomVector(c.n, seed, 0.0f, 2.0f);
  for (int64_t i = 1; i < c.n; i += 4) m[i] = 0.0f;
  return m;
}

// -log softmax over the first v columns at the target, times the mask; 0 for ignored rows.
std::vector<double> NaiveLosses(const std::vector<double>& logits, const std::vector<int32_t>& t,
                                const std::vector<float>* mask, const Case& c) {
  std::vector<double> loss(c.n, 0.0);
  for (int64_t i = 0; i < c.n; ++i) {
    if (t[i] < 0) continue;
    const double* x = &logits[i * c.vp];
    const double mx = *std::max_element(x, x + c.v);
    double sum = 0.0;
    for (int64_t j = 0; j < c.v; ++j) sum += std::exp(x[j] - mx);
    loss[i] = (mx + std::log(sum) - x[t[i]]) * (mask != nullptr ? (*mask)[i] : 1.0);
  }
  return loss;
}

TEST(CrossEntropyTest, ForwardMatchesNaiveAndCountsRows) {
  ForEachSimdLevel([&] {
    for (const Case& c : kCases) {
      auto logits = RandomVector(c.n * c.vp, 1, -4.0f, 4.0f);
      // Padding columns hold huge values: they must not enter the softmax.
      for (int64_t i = 0; i < c.n; ++i) {
        for (int64_t j = c.v; j < c.vp; ++j) logits[i * c.vp + j] = 1e4f;
      }
      const auto targets = Targets(c, 2);
      const auto mask = Mask(c, 3);
      auto losses = Poisoned(c.n);
      const int64_t counted = CrossEntropyForward(losses.data(), logits.data(), targets.data(),
                                                  c.mask ? mask.data() : nullptr, c.n, c.v, c.vp);
      const auto want = NaiveLosses(ToDouble(logits), targets, c.mask ? &mask : nullptr, c);
      // log-sum-exp in fp32 over <= 50 terms: a few ulp of a value of size ~log(V) + 8.
      ExpectAllNear(losses, want, 1e-6, 1e-6, Name(c));
      int64_t want_counted = 0;
      for (int64_t i = 0; i < c.n; ++i) {
        want_counted += targets[i] >= 0 && (!c.mask || mask[i] != 0.0f);
      }
      EXPECT_EQ(counted, want_counted) << Name(c);
    }
  });
}

TEST(CrossEntropyTest, ForwardIsStableForLargeLogits) {
  ForEachSimdLevel([&] {
    const Case c{4, 1000, 1024, false};
    auto logits = RandomVector(c.n * c.vp, 4, -5.0f, 5.0f);
    const auto targets = RandomInts(c.n, 5, 0, 999);
    std::vector<float> base(c.n), shifted(c.n);
    CrossEntropyForward(base.data(), logits.data(), targets.data(), nullptr, c.n, c.v, c.vp);
    for (float& x : logits) x += 1000.0f;  // exp(1000) overflows unless the max is subtracted
    CrossEntropyForward(shifted.data(), logits.data(), targets.data(), nullptr, c.n, c.v, c.vp);
    // Adding 1000 rounds each logit to a multiple of 2^-14 ~ 6e-5: the loss moves by that much.
    ExpectAllNear(shifted, ToDouble(base), 0.0, 2e-4, "shifted by 1000");
  });
}

TEST(CrossEntropyTest, BackwardMatchesFiniteDifferences) {
  ForEachSimdLevel([&] {
    const float dloss = 0.37f;
    for (const Case& c : kCases) {
      const auto logits = RandomVector(c.n * c.vp, 10, -3.0f, 3.0f);
      const auto targets = Targets(c, 11);
      const auto mask = Mask(c, 12);
      const std::vector<float>* m = c.mask ? &mask : nullptr;
      std::vector<float> dlogits(c.n * c.vp, 0.0f);
      CrossEntropyBackward(dlogits.data(), logits.data(), targets.data(),
                           c.mask ? mask.data() : nullptr, dloss, c.n, c.v, c.vp);
      // L = dloss * sum_i loss_i; its derivative in a padding column is 0, as the kernel's must be.
      ExpectGradNear(dlogits, NumericGradient([&](const std::vector<double>& x) {
                       double sum = 0.0;
                       for (double l : NaiveLosses(x, targets, m, c)) sum += l;
                       return dloss * sum;
                     }, ToDouble(logits)),
                     Name(c) + " dlogits");
      for (int64_t i = 0; i < c.n; ++i) {
        for (int64_t j = c.v; j < c.vp; ++j) ASSERT_EQ(dlogits[i * c.vp + j], 0.0f) << Name(c);
      }
    }
  });
}

TEST(CrossEntropyTest, BackwardAccumulatesOrOverwritesInPlace) {
  ForEachSimdLevel([&] {
    for (const Case& c : kCases) {
      const auto logits = RandomVector(c.n * c.vp, 20, -3.0f, 3.0f);
      const auto targets = Targets(c, 21);
      const auto mask = Mask(c, 22);
      const float* m = c.mask ? mask.data() : nullptr;
      std::vector<float> fresh(c.n * c.vp, 0.0f);
      CrossEntropyBackward(fresh.data(), logits.data(), targets.data(), m, 0.5f, c.n, c.v, c.vp);

      // Separate buffer: +=, padding columns and skipped rows untouched.
      const auto before = RandomVector(c.n * c.vp, 23);
      auto acc = before;
      CrossEntropyBackward(acc.data(), logits.data(), targets.data(), m, 0.5f, c.n, c.v, c.vp);
      ExpectAccumulated(acc, before, fresh, Name(c) + " dlogits");
      for (int64_t i = 0; i < c.n; ++i) {
        for (int64_t j = c.v; j < c.vp; ++j) {
          ASSERT_EQ(acc[i * c.vp + j], before[i * c.vp + j]) << Name(c) << " padding";
        }
      }

      // dlogits == logits: every column replaced by the gradient (padding and skipped rows 0).
      auto fused = logits;
      CrossEntropyBackward(fused.data(), fused.data(), targets.data(), m, 0.5f, c.n, c.v, c.vp);
      // Same arithmetic as the separate-buffer path, up to the order of the row's exp-sum.
      ExpectAllNear(fused, ToDouble(fresh), 1e-6, 1e-8, Name(c) + " in place");
      for (int64_t i = 0; i < c.n; ++i) {
        for (int64_t j = c.v; j < c.vp; ++j) ASSERT_EQ(fused[i * c.vp + j], 0.0f) << Name(c);
      }
    }
  });
}

// The training head's pair: the same losses as CrossEntropyForward, the logits replaced by the
// softmax, then the same gradient as CrossEntropyBackward's in-place form.
TEST(CrossEntropyTest, ProbabilityPairMatchesForwardAndInPlaceBackward) {
  ForEachSimdLevel([&] {
    for (const Case& c : kCases) {
      const auto logits = RandomVector(c.n * c.vp, 30, -3.0f, 3.0f);
      const auto targets = Targets(c, 31);
      const auto mask = Mask(c, 32);
      const float* m = c.mask ? mask.data() : nullptr;
      auto want_loss = Poisoned(c.n);
      const int64_t want_count =
          CrossEntropyForward(want_loss.data(), logits.data(), targets.data(), m, c.n, c.v, c.vp);
      auto probs = logits;
      auto loss = Poisoned(c.n);
      EXPECT_EQ(CrossEntropyForwardProbs(loss.data(), probs.data(), targets.data(), m, c.n, c.v,
                                         c.vp),
                want_count)
          << Name(c);
      // Identical arithmetic up to the order of the exp-sum (a stored exp vs a recomputed one).
      ExpectAllNear(loss, ToDouble(want_loss), 1e-6, 1e-7, Name(c) + " losses");
      for (int64_t i = 0; i < c.n; ++i) {
        const bool skipped = targets[i] < 0 || (m != nullptr && m[i] == 0.0f);
        double sum = 0.0;
        for (int64_t j = 0; j < c.vp; ++j) {
          const float pj = probs[i * c.vp + j];
          if (skipped || j >= c.v) ASSERT_EQ(pj, 0.0f) << Name(c) << " row " << i << " col " << j;
          sum += pj;
        }
        // v <= 50 probabilities, each rounded once: the sum is 1 within ~50 * 6e-8.
        if (!skipped) EXPECT_NEAR(sum, 1.0, 5e-6) << Name(c) << " row " << i;
      }
      CrossEntropyBackwardProbs(probs.data(), targets.data(), m, 0.5f, c.n, c.v, c.vp);
      auto want = logits;
      CrossEntropyBackward(want.data(), want.data(), targets.data(), m, 0.5f, c.n, c.v, c.vp);
      // p * scale against exp * (scale / sum): two roundings either way, relative 1e-6 of the
      // O(scale) gradient.
      ExpectAllNear(probs, ToDouble(want), 1e-6, 1e-7, Name(c) + " gradient");
    }
  });
}

}  // namespace
}  // namespace lattice
