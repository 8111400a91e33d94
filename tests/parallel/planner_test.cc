// The planner's accounting against lattice's own: its FLOP count is the trainer's
// (Decoder::FlopsPerToken), its parameter count the decoder's, on every stage of a pipeline;
// Megatron's FLOP formula by hand; cluster descriptions parse and refuse bad values.
// (tests/parallel/planner_test.py checks the predictions against Megatron-LM's table.)
#include "parallel/planner.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "model/decoder.h"
#include "parallel/data_parallel.h"
#include "parallel/engine.h"
#include "parallel/process_grid.h"

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

// A "cpu" description (what `lattice bench --calibrate` writes): its keys parse, the CPU-only
// ones are required, and the memory prediction is the engine's own plan plus the measured
// overheads, exactly (tests/parallel/planner_cpu_test.py checks it against measured runs).
TEST(PlannerTest, CpuDescriptionPredictsTheEnginesPlan) {
  const std::string cpu =
      "name: cpu\ndevice: y\nbackend: cpu\ncalibrated: \"today\"\ngpus_per_node: 2\n"
      "cores_per_node: 2\nthreads_per_rank: 1\npeak_tflops: 0.1\nhbm_gb: 16\n"
      "hbm_tb_per_s: 0.02\nnvlink_gb_per_s: 2\nnvlink_latency_us: 1\nnetwork_gb_per_s: 2\n"
      "network_latency_us: 1\nreserved_gb: 0.01\nreserved_mpi_gb: 0.002\n"
      "reserved_mpi_per_byte: 1\nreserved_mpi_p2p_per_byte: 0.5\ngemm_efficiency: 0.8\n"
      "attention_efficiency: 0.2\nmemory_efficiency: 1.5\noptimizer_gb_per_s: 10\n"
      "kernel_overhead_us: 0\ntp_overlap: 0\ndp_overlap: 0\npp_overlap: 0\n";
  absl::StatusOr<ClusterSpec> c = ParseClusterSpec(cpu, "cpu.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->backend, "cpu");
  EXPECT_DOUBLE_EQ(c->optimizer_bandwidth, 10e9);
  EXPECT_DOUBLE_EQ(c->reserved_mpi_per_byte, 1.0);
  std::string no_cores = cpu;
  no_cores.replace(no_cores.find("cores_per_node: 2"), 17, "cores_per_node: 0");
  EXPECT_THAT(std::string(ParseClusterSpec(no_cores, "cpu.yaml").status().message()),
              HasSubstr("needs cores_per_node"));

  // dp=2 without ZeRO-1 on the demo shape: the engine's plan + reserved + MPI fixed + MPI per
  // byte of the gradient bucket (the whole model here, under the 25 MiB bucket) + the batches.
  ModelConfig m = Gpt(4, 192, 6);
  m.vocab_size = 4096;
  m.vocab_pad_multiple = 64;
  m.seq_len = 128;
  PlanLayout lay;
  lay.dp = 2;
  lay.micro_batch = 8;
  lay.zero1 = false;
  absl::StatusOr<PlanEntry> e = PredictLayout(m, *c, lay, 16);
  ASSERT_TRUE(e.ok()) << e.status();
  Config cfg;
  cfg.model = m;
  cfg.parallel.dp = 2;
  cfg.train.micro_batch_size = 8;
  cfg.train.global_batch_size = 16;
  ASSERT_TRUE(cfg.ValidateLayout(2).ok());
  absl::StatusOr<ProcessGrid> g = ProcessGrid::Create(2, 0, 1, 1, 2);
  ASSERT_TRUE(g.ok());
  absl::StatusOr<EngineMemory> plan =
      ParallelEngine::PlanMemory(cfg, *g, ParallelEngine::ShardFor(cfg, *g), 1, kDefaultBucketBytes);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const double batches = 8.0 * 1 * 8 * 128;  // int32 inputs + targets of one micro-batch
  const double expected = static_cast<double>(plan->params + plan->grads +
                                              plan->optimizer_state + plan->comm_buffers +
                                              plan->activations_peak + plan->scratch) +
                          0.01e9 + 0.002e9 + 1.0 * static_cast<double>(plan->params) + batches;
  EXPECT_DOUBLE_EQ(e->memory.total(), expected);
  EXPECT_GT(e->time.dp_comm, 0);
  EXPECT_GT(e->time.compute, 0);

  // pp=2 with tied embeddings: the first and last stage all-reduce the embedding's gradient,
  // and MPI's temporary for it (per byte of the message) is in the prediction; untied, not.
  PlanLayout pipe;
  pipe.pp = 2;
  pipe.micro_batch = 4;
  ModelConfig tied = m;  // Gpt() unties them
  tied.tie_embeddings = 1;
  absl::StatusOr<PlanEntry> tied_pp = PredictLayout(tied, *c, pipe, 16);
  absl::StatusOr<PlanEntry> untied_pp = PredictLayout(m, *c, pipe, 16);
  ASSERT_TRUE(tied_pp.ok()) << tied_pp.status();
  ASSERT_TRUE(untied_pp.ok()) << untied_pp.status();
  EXPECT_DOUBLE_EQ(tied_pp->memory.reserved - untied_pp->memory.reserved,
                   1.0 * 4 * 4096 * 192);
}

}  // namespace
}  // namespace lattice
