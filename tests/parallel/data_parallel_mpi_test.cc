// LATTICE_MPI_NP: 1 2 4
//
// Data parallelism across real processes: the engine (plain DP and ZeRO-1) against the
// single-process trainer's step over the whole global batch, which every rank also runs for
// itself. Tiny GPT-2 and tiny Llama (GQA), global batch 8, micro-batches of 1 and 2, samples
// dealt by Megatron's rule (runtime/dataset.h), lr warmup then decay.
//
// The harness (main below) lets only rank 0 print the gtest report, prints other ranks'
// failures with their rank, and makes every rank agree on the result. Test bodies use
// EXPECT_* where an early return on one rank would leave the others waiting in a collective.
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
#include "parallel/distributed_optimizer.h"
#include "parallel/dp_step.h"
#include "parallel/mpi_communicator.h"
#include "runtime/config.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

Communicator* g_world = nullptr;
int Rank() { return g_world->rank(); }
int Size() { return g_world->size(); }

// A fresh communicator over the world, so each test's counters start at zero.
std::unique_ptr<Communicator> FreshWorld() {
  absl::StatusOr<std::unique_ptr<Communicator>> c = g_world->Split(0, Rank());
  LATTICE_CHECK(c.ok() && *c != nullptr);
  return std::move(c).value();
}

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
  bool skipped = false;
};

// launcher/trainer.cc's Trainer::Step over the whole global batch, on one process.
RefStep ReferenceStep(Decoder& model, AdamW& opt, const TrainConfig& tc, int64_t start, int64_t m) {
  RefStep r;
  const float lr = LearningRate(tc, opt.step() + 1);
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
  if (!std::isfinite(r.loss) || !std::isfinite(r.norm)) {
    r.skipped = true;
    opt.set_step(opt.step() + 1);
  } else {
    opt.Step(model.params(), lr, kernels::cpu::ClipCoefficient(r.norm, tc.grad_clip));
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
                                "train.lr_decay=cosine"};
  o.insert(o.end(), c.extra.begin(), c.extra.end());
  return LoadConfig(std::string(LATTICE_SOURCE_DIR) + "/configs/" + c.config, o);
}

