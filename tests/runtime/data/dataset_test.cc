#include "runtime/data/dataset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/config.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("lattice_dataset_", info->name(), "_", ::getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  // A Megatron dataset whose token at stream position p is `base + p`, so every sample says
  // where it came from. Documents have the given lengths.
  std::shared_ptr<const TokenSource> Counting(const std::string& name,
                                              const std::vector<int>& doc_lengths,
                                              int32_t base = 0) {
    MegatronDatasetWriter::Options opt;
    opt.vocab_size = 1 << 30;
    auto w = MegatronDatasetWriter::Create(Path(name), opt);
    EXPECT_TRUE(w.ok()) << w.status();
    int32_t next = base;
    for (int len : doc_lengths) {
      std::vector<int32_t> doc(static_cast<size_t>(len));
      for (int32_t& t : doc) t = next++;
      EXPECT_TRUE((*w)->AddDocument(doc).ok());
    }
    EXPECT_TRUE((*w)->Finalize().ok());
    auto src = OpenTokenSource(Path(name));
    EXPECT_TRUE(src.ok()) << src.status();
    return std::move(*src);
  }

  std::shared_ptr<const TrainingSamples> Samples(std::vector<WeightedSource> sources,
                                                 int64_t seq_len, uint64_t seed) {
    SampleOptions o;
    o.seq_len = seq_len;
    o.seed = seed;
    auto s = TrainingSamples::Create(std::move(sources), o);
    EXPECT_TRUE(s.ok()) << s.status();
    return std::move(*s);
  }

  std::filesystem::path dir_;
};

std::vector<int32_t> GetSample(const TrainingSamples& s, int64_t g) {
  std::vector<int32_t> out(static_cast<size_t>(s.seq_len() + 1));
  const absl::Status st = s.Get(g, out.data());
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

TEST(FeistelTest, IsAPermutationForAnySize) {
  for (uint64_t n : {1ull, 2ull, 3ull, 5ull, 16ull, 17ull, 1000ull, 4097ull, 65536ull}) {
    std::vector<uint8_t> seen(n, 0);
    int64_t fixed = 0;
    for (uint64_t x = 0; x < n; ++x) {
      const uint64_t y = FeistelPermute(x, n, 42, "s");
      ASSERT_LT(y, n);
      EXPECT_EQ(seen[y], 0) << "n=" << n << " collision at " << y;
      seen[y] = 1;
      fixed += (x == y);
    }
    if (n >= 1000) EXPECT_LT(fixed, static_cast<int64_t>(n / 50)) << n;  // ~1 expected
  }
}

TEST(FeistelTest, DependsOnSeedAndStream) {
  int same_seed = 0, same_stream = 0;
  for (uint64_t x = 0; x < 1000; ++x) {
    const uint64_t a = FeistelPermute(x, 1000, 1, "a");
    EXPECT_EQ(a, FeistelPermute(x, 1000, 1, "a"));
    same_seed += a == FeistelPermute(x, 1000, 2, "a");
    same_stream += a == FeistelPermute(x, 1000, 1, "b");
  }
  EXPECT_LT(same_seed, 20);
  EXPECT_LT(same_stream, 20);
}

TEST_F(DatasetTest, SamplesAreStrideTWindowsAcrossDocuments) {
  // 103 tokens in documents of uneven length; T = 10 -> (103 - 1) / 10 = 10 windows per epoch.
  auto src = Counting("c", {7, 30, 1, 50, 15});
  auto s = Samples({{1.0, src}}, 10, 5);
  ASSERT_EQ(s->samples_per_epoch(0), 10);
  std::set<int64_t> windows;
  for (int64_t g = 0; g < 10; ++g) {
    const auto loc = s->Locate(g);
    EXPECT_EQ(loc.epoch, 0);
    windows.insert(loc.window);
    const std::vector<int32_t> sample = GetSample(*s, g);
    for (int i = 0; i <= 10; ++i) EXPECT_EQ(sample[i], loc.window * 10 + i);
  }
  EXPECT_EQ(windows.size(), 10u);  // each window exactly once per epoch
  EXPECT_EQ(*windows.rbegin(), 9);
  // Batches: targets are the inputs shifted by one.
  std::vector<int32_t> in(3 * 10), tg(3 * 10);
  ASSERT_TRUE(s->GetBatch(4, 3, in.data(), tg.data()).ok());
  for (int b = 0; b < 3; ++b) {
    const std::vector<int32_t> sample = GetSample(*s, 4 + b);
    for (int t = 0; t < 10; ++t) {
      EXPECT_EQ(in[b * 10 + t], sample[t]);
      EXPECT_EQ(tg[b * 10 + t], sample[t + 1]);
    }
  }
}

TEST_F(DatasetTest, EpochsReshuffleAndOrderDependsOnlyOnSeedAndData) {
  auto src = Counting("c", {400, 601});
  auto a = Samples({{1.0, src}}, 8, 11);
  auto b = Samples({{1.0, Counting("c2", {400, 601})}}, 8, 11);
  auto c = Samples({{1.0, src}}, 8, 12);
  const int64_t S = a->samples_per_epoch(0);
  ASSERT_EQ(S, 125);
  std::vector<int64_t> e0, e1, other_seed;
  for (int64_t g = 0; g < S; ++g) {
    e0.push_back(a->Locate(g).window);
    e1.push_back(a->Locate(S + g).window);
    EXPECT_EQ(a->Locate(S + g).epoch, 1);
    other_seed.push_back(c->Locate(g).window);
    EXPECT_EQ(GetSample(*a, g), GetSample(*b, g));
    EXPECT_EQ(GetSample(*a, 3 * S + g), GetSample(*b, 3 * S + g));
  }
  EXPECT_NE(e0, e1);
  EXPECT_NE(e0, other_seed);
  std::vector<int64_t> sorted = e1;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < S; ++i) EXPECT_EQ(sorted[i], i);
  // Not the identity either.
  int in_place = 0;
  for (int64_t i = 0; i < S; ++i) in_place += e0[i] == i;
  EXPECT_LT(in_place, 10);
}

