// LATTICE_MPI_NP: 1 2 4
// LATTICE_TEST_LABELS: numeric
//
// Data parallelism across real processes: the engine with tp = pp = 1 (plain DP and ZeRO-1)
// against the single-process trainer's step over the whole global batch, written out below,
// which every rank also runs for itself. Tiny GPT-2 and tiny Llama (GQA), global batch 8,
// micro-batches of 1 and 2, small gradient buckets (a few dozen, one of them padded), samples
// dealt by Megatron's rule (runtime/data/dataset.h), lr warmup then decay.
//
// Per step, at the reference's weights (loaded into the engine), every gathered gradient agrees
// within 1e-5 relative (engine_mpi_test.cc says where that number comes from); the free-running
// losses and gradient norms agree within 1e-5; and the final parameters are AdamW's update of
// the engine's own gradients, within fp32 rounding (tests/parallel/adam_drift.h, tol = 0).
//
// Test bodies use EXPECT_* where an early return on one rank would leave the others waiting in
// a collective (tests/parallel/mpi_harness.h makes every rank agree on the result).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "kernels/grad_norm.h"
#include "model/decoder.h"
#include "model/optimizer.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"
#include "parallel/engine.h"
#include "runtime/config.h"
#include "tests/parallel/adam_drift.h"
#include "tests/parallel/engine_testing.h"
#include "tests/parallel/mpi_harness.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;
using lattice::testing::AdamDriftBound;
using lattice::testing::FreshWorld;
using lattice::testing::Gathered;
using lattice::testing::GradientsAt;
using lattice::testing::NamedTensors;
using lattice::testing::RelativeDifference;

int Rank() { return lattice::testing::World().rank(); }
int Size() { return lattice::testing::World().size(); }

// Same-step gradients, losses and norms agree to this (engine_mpi_test.cc: fp32 sums in
// another order, ~1e-6, with a 10x margin).
constexpr double kTol = 1e-5;

constexpr int64_t kGlobalBatch = 8;
constexpr int64_t kSeqLen = 16;
constexpr int kSteps = 5;
constexpr int64_t kSmallBuckets = 16 * 1024;  // a few dozen buckets for these models

// T + 1 tokens of global sample g, a fixed function of g. The last (g % 4) targets are ignored,
// so ranks count different numbers of targets and the global normalisation matters.
std::vector<int32_t> SampleTokens(int64_t g) {
  std::vector<int32_t> s(kSeqLen + 1);
  uint64_t x = static_cast<uint64_t>(g) * 0x9E3779B97F4A7C15ull + 12345;
  for (int64_t j = 0; j <= kSeqLen; ++j) {
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    s[j] = static_cast<int32_t>(x % 257);
  }
  return s;
}

// Samples [first, first + b) as one micro-batch.
TokenBatch Samples(int64_t first, int64_t b) {
  TokenBatch mb;
  mb.b = b;
  mb.t = kSeqLen;
  for (int64_t i = 0; i < b; ++i) {
    const int64_t g = first + i;
    std::vector<int32_t> s = SampleTokens(g);
    mb.inputs.insert(mb.inputs.end(), s.begin(), s.end() - 1);
    for (int64_t j = 1; j <= kSeqLen; ++j) mb.targets.push_back(j > kSeqLen - g % 4 ? -1 : s[j]);
  }
  return mb;
}

// This rank's micro-batches of the step starting at global sample `start`: at consumed offset
// s, rank r reads s + r*m ... s + r*m + m - 1, then s += m * dp.
std::vector<TokenBatch> LocalBatches(int64_t start, int64_t m, int dp, int rank) {
  std::vector<TokenBatch> out;
  for (int64_t s = start; s < start + kGlobalBatch; s += m * dp) out.push_back(Samples(s + rank * m, m));
  return out;
}

struct RefStep {
  double loss = 0, norm = 0;
  float clip = 1;
  bool skipped = false;
  NamedTensors grads;  // before clipping
};

NamedTensors Named(const ParameterSet& ps, bool grads) {
  NamedTensors out;
  for (const Parameter& p : ps.params()) out.emplace_back(p.name, (grads ? p.grad : p.value).Clone());
  return out;
}

