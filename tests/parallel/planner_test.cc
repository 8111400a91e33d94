// The planner's accounting against lattice's own: its FLOP count is the trainer's
// (Decoder::FlopsPerToken), its parameter count the decoder's, on every stage of a pipeline;
// Megatron's FLOP formula by hand; cluster descriptions parse and refuse bad values.
// (tests/parallel/planner_test.py checks the predictions against Megatron-LM's table.)
#include "parallel/planner.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "model/decoder.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

ModelConfig Gpt(int64_t layers, int64_t hidden, int64_t heads) {
  ModelConfig m;
  m.arch = Arch::kGpt2;
  m.n_layer = layers;
  m.d_model = hidden;
  m.n_head = heads;
  m.vocab_size = 131072;
  m.vocab_pad_multiple = 128;
  m.seq_len = 4096;
  m.tie_embeddings = 0;
  return m;
}

ClusterSpec Cluster() {
  absl::StatusOr<ClusterSpec> c =
      LoadClusterSpec(std::string(LATTICE_SOURCE_DIR) + "/configs/clusters/h100-80gb-ib.yaml");
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ClusterSpec{};
}

TEST(PlannerTest, FlopsAreTheTrainersFlops) {
  for (Arch arch : {Arch::kGpt2, Arch::kLlama}) {
    ModelConfig m;
    m.arch = arch;
    m.n_layer = 3;
    m.d_model = 64;
    m.n_head = 4;
    m.n_kv_head = arch == Arch::kLlama ? 2 : 0;
    m.d_ff = arch == Arch::kLlama ? 160 : 0;
    m.vocab_size = 300;
    m.seq_len = 32;
    absl::StatusOr<std::unique_ptr<Decoder>> d = Decoder::Create(m, 1);
    ASSERT_TRUE(d.ok()) << d.status();
    // Same integers summed in another order: equal to double rounding.
    EXPECT_DOUBLE_EQ(ModelFlopsPerToken(m), (*d)->FlopsPerToken(m.seq_len));
  }
}

TEST(PlannerTest, MegatronFormulaByHand) {
  // 1.7B row: 72 L h^2 + 12 L h s + 6 h V per token (h=2048, L=24, s=4096, V=131072).
  const double h = 2048, l = 24, s = 4096, v = 131072;
  EXPECT_DOUBLE_EQ(MegatronFlopsPerToken(Gpt(24, 2048, 16)), 72 * l * h * h + 12 * l * h * s + 6 * h * v);
}

TEST(PlannerTest, ParametersAreTheDecodersOnEveryStage) {
  const ModelConfig m = Gpt(8, 256, 8);
  const ClusterSpec c = Cluster();
  PlanLayout whole;
  absl::StatusOr<PlanEntry> one = PredictLayout(m, c, whole, 8);
  ASSERT_TRUE(one.ok()) << one.status();
  // bf16 values of every parameter of the model.
  EXPECT_DOUBLE_EQ(one->memory.params, 2.0 * static_cast<double>(Decoder::CountParameters(m)));
  EXPECT_DOUBLE_EQ(one->memory.grads, 4.0 * static_cast<double>(Decoder::CountParameters(m)));

  // pp=2, tp=2: the larger stage (the last: half the layers, the untied head, the final norm)
  // holds what lattice's own shard of it holds.
  PlanLayout split;
  split.tp = 2;
  split.pp = 2;
  split.dp = 2;
  split.zero1 = true;
  absl::StatusOr<PlanEntry> two = PredictLayout(m, c, split, 8);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_LT(two->memory.params, one->memory.params / 2);
  EXPECT_GT(two->memory.params, one->memory.params / 8);
  EXPECT_DOUBLE_EQ(two->memory.optimizer, 12.0 / 2.0 * two->memory.params / 2.0);
}

TEST(PlannerTest, InvalidLayoutsAreRefusedWithLatticesReasons) {
  const ModelConfig m = Gpt(8, 256, 8);
  PlanLayout bad;
  bad.tp = 3;  // 8 heads do not split over 3 ranks
  absl::StatusOr<PlanEntry> e = PredictLayout(m, Cluster(), bad, 8);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("parallel.tp=3"));
}

TEST(PlannerTest, ClusterDescriptionsRefuseBadValues) {
  const std::string ok =
      "name: x\ndevice: y\ngpus_per_node: 8\npeak_tflops: 100\nhbm_gb: 80\nhbm_tb_per_s: 2\n"
      "nvlink_gb_per_s: 200\nnvlink_latency_us: 3\nnetwork_gb_per_s: 20\n"
      "network_latency_us: 5\nreserved_gb: 1\ngemm_efficiency: 0.5\n"
      "attention_efficiency: 0.3\nmemory_efficiency: 0.5\nkernel_overhead_us: 5\n"
      "tp_overlap: 0.5\ndp_overlap: 0.5\npp_overlap: 0\n";
  absl::StatusOr<ClusterSpec> c = ParseClusterSpec(ok, "c.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->peak_flops, 100e12);
  EXPECT_DOUBLE_EQ(c->network_latency, 5e-6);
  std::string over = ok;
  over.replace(over.find("gemm_efficiency: 0.5"), 20, "gemm_efficiency: 1.5");
  EXPECT_THAT(std::string(ParseClusterSpec(over, "c.yaml").status().message()),
              HasSubstr("gemm_efficiency=1.5 must be <= 1"));
  std::string negative = ok;
  negative.replace(negative.find("hbm_gb: 80"), 10, "hbm_gb: -8");
  EXPECT_THAT(std::string(ParseClusterSpec(negative, "c.yaml").status().message()),
              HasSubstr("hbm_gb=-8"));
  EXPECT_THAT(std::string(ParseClusterSpec(ok + "typo: 1\n", "c.yaml").status().message()),
              HasSubstr("unknown key 'typo'"));
}

}  // namespace
}  // namespace lattice