// The global sequence read by dp ranks, micro-batch by micro-batch, interleaved in rank order,
// is the dp = 1 sequence.
TEST_F(DatasetTest, OrderIsIndependentOfDataParallelSize) {
  auto a = Counting("a", {3000, 1234});
  auto b = Counting("b", {2000}, 1 << 20);
  for (bool blended : {false, true}) {
    SCOPED_TRACE(blended ? "blend" : "single");
    std::vector<WeightedSource> srcs = {{0.6, a}};
    if (blended) srcs.push_back({0.4, b});
    auto s = Samples(srcs, 16, 3);
    const int64_t T = 16, m = 2, total = 8 * 64;  // several epochs of the blend's sources
    std::vector<int32_t> reference;
    for (int64_t g = 0; g < total; ++g) {
      const std::vector<int32_t> x = GetSample(*s, g);
      reference.insert(reference.end(), x.begin(), x.end() - 1);
    }
    for (int64_t dp : {1, 2, 4}) {
      std::vector<SampleStream> ranks;
      for (int64_t r = 0; r < dp; ++r) ranks.emplace_back(s, r, dp, m);
      std::vector<int32_t> seen;
      std::vector<int32_t> in(m * T), tg(m * T);
      while (static_cast<int64_t>(seen.size()) < total * T) {
        for (auto& rank : ranks) {
          ASSERT_TRUE(rank.Next(in.data(), tg.data()).ok());
          seen.insert(seen.end(), in.begin(), in.end());
        }
      }
      EXPECT_EQ(seen, reference) << "dp=" << dp;
      for (auto& rank : ranks) EXPECT_EQ(rank.consumed_samples(), total);
    }
  }
}