// launcher/trainer.cc's step over the whole global batch, on one process, written out.
RefStep ReferenceStep(Decoder& model, AdamW& opt, const TrainConfig& tc, int64_t iteration,
                      int64_t start, int64_t m) {
  RefStep r;
  const float lr = LearningRate(tc, iteration);
  std::vector<TokenBatch> batches;
  int64_t total = 0;
  for (int64_t i = 0; i < kGlobalBatch / m; ++i) {
    batches.push_back(Samples(start + i * m, m));
    for (int32_t t : batches.back().targets) total += t >= 0 ? 1 : 0;
  }
  model.params().ZeroGrads();
  const float dloss = total > 0 ? 1.0f / static_cast<float>(total) : 0.0f;
  double sum = 0;
  for (const TokenBatch& mb : batches) {
    sum += model.Forward(mb.inputs.data(), mb.targets.data(), nullptr, mb.b, mb.t).loss_sum;
    model.Backward(dloss);
  }
  r.loss = total > 0 ? sum / static_cast<double>(total) : 0.0;
  r.norm = GlobalGradNorm(model.params());
  r.grads = Named(model.params(), true);
  if (!std::isfinite(r.loss) || !std::isfinite(r.norm)) {
    r.skipped = true;  // no update, and the optimizer's step does not count it
    r.clip = 0;
  } else {
    r.clip = kernels::cpu::ClipCoefficient(r.norm, tc.grad_clip);
    opt.Step(model.params(), lr, r.clip);
  }
  return r;
}

struct Case {
  const char* config;
  int64_t micro_batch;
  bool zero1;
  std::vector<std::string> extra;  // overrides beyond the common ones
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.config << " m=" << c.micro_batch << (c.zero1 ? " zero1" : " plain");
}

std::string CaseName(const Case& c) {
  return absl::StrCat(c.config, " m=", c.micro_batch, c.zero1 ? " zero1" : " plain", " dp=", Size());
}

absl::StatusOr<Config> CaseConfig(const Case& c) {
  std::vector<std::string> o = {absl::StrCat("model.seq_len=", kSeqLen),
                                absl::StrCat("train.micro_batch_size=", c.micro_batch),
                                absl::StrCat("train.global_batch_size=", kGlobalBatch),
                                absl::StrCat("train.steps=", kSteps), "train.warmup_steps=2",
                                "train.lr_decay=cosine",
                                c.zero1 ? "parallel.zero1=true" : "parallel.zero1=false"};
  o.insert(o.end(), c.extra.begin(), c.extra.end());
  LATTICE_ASSIGN_OR_RETURN(Config cfg,
                           LoadConfig(std::string(LATTICE_SOURCE_DIR) + "/configs/" + c.config, o));
  LATTICE_RETURN_IF_ERROR(cfg.ValidateLayout(Size()));  // tp = pp = 1: dp = world
  return cfg;
}