double RelDiff(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

// The key rows of a GPT-2 qkv bias, [H*D, (H+K)*D): their true gradient is zero (adding the
// same b.q to every score of a query leaves the softmax unchanged), so what backward computes
// for them is rounding noise (~1e-12 here), and Adam turns noise of either sign into steps of
// up to lr * |g| / (|g| + eps). The replicas' noise differs from the reference's because the
// sums run in another order, so these elements are compared on their own, with that bound.
bool IsKeyBias(const ModelConfig& mc, const std::string& name, int64_t k) {
  if (name.size() < 13 || name.compare(name.size() - 13, 13, "attn.qkv.bias") != 0) return false;
  const int64_t d = mc.head_dim();
  return k >= mc.n_head * d && k < (mc.n_head + mc.kv_heads()) * d;
}

// ||a - b|| / ||b|| of every parameter (key-bias rows aside); the worst one. The largest
// |a - b| over the key-bias rows goes to *key_bias_diff.
double WorstParamDiff(const ModelConfig& mc, const ParameterSet& a, const ParameterSet& b,
                      std::string* which, double* key_bias_diff = nullptr) {
  double worst = 0;
  for (size_t i = 0; i < a.params().size(); ++i) {
    const Parameter& pa = a.params()[i];
    const Parameter& pb = b.params()[i];
    double d = 0, n = 0;
    for (int64_t k = 0; k < pa.value.numel(); ++k) {
      const double x = pa.value.f32()[k], y = pb.value.f32()[k];
      if (IsKeyBias(mc, pa.name, k)) {
        if (key_bias_diff != nullptr) *key_bias_diff = std::max(*key_bias_diff, std::abs(x - y));
        continue;
      }
      d += (x - y) * (x - y);
      n += y * y;
    }
    const double rel = n > 0 ? std::sqrt(d / n) : std::sqrt(d);
    if (rel > worst) {
      worst = rel;
      *which = pa.name;
    }
  }
  return worst;
}

// Whether every rank holds the same bits as rank 0.
bool ReplicasIdentical(Communicator& comm, const ParameterSet& ps) {
  Tensor mine = ps.flat_values().Clone();
  Tensor root = ps.flat_values().Clone();
  EXPECT_TRUE(comm.Broadcast(root, 0).ok());
  int32_t same = std::memcmp(mine.raw(), root.raw(), mine.nbytes()) == 0 ? 1 : 0;
  EXPECT_TRUE(comm.AllReduce(&same, 1, CommType::kI32, ReduceOp::kMin).ok());
  return same == 1;
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
  auto dp = Decoder::Create(cfg->model, c.micro_batch);
  ASSERT_TRUE(ref.ok() && dp.ok());
  (*ref)->InitializeWeights(tc.seed);
  (*dp)->InitializeWeights(tc.seed);
  AdamW opt((*ref)->params(), tc);
  auto comm = FreshWorld();
  auto engine = DataParallelEngine::Create(**dp, tc, *comm, {c.zero1, kSmallBuckets});
  ASSERT_TRUE(engine.ok()) << engine.status();
  const int64_t numel = (*dp)->params().numel();
  const BucketLayout& layout = (*engine)->layout();

  // Optimizer state: m and v of the shard (ZeRO-1) or of everything.
  const DataParallelMemory mem = (*engine)->memory();
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
  EXPECT_EQ(want, (*engine)->ExpectedStepVolume(false));
  EXPECT_GE(nb, 4) << "small buckets: several in flight";

  int clipped = 0;
  double worst_loss = 0;
  int overlapped = 0;
  for (int s = 0; s < kSteps; ++s) {
    const int64_t start = s * kGlobalBatch;
    const RefStep want_step = ReferenceStep(**ref, opt, tc, start, c.micro_batch);
    const float lr = LearningRate(tc, (*engine)->step() + 1);
    absl::StatusOr<DataParallelStepResult> got =
        (*engine)->Step(LocalBatches(start, c.micro_batch, p, r), lr);
    ASSERT_TRUE(got.ok()) << got.status();  // an error here is an error on every rank
    SCOPED_TRACE(absl::StrCat("step ", s + 1));
    EXPECT_FALSE(got->skipped);
    EXPECT_LE(RelDiff(got->loss, want_step.loss), 1e-5) << got->loss << " vs " << want_step.loss;
    EXPECT_LE(RelDiff(got->grad_norm, want_step.norm), 1e-5)
        << got->grad_norm << " vs " << want_step.norm;
    EXPECT_EQ(got->bytes, want) << got->bytes.ToString() << " vs " << want.ToString();
    EXPECT_EQ(got->buckets, nb);
    // Every bucket but those the embeddings complete (the last report) overlaps backward.
    EXPECT_GE(got->overlapped_buckets, 2);
    EXPECT_GE(got->overlapped_buckets, nb / 2);
    clipped += got->clip < 1.0f ? 1 : 0;
    worst_loss = std::max(worst_loss, RelDiff(got->loss, want_step.loss));
    overlapped = got->overlapped_buckets;
  }
  EXPECT_GT(clipped, 0) << "clipping never engaged; the test would not cover it";
  EXPECT_EQ((*engine)->step(), kSteps);
  std::string which;
  double key_bias_diff = 0;
  const double worst =
      WorstParamDiff(cfg->model, (*dp)->params(), (*ref)->params(), &which, &key_bias_diff);
  EXPECT_LE(worst, 1e-5) << "parameter " << which;
  if (r == 0) {
    std::printf("  %s: %lld params, %lld buckets (%d overlapped), loss rel diff <= %.2e, worst "
                "param rel diff %.2e (%s), key-bias abs diff %.2e, optimizer state %lld B/rank, "
                "step traffic %s\n",
                CaseName(c).c_str(), static_cast<long long>(numel), static_cast<long long>(nb),
                overlapped, worst_loss, worst, which.c_str(), key_bias_diff,
                static_cast<long long>(mem.optimizer_state), want.ToString().c_str());
  }
  if (cfg->model.arch == Arch::kGpt2) {
    // The key-bias gradients really are noise, and the bound for |g| < 1e-10 (eps = 1e-8):
    // at most 1% of lr per step.
    const Parameter& kb = (*ref)->params().Get("h.0.attn.qkv.bias");
    for (int64_t k = 0; k < kb.grad.numel(); ++k) {
      if (IsKeyBias(cfg->model, kb.name, k)) {
        ASSERT_LT(std::abs(kb.grad.f32()[k]), 1e-10f) << k;
      }
    }
    EXPECT_LE(key_bias_diff, kSteps * tc.lr * 0.01);
  }
  // ZeRO-1 all-gathers the parameters, so replicas agree by construction; plain DP relies on
  // every rank getting the same all-reduce result.
  EXPECT_TRUE(ReplicasIdentical(*comm, (*dp)->params()));
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
// before anyone decides), the step still counts, and training then goes on in step with the
// reference, which skipped the same step.
TEST(DataParallelSkip, NonFiniteLossOnOneRankSkipsEverywhere) {
  for (bool zero1 : {false, true}) {
    const Case c{"tiny-llama.yaml", 1, zero1, {}};
    SCOPED_TRACE(CaseName(c));
    const int p = Size(), r = Rank();
    absl::StatusOr<Config> cfg = CaseConfig(c);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    const TrainConfig& tc = cfg->train;
    auto ref = Decoder::Create(cfg->model, 1);
    auto dp = Decoder::Create(cfg->model, 1);
    ASSERT_TRUE(ref.ok() && dp.ok());
    (*ref)->InitializeWeights(tc.seed);
    (*dp)->InitializeWeights(tc.seed);
    AdamW opt((*ref)->params(), tc);
    auto comm = FreshWorld();
    auto engine = DataParallelEngine::Create(**dp, tc, *comm, {zero1, kSmallBuckets});
    ASSERT_TRUE(engine.ok());

    float* ref_w = (*ref)->params().value("norm_f.weight");
    float* dp_w = (*dp)->params().value("norm_f.weight");
    for (int s = 0; s < 3; ++s) {
      const bool poison = s == 1;
      // NaN in the final norm poisons every logit of the rank that holds it: the last rank.
      const float saved_ref = ref_w[0], saved_dp = dp_w[0];
      Tensor before = (*dp)->params().flat_values().Clone();
      if (poison) ref_w[0] = std::nanf("");
      if (poison && r == p - 1) dp_w[0] = std::nanf("");
      const RefStep want = ReferenceStep(**ref, opt, tc, s * kGlobalBatch, 1);
      const float lr = LearningRate(tc, (*engine)->step() + 1);
      absl::StatusOr<DataParallelStepResult> got =
          (*engine)->Step(LocalBatches(s * kGlobalBatch, 1, p, r), lr);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(want.skipped, poison);
      EXPECT_EQ(got->skipped, poison) << "step " << s + 1;
      EXPECT_EQ(got->bytes, (*engine)->ExpectedStepVolume(poison));
      if (poison) {
        EXPECT_FALSE(std::isfinite(got->loss));
        EXPECT_EQ(got->clip, 0.0f);
        // Nothing moved on any rank (the poisoned element aside, it is NaN on one rank).
        dp_w[0] = saved_dp;
        ref_w[0] = saved_ref;
        EXPECT_EQ(std::memcmp(before.raw(), (*dp)->params().flat_values().raw(), before.nbytes()),
                  0)
            << "a skipped step changed parameters";
      } else {
        EXPECT_LE(RelDiff(got->loss, want.loss), 1e-5);
      }
      EXPECT_EQ((*engine)->step(), opt.step());
    }
    std::string which;
    EXPECT_LE(WorstParamDiff(cfg->model, (*dp)->params(), (*ref)->params(), &which), 1e-5)
        << which;
    EXPECT_TRUE(ReplicasIdentical(*comm, (*dp)->params()));
  }
}

// A bad micro-batch on one rank stops every rank before anything is computed.
TEST(DataParallelErrors, BadBatchOnOneRankStopsEveryRank) {
  const Case c{"tiny-gpt2.yaml", 2, true, {}};
  absl::StatusOr<Config> cfg = CaseConfig(c);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto model = Decoder::Create(cfg->model, 2);
  ASSERT_TRUE(model.ok());
  (*model)->InitializeWeights(1);
  auto comm = FreshWorld();
  auto engine = DataParallelEngine::Create(**model, cfg->train, *comm, {true, kSmallBuckets});
  ASSERT_TRUE(engine.ok());
  Tensor before = (*model)->params().flat_values().Clone();
  const int p = Size(), r = Rank();
  std::vector<TokenBatch> batches = LocalBatches(0, 2, p, r);
  if (r == p - 1) batches[0].inputs[5] = -7;
  absl::StatusOr<DataParallelStepResult> got = (*engine)->Step(batches, 1e-3f);
  ASSERT_FALSE(got.ok());
  if (r == p - 1) {
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(got.status().message(), HasSubstr("token -7"));
  } else {
    EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(got.status().message(), HasSubstr("1 other data-parallel rank"));
  }
  EXPECT_EQ((*engine)->step(), 0);
  EXPECT_EQ(std::memcmp(before.raw(), (*model)->params().flat_values().raw(), before.nbytes()), 0);
  // The ranks are still in step: a good step afterwards works everywhere.
  absl::StatusOr<DataParallelStepResult> ok = (*engine)->Step(LocalBatches(0, 2, p, r), 1e-3f);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_FALSE(ok->skipped);
}

// The distributed optimizer alone, on a parameter set of odd size (every dp pads the last
// bucket) with integer-valued gradients, so the summed gradients are exact and ZeRO-1 must
// give the bits of AdamW over the summed gradients.
TEST(DistributedOptimizerMpi, MatchesAdamWBitForBitOnExactGradients) {
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
  DistributedOptimizer dist(mine, tc, *layout, r, staging.data());
  EXPECT_EQ(dist.state_bytes(), 8 * ((35 + p - 1) / p));
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
    double sq = dist.ShardSumOfSquares(mine);
    ASSERT_TRUE(SumInRankOrder(*comm, absl::MakeSpan(&sq, 1)).ok());
    EXPECT_EQ(sq, kernels::cpu::SumOfSquares(ref.flat_grads().f32(), ref.numel()));
    adamw.Step(ref, 0.02f, 0.5f);
    ASSERT_TRUE(dist.Step(mine, *comm, 0.02f, 0.5f).ok());
  }
  for (int64_t k = 0; k < ref.numel(); ++k) {
    EXPECT_EQ(mine.flat_values().f32()[k], ref.flat_values().f32()[k]) << "element " << k;
  }
  // The shard's moments are the reference's at the owned positions.
  for (const ShardSegment& s : dist.segments()) {
    for (int64_t k = s.begin; k < s.end; ++k) {
      EXPECT_EQ(dist.v().f32()[s.shard_offset + (k - s.begin)], adamw.v().f32()[k]) << k;
    }
  }
}

TEST(DataParallelEngineMpi, BroadcastParametersMakesReplicasEqual) {
  absl::StatusOr<Config> cfg = CaseConfig(Case{"tiny-gpt2.yaml", 1, false, {}});
  ASSERT_TRUE(cfg.ok());
  auto model = Decoder::Create(cfg->model, 1);
  ASSERT_TRUE(model.ok());
  (*model)->InitializeWeights(static_cast<uint64_t>(100 + Rank()));  // different on every rank
  auto comm = FreshWorld();
  auto engine = DataParallelEngine::Create(**model, cfg->train, *comm, {});
  ASSERT_TRUE(engine.ok());
  EXPECT_EQ(ReplicasIdentical(*comm, (*model)->params()), Size() == 1);
  ASSERT_TRUE((*engine)->BroadcastParameters().ok());
  EXPECT_TRUE(ReplicasIdentical(*comm, (*model)->params()));
  auto seed100 = Decoder::Create(cfg->model, 1);
  ASSERT_TRUE(seed100.ok());
  (*seed100)->InitializeWeights(100);
  std::string which;
  double key_bias_diff = 0;
  EXPECT_EQ(WorstParamDiff(cfg->model, (*model)->params(), (*seed100)->params(), &which,
                           &key_bias_diff),
            0.0)
      << which;
  EXPECT_EQ(key_bias_diff, 0.0);
}

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.message());
    std::fflush(stderr);
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::fprintf(stderr, "[rank %d] [  FAILED  ] %s.%s\n", rank_, info.test_suite_name(),
                   info.name());
      std::fflush(stderr);
    }
  }

 private:
  int rank_;
};

}  // namespace
}  // namespace lattice