// Stop anywhere, save the state as JSON, restore into a fresh process-like object: the samples
// that follow are exactly those the uninterrupted run reads.
TEST_F(DatasetTest, RestoreContinuesExactly) {
  auto a = Counting("a", {999, 501});
  auto b = Counting("b", {777}, 1 << 20);
  const std::vector<WeightedSource> srcs = {{0.7, a}, {0.3, b}};
  auto s = Samples(srcs, 12, 9);
  const int64_t m = 3, dp = 2;
  for (int64_t stop_steps : {0, 1, 7, 40, 333}) {
    SCOPED_TRACE(stop_steps);
    SampleStream run(s, 1, dp, m);
    std::vector<int32_t> in(m * 12), tg(m * 12);
    for (int64_t i = 0; i < stop_steps; ++i) ASSERT_TRUE(run.Next(in.data(), tg.data()).ok());
    const std::string saved = run.State().ToJson();
    std::vector<std::vector<int32_t>> expected;
    for (int i = 0; i < 20; ++i) {
      ASSERT_TRUE(run.Next(in.data(), tg.data()).ok());
      expected.push_back(in);
      expected.push_back(tg);
    }
    auto fresh = Samples(srcs, 12, 9);  // empty blend cache: random access from scratch
    SampleStream resumed(fresh, 1, dp, m);
    auto state = DataLoaderState::FromJson(saved);
    ASSERT_TRUE(state.ok()) << state.status();
    EXPECT_EQ(state->consumed_samples, stop_steps * m * dp);
    ASSERT_TRUE(resumed.Restore(*state).ok());
    std::vector<std::vector<int32_t>> got;
    for (int i = 0; i < 20; ++i) {
      ASSERT_TRUE(resumed.Next(in.data(), tg.data()).ok());
      got.push_back(in);
      got.push_back(tg);
    }
    EXPECT_EQ(got, expected);
  }
}

// Any consumed-sample offset, not only step boundaries, restores to the same samples.
TEST_F(DatasetTest, RestoreAtAnySample) {
  auto a = Counting("a", {2000, 345});
  auto b = Counting("b", {900}, 1 << 20);
  const std::vector<WeightedSource> srcs = {{0.55, a}, {0.45, b}};
  auto s = Samples(srcs, 7, 21);
  for (int64_t consumed : {1, 2, 3, 4095, 4096, 4097, 9999, 12347}) {
    auto fresh = Samples(srcs, 7, 21);
    SampleStream stream(fresh, 2, 3, 2);
    auto state = DataLoaderState::FromJson(s->State(consumed).ToJson());
    ASSERT_TRUE(state.ok());
    ASSERT_TRUE(stream.Restore(*state).ok());
    auto batch = fresh->GetBatch(stream.next_global_index(), 2);
    ASSERT_TRUE(batch.ok());
    std::vector<int32_t> in(2 * 7), tg(2 * 7);
    ASSERT_TRUE(stream.Next(in.data(), tg.data()).ok());
    EXPECT_EQ(in, batch->inputs);
    EXPECT_EQ(tg, batch->targets);
    // Rank 2 of 3 with micro-batch 2 reads global samples consumed + 4 and consumed + 5.
    const std::vector<int32_t> first = GetSample(*s, consumed + 4);
    const std::vector<int32_t> second = GetSample(*s, consumed + 5);
    EXPECT_TRUE(std::equal(first.begin(), first.end() - 1, in.begin())) << consumed;
    EXPECT_TRUE(std::equal(second.begin() + 1, second.end(), tg.begin() + 7)) << consumed;
    EXPECT_EQ(stream.consumed_samples(), consumed + 6);
  }
}

