// LATTICE_TEST_LABELS: numeric
// Single-process tests of the data-parallel building blocks: the bucket layout, the shards and
// their parameter segments, the reducer's launch bookkeeping, the sharded optimizer, and the
// engine on a world of one (SelfCommunicator) against the single-process trainer's step. The
// multi-rank behaviour is data_parallel_mpi_test.cc's and engine_mpi_test.cc's.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/grad_norm.h"
#include "model/decoder.h"
#include "model/optimizer.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"
#include "parallel/engine.h"
#include "runtime/config.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

// Every element of [0, numel) in exactly one bucket; buckets cut from the end, all but the
// last exactly elems_per_bucket long and divisible by dp; shard offsets add up the chunks.
void ExpectLayoutInvariants(const BucketLayout& l, int64_t numel, int dp) {
  SCOPED_TRACE(testing::Message() << "numel " << numel << " dp " << dp << " e "
                                  << l.elems_per_bucket);
  ASSERT_FALSE(l.buckets.empty());
  EXPECT_EQ(l.numel, numel);
  EXPECT_EQ(l.dp, dp);
  EXPECT_EQ(l.elems_per_bucket % dp, 0);
  EXPECT_EQ(l.buckets.front().end, numel);
  EXPECT_EQ(l.buckets.back().begin, 0);
  int64_t covered = 0, shard = 0;
  int padded = 0;
  for (size_t i = 0; i < l.buckets.size(); ++i) {
    const GradBucket& b = l.buckets[i];
    EXPECT_LT(b.begin, b.end) << i;
    if (i > 0) EXPECT_EQ(b.end, l.buckets[i - 1].begin) << i;
    if (i + 1 < l.buckets.size()) {
      EXPECT_EQ(b.numel(), l.elems_per_bucket) << i;
      EXPECT_FALSE(l.needs_padding(i)) << i;
    } else {
      EXPECT_LE(b.numel(), l.elems_per_bucket);
    }
    EXPECT_EQ(b.chunk, (b.numel() + dp - 1) / dp) << i;
    EXPECT_EQ(b.shard_offset, shard) << i;
    EXPECT_EQ(l.padded(i), b.chunk * dp);
    padded += l.needs_padding(i) ? 1 : 0;
    covered += b.numel();
    shard += b.chunk;
  }
  EXPECT_EQ(covered, numel);
  EXPECT_LE(padded, 1);
  EXPECT_EQ(l.shard_numel, shard);
  EXPECT_EQ(l.shard_numel, (numel + dp - 1) / dp);
}

TEST(BucketLayout, CoversTheBufferExactly) {
  for (int64_t numel : std::vector<int64_t>{1, 2, 7, 10, 64, 1000, 12345, 1 << 20}) {
    for (int dp : {1, 2, 3, 4, 8}) {
      for (int64_t bytes : std::vector<int64_t>{1, 4, 6, 16, 100, 4096, 1 << 20, kDefaultBucketBytes}) {
        absl::StatusOr<BucketLayout> l = MakeBucketLayout(numel, dp, bytes);
        ASSERT_TRUE(l.ok()) << l.status();
        ExpectLayoutInvariants(*l, numel, dp);
        const int64_t e = (std::min((bytes + 3) / 4, numel) + dp - 1) / dp * dp;
        EXPECT_EQ(l->elems_per_bucket, e);
        EXPECT_EQ(static_cast<int64_t>(l->buckets.size()), (numel + e - 1) / e);
      }
    }
  }
}

TEST(BucketLayout, WrittenOutExamples) {
  // 10 elements, dp 4, 4-element buckets: [6,10) [2,6) [0,2); the last is padded to 4.
  absl::StatusOr<BucketLayout> l = MakeBucketLayout(10, 4, 16);
  ASSERT_TRUE(l.ok());
  ASSERT_EQ(l->buckets.size(), 3u);
  EXPECT_EQ(l->buckets[0].begin, 6);
  EXPECT_EQ(l->buckets[1].begin, 2);
  EXPECT_EQ(l->buckets[2].end, 2);
  EXPECT_EQ(l->buckets[2].chunk, 1);
  EXPECT_TRUE(l->needs_padding(2));
  EXPECT_EQ(l->shard_numel, 3);
  // 10 elements, dp 3: 4 elements round up to 6: [4,10) [0,4), chunks 2 and 2.
  l = MakeBucketLayout(10, 3, 16);
  ASSERT_TRUE(l.ok());
  ASSERT_EQ(l->buckets.size(), 2u);
  EXPECT_EQ(l->buckets[0].begin, 4);
  EXPECT_EQ(l->buckets[1].chunk, 2);
  EXPECT_EQ(l->shard_numel, 4);
  // A bucket larger than the buffer: one bucket, no padding needed when dp divides numel.
  l = MakeBucketLayout(1000, 4, kDefaultBucketBytes);
  ASSERT_TRUE(l.ok());
  ASSERT_EQ(l->buckets.size(), 1u);
  EXPECT_EQ(l->buckets[0].chunk, 250);
  EXPECT_FALSE(l->needs_padding(0));
}