// Defined here so the linker never pulls main from gtest_main.
int main(int argc, char** argv) {
  absl::StatusOr<std::unique_ptr<lattice::MpiRuntime>> mpi =
      lattice::MpiRuntime::Initialize(&argc, &argv);
  if (!mpi.ok()) {
    std::fprintf(stderr, "data_parallel_mpi_test: %s\n", mpi.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<lattice::Communicator>> world =
      lattice::CreateWorldCommunicator();
  if (!world.ok()) {
    std::fprintf(stderr, "data_parallel_mpi_test: %s\n", world.status().ToString().c_str());
    return 1;
  }
  lattice::g_world = world->get();
  const int rank = (*world)->rank();

  ::testing::InitGoogleTest(&argc, argv);
  ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) {
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new lattice::RankFailurePrinter(rank));
  }
  const int local = RUN_ALL_TESTS();

  int32_t any_failed = local != 0 ? 1 : 0;
  absl::Status agreed =
      (*world)->AllReduce(&any_failed, 1, lattice::CommType::kI32, lattice::ReduceOp::kMax);
  if (!agreed.ok()) {
    std::fprintf(stderr, "[rank %d] could not agree on the result: %s\n", rank,
                 agreed.ToString().c_str());
    any_failed = 1;
  }
  if (rank == 0) {
    std::printf("data_parallel_mpi_test: %d rank(s) (%s): %s\n", (*world)->size(),
                std::string((*world)->kind()).c_str(),
                any_failed ? "FAILED on at least one rank" : "passed on every rank");
  }
  lattice::g_world = nullptr;
  world->reset();  // before ~MpiRuntime finalises MPI
  return any_failed ? 1 : 0;
}