TEST_F(DatasetTest, StateRoundTripsAndRefusesOtherData) {
  auto a = Counting("a", {500});
  auto s = Samples({{1.0, a}}, 10, 4);
  DataLoaderState st = s->State(1234);
  auto back = DataLoaderState::FromJson(st.ToJson());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->consumed_samples, 1234);
  EXPECT_EQ(back->seed, 4u);
  EXPECT_EQ(back->seq_len, 10);
  ASSERT_EQ(back->sources.size(), 1u);
  EXPECT_EQ(back->sources[0].path, a->path());
  EXPECT_EQ(back->sources[0].num_tokens, 500);
  EXPECT_TRUE(s->CheckState(*back).ok());

  EXPECT_THAT(s->CheckState({.seed = 5, .seq_len = 10, .sources = st.sources}).message(),
              HasSubstr("seed 5"));
  EXPECT_THAT(s->CheckState({.seed = 4, .seq_len = 11, .sources = st.sources}).message(),
              HasSubstr("seq_len 11"));
  DataLoaderState other = st;
  other.sources[0].num_tokens = 499;
  EXPECT_THAT(s->CheckState(other).message(), HasSubstr("the checkpoint's"));
  other = st;
  other.sources.push_back(other.sources[0]);
  EXPECT_THAT(s->CheckState(other).message(), HasSubstr("had 2 sources"));
  SampleStream stream(s, 0, 1, 1);
  EXPECT_EQ(stream.Restore(other).code(), absl::StatusCode::kInvalidArgument);

  for (const char* bad : {"", "[]", "{\"version\": 2}",
                          "{\"version\": 1, \"seed\": 1, \"seq_len\": 2, \"sources\": []}",
                          "{\"version\": 1, \"consumed_samples\": -1, \"seed\": 1, \"seq_len\": 2, "
                          "\"sources\": []}",
                          "{\"version\": 1, \"consumed_samples\": \"x\", \"seed\": 1, \"seq_len\": 2, "
                          "\"sources\": []}",
                          "{\"version\": 1, \"consumed_samples\": 1, \"seed\": 1, \"seq_len\": 2, "
                          "\"sources\": [{\"path\": 3}]}"}) {
    auto r = DataLoaderState::FromJson(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

// The state comes from a file on disk: malformed, hostile or out-of-range JSON is a clear error.
TEST(DataLoaderStateTest, UntrustedJsonIsRejectedWithTheReason) {
  const std::string head = R"({"version": 1, "consumed_samples": 5, "seed": 7, "seq_len": 8, )";
  const std::string good = head + R"("sources": [{"path": "a", "num_tokens": 100, "weight": 1.0}]})";
  ASSERT_TRUE(DataLoaderState::FromJson(good).ok());
  struct Case {
    std::string json;
    std::string fragment;
  };
  const Case cases[] = {
      {good + std::string("\0junk", 5), "data loader state: invalid JSON: NUL byte at offset"},
      {std::string(100000, '[') + std::string(100000, ']'),
       "data loader state: JSON nested deeper than 64 levels"},
      {head + R"("seed": 8, "sources": []})", "data loader state: duplicate key \"seed\" in (root)"},
      {head + R"("sources": [{"path": "a", "path": "b", "num_tokens": 1, "weight": 1}]})",
       "duplicate key \"path\" in sources[0]"},
      {R"({"version": 1, "consumed_samples": 18446744073709551615, "seed": 1, "seq_len": 2,)"
       R"( "sources": []})",
       "\"consumed_samples\" must be an integer >= 0, got 18446744073709551615"},
      {R"({"version": 1, "consumed_samples": 0, "seed": -1, "seq_len": 2, "sources": []})",
       "\"seed\" must be a non-negative integer, got -1"},
      {R"({"version": 1, "consumed_samples": 0, "seed": 1, "seq_len": 0, "sources": []})",
       "\"seq_len\" must be an integer >= 1, got 0"},
      {head + R"("sources": [{"path": "a", "num_tokens": -4, "weight": 1.0}]})",
       "sources[0]: \"num_tokens\" must be an integer >= 0, got -4"},
      {head + R"("sources": [{"path": "a", "num_tokens": 4, "weight": 0}]})",
       "sources[0]: weight 0 must be finite and > 0"},
      {"[1, 2]", "data loader state: not a JSON object but [1,2]"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.fragment);
    auto r = DataLoaderState::FromJson(c.json);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr(c.fragment));
    EXPECT_LT(r.status().message().size(), 300u);
  }
}

TEST_F(DatasetTest, BlendFractionsTrackWeights) {
  auto a = Counting("a", {300});
  auto b = Counting("b", {300}, 1000);
  auto c = Counting("c", {300}, 2000);
  for (const std::vector<double>& w :
       std::vector<std::vector<double>>{{0.7, 0.3}, {5, 3, 2}, {1, 1, 1}, {0.99, 0.01, 0.5}}) {
    std::vector<WeightedSource> srcs;
    const std::shared_ptr<const TokenSource> all[] = {a, b, c};
    double total = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      srcs.push_back({w[i], all[i]});
      total += w[i];
    }
    auto s = Samples(srcs, 10, 1);
    std::vector<int64_t> count(w.size(), 0);
    double worst = 0;
    for (int64_t g = 0; g < 20000; ++g) {
      const auto loc = s->Locate(g);
      // Each source's own counter runs 0, 1, 2, ... in the order it is picked.
      ASSERT_EQ(loc.local_index, count[loc.source]);
      ++count[loc.source];
      for (size_t d = 0; d < w.size(); ++d) {
        worst = std::max(worst, std::abs(static_cast<double>(count[d]) -
                                         w[d] / total * static_cast<double>(g + 1)));
      }
    }
    EXPECT_LT(worst, 1.0) << "largest deviation from weight * n";
    // Samples come from the source the schedule names.
    for (int64_t g = 0; g < 50; ++g) {
      const auto loc = s->Locate(g);
      EXPECT_EQ(GetSample(*s, g)[0], 1000 * loc.source + loc.window * 10);
    }
  }
}