TEST(BucketLayout, RejectsBadArguments) {
  absl::StatusOr<BucketLayout> l = MakeBucketLayout(0, 2, 16);
  EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(l.status().message(), HasSubstr("0 elements"));
  l = MakeBucketLayout(10, 0, 16);
  EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(l.status().message(), HasSubstr("dp=0"));
  l = MakeBucketLayout(10, 2, 0);
  EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(l.status().message(), HasSubstr("bucket_bytes=0"));
  // No overflow on absurd sizes.
  l = MakeBucketLayout(10, 3, INT64_MAX);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->buckets.size(), 1u);
}

TEST(Shards, OwnedRangesPartitionEveryBucket) {
  for (int64_t numel : {1, 3, 10, 97, 1000}) {
    for (int dp : {1, 2, 3, 4, 7}) {
      absl::StatusOr<BucketLayout> l = MakeBucketLayout(numel, dp, 40);
      ASSERT_TRUE(l.ok());
      for (size_t i = 0; i < l->buckets.size(); ++i) {
        const GradBucket& b = l->buckets[i];
        int64_t next = b.begin;
        for (int r = 0; r < dp; ++r) {
          const OwnedRange o = l->Owned(i, r);
          EXPECT_LE(o.numel(), b.chunk);
          EXPECT_GE(o.numel(), 0);
          if (o.numel() == 0) {
            EXPECT_EQ(next, b.end) << "only trailing ranks may own nothing";
            continue;
          }
          EXPECT_EQ(o.begin, next) << "bucket " << i << " rank " << r;
          EXPECT_EQ(o.begin, b.begin + r * b.chunk);
          EXPECT_EQ(o.shard_offset, b.shard_offset);
          next = o.end;
        }
        EXPECT_EQ(next, b.end) << "bucket " << i;
      }
    }
  }
  // Written out: 10 elements, dp 4, 4-element buckets; rank 2 owns nothing of [0, 2).
  absl::StatusOr<BucketLayout> l = MakeBucketLayout(10, 4, 16);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->Owned(0, 3).begin, 9);
  EXPECT_EQ(l->Owned(1, 1).begin, 3);
  EXPECT_EQ(l->Owned(1, 1).shard_offset, 1);
  EXPECT_EQ(l->Owned(2, 1).begin, 1);
  EXPECT_EQ(l->Owned(2, 1).end, 2);
  EXPECT_EQ(l->Owned(2, 2).numel(), 0);
}

// a (5, decay) | b (3, no decay) | c (7, decay) | d (1, no decay): 16 elements.
ParameterSet FourParameters() {
  ParameterSet ps;
  ps.Declare("a", {5}, true, ParamInit::kZeros, 0);
  ps.Declare("b", {3}, false, ParamInit::kZeros, 0);
  ps.Declare("c", {7}, true, ParamInit::kZeros, 0);
  ps.Declare("d", {1}, false, ParamInit::kZeros, 0);
  ps.Allocate();
  return ps;
}

