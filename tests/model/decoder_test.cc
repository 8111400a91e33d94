// LATTICE_TEST_LABELS: numeric
#include "model/decoder.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <vector>

#include "model/sampler.h"
#include "runtime/config.h"

namespace lattice {
namespace {

std::string ConfigPath(const std::string& name) {
  return std::string(LATTICE_SOURCE_DIR) + "/configs/" + name;
}

// Every preset in configs/ loads, validates, and (for the published shapes) has the published
// parameter count; vocab padding adds (Vp - V) * C to the embedding (and head, if untied).
TEST(DecoderTest, PresetsHavePublishedParameterCounts) {
  struct Known {
    const char* file;
    int64_t hf_count;  // Hugging Face parameter count of the unpadded model
  };
  const Known known[] = {
      {"gpt2-124m.yaml", 124439808},   {"gpt2-350m.yaml", 354823168},
      {"gpt2-774m.yaml", 774030080},   {"gpt2-1.5b.yaml", 1557611200},
      {"llama-1b.yaml", 1235814400},   {"llama-8b.yaml", 8030261248},
      {"llama-70b.yaml", 70553706496},
  };
  for (const Known& k : known) {
    auto cfg = LoadConfig(ConfigPath(k.file), {});
    ASSERT_TRUE(cfg.ok()) << k.file << ": " << cfg.status();
    const ModelConfig& m = cfg->model;
    const int64_t pad = (m.padded_vocab() - m.vocab_size) * m.d_model * (m.tied() ? 1 : 2);
    EXPECT_EQ(Decoder::CountParameters(m), k.hf_count + pad) << k.file;
  }
}

// The memory plan (computed from two one-layer probes, without allocating) is what Create then
// allocates, for both architectures and several batch sizes; for the big presets the plan
// alone is instant and gives the parameter bytes of the published counts.
TEST(DecoderTest, MemoryPlanIsWhatCreateAllocates) {
  for (const char* file : {"tiny-gpt2.yaml", "tiny-llama.yaml", "kjv-demo.yaml"}) {
    for (int64_t batch : {1, 3}) {
      SCOPED_TRACE(std::string(file) + " batch " + std::to_string(batch));
      auto cfg = LoadConfig(ConfigPath(file), {});
      ASSERT_TRUE(cfg.ok()) << cfg.status();
      auto plan = Decoder::PlanMemory(cfg->model, batch, ModelShard());
      ASSERT_TRUE(plan.ok()) << plan.status();
      auto model = Decoder::Create(cfg->model, batch);
      ASSERT_TRUE(model.ok()) << model.status();
      const Decoder& d = **model;
      EXPECT_EQ(plan->params, d.params().flat_values().nbytes());
      EXPECT_EQ(plan->grads, d.params().flat_grads().nbytes());
      EXPECT_EQ(plan->scratch, d.scratch_bytes());
      EXPECT_EQ(plan->activations_per_set, d.activation_bytes());
    }
  }
  auto big = LoadConfig(ConfigPath("llama-70b.yaml"), {});
  ASSERT_TRUE(big.ok());
  auto plan = Decoder::PlanMemory(big->model, 1, ModelShard());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->params, 4 * Decoder::CountParameters(big->model));
}

TEST(DecoderTest, EveryConfigFileLoads) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(std::string(LATTICE_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() != ".yaml") continue;
    auto cfg = LoadConfig(e.path().string(), {});
    EXPECT_TRUE(cfg.ok()) << e.path() << ": " << cfg.status();
    ++n;
  }
  EXPECT_GE(n, 10);
}

class DecoderArchTest : public ::testing::TestWithParam<const char*> {};

// Generation with the KV cache gives the same logits as the full causal forward pass.
TEST_P(DecoderArchTest, KvCacheDecodingMatchesFullForward) {
  auto cfg = LoadConfig(ConfigPath(GetParam()), {});
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto model = Decoder::Create(cfg->model, 1);
  ASSERT_TRUE(model.ok()) << model.status();
  (*model)->InitializeWeights(7);
  const int64_t t = 12, vp = cfg->model.padded_vocab();
  std::vector<int32_t> tokens(t);
  for (int64_t i = 0; i < t; ++i) tokens[i] = static_cast<int32_t>((i * 37 + 5) % 257);
  (*model)->Forward(tokens.data(), nullptr, nullptr, 1, t);
  std::vector<float> full((*model)->logits(), (*model)->logits() + t * vp);
  KvCache cache = (*model)->NewKvCache(t);
  std::vector<float> step(vp);
  for (int64_t i = 0; i < t; ++i) {
    (*model)->DecodeStep(tokens[i], cache, step.data());
    for (int64_t j = 0; j < cfg->model.vocab_size; ++j) {
      // Decoding runs the same layer forward on one row instead of t, so only the GEMMs'
      // blocking (their summation order) differs: fp32 dot products of <= 4 * d_model terms of
      // magnitude ~1 through a few layers, whose rounding is ~sqrt(n) * 2^-24 * |terms| ~ 1e-6
      // each; 1e-4 absolute on logits of magnitude ~1 leaves a wide margin.
      ASSERT_NEAR(step[j], full[i * vp + j], 1e-4f * (1.0f + std::abs(full[i * vp + j])))
          << "position " << i << " token " << j;
    }
  }
  EXPECT_EQ(cache.len, t);
}