TEST_F(DatasetTest, BlendRandomAccessMatchesSequential) {
  auto a = Counting("a", {300});
  auto b = Counting("b", {200}, 1000);
  const std::vector<WeightedSource> srcs = {{0.62, a}, {0.38, b}};
  auto seq = Samples(srcs, 10, 2);
  std::vector<TrainingSamples::Location> walk;
  for (int64_t g = 0; g < 30000; ++g) walk.push_back(seq->Locate(g));
  auto jumpy = Samples(srcs, 10, 2);
  for (int64_t g : {29999, 0, 17000, 4095, 4096, 12345, 1, 29998, 8191}) {
    const auto loc = jumpy->Locate(g);
    EXPECT_EQ(loc.source, walk[g].source) << g;
    EXPECT_EQ(loc.local_index, walk[g].local_index) << g;
    EXPECT_EQ(loc.window, walk[g].window) << g;
  }
  // Concurrent readers see the same samples.
  std::vector<std::vector<int32_t>> par(8);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int64_t g = t * 3000; g < t * 3000 + 3000; g += 7) {
        std::vector<int32_t> x(11);
        if (!jumpy->Get(g, x.data()).ok()) return;
        par[t].push_back(x[0]);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 8; ++t) {
    size_t k = 0;
    for (int64_t g = t * 3000; g < t * 3000 + 3000; g += 7, ++k) {
      ASSERT_LT(k, par[t].size());
      EXPECT_EQ(par[t][k], 1000 * walk[g].source + walk[g].window * 10);
    }
  }
}

TEST_F(DatasetTest, CreateErrors) {
  auto a = Counting("a", {20});
  SampleOptions o;
  o.seq_len = 20;
  auto r = TrainingSamples::Create({{1.0, a}}, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr(a->path()));
  EXPECT_THAT(r.status().message(), HasSubstr("has 20 tokens, fewer than the seq_len + 1 = 21"));
  o.seq_len = 19;
  EXPECT_TRUE(TrainingSamples::Create({{1.0, a}}, o).ok());
  EXPECT_THAT(TrainingSamples::Create({{0.0, a}}, o).status().message(), HasSubstr("weight 0"));
  EXPECT_THAT(TrainingSamples::Create({{-1.0, a}}, o).status().message(), HasSubstr("weight -1"));
  EXPECT_FALSE(TrainingSamples::Create({}, o).ok());
  o.seq_len = 0;
  EXPECT_THAT(TrainingSamples::Create({{1.0, a}}, o).status().message(), HasSubstr("seq_len"));
}

TEST_F(DatasetTest, TokensOutsideVocabAreReportedWithFileAndPosition) {
  auto a = Counting("a", {100});
  SampleOptions o;
  o.seq_len = 9;
  o.seed = 1;
  o.vocab_size = 50;
  auto s = TrainingSamples::Create({{1.0, a}}, o);
  ASSERT_TRUE(s.ok());
  int bad = 0;
  for (int64_t g = 0; g < (*s)->samples_per_epoch(0); ++g) {
    std::vector<int32_t> x(10);
    const absl::Status st = (*s)->Get(g, x.data());
    const int64_t w = (*s)->Locate(g).window;
    if (w * 9 + 9 < 50) {
      EXPECT_TRUE(st.ok()) << st;
    } else {
      ++bad;
      EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
      EXPECT_THAT(st.message(), HasSubstr(a->path()));
      const int64_t pos = std::max<int64_t>(w * 9, 50);
      EXPECT_THAT(st.message(), HasSubstr(absl::StrCat("token at position ", pos, " has id ", pos,
                                                       ", which is >= vocab_size 50")));
    }
  }
  EXPECT_GT(bad, 0);
}