TEST(Shards, SegmentsFollowTheParameters) {
  ParameterSet ps = FourParameters();
  // dp 2, 6-element buckets: [10,16) [4,10) [0,4), chunks 3, 3, 2.
  absl::StatusOr<BucketLayout> l = MakeBucketLayout(16, 2, 24);
  ASSERT_TRUE(l.ok());
  struct Want {
    int64_t begin, end, shard;
    size_t param;
    bool wd;
  };
  auto check = [&](int rank, const std::vector<Want>& want) {
    std::vector<ShardSegment> got = ShardSegments(ps, *l, rank);
    ASSERT_EQ(got.size(), want.size()) << "rank " << rank;
    for (size_t k = 0; k < want.size(); ++k) {
      EXPECT_EQ(got[k].begin, want[k].begin) << rank << "/" << k;
      EXPECT_EQ(got[k].end, want[k].end) << rank << "/" << k;
      EXPECT_EQ(got[k].state_offset, want[k].shard) << rank << "/" << k;
      EXPECT_EQ(got[k].param, want[k].param) << rank << "/" << k;
      EXPECT_EQ(got[k].weight_decay, want[k].wd) << rank << "/" << k;
    }
  };
  check(0, {{10, 13, 0, 2, true}, {4, 5, 3, 0, true}, {5, 7, 4, 1, false}, {0, 2, 6, 0, true}});
  check(1, {{13, 15, 0, 2, true},
            {15, 16, 2, 3, false},
            {7, 8, 3, 1, false},
            {8, 10, 4, 2, true},
            {2, 4, 6, 0, true}});
}

TEST(Shards, SegmentsCoverEveryElementOnceWithItsDecayFlag) {
  ParameterSet ps;
  const int64_t sizes[] = {33, 1, 7, 64, 2, 19, 5, 128, 3};
  for (size_t i = 0; i < std::size(sizes); ++i) {
    ps.Declare("p" + std::to_string(i), {sizes[i]}, i % 3 != 1, ParamInit::kZeros, 0);
  }
  ps.Allocate();
  for (int dp : {1, 2, 3, 4, 5}) {
    for (int64_t bytes : {4, 28, 100, 400, 1 << 20}) {
      absl::StatusOr<BucketLayout> l = MakeBucketLayout(ps.numel(), dp, bytes);
      ASSERT_TRUE(l.ok());
      std::vector<int> seen(static_cast<size_t>(ps.numel()), 0);
      for (int r = 0; r < dp; ++r) {
        std::vector<ShardSegment> segs = ShardSegments(ps, *l, r);
        int64_t prev_shard_end = -1;
        for (const ShardSegment& s : segs) {
          const Parameter& p = ps.params()[s.param];
          EXPECT_GE(s.begin, p.offset);
          EXPECT_LE(s.end, p.offset + p.value.numel());
          EXPECT_EQ(s.weight_decay, p.weight_decay);
          EXPECT_GE(s.state_offset, prev_shard_end) << "segments in shard order";
          EXPECT_LE(s.state_offset + s.numel(), l->shard_numel);
          prev_shard_end = s.state_offset + s.numel();
          for (int64_t k = s.begin; k < s.end; ++k) seen[k]++;
        }
      }
      for (int64_t k = 0; k < ps.numel(); ++k) {
        ASSERT_EQ(seen[k], 1) << "element " << k << " dp " << dp << " bytes " << bytes;
      }
    }
  }
}

TEST(Shards, OwnedSumsOfSquaresAddUpToTheTotal) {
  std::vector<float> g(1001);
  for (size_t k = 0; k < g.size(); ++k) g[k] = std::sin(0.37f * static_cast<float>(k));
  const double total = kernels::cpu::SumOfSquares(g.data(), static_cast<int64_t>(g.size()));
  for (int dp : {1, 2, 3, 4}) {
    absl::StatusOr<BucketLayout> l = MakeBucketLayout(static_cast<int64_t>(g.size()), dp, 128);
    ASSERT_TRUE(l.ok());
    double sum = 0;
    for (int r = 0; r < dp; ++r) sum += OwnedSumOfSquares(g.data(), *l, r);
    // Double sums of the same 1001 squares grouped differently: they differ by at most
    // n * 2^-53 ~ 1e-13 relative; 1e-9 only says "the same terms, each counted once".
    EXPECT_NEAR(sum, total, 1e-9 * total) << "dp " << dp;
  }
}

TEST(SumInRankOrder, WorldOfOneIsIdentityAndCounted) {
  SelfCommunicator self;
  std::vector<double> d = {1.5, -2.25, 1e300};
  std::vector<int64_t> i = {int64_t{1} << 40, -3};
  ASSERT_TRUE(SumInRankOrder(self, absl::MakeSpan(d)).ok());
  ASSERT_TRUE(SumInRankOrder(self, absl::MakeSpan(i)).ok());
  EXPECT_EQ(d, (std::vector<double>{1.5, -2.25, 1e300}));
  EXPECT_EQ(i, (std::vector<int64_t>{int64_t{1} << 40, -3}));
  EXPECT_EQ(self.counters().all_gather.calls, 2);
  EXPECT_EQ(self.counters().all_gather.bytes, 0);  // a world of one sends nothing
}

