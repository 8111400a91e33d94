#include "kernels/vocab_parallel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "tests/kernels/grad_check.h"

namespace lattice {
namespace {

using kernels::cpu::CrossEntropyBackward;
using kernels::cpu::CrossEntropyForward;
using kernels::cpu::CrossEntropyShardBackward;
using kernels::cpu::CrossEntropyShardLoss;
using kernels::cpu::CrossEntropyShardMax;
using kernels::cpu::CrossEntropyShardStats;
using kernels::cpu::EmbeddingBackward;
using kernels::cpu::EmbeddingForward;
using kernels::cpu::EmbeddingShardBackward;
using kernels::cpu::EmbeddingShardForward;
using testing::ExpectAccumulated;
using testing::ExpectAllNear;
using testing::ExpectGradNear;
using testing::Poisoned;
using testing::RandomInts;
using testing::RandomVector;
using testing::ToDouble;

constexpr int64_t kN = 7;
constexpr int64_t kVp = 64;

struct Case {
  int64_t v, tp;
  bool mask;
};

std::string Name(const Case& c) {
  return "v=" + std::to_string(c.v) + " tp=" + std::to_string(c.tp) + (c.mask ? " masked" : "");
}

// v = 50: the last shard is part padding for every tp. v = 48: the shard boundary falls on V,
// so with tp = 4 (and tp = 8) the last shard(s) are all padding (local max -inf).
std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (int64_t v : {50, 48}) {
    for (int64_t tp : {1, 2, 4, 8}) {
      for (bool mask : {false, true}) cases.push_back({v, tp, mask});
    }
  }
  return cases;
}

// Targets with ignored (-1) rows and one at the last real token; a mask with zeros and
// fractional weights.
std::vector<int32_t> Targets(int64_t v, uint64_t seed) {
  auto t = RandomInts(kN, seed, 0, static_cast<int32_t>(v - 1));
  t[1] = -1;
  t[4] = -1;
  t[6] = static_cast<int32_t>(v - 1);
  return t;
}
std::vector<float> Mask(uint64_t seed) {
  auto m = RandomVector(kN, seed, 0.0f, 2.0f);
  m[2] = 0.0f;
  return m;
}

// Logits in [-4, 4) with huge padding columns: they must not enter any shard's softmax.
std::vector<float> Logits(int64_t v, uint64_t seed) {
  auto logits = RandomVector(kN * kVp, seed, -4.0f, 4.0f);
  for (int64_t i = 0; i < kN; ++i) {
    for (int64_t j = v; j < kVp; ++j) logits[i * kVp + j] = 1e4f;
  }
  return logits;
}

// Rank r's columns [r * cols, (r + 1) * cols) of the (kN, kVp) matrix, as (kN, cols).
std::vector<std::vector<float>> Split(const std::vector<float>& full, int64_t tp) {
  const int64_t cols = kVp / tp;
  std::vector<std::vector<float>> shards(tp, std::vector<float>(kN * cols));
  for (int64_t r = 0; r < tp; ++r) {
    for (int64_t i = 0; i < kN; ++i) {
      std::copy_n(&full[i * kVp + r * cols], cols, &shards[r][i * cols]);
    }
  }
  return shards;
}

std::vector<float> Concat(const std::vector<std::vector<float>>& shards) {
  const int64_t tp = static_cast<int64_t>(shards.size());
  const int64_t cols = kVp / tp;
  std::vector<float> full(kN * kVp);
  for (int64_t r = 0; r < tp; ++r) {
    for (int64_t i = 0; i < kN; ++i) {
      std::copy_n(&shards[r][i * cols], cols, &full[i * kVp + r * cols]);
    }
  }
  return full;
}

// The statistics every rank holds after the two all-reduces.
struct GlobalStats {
  std::vector<float> row_max, sum_exp, target_logit;
};

// The driver's forward with the all-reduces emulated in rank order. Checks every partial is
// written (outputs poisoned) and that no NaN appears, also for all-padding shards.
GlobalStats ShardedStats(const std::vector<std::vector<float>>& shards,
                         const std::vector<int32_t>& targets, int64_t v) {
  const int64_t tp = static_cast<int64_t>(shards.size());
  const int64_t cols = kVp / tp;
  GlobalStats g{std::vector<float>(kN, -std::numeric_limits<float>::infinity()),
                std::vector<float>(kN, 0.0f), std::vector<float>(kN, 0.0f)};
  for (int64_t r = 0; r < tp; ++r) {
    auto local = Poisoned(kN);
    CrossEntropyShardMax(local.data(), shards[r].data(), kN, cols, r * cols, v);
    for (int64_t i = 0; i < kN; ++i) {
      EXPECT_FALSE(std::isnan(local[i])) << "rank " << r << " row " << i;
      if (r * cols >= v) EXPECT_EQ(local[i], -std::numeric_limits<float>::infinity());
      g.row_max[i] = std::max(g.row_max[i], local[i]);
    }
  }
  for (int64_t r = 0; r < tp; ++r) {
    auto sum = Poisoned(kN);
    auto tl = Poisoned(kN);
    CrossEntropyShardStats(sum.data(), tl.data(), shards[r].data(), targets.data(),
                           g.row_max.data(), kN, cols, r * cols, v);
    for (int64_t i = 0; i < kN; ++i) {
      EXPECT_TRUE(std::isfinite(sum[i]) && std::isfinite(tl[i])) << "rank " << r << " row " << i;
      if (r * cols >= v) EXPECT_EQ(sum[i], 0.0f);
      g.sum_exp[i] += sum[i];
      g.target_logit[i] += tl[i];
    }
  }
  return g;
}

TEST(VocabParallelTest, CrossEntropyForwardMatchesUnsharded) {
  for (const Case& c : Cases()) {
    const auto logits = Logits(c.v, 1);
    const auto targets = Targets(c.v, 2);
    const auto mask_values = Mask(3);
    const float* mask = c.mask ? mask_values.data() : nullptr;

    auto want = Poisoned(kN);
    const int64_t want_counted =
        CrossEntropyForward(want.data(), logits.data(), targets.data(), mask, kN, c.v, kVp);

    const auto g = ShardedStats(Split(logits, c.tp), targets, c.v);
    auto losses = Poisoned(kN);
    const int64_t counted =
        CrossEntropyShardLoss(losses.data(), g.row_max.data(), g.sum_exp.data(),
                              g.target_logit.data(), targets.data(), mask, kN);
    // Only the order of the exp-sum differs (split over ranks): a few ulp of log(sum).
    ExpectAllNear(losses, ToDouble(want), 1e-6, 0.0, Name(c) + " losses");
    EXPECT_EQ(counted, want_counted) << Name(c);
    for (int64_t i = 0; i < kN; ++i) {
      if (targets[i] < 0) EXPECT_EQ(losses[i], 0.0f) << Name(c);
    }
  }
}

TEST(VocabParallelTest, CrossEntropyBackwardMatchesUnsharded) {
  const float dloss = 0.37f;
  for (const Case& c : Cases()) {
    const auto logits = Logits(c.v, 10);
    const auto targets = Targets(c.v, 11);
    const auto mask_values = Mask(12);
    const float* mask = c.mask ? mask_values.data() : nullptr;
    const int64_t cols = kVp / c.tp;

    std::vector<float> want(kN * kVp, 0.0f);
    CrossEntropyBackward(want.data(), logits.data(), targets.data(), mask, dloss, kN, c.v, kVp);
    auto want_fused = logits;
    CrossEntropyBackward(want_fused.data(), want_fused.data(), targets.data(), mask, dloss, kN,
                         c.v, kVp);

    const auto shards = Split(logits, c.tp);
    const auto g = ShardedStats(shards, targets, c.v);
    std::vector<std::vector<float>> fresh(c.tp, std::vector<float>(kN * cols, 0.0f));
    auto fused = shards;
    for (int64_t r = 0; r < c.tp; ++r) {
      CrossEntropyShardBackward(fresh[r].data(), shards[r].data(), targets.data(), mask,
                                g.row_max.data(), g.sum_exp.data(), dloss, kN, cols, r * cols,
                                c.v);
      CrossEntropyShardBackward(fused[r].data(), fused[r].data(), targets.data(), mask,
                                g.row_max.data(), g.sum_exp.data(), dloss, kN, cols, r * cols,
                                c.v);

      // Separate buffer: += onto what was there.
      const auto before = RandomVector(kN * cols, 13 + r);
      auto acc = before;
      CrossEntropyShardBackward(acc.data(), shards[r].data(), targets.data(), mask,
                                g.row_max.data(), g.sum_exp.data(), dloss, kN, cols, r * cols,
                                c.v);
      ExpectAccumulated(acc, before, fresh[r], Name(c) + " rank " + std::to_string(r));
    }
    // Per element: exp(x - max) * (scale / sum) with a sum rounded in a different order, so a
    // few ulp of the element; the atol covers the target column, where dloss * mask (~0.7) is
    // subtracted from the softmax term and the difference can be much smaller than either.
    ExpectAllNear(Concat(fresh), ToDouble(want), 1e-6, 1e-6 * dloss, Name(c) + " dlogits");
    ExpectAllNear(Concat(fused), ToDouble(want_fused), 1e-6, 1e-6 * dloss,
                  Name(c) + " dlogits in place");
    const auto all = Concat(fresh);
    const auto all_fused = Concat(fused);
    for (int64_t i = 0; i < kN; ++i) {
      for (int64_t j = c.v; j < kVp; ++j) {
        ASSERT_EQ(all[i * kVp + j], 0.0f) << Name(c) << " padding";
        ASSERT_EQ(all_fused[i * kVp + j], 0.0f) << Name(c) << " padding in place";
      }
    }
  }
}

// The gradient of the sharded pipeline's own loss, sum_i losses_i * dloss, by central
// differences through the fp32 kernels (so it checks ShardBackward against ShardLoss, not
// against the unsharded kernels). The perturbation is taken from the float values actually
// used; h = 1e-2 keeps fp32 rounding of the loss (~5e-7 / 2h ~ 3e-5) and truncation
// (h^2 / 6 * f''' ~ 2e-5) well below the 1e-3 tolerance.
TEST(VocabParallelTest, ShardedLossMatchesFiniteDifferences) {
  const float dloss = 0.37f;
  for (bool masked : {false, true}) {
    const Case c{50, 2, masked};
    const int64_t cols = kVp / c.tp;
    const auto logits = Logits(c.v, 30);
    const auto targets = Targets(c.v, 31);
    const auto mask_values = Mask(32);
    const float* mask = c.mask ? mask_values.data() : nullptr;

    auto loss_of = [&](const std::vector<float>& x) {
      const auto g = ShardedStats(Split(x, c.tp), targets, c.v);
      std::vector<float> losses(kN);
      CrossEntropyShardLoss(losses.data(), g.row_max.data(), g.sum_exp.data(),
                            g.target_logit.data(), targets.data(), mask, kN);
      double sum = 0.0;
      for (float l : losses) sum += l;
      return dloss * sum;
    };

    const auto shards = Split(logits, c.tp);
    const auto g = ShardedStats(shards, targets, c.v);
    std::vector<std::vector<float>> grads(c.tp, std::vector<float>(kN * cols, 0.0f));
    for (int64_t r = 0; r < c.tp; ++r) {
      CrossEntropyShardBackward(grads[r].data(), shards[r].data(), targets.data(), mask,
                                g.row_max.data(), g.sum_exp.data(), dloss, kN, cols, r * cols,
                                c.v);
    }

    std::vector<double> numeric(kN * kVp);
    auto x = logits;
    for (size_t k = 0; k < x.size(); ++k) {
      const float saved = x[k];
      const float plus = saved + 1e-2f;
      const float minus = saved - 1e-2f;
      x[k] = plus;
      const double fp = loss_of(x);
      x[k] = minus;
      const double fm = loss_of(x);
      x[k] = saved;
      numeric[k] = (fp - fm) / (static_cast<double>(plus) - minus);
    }
    ExpectGradNear(Concat(grads), numeric, Name(c) + " dlogits", 1e-3);
  }
}

TEST(VocabParallelTest, EmbeddingShardsMatchUnsharded) {
  for (int64_t c : {int64_t{5}, int64_t{130}}) {  // 130: several column blocks in the backward
    for (int64_t tp : {1, 2, 4, 8}) {
      const std::string name = "c=" + std::to_string(c) + " tp=" + std::to_string(tp);
      const int64_t rows = kVp / tp;
      auto tokens = RandomInts(kN, 40, 0, 49);
      tokens[5] = tokens[1];  // a repeat, so the backward must sum two rows into one
      tokens[6] = 0;
      tokens[3] = 49;
      const auto wte = RandomVector(kVp * c, 41);
      const auto dout = RandomVector(kN * c, 42);

      // EmbeddingForward accepts wpe = null (no position embedding).
      auto want = Poisoned(kN * c);
      EmbeddingForward(want.data(), tokens.data(), wte.data(), nullptr, 1, kN, c, 0);
      std::vector<float> want_dwte(kVp * c, 0.0f);
      EmbeddingBackward(want_dwte.data(), nullptr, dout.data(), tokens.data(), 1, kN, c, 0);

      std::vector<float> sum(kN * c, 0.0f);  // the all-reduce(sum) over ranks
      std::vector<float> dwte(kVp * c);
      for (int64_t r = 0; r < tp; ++r) {
        const int64_t begin = r * rows;
        const std::vector<float> rows_w(wte.begin() + begin * c,
                                        wte.begin() + (begin + rows) * c);
        auto out = Poisoned(kN * c);
        EmbeddingShardForward(out.data(), tokens.data(), rows_w.data(), begin, rows, kN, c);
        for (int64_t i = 0; i < kN; ++i) {
          const bool held = tokens[i] >= begin && tokens[i] < begin + rows;
          for (int64_t j = 0; j < c; ++j) {
            if (!held) ASSERT_EQ(out[i * c + j], 0.0f) << name << " rank " << r;
            sum[i * c + j] += out[i * c + j];
          }
        }

        std::vector<float> fresh(rows * c, 0.0f);
        EmbeddingShardBackward(fresh.data(), dout.data(), tokens.data(), begin, rows, kN, c);
        std::copy(fresh.begin(), fresh.end(), dwte.begin() + begin * c);
        const auto before = RandomVector(rows * c, 43 + r);
        auto acc = before;
        EmbeddingShardBackward(acc.data(), dout.data(), tokens.data(), begin, rows, kN, c);
        ExpectAccumulated(acc, before, fresh, name + " rank " + std::to_string(r));
      }
      // One rank contributes the row and the others exact zeros; the backward sums the same
      // rows in the same (token) order: both exact.
      ExpectAllNear(sum, ToDouble(want), 0.0, 0.0, name + " forward");
      ExpectAllNear(dwte, ToDouble(want_dwte), 0.0, 0.0, name + " dwte");
    }
  }
}

}  // namespace
}  // namespace lattice
