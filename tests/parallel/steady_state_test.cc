// The steady-state training step allocates nothing (issue 10, acceptance 6). After warm-up
// steps, a step hands out no arena tensor, allocates no arena block and creates no CpuStorage
// (runtime/tensor.h counts every Tensor::Zeros and every CPU backend allocation): for the
// engine's step on one rank (plain data parallelism and ZeRO-1, GPT-2 and Llama) and for the
// loop `lattice bench train-step` runs (Decoder + AdamW).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/decoder.h"
#include "model/optimizer.h"
#include "parallel/communicator.h"
#include "parallel/engine.h"
#include "runtime/config.h"
#include "runtime/rng.h"

namespace lattice {
namespace {

// Steps before the counters are read: the first step acquires the activation sets (from the
// arena the plan sized) and the pools keep them; one more shows the second step reuses them.
constexpr int kWarmup = 2;
constexpr int kSteady = 3;

struct Counters {
  int64_t storage = 0;         // CpuStorage blocks of the process
  int64_t backend = 0;         // allocations of the default backend
  int64_t arena_tensors = 0;   // tensors the decoder's arenas handed out
  int64_t arena_blocks = 0;    // blocks they allocated
};

Counters Read(const Decoder& d) {
  return Counters{CpuStorage::allocations(), kernels::DefaultBackend().storage_allocations(),
                  d.arena_allocations(), d.arena_blocks()};
}

void ExpectUnchanged(const Counters& before, const Counters& after) {
  EXPECT_EQ(after.storage, before.storage) << "CpuStorage blocks created by steady-state steps";
  EXPECT_EQ(after.backend, before.backend) << "backend allocations of steady-state steps";
  EXPECT_EQ(after.arena_tensors, before.arena_tensors) << "arena tensors of steady-state steps";
  EXPECT_EQ(after.arena_blocks, before.arena_blocks) << "arena blocks of steady-state steps";
}

absl::StatusOr<Config> OneRankConfig(const std::string& file, bool zero1) {
  LATTICE_ASSIGN_OR_RETURN(
      Config c, LoadConfig(std::string(LATTICE_SOURCE_DIR) + "/configs/" + file,
                           {"model.seq_len=16", "train.micro_batch_size=2",
                            "train.global_batch_size=4", "train.steps=10",
                            zero1 ? "parallel.zero1=true" : "parallel.zero1=false"}));
  LATTICE_RETURN_IF_ERROR(c.ValidateLayout(1));
  return c;
}

TokenBatch RandomBatch(const ModelConfig& mc, int64_t b, int64_t t, uint64_t index) {
  CounterRng rng(index, "steady_state_test");
  TokenBatch mb;
  mb.b = b;
  mb.t = t;
  for (int64_t i = 0; i < b * t; ++i) {
    mb.inputs.push_back(static_cast<int32_t>(rng.Bits(2 * i) % mc.vocab_size));
    mb.targets.push_back(static_cast<int32_t>(rng.Bits(2 * i + 1) % mc.vocab_size));
  }
  return mb;
}

TEST(SteadyState, CountersSeeAllocations) {
  // The counters the tests below read move when something is allocated.
  const int64_t storage = CpuStorage::allocations();
  const int64_t backend = kernels::DefaultBackend().storage_allocations();
  Tensor t = Tensor::Zeros({3}, DType::kF32);
  EXPECT_EQ(CpuStorage::allocations(), storage + 1);
  kernels::Arena arena(kernels::DefaultBackend(), 0);
  EXPECT_EQ(arena.blocks(), 0);
  Tensor a = arena.Allocate({5}, DType::kF32);
  Tensor b = arena.Allocate({7}, DType::kI32);
  EXPECT_EQ(arena.allocations(), 2);
  EXPECT_EQ(arena.blocks(), 2) << "no capacity reserved: each allocation needed a block";
  EXPECT_EQ(kernels::DefaultBackend().storage_allocations(), backend + 2);
  EXPECT_EQ(CpuStorage::allocations(), storage + 3);
}

TEST(SteadyState, EngineStepAllocatesNothing) {
  for (const char* file : {"tiny-gpt2.yaml", "tiny-llama.yaml"}) {
    for (bool zero1 : {false, true}) {
      SCOPED_TRACE(std::string(file) + (zero1 ? " zero1" : " plain"));
      absl::StatusOr<Config> cfg = OneRankConfig(file, zero1);
      ASSERT_TRUE(cfg.ok()) << cfg.status();
      SelfCommunicator self;
      auto engine = ParallelEngine::Create(*cfg, self);
      ASSERT_TRUE(engine.ok()) << engine.status();
      const Decoder& model = (*engine)->model();
      const int64_t blocks_planned = model.arena_blocks();
      std::vector<std::vector<TokenBatch>> steps;
      for (int s = 0; s < kWarmup + kSteady; ++s) {
        steps.push_back({RandomBatch(cfg->model, 2, 16, 2 * s),
                         RandomBatch(cfg->model, 2, 16, 2 * s + 1)});
      }
      Counters before;
      for (int s = 0; s < kWarmup + kSteady; ++s) {
        if (s == kWarmup) before = Read(model);
        absl::StatusOr<EngineStepResult> r = (*engine)->Step(steps[s], 1e-3f);
        ASSERT_TRUE(r.ok()) << r.status();
        ASSERT_FALSE(r->skipped);
      }
      ExpectUnchanged(before, Read(model));
      // The activation sets came from the arena the plan sized before step 1.
      EXPECT_GT(before.arena_tensors, 0);
      EXPECT_EQ(before.arena_blocks, blocks_planned)
          << "the memory plan's arenas held the first steps' activations";
    }
  }
}

TEST(SteadyState, BenchLoopAllocatesNothing) {
  absl::StatusOr<Config> cfg = OneRankConfig("tiny-gpt2.yaml", false);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto model = Decoder::Create(cfg->model, 2);
  ASSERT_TRUE(model.ok()) << model.status();
  Decoder& d = **model;
  d.InitializeWeights(1);
  AdamW opt(d.params(), cfg->train, d.backend());
  kernels::DeviceScalars norm_acc = d.backend().AllocateScalars(1);
  const TokenBatch mb = RandomBatch(cfg->model, 2, 16, 7);
  Counters before;
  for (int s = 0; s < kWarmup + kSteady; ++s) {
    if (s == kWarmup) before = Read(d);
    d.params().ZeroGrads();
    const ForwardResult r = d.Forward(mb.inputs.data(), mb.targets.data(), nullptr, mb.b, mb.t);
    ASSERT_EQ(r.num_tokens, mb.b * mb.t);
    d.Backward(1.0f / static_cast<float>(r.num_tokens));
    const double norm = GlobalGradNorm(d.params(), norm_acc);
    opt.Step(d.params(), 1e-3f, kernels::ClipCoefficient(norm, cfg->train.grad_clip));
  }
  ExpectUnchanged(before, Read(d));
  EXPECT_GT(before.arena_tensors, 0);
}

}  // namespace
}  // namespace lattice