// The reducer launches a bucket at the callback that completes it, in bucket order, and counts
// as overlapped those launched before the last callback.
TEST(GradReducer, LaunchesBucketsAsTheyComplete) {
  SelfCommunicator self;
  absl::StatusOr<BucketLayout> l = MakeBucketLayout(100, 1, 40);  // 10 buckets of 10
  ASSERT_TRUE(l.ok());
  ASSERT_EQ(l->buckets.size(), 10u);
  std::vector<float> grads(100, 1.0f);
  GradReducer reducer(self, *l, GradReduction::kAllReduce, nullptr);
  reducer.Begin(grads.data());
  reducer.OnGradsReady(95, 100);  // half of bucket 0
  EXPECT_EQ(self.counters().all_reduce.calls, 0);
  reducer.OnGradsReady(75, 95);   // completes 0 and 1, half of 2
  EXPECT_EQ(self.counters().all_reduce.calls, 2);
  reducer.OnGradsReady(20, 75);   // completes 2..7
  EXPECT_EQ(self.counters().all_reduce.calls, 8);
  reducer.OnGradsReady(0, 20);    // the embeddings: 8, 9, with nothing left to overlap
  EXPECT_EQ(self.counters().all_reduce.calls, 10);
  ASSERT_TRUE(reducer.Finish().ok());
  EXPECT_EQ(reducer.stats().buckets, 10);
  EXPECT_EQ(reducer.stats().launched_during_backward, 10);
  EXPECT_EQ(reducer.stats().overlapped, 8);
  EXPECT_EQ(reducer.stats().launched_at_finish, 0);
  EXPECT_EQ(grads, std::vector<float>(100, 1.0f));  // a world of one sums nothing

  // A round with no reports launches everything at Finish (correct, just not overlapped).
  reducer.Begin(grads.data());
  ASSERT_TRUE(reducer.Finish().ok());
  EXPECT_EQ(reducer.stats().launched_at_finish, 10);
  EXPECT_EQ(reducer.stats().overlapped, 0);
  EXPECT_EQ(self.counters().all_reduce.calls, 20);
}

TEST(GradReducer, RangesReportedTwiceOrOutsideAreErrors) {
  SelfCommunicator self;
  absl::StatusOr<BucketLayout> l = MakeBucketLayout(100, 1, 40);
  ASSERT_TRUE(l.ok());
  std::vector<float> grads(100, 0.0f);
  GradReducer reducer(self, *l, GradReduction::kReduceScatter, nullptr);
  reducer.Begin(grads.data());
  reducer.OnGradsReady(50, 100);
  reducer.OnGradsReady(45, 55);
  absl::Status s = reducer.Finish();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("more than once"));

  reducer.Begin(grads.data());
  reducer.OnGradsReady(90, 101);
  s = reducer.Finish();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("[90, 101)"));
  // Every bucket was still reduced, so the ranks stay in step.
  EXPECT_EQ(self.counters().reduce_scatter.calls, 20);
}