TEST_F(DatasetTest, SplitTrainValByDocuments) {
  std::vector<int> lengths(200);
  for (int i = 0; i < 200; ++i) lengths[i] = 5 + i % 7;
  auto src = Counting("s", lengths);
  auto split = SplitTrainVal(src, 0.01);
  ASSERT_TRUE(split.ok()) << split.status();
  auto [train, val] = *split;
  // round(200 * 0.01) = 2 documents of validation: the last two.
  EXPECT_EQ(val->DocumentStarts()->size(), 3u);
  EXPECT_EQ(train->DocumentStarts()->size(), 199u);
  EXPECT_EQ(train->num_tokens() + val->num_tokens(), src->num_tokens());
  EXPECT_EQ(val->num_tokens(), lengths[198] + lengths[199]);
  std::vector<int32_t> first(1);
  ASSERT_TRUE(val->Read(0, 1, first.data()).ok());
  EXPECT_EQ(first[0], train->num_tokens());  // val continues where train stops
  // Deterministic, and at least one document each way.
  auto again = SplitTrainVal(src, 0.01);
  EXPECT_EQ(again->second->num_tokens(), val->num_tokens());
  auto tiny = SplitTrainVal(src, 0.0001);
  EXPECT_EQ(tiny->second->DocumentStarts()->size(), 2u);
  auto most = SplitTrainVal(src, 0.9999);
  EXPECT_EQ(most->first->DocumentStarts()->size(), 2u);

  EXPECT_EQ(SplitTrainVal(src, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SplitTrainVal(src, 1).status().code(), absl::StatusCode::kInvalidArgument);
  auto one = Counting("one", {50});
  EXPECT_THAT(SplitTrainVal(one, 0.1).status().message(), HasSubstr("1 document(s)"));
}

TEST_F(DatasetTest, OpenDatasetsFromConfig) {
  Counting("single", std::vector<int>(100, 20));
  Counting("other", std::vector<int>(10, 30));
  auto cfg = ParseConfig(absl::StrCat("data:\n  train: ", Path("single"),
                                      "\nmodel:\n  seq_len: 16\n  vocab_size: 1000000\n"
                                      "train:\n  seed: 77\n"),
                         {});
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  DatasetOptions opts = DatasetOptions::FromConfig(*cfg);
  EXPECT_EQ(opts.seq_len, 16);
  EXPECT_EQ(opts.seed, 77u);
  auto ds = OpenDatasets(opts);
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_NE(ds->val, nullptr);
  EXPECT_EQ(ds->train->source(0).num_tokens(), 99 * 20);  // 1% of 100 documents held out
  EXPECT_EQ(ds->val->source(0).num_tokens(), 20);
  // Val and train never share tokens.
  std::vector<int32_t> x = GetSample(*ds->val, 0);
  EXPECT_GE(x[0], 99 * 20);

  opts.val = Path("other");
  ds = OpenDatasets(opts);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->train->source(0).num_tokens(), 100 * 20);
  EXPECT_EQ(ds->val->source(0).num_tokens(), 300);

  opts = DatasetOptions::FromConfig(*cfg);
  opts.val_fraction = 0;
  ds = OpenDatasets(opts);
  ASSERT_TRUE(ds.ok());
  EXPECT_EQ(ds->val, nullptr);

  opts = DatasetOptions::FromConfig(*cfg);
  opts.train.clear();
  opts.blend = {{0.7, Path("single")}, {0.3, Path("other")}};
  ds = OpenDatasets(opts);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->train->num_sources(), 2);
  EXPECT_EQ(ds->val->num_sources(), 2);
  EXPECT_DOUBLE_EQ(ds->val->weight(0), 0.7);

  opts.blend = {{0.7, Path("single")}, {0.3, Path("missing")}};
  auto missing = OpenDatasets(opts);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("data.blend[1]"));
  EXPECT_THAT(missing.status().message(), HasSubstr(Path("missing")));
  opts.train = Path("single");
  EXPECT_THAT(OpenDatasets(opts).status().message(), HasSubstr("both set"));
}

}  // namespace
}  // namespace lattice