// The loss at initialisation is close to ln(vocab) (uniform predictions), padding excluded.
TEST_P(DecoderArchTest, InitialLossIsNearUniform) {
  auto cfg = LoadConfig(ConfigPath(GetParam()), {});
  ASSERT_TRUE(cfg.ok());
  auto model = Decoder::Create(cfg->model, 2);
  ASSERT_TRUE(model.ok());
  (*model)->InitializeWeights(1);
  const int64_t t = cfg->model.seq_len;
  std::vector<int32_t> tokens(2 * t), targets(2 * t);
  for (int64_t i = 0; i < 2 * t; ++i) {
    tokens[i] = static_cast<int32_t>(i % 200);
    targets[i] = i % 5 == 0 ? -1 : static_cast<int32_t>((i + 1) % 200);
  }
  ForwardResult r = (*model)->Forward(tokens.data(), targets.data(), nullptr, 2, t);
  EXPECT_EQ(r.num_tokens, 2 * t - (2 * t + 4) / 5);
  // At init the logits are ~Gaussian with std ~ init_std * sqrt(d_model) (0.16 here), and the
  // expected cross-entropy of Gaussian logits is ln(V) + sigma^2 / 2 (~0.013 above ln 257);
  // 0.05 allows that excess plus the sampling spread over these few hundred targets.
  EXPECT_NEAR(r.loss_sum / r.num_tokens, std::log(257.0), 0.05);
  EXPECT_GT((*model)->activation_bytes(), 0);
}

TEST_P(DecoderArchTest, InitialisationDependsOnlyOnSeed) {
  auto cfg = LoadConfig(ConfigPath(GetParam()), {});
  ASSERT_TRUE(cfg.ok());
  auto a = Decoder::Create(cfg->model, 1);
  auto b = Decoder::Create(cfg->model, 3);
  ASSERT_TRUE(a.ok() && b.ok());
  (*a)->InitializeWeights(42);
  (*b)->InitializeWeights(42);
  const Tensor& va = (*a)->params().flat_values();
  const Tensor& vb = (*b)->params().flat_values();
  ASSERT_EQ(va.numel(), vb.numel());
  for (int64_t i = 0; i < va.numel(); ++i) ASSERT_EQ(va.f32()[i], vb.f32()[i]) << i;
  // Padded vocabulary rows start at zero.
  const Parameter& wte = (*a)->params().Get("wte");
  const int64_t c = cfg->model.d_model;
  for (int64_t i = cfg->model.vocab_size * c; i < wte.value.numel(); ++i) {
    ASSERT_EQ(wte.value.f32()[i], 0.0f);
  }
}

// The grad-ready ranges of one backward are disjoint and cover the whole parameter buffer, and
// the gradients in a range do not change after it is reported (what bucketed all-reduce needs).
TEST_P(DecoderArchTest, GradReadyRangesCoverAllParametersOnce) {
  auto cfg = LoadConfig(ConfigPath(GetParam()), {});
  ASSERT_TRUE(cfg.ok());
  auto model = Decoder::Create(cfg->model, 1);
  ASSERT_TRUE(model.ok());
  Decoder& m = **model;
  m.InitializeWeights(3);
  const int64_t n = m.params().numel();
  std::vector<int> seen(n, 0);
  std::vector<std::pair<int64_t, int64_t>> ranges;
  std::vector<std::vector<float>> snapshots;
  const float* g = m.params().flat_grads().f32();
  m.set_grad_ready_callback([&](int64_t begin, int64_t end) {
    ranges.emplace_back(begin, end);
    snapshots.emplace_back(g + begin, g + end);
    for (int64_t i = begin; i < end; ++i) ++seen[i];
  });
  const int64_t t = 16;
  std::vector<int32_t> tokens(t), targets(t);
  for (int64_t i = 0; i < t; ++i) {
    tokens[i] = static_cast<int32_t>(i * 11 % 257);
    targets[i] = static_cast<int32_t>((i * 11 + 3) % 257);
  }
  m.params().ZeroGrads();
  m.Forward(tokens.data(), targets.data(), nullptr, 1, t);
  m.Backward(1.0f / t);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(seen[i], 1) << "element " << i;
  for (size_t r = 0; r < ranges.size(); ++r) {
    for (int64_t i = ranges[r].first; i < ranges[r].second; ++i) {
      ASSERT_EQ(snapshots[r][i - ranges[r].first], g[i]) << "range " << r << " changed after ready";
    }
  }
  EXPECT_EQ(static_cast<int64_t>(ranges.size()), cfg->model.n_layer + (cfg->model.tied() ? 2 : 3));
}

INSTANTIATE_TEST_SUITE_P(Archs, DecoderArchTest,
                         ::testing::Values("tiny-gpt2.yaml", "tiny-llama.yaml"));

}  // namespace
}  // namespace lattice