// AdamW over one rank's shard segments, updated bucket by bucket, is AdamW over the same
// elements with the same per-parameter weight decay: with a world of one the shard is every
// element, so the parameters agree bit for bit and the moments sit at the shard positions.
TEST(ShardedAdamW, WorldOfOneMatchesWholeModelAdamWExactly) {
  ParameterSet a = FourParameters();
  ParameterSet b = FourParameters();
  for (int64_t k = 0; k < a.numel(); ++k) {
    a.flat_values().f32()[k] = b.flat_values().f32()[k] = 0.1f * static_cast<float>(k) - 0.7f;
  }
  TrainConfig tc;
  tc.weight_decay = 0.5f;  // large, so a wrong decay flag shows
  AdamW reference(a, tc);
  absl::StatusOr<BucketLayout> l = MakeBucketLayout(b.numel(), 1, 12);
  ASSERT_TRUE(l.ok());
  std::vector<ShardSegment> shard = ShardSegments(b, *l, 0);
  AdamW sharded(tc, std::vector<OptimizerSegment>(shard.begin(), shard.end()), l->shard_numel);
  EXPECT_EQ(sharded.state_bytes(), 16 * 8);
  for (int step = 1; step <= 4; ++step) {
    for (int64_t k = 0; k < a.numel(); ++k) {
      a.flat_grads().f32()[k] = b.flat_grads().f32()[k] = std::cos(static_cast<float>(k * step));
    }
    const float lr = 0.01f * static_cast<float>(step);
    reference.Step(a, lr, 0.75f);
    sharded.BeginStep();
    // In pieces, as the engine does bucket by bucket.
    const size_t n = sharded.segments().size();
    sharded.UpdateSegments(0, n / 2, b.flat_values().f32(), b.flat_grads().f32(), lr, 0.75f);
    sharded.UpdateSegments(n / 2, n, b.flat_values().f32(), b.flat_grads().f32(), lr, 0.75f);
  }
  EXPECT_EQ(sharded.step(), 4);
  for (int64_t k = 0; k < a.numel(); ++k) {
    EXPECT_EQ(a.flat_values().f32()[k], b.flat_values().f32()[k]) << k;
  }
  // The shard is in bucket order (from the end of the buffer), so moments are found through
  // the segments.
  int64_t covered = 0;
  for (const OptimizerSegment& s : sharded.segments()) {
    for (int64_t k = s.begin; k < s.end; ++k) {
      EXPECT_EQ(reference.m().f32()[k], sharded.m().f32()[s.state_offset + k - s.begin]) << k;
      EXPECT_EQ(reference.v().f32()[k], sharded.v().f32()[s.state_offset + k - s.begin]) << k;
    }
    covered += s.numel();
  }
  EXPECT_EQ(covered, a.numel());
}

// ---- The engine on a world of one --------------------------------------------------------

std::vector<int32_t> Sample(int64_t g, int64_t t) {  // t + 1 tokens of global sample g
  std::vector<int32_t> s(static_cast<size_t>(t + 1));
  for (int64_t j = 0; j <= t; ++j) s[j] = static_cast<int32_t>((g * 7919 + j * j * 31 + j * 5) % 257);
  return s;
}

TokenBatch Batch(int64_t first, int64_t b, int64_t t) {
  TokenBatch mb;
  mb.b = b;
  mb.t = t;
  for (int64_t i = 0; i < b; ++i) {
    std::vector<int32_t> s = Sample(first + i, t);
    mb.inputs.insert(mb.inputs.end(), s.begin(), s.end() - 1);
    mb.targets.insert(mb.targets.end(), s.begin() + 1, s.end());
  }
  return mb;
}

absl::StatusOr<Config> EngineConfig(const char* file, std::vector<std::string> sets,
                                    bool zero1) {
  sets.push_back(zero1 ? "parallel.zero1=true" : "parallel.zero1=false");
  LATTICE_ASSIGN_OR_RETURN(Config c,
                           LoadConfig(std::string(LATTICE_SOURCE_DIR) + "/configs/" + file, sets));
  LATTICE_RETURN_IF_ERROR(c.ValidateLayout(1));
  return c;
}