double RelDiff(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

// Whether every rank holds the same bits as rank 0.
bool ReplicasIdentical(Communicator& comm, const ParameterSet& ps) {
  Tensor mine = ps.flat_values().Clone();
  Tensor root = ps.flat_values().Clone();
  EXPECT_TRUE(comm.Broadcast(root, 0).ok());
  int32_t same = std::memcmp(mine.raw(), root.raw(), mine.nbytes()) == 0 ? 1 : 0;
  EXPECT_TRUE(comm.AllReduce(&same, 1, CommType::kI32, ReduceOp::kMin).ok());
  return same == 1;
}

// The engine's gradients at `weights` within kTol of `want`, the reference's at the same
// weights; the worst relative difference.
double CheckGradientsAt(ParallelEngine& engine, const NamedTensors& weights,
                        const std::vector<TokenBatch>& batches, const NamedTensors& want) {
  const NamedTensors got = GradientsAt(engine, weights, batches);
  EXPECT_EQ(got.size(), want.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    EXPECT_EQ(got[i].first, want[i].first);
    const double e = RelativeDifference(got[i].second, want[i].second);
    EXPECT_LE(e, kTol) << "gradient of " << want[i].first;
    worst = std::max(worst, e);
  }
  return worst;
}

class DataParallelMatchesTrainer : public ::testing::TestWithParam<Case> {};

TEST_P(DataParallelMatchesTrainer, FiveSteps) {
  const Case& c = GetParam();
  SCOPED_TRACE(CaseName(c));
  const int p = Size(), r = Rank();
  absl::StatusOr<Config> cfg = CaseConfig(c);
  ASSERT_TRUE(cfg.ok()) << cfg.status();  // the same on every rank
  const TrainConfig& tc = cfg->train;
  auto ref = Decoder::Create(cfg->model, c.micro_batch);
  ASSERT_TRUE(ref.ok());
  (*ref)->InitializeWeights(tc.seed);
  AdamW opt((*ref)->params(), tc);
  auto comm = FreshWorld();
  auto engine = ParallelEngine::Create(*cfg, *comm, {.bucket_bytes = kSmallBuckets});
  ASSERT_TRUE(engine.ok()) << engine.status();
  Decoder& dp = (*engine)->model();
  const int64_t numel = dp.params().numel();
  const BucketLayout& layout = (*engine)->bucket_layout();
  // AdamW replayed on the engine's own gradients (tol = 0): its rounding band.
  AdamDriftBound replay(tc, Named(dp.params(), false), [&](const std::string& name) {
    return dp.params().Get(name).weight_decay;
  });

  // Optimizer state: m and v of the shard (ZeRO-1) or of everything.
  const EngineMemory mem = (*engine)->memory();
  const int64_t shard = (numel + p - 1) / p;
  EXPECT_EQ(mem.optimizer_state, c.zero1 ? shard * 8 : numel * 8);
  EXPECT_EQ(mem.params, numel * 4);
  EXPECT_EQ(mem.grads, numel * 4);
  EXPECT_EQ(mem.comm_buffers, c.zero1 && numel % p != 0 ? 4 * p * layout.buckets.back().chunk : 0);

  // The analytic volume, written out from the layout numbers: e-element buckets (a multiple
  // of p) and one shorter last bucket of `rest` elements.
  const int64_t e = layout.elems_per_bucket;
  const int64_t nb = (numel + e - 1) / e;
  const int64_t rest = numel - (nb - 1) * e;
  CommVolume want;
  want.all_gather = {2, 2 * 16 * (p - 1)};
  if (c.zero1) {
    want.reduce_scatter = {nb, 4 * (p - 1) * shard};
    want.all_gather.calls += nb;
    want.all_gather.bytes += 4 * (p - 1) * shard;
  } else {
    want.all_reduce = {nb, (nb - 1) * (8 * (p - 1) * e / p) + 8 * (p - 1) * rest / p};
  }
  EXPECT_GE(nb, 4) << "small buckets: several in flight";

  int clipped = 0;
  double worst_loss = 0, worst_grad = 0;
  int overlapped = 0;
  for (int s = 0; s < kSteps; ++s) {
    const int64_t start = s * kGlobalBatch;
    const NamedTensors ref_weights = Named((*ref)->params(), false);
    const RefStep want_step = ReferenceStep(**ref, opt, tc, s + 1, start, c.micro_batch);
    const float lr = LearningRate(tc, (*engine)->iteration() + 1);
    const std::vector<TokenBatch> batches = LocalBatches(start, c.micro_batch, p, r);
    // The same weights give the same gradients, up to rounding.
    worst_grad =
        std::max(worst_grad, CheckGradientsAt(**engine, ref_weights, batches, want_step.grads));
    absl::StatusOr<EngineStepResult> got = (*engine)->Step(batches, lr);
    ASSERT_TRUE(got.ok()) << got.status();  // an error here is an error on every rank
    SCOPED_TRACE(absl::StrCat("step ", s + 1));
    EXPECT_FALSE(got->skipped);
    EXPECT_LE(RelDiff(got->loss, want_step.loss), kTol) << got->loss << " vs " << want_step.loss;
    EXPECT_LE(RelDiff(got->grad_norm, want_step.norm), kTol)
        << got->grad_norm << " vs " << want_step.norm;
    replay.Step(Gathered((*engine)->GatherGradients()), got->clip, lr, /*tol=*/0);
    EXPECT_EQ(got->bytes, want) << got->bytes.ToString() << " vs " << want.ToString();
    EXPECT_EQ(got->bytes, (*engine)->ExpectedStepVolume(batches, false));
    EXPECT_EQ(got->buckets, nb);
    // Every bucket but those the embeddings complete (the last report) overlaps backward.
    EXPECT_GE(got->overlapped_buckets, 2);
    EXPECT_GE(got->overlapped_buckets, nb / 2);
    clipped += got->clip < 1.0f ? 1 : 0;
    worst_loss = std::max(worst_loss, RelDiff(got->loss, want_step.loss));
    overlapped = got->overlapped_buckets;
  }
  EXPECT_GT(clipped, 0) << "clipping never engaged; the test would not cover it";
  EXPECT_EQ((*engine)->iteration(), kSteps);
  EXPECT_EQ((*engine)->optimizer().step(), kSteps);
  const AdamDriftBound::Report rep = replay.Check(Named(dp.params(), false));
  EXPECT_EQ(rep.violations, 0) << rep.violations << " of " << rep.elements
                               << " parameters are not AdamW's update of the engine's gradients; "
                                  "first " << rep.first;
  if (r == 0) {
    std::printf("  %s: %lld params, %lld buckets (%d overlapped), loss rel diff <= %.2e, worst "
                "gradient rel diff at the same weights %.2e, AdamW replay band median %.2e, optimizer "
                "state %lld "
                "B/rank, step traffic %s\n",
                CaseName(c).c_str(), static_cast<long long>(numel), static_cast<long long>(nb),
                overlapped, worst_loss, worst_grad, rep.median_width,
                static_cast<long long>(mem.optimizer_state), want.ToString().c_str());
  }
  // ZeRO-1 all-gathers the parameters, so replicas agree by construction; plain DP relies on
  // every rank getting the same all-reduce result.
  EXPECT_TRUE(ReplicasIdentical(*comm, dp.params()));
}

INSTANTIATE_TEST_SUITE_P(
    TinyModels, DataParallelMatchesTrainer,
    ::testing::Values(
        // d_ff = 129 makes numel = 2 mod 4, so with dp = 4 the last bucket needs padding.
        Case{"tiny-gpt2.yaml", 1, false, {"model.d_ff=129"}},
        Case{"tiny-gpt2.yaml", 1, true, {"model.d_ff=129"}},
        Case{"tiny-gpt2.yaml", 2, true, {"model.d_ff=129"}},
        Case{"tiny-llama.yaml", 2, false, {}},
        Case{"tiny-llama.yaml", 2, true, {}},
        Case{"tiny-llama.yaml", 1, true, {}}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return absl::StrCat(info.param.config[5] == 'g' ? "gpt2" : "llama", "_m",
                          info.param.micro_batch, info.param.zero1 ? "_zero1" : "_plain");
    });

// A non-finite loss on ONE rank makes every rank skip the update (the loss and norm are summed
// before anyone decides): the iteration counts, the optimizer's step does not, and training
// then goes on in step with the reference, which skipped the same step.
TEST(DataParallelSkip, NonFiniteLossOnOneRankSkipsEverywhere) {
  for (bool zero1 : {false, true}) {
    const Case c{"tiny-llama.yaml", 1, zero1, {}};
    SCOPED_TRACE(CaseName(c));
    const int p = Size(), r = Rank();
    absl::StatusOr<Config> cfg = CaseConfig(c);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    const TrainConfig& tc = cfg->train;
    auto ref = Decoder::Create(cfg->model, 1);
    ASSERT_TRUE(ref.ok());
    (*ref)->InitializeWeights(tc.seed);
    AdamW opt((*ref)->params(), tc);
    auto comm = FreshWorld();
    auto engine = ParallelEngine::Create(*cfg, *comm, {.bucket_bytes = kSmallBuckets});
    ASSERT_TRUE(engine.ok()) << engine.status();
    Decoder& dp = (*engine)->model();
    AdamDriftBound replay(tc, Named(dp.params(), false), [&](const std::string& name) {
      return dp.params().Get(name).weight_decay;
    });

    float* ref_w = (*ref)->params().value("norm_f.weight");
    float* dp_w = dp.params().value("norm_f.weight");
    for (int s = 0; s < 3; ++s) {
      const bool poison = s == 1;
      // NaN in the final norm poisons every logit of the rank that holds it: the last rank.
      const float saved_ref = ref_w[0], saved_dp = dp_w[0];
      Tensor before = dp.params().flat_values().Clone();
      if (poison) ref_w[0] = std::nanf("");
      if (poison && r == p - 1) dp_w[0] = std::nanf("");
      const NamedTensors ref_weights = Named((*ref)->params(), false);
      const RefStep want = ReferenceStep(**ref, opt, tc, s + 1, s * kGlobalBatch, 1);
      const float lr = LearningRate(tc, (*engine)->iteration() + 1);
      const std::vector<TokenBatch> batches = LocalBatches(s * kGlobalBatch, 1, p, r);
      if (!poison) CheckGradientsAt(**engine, ref_weights, batches, want.grads);
      absl::StatusOr<EngineStepResult> got = (*engine)->Step(batches, lr);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(want.skipped, poison);
      EXPECT_EQ(got->skipped, poison) << "step " << s + 1;
      EXPECT_EQ(got->bytes, (*engine)->ExpectedStepVolume(batches, poison));
      if (poison) {
        EXPECT_FALSE(std::isfinite(got->loss));
        EXPECT_EQ(got->clip, 0.0f);
        // Nothing moved on any rank (the poisoned element aside, it is NaN on one rank).
        dp_w[0] = saved_dp;
        ref_w[0] = saved_ref;
        EXPECT_EQ(std::memcmp(before.raw(), dp.params().flat_values().raw(), before.nbytes()), 0)
            << "a skipped step changed parameters";
      } else {
        EXPECT_LE(RelDiff(got->loss, want.loss), kTol);
        replay.Step(Gathered((*engine)->GatherGradients()), got->clip, lr, /*tol=*/0);
      }
      EXPECT_EQ((*engine)->iteration(), s + 1);
      EXPECT_EQ((*engine)->optimizer().step(), opt.step());
    }
    EXPECT_EQ(opt.step(), 2) << "the skipped step is not an optimizer step";
    const AdamDriftBound::Report rep = replay.Check(Named(dp.params(), false));
    EXPECT_EQ(rep.violations, 0) << rep.first;
    EXPECT_TRUE(ReplicasIdentical(*comm, dp.params()));
  }
}

// A bad micro-batch on one rank stops every rank before anything is computed.
TEST(DataParallelErrors, BadBatchOnOneRankStopsEveryRank) {
  const Case c{"tiny-gpt2.yaml", 2, true, {}};
  absl::StatusOr<Config> cfg = CaseConfig(c);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto comm = FreshWorld();
  auto engine = ParallelEngine::Create(*cfg, *comm, {.bucket_bytes = kSmallBuckets});
  ASSERT_TRUE(engine.ok()) << engine.status();
  Decoder& model = (*engine)->model();
  Tensor before = model.params().flat_values().Clone();
  const int p = Size(), r = Rank();
  std::vector<TokenBatch> batches = LocalBatches(0, 2, p, r);
  if (r == p - 1) batches[0].inputs[5] = -7;
  absl::StatusOr<EngineStepResult> got = (*engine)->Step(batches, 1e-3f);
  ASSERT_FALSE(got.ok());
  if (r == p - 1) {
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(got.status().message(), HasSubstr("token -7"));
  } else {
    EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(got.status().message(), HasSubstr("1 other data-parallel rank"));
  }
  EXPECT_EQ((*engine)->iteration(), 0);
  EXPECT_EQ(std::memcmp(before.raw(), model.params().flat_values().raw(), before.nbytes()), 0);
  // The ranks are still in step: a good step afterwards works everywhere.
  absl::StatusOr<EngineStepResult> ok = (*engine)->Step(LocalBatches(0, 2, p, r), 1e-3f);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_FALSE(ok->skipped);
}

// ZeRO-1's pieces alone (the reduce-scatter of the gradients and AdamW on this rank's shard),
// on a parameter set of odd size (every dp pads the last bucket) with integer-valued gradients,
// so the summed gradients are exact and the owned parameters must be AdamW's over the summed
// gradients bit for bit.
TEST(ShardedAdamWMpi, MatchesAdamWBitForBitOnExactGradients) {
  const int p = Size(), r = Rank();
  auto make = [] {
    ParameterSet ps;
    ps.Declare("w", {4, 5}, true, ParamInit::kZeros, 0);
    ps.Declare("b", {3}, false, ParamInit::kZeros, 0);
    ps.Declare("v", {11}, true, ParamInit::kZeros, 0);
    ps.Declare("g", {1}, false, ParamInit::kZeros, 0);  // 35 elements
    ps.Allocate();
    for (int64_t k = 0; k < ps.numel(); ++k) ps.flat_values().f32()[k] = 0.05f * static_cast<float>(k % 9) - 0.2f;
    return ps;
  };
  ParameterSet ref = make();
  ParameterSet mine = make();
  TrainConfig tc;
  tc.weight_decay = 0.3f;
  AdamW adamw(ref, tc);
  auto comm = FreshWorld();
  absl::StatusOr<BucketLayout> layout = MakeBucketLayout(mine.numel(), p, 24);  // 6-ish elements
  ASSERT_TRUE(layout.ok());
  std::vector<float> staging(static_cast<size_t>(layout->padded(layout->buckets.size() - 1)));
  std::vector<ShardSegment> segs = ShardSegments(mine, *layout, r);
  AdamW sharded(tc, std::vector<OptimizerSegment>(segs.begin(), segs.end()), layout->shard_numel);
  EXPECT_EQ(sharded.state_bytes(), 8 * ((35 + p - 1) / p));
  GradReducer reducer(*comm, *layout, GradReduction::kReduceScatter, staging.data());
  for (int step = 1; step <= 3; ++step) {
    for (int64_t k = 0; k < ref.numel(); ++k) {
      // Rank q contributes (k + step * q) % 7 - 3; the reference holds the sum over q.
      float sum = 0;
      for (int q = 0; q < p; ++q) sum += static_cast<float>((k + step * q) % 7 - 3);
      ref.flat_grads().f32()[k] = sum;
      mine.flat_grads().f32()[k] = static_cast<float>((k + step * r) % 7 - 3);
    }
    reducer.Begin(mine.flat_grads().f32());
    for (int64_t end = mine.numel(); end > 0; end -= 4) reducer.OnGradsReady(std::max<int64_t>(0, end - 4), end);
    ASSERT_TRUE(reducer.Finish().ok());
    double sq = OwnedSumOfSquares(mine.flat_grads().f32(), *layout, r);
    ASSERT_TRUE(SumInRankOrder(*comm, absl::MakeSpan(&sq, 1)).ok());
    EXPECT_EQ(sq, kernels::cpu::SumOfSquares(ref.flat_grads().f32(), ref.numel()));
    adamw.Step(ref, 0.02f, 0.5f);
    sharded.BeginStep();
    sharded.UpdateSegments(0, sharded.segments().size(), mine.flat_values().f32(),
                           mine.flat_grads().f32(), 0.02f, 0.5f);
  }
  for (const ShardSegment& s : segs) {
    for (int64_t k = s.begin; k < s.end; ++k) {
      EXPECT_EQ(mine.flat_values().f32()[k], ref.flat_values().f32()[k]) << "element " << k;
      // The shard's moments are the reference's at the owned positions.
      EXPECT_EQ(sharded.v().f32()[s.state_offset + (k - s.begin)], adamw.v().f32()[k]) << k;
    }
  }
}

}  // namespace
}  // namespace lattice

LATTICE_MPI_TEST_MAIN(data_parallel_mpi_test)
