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

TEST(SamplerTest, GreedyTopKTopP) {
  const float logits[6] = {0.1f, 3.0f, 2.9f, -1.0f, 0.0f, 100.0f};  // index 5 is "padding"
  SamplerOptions greedy;
  greedy.temperature = 0;
  EXPECT_EQ(SampleToken(logits, 5, greedy, 0), 1);
  SamplerOptions top1;
  top1.top_k = 1;
  for (uint64_t d = 0; d < 50; ++d) EXPECT_EQ(SampleToken(logits, 5, top1, d), 1);
  SamplerOptions top2;
  top2.top_k = 2;
  int ones = 0;
  for (uint64_t d = 0; d < 2000; ++d) {
    int32_t tkn = SampleToken(logits, 5, top2, d);
    ASSERT_TRUE(tkn == 1 || tkn == 2);
    ones += tkn == 1;
  }
  // p(1) = e^0.1 / (1 + e^0.1) = 0.525
  EXPECT_NEAR(ones / 2000.0, 0.525, 0.04);
  SamplerOptions nucleus;
  nucleus.top_p = 0.4f;  // the single most likely token already holds > 40%
  for (uint64_t d = 0; d < 50; ++d) EXPECT_EQ(SampleToken(logits, 5, nucleus, d), 1);
  SamplerOptions bad;
  bad.top_p = 0;
  EXPECT_FALSE(ValidateSamplerOptions(bad).ok());
}

}  // namespace
}  // namespace lattice
