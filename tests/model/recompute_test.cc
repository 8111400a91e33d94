// LATTICE_TEST_LABELS: numeric
// Activation recompute (train.recompute, docs/memory.md): none, selective and full give the
// same losses and gradients bit for bit on one rank, and the activation bytes a micro-batch
// keeps are what docs/memory.md's formula predicts, computed here from the configuration alone.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "model/decoder.h"
#include "runtime/config.h"

namespace lattice {
namespace {

const Recompute kModes[] = {Recompute::kNone, Recompute::kSelective, Recompute::kFull};

const char* ModeName(Recompute r) {
  return r == Recompute::kNone ? "none" : r == Recompute::kSelective ? "selective" : "full";
}

// A three-layer model of each family; shapes that are not multiples of the arena's 64-element
// alignment (seq 24, batch 3, d_ff 80), so the formula's 5% covers real rounding.
ModelConfig TinyModel(Arch arch) {
  ModelConfig m;
  m.arch = arch;
  m.n_layer = 3;
  m.d_model = 48;
  m.n_head = 4;
  m.seq_len = 24;
  m.vocab_size = 100;
  m.vocab_pad_multiple = 64;
  if (arch == Arch::kLlama) {
    m.n_kv_head = 2;
    m.d_ff = 80;
  }
  return m;
}

struct Batch {
  std::vector<int32_t> tokens, targets;
  std::vector<float> mask;
};

// Deterministic tokens; some targets ignored and a fractional loss mask, so every head path runs.
Batch MakeBatch(int64_t b, int64_t t, int64_t vocab, uint32_t salt) {
  Batch out;
  uint32_t x = 12345u + salt;
  for (int64_t i = 0; i < b * t; ++i) {
    x = x * 1664525u + 1013904223u;
    out.tokens.push_back(static_cast<int32_t>((x >> 8) % vocab));
    x = x * 1664525u + 1013904223u;
    out.targets.push_back(i % 7 == 3 ? -1 : static_cast<int32_t>((x >> 8) % vocab));
    out.mask.push_back(i % 5 == 0 ? 0.5f : 1.0f);
  }
  return out;
}

struct RunResult {
  std::vector<double> losses;
  std::vector<float> grads;
  int64_t activation_bytes = 0, recompute_scratch = 0;
};

// Two micro-batches in flight at once (forward 0, forward 1, backward 1, backward 0), as a
// pipeline stage runs them, so the shared recompute set is overwritten between a micro-batch's
// forward and its backward.
RunResult Train(const ModelConfig& cfg, int64_t batch, Recompute mode) {
  auto made = Decoder::Create(cfg, batch, ModelShard(), nullptr, DecoderOptions{mode});
  EXPECT_TRUE(made.ok()) << made.status();
  RunResult run;
  if (!made.ok()) return run;
  Decoder& d = **made;
  d.InitializeWeights(7);
  const int64_t t = cfg.seq_len;
  const Batch b0 = MakeBatch(batch, t, cfg.vocab_size, 0);
  const Batch b1 = MakeBatch(batch, t, cfg.vocab_size, 1);
  const float dloss = 1.0f / 100.0f;
  run.losses.push_back(d.ForwardChunk(0, 0, b0.tokens.data(), b0.targets.data(), b0.mask.data(),
                                      nullptr, nullptr, batch, t)
                           .loss_sum);
  run.losses.push_back(d.ForwardChunk(0, 1, b1.tokens.data(), b1.targets.data(), b1.mask.data(),
                                      nullptr, nullptr, batch, t)
                           .loss_sum);
  d.BackwardChunk(0, 1, dloss, nullptr, nullptr);
  d.BackwardChunk(0, 0, dloss, nullptr, nullptr);
  const Tensor& g = d.params().flat_grads();
  run.grads.assign(g.f32(), g.f32() + g.numel());
  run.activation_bytes = d.activation_bytes();
  run.recompute_scratch = d.recompute_scratch_bytes();
  return run;
}

uint64_t Bits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
uint32_t Bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

class RecomputeTest : public ::testing::TestWithParam<Arch> {};

TEST_P(RecomputeTest, LossesAndGradientsAreBitIdentical) {
  const ModelConfig cfg = TinyModel(GetParam());
  const int64_t batch = 3;
  const RunResult none = Train(cfg, batch, Recompute::kNone);
  ASSERT_EQ(none.losses.size(), 2u);
  for (Recompute mode : {Recompute::kSelective, Recompute::kFull}) {
    SCOPED_TRACE(ModeName(mode));
    const RunResult r = Train(cfg, batch, mode);
    ASSERT_EQ(r.losses.size(), none.losses.size());
    for (size_t i = 0; i < r.losses.size(); ++i) EXPECT_EQ(Bits(r.losses[i]), Bits(none.losses[i]));
    ASSERT_EQ(r.grads.size(), none.grads.size());
    int64_t differ = 0, nonzero = 0;
    for (size_t i = 0; i < r.grads.size(); ++i) {
      differ += Bits(r.grads[i]) != Bits(none.grads[i]) ? 1 : 0;
      nonzero += none.grads[i] != 0.0f ? 1 : 0;
    }
    EXPECT_EQ(differ, 0) << "of " << r.grads.size() << " gradients";
    // The comparison means something: the backward reached (almost) every parameter.
    EXPECT_GT(nonzero, static_cast<int64_t>(r.grads.size()) / 2);
  }
}

// docs/memory.md, "Activations per micro-batch", with tp = 1 (R = N = B*T rows), in floats:
//   per layer: none      4NC + N(H+2K)D + BHT + NHD + N*fc + NF + (gpt2 ? 4N : 2N)
//              selective 2NC + N(H+2K)D + N*fc
//              full      NC
//   per set:   L * layer + 4BT (tokens, targets, mask, document starts) + NC (chunk output)
//              + NC + (gpt2 ? 2N : N) + NC (the head: final norm, the fused classifier's
//                input gradient; no logits are kept)
// with fc = F (gpt2) or 2F (llama). The recompute layer set (scratch, once per rank) holds the
// none-layer minus the kept layer.
struct Formula {
  double layer_none, layer_kept, set;
};

Formula Predict(const ModelConfig& m, int64_t batch, Recompute mode) {
  const double n = static_cast<double>(batch * m.seq_len), c = static_cast<double>(m.d_model);
  const double h = static_cast<double>(m.n_head), k = static_cast<double>(m.kv_heads());
  const double d = c / h, f = static_cast<double>(m.ff_dim());
  const bool gpt2 = m.arch == Arch::kGpt2;
  const double fc = gpt2 ? f : 2 * f;
  const double none = 4 * n * c + n * (h + 2 * k) * d + h * n + n * h * d + n * fc + n * f +
                      (gpt2 ? 4 * n : 2 * n);
  const double kept = mode == Recompute::kNone        ? none
                      : mode == Recompute::kSelective ? 2 * n * c + n * (h + 2 * k) * d + n * fc
                                                      : n * c;
  const double set = static_cast<double>(m.n_layer) * kept + 4 * n + n * c + n * c +
                     (gpt2 ? 2 * n : n) + n * c;
  return {4 * none, 4 * kept, 4 * set};
}

TEST_P(RecomputeTest, ActivationBytesFollowTheFormula) {
  for (int64_t batch : {1, 3}) {
    for (int64_t seq : {24, 64}) {
      ModelConfig cfg = TinyModel(GetParam());
      cfg.seq_len = seq;
      for (Recompute mode : kModes) {
        SCOPED_TRACE(std::string(ModeName(mode)) + " batch " + std::to_string(batch) + " seq " +
                     std::to_string(seq));
        auto plan = Decoder::PlanMemory(cfg, batch, ModelShard(), DecoderOptions{mode});
        ASSERT_TRUE(plan.ok()) << plan.status();
        auto made = Decoder::Create(cfg, batch, ModelShard(), nullptr, DecoderOptions{mode});
        ASSERT_TRUE(made.ok()) << made.status();
        // The plan is what the decoder allocates and reports.
        EXPECT_EQ(plan->activations_per_set, (*made)->activation_bytes());
        EXPECT_EQ(plan->scratch, (*made)->scratch_bytes());
        EXPECT_EQ(plan->recompute_scratch, (*made)->recompute_scratch_bytes());
        const Formula f = Predict(cfg, batch, mode);
        const double set = static_cast<double>(plan->activations_per_set);
        const double rc = static_cast<double>(plan->recompute_scratch);
        // 5%: acceptance 4's bound; the difference is the arena's rounding of every tensor up
        // to 64 elements (at most 256 bytes per tensor), which these shapes make visible.
        EXPECT_NEAR(set, f.set, 0.05 * f.set);
        if (mode == Recompute::kNone) {
          EXPECT_EQ(rc, 0);
        } else {
          const double want = f.layer_none - f.layer_kept;
          EXPECT_NEAR(rc, want, 0.05 * want);
        }
      }
    }
  }
}

// Each mode keeps strictly less, by the formula's per-layer difference times the layers.
TEST_P(RecomputeTest, EveryModeKeepsLess) {
  const ModelConfig cfg = TinyModel(GetParam());
  int64_t bytes[3];
  for (int i = 0; i < 3; ++i) {
    auto plan = Decoder::PlanMemory(cfg, 2, ModelShard(), DecoderOptions{kModes[i]});
    ASSERT_TRUE(plan.ok()) << plan.status();
    bytes[i] = plan->activations_per_set;
  }
  EXPECT_LT(bytes[1], bytes[0]);
  EXPECT_LT(bytes[2], bytes[1]);
  for (int i = 1; i < 3; ++i) {
    const Formula f0 = Predict(cfg, 2, Recompute::kNone), fi = Predict(cfg, 2, kModes[i]);
    const double want = f0.set - fi.set;
    // 5%, as above.
    EXPECT_NEAR(static_cast<double>(bytes[0] - bytes[i]), want, 0.05 * want);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, RecomputeTest, ::testing::Values(Arch::kGpt2, Arch::kLlama),
                         [](const ::testing::TestParamInfo<Arch>& p) {
                           return p.param == Arch::kGpt2 ? "Gpt2" : "Llama";
                         });

}  // namespace
}  // namespace lattice