TEST(ParallelEngineWorldOfOne, MatchesTheTrainerStepBitForBit) {
  const int64_t t = 16, mbs = 2;
  for (bool zero1 : {false, true}) {
    SCOPED_TRACE(zero1 ? "zero1" : "plain");
    absl::StatusOr<Config> cfg = EngineConfig(
        "tiny-llama.yaml",
        {"model.seq_len=16", "train.micro_batch_size=2", "train.global_batch_size=4",
         "train.steps=3", "train.warmup_steps=1", "train.seed=5"},
        zero1);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    auto ref = Decoder::Create(cfg->model, mbs);
    ASSERT_TRUE(ref.ok());
    (*ref)->InitializeWeights(5);
    AdamW opt((*ref)->params(), cfg->train);
    SelfCommunicator self;
    auto engine = ParallelEngine::Create(*cfg, self, {.bucket_bytes = 4096});
    ASSERT_TRUE(engine.ok()) << engine.status();
    Decoder& dp = (*engine)->model();
    EXPECT_GT((*engine)->bucket_layout().buckets.size(), 4u);
    for (int64_t step = 1; step <= 3; ++step) {
      const float lr = LearningRate(cfg->train, step);
      std::vector<TokenBatch> batches = {Batch((step - 1) * 4, mbs, t),
                                         Batch((step - 1) * 4 + 2, mbs, t)};
      // The trainer's step, written out.
      (*ref)->params().ZeroGrads();
      const float dloss = 1.0f / static_cast<float>(4 * t);
      double loss = 0;
      for (const TokenBatch& mb : batches) {
        loss += (*ref)->Forward(mb.inputs.data(), mb.targets.data(), nullptr, mb.b, mb.t).loss_sum;
        (*ref)->Backward(dloss);
      }
      loss /= static_cast<double>(4 * t);
      const double norm = GlobalGradNorm((*ref)->params());
      opt.Step((*ref)->params(), lr, kernels::cpu::ClipCoefficient(norm, cfg->train.grad_clip));

      absl::StatusOr<EngineStepResult> r = (*engine)->Step(batches, lr);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->tokens, 4 * t);
      EXPECT_FALSE(r->skipped);
      EXPECT_EQ(r->loss, loss) << "one rank: the same sums in the same order";
      // The engine sums squares range by range, the reference over the whole buffer at once:
      // double sums of the same n fp32 squares in two orders, which differ by at most
      // n * 2^-53 relative (the norm, a square root, by half that).
      const double sum_tol = static_cast<double>(dp.params().numel()) * std::ldexp(1.0, -53);
      EXPECT_NEAR(r->grad_norm, norm, sum_tol * norm);
      EXPECT_EQ(r->bytes, (*engine)->ExpectedStepVolume(batches, false));
      EXPECT_EQ(r->bytes.bytes(), 0) << "a world of one sends nothing";
      // All but the buckets that the embeddings' report (the last one) completes.
      const Parameter& wte = dp.params().Get("wte");
      int overlapped = 0;
      for (const GradBucket& b : (*engine)->bucket_layout().buckets) {
        overlapped += b.begin >= wte.offset + wte.value.numel() ? 1 : 0;
      }
      EXPECT_EQ(r->overlapped_buckets, overlapped);
      EXPECT_GT(overlapped, r->buckets / 2);
    }
    EXPECT_EQ((*engine)->iteration(), 3);
    EXPECT_EQ((*engine)->optimizer().step(), 3);
    const float* a = (*ref)->params().flat_values().f32();
    const float* b = dp.params().flat_values().f32();
    for (int64_t k = 0; k < (*ref)->params().numel(); ++k) {
      ASSERT_EQ(a[k], b[k]) << "element " << k << ": a world of one runs the same arithmetic";
    }
    const EngineMemory mem = (*engine)->memory();
    EXPECT_EQ(mem.params, 4 * dp.params().numel());
    EXPECT_EQ(mem.optimizer_state, 8 * dp.params().numel());
  }
}

TEST(ParallelEngineWorldOfOne, RejectsBadMicroBatchesBeforeComputing) {
  absl::StatusOr<Config> cfg = EngineConfig(
      "tiny-gpt2.yaml",
      {"model.seq_len=8", "train.micro_batch_size=1", "train.global_batch_size=1"}, false);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  SelfCommunicator self;
  auto engine = ParallelEngine::Create(*cfg, self);
  ASSERT_TRUE(engine.ok());
  Tensor before = (*engine)->model().params().flat_values().Clone();
  auto bad = [&](std::vector<TokenBatch> b, const char* what) {
    absl::StatusOr<EngineStepResult> r = (*engine)->Step(b, 1e-3f);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << what;
    EXPECT_THAT(r.status().message(), HasSubstr(what));
  };
  bad({}, "no micro-batch");
  bad({Batch(0, 2, 8)}, "train.micro_batch_size=1");
  bad({Batch(0, 1, 9)}, "model.seq_len=8");
  TokenBatch mb = Batch(0, 1, 8);
  mb.targets.pop_back();
  bad({mb}, "7 targets");
  mb = Batch(0, 1, 8);
  mb.inputs[3] = 257;
  bad({mb}, "model.vocab_size=257");
  EXPECT_EQ((*engine)->iteration(), 0);
  EXPECT_EQ(std::memcmp(before.raw(), (*engine)->model().params().flat_values().raw(),
                        before.nbytes()),
            0);
  EXPECT_EQ(ParallelEngine::Create(*cfg, self, {.bucket_bytes = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lattice
