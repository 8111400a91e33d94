// Skipped sample ranges (runtime/data/sample_ranges.h) and the loader that honours them
// (SampleStream, runtime/data/dataset.h): what a loss-spike rollback leaves behind.
#include "runtime/data/sample_ranges.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/data/dataset.h"
#include "runtime/data/token_file.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;

TEST(SampleRanges, MergeSortsJoinsTouchingAndOverlappingAndDropsEmpty) {
  EXPECT_EQ(MergeSampleRanges({{30, 40}, {5, 10}, {10, 12}, {35, 50}, {60, 60}, {7, 8}}),
            (std::vector<SampleRange>{{5, 12}, {30, 50}}));
  EXPECT_EQ(MergeSampleRanges({}), std::vector<SampleRange>{});
  EXPECT_EQ(MergeSampleRanges({{3, 4}, {5, 6}}), (std::vector<SampleRange>{{3, 4}, {5, 6}}));
}

TEST(SampleRanges, LookupsHopOverRanges) {
  const std::vector<SampleRange> r = {{5, 8}, {9, 10}, {20, 25}};
  EXPECT_EQ(FirstUnskipped(0, r), 0);
  EXPECT_EQ(FirstUnskipped(5, r), 8);
  EXPECT_EQ(FirstUnskipped(7, r), 8);
  EXPECT_EQ(FirstUnskipped(9, r), 10);
  EXPECT_EQ(FirstUnskipped(25, r), 25);
  EXPECT_EQ(UnskippedRunEnd(0, r), 5);
  EXPECT_EQ(UnskippedRunEnd(8, r), 9);
  EXPECT_EQ(UnskippedRunEnd(10, r), 20);
  EXPECT_EQ(UnskippedRunEnd(30, r), std::numeric_limits<int64_t>::max());
  // The unskipped indices in order, against a brute-force list.
  std::vector<int64_t> order;
  for (int64_t g = 0; g < 60; ++g) {
    bool skip = false;
    for (const SampleRange& x : r) skip = skip || (g >= x.begin && g < x.end);
    if (!skip) order.push_back(g);
  }
  for (int64_t from = 0; from < 30; ++from) {
    const size_t first = std::lower_bound(order.begin(), order.end(), from) - order.begin();
    for (int64_t n = 0; n < 20; ++n) {
      EXPECT_EQ(NthUnskipped(from, n, r), order[first + n]) << from << " " << n;
    }
  }
  EXPECT_EQ(NthUnskipped(3, 4, {}), 7);
  EXPECT_EQ(FormatSampleRanges(r), "[5, 8), [9, 10), [20, 25)");
  EXPECT_EQ(FormatSampleRanges({}), "none");
}

TEST(SampleRanges, JsonRoundTripAndRefusals) {
  const std::vector<SampleRange> r = {{240, 296}, {400, 408}};
  const nlohmann::json j = SampleRangesToJson(r);
  EXPECT_EQ(j.dump(), "[[240,296],[400,408]]");
  absl::StatusOr<std::vector<SampleRange>> back = SampleRangesFromJson(j);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, r);
  auto error = [](const char* text) {
    absl::StatusOr<std::vector<SampleRange>> s = SampleRangesFromJson(nlohmann::json::parse(text));
    EXPECT_FALSE(s.ok()) << text;
    return std::string(s.status().message());
  };
  EXPECT_THAT(error("{}"), HasSubstr("must be an array"));
  EXPECT_THAT(error("[[3]]"), HasSubstr("\"skipped\"[0] must be [begin, end]"));
  EXPECT_THAT(error("[[5, 5]]"), HasSubstr("begin < end"));
  EXPECT_THAT(error("[[-1, 5]]"), HasSubstr("0 <= begin"));
  EXPECT_THAT(error("[[1, 2.5]]"), HasSubstr("integers"));
  EXPECT_THAT(error("[[0, 18446744073709551615]]"), HasSubstr("[begin, end]"));
  EXPECT_THAT(error("[[10, 20], [5, 8]]"), HasSubstr("sorted and merged"));
  EXPECT_THAT(error("[[10, 20], [20, 28]]"), HasSubstr("sorted and merged"));
}

TEST(SampleRanges, LoaderStateCarriesThemAndOlderStatesHaveNone) {
  DataLoaderState s;
  s.consumed_samples = 336;
  s.seed = 7;
  s.seq_len = 16;
  s.sources.push_back({"data.bin", 20000, 1.0});
  s.skipped = {{240, 296}};
  absl::StatusOr<DataLoaderState> back = DataLoaderState::FromJson(s.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->skipped, s.skipped);
  EXPECT_EQ(back->consumed_samples, 336);
  // A checkpoint written before the field existed.
  absl::StatusOr<DataLoaderState> old = DataLoaderState::FromJson(
      R"({"version":1,"consumed_samples":8,"seed":7,"seq_len":16,"sources":[]})");
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_TRUE(old->skipped.empty());
  absl::StatusOr<DataLoaderState> bad = DataLoaderState::FromJson(
      R"({"version":1,"consumed_samples":8,"seed":7,"seq_len":16,"sources":[],"skipped":[[9,3]]})");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("data loader state: \"skipped\"[0]"));
}

class SkippingStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("lattice_sample_ranges_", ::getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    // Token at stream position p is p: every sample says which window it is.
    MegatronDatasetWriter::Options opt;
    opt.vocab_size = 1 << 30;
    const std::string prefix = (dir_ / "counting").string();
    auto w = MegatronDatasetWriter::Create(prefix, opt);
    ASSERT_TRUE(w.ok()) << w.status();
    std::vector<int32_t> doc(2001);
    for (size_t i = 0; i < doc.size(); ++i) doc[i] = static_cast<int32_t>(i);
    ASSERT_TRUE((*w)->AddDocument(doc).ok());
    ASSERT_TRUE((*w)->Finalize().ok());
    auto src = OpenTokenSource(prefix);
    ASSERT_TRUE(src.ok()) << src.status();
    SampleOptions o;
    o.seq_len = 4;
    o.seed = 11;
    auto s = TrainingSamples::Create({{1.0, std::move(*src)}}, o);
    ASSERT_TRUE(s.ok()) << s.status();
    samples_ = std::move(*s);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Row b of `batch` is global sample g.
  bool RowIs(const TokenBatch& batch, int64_t b, int64_t g) const {
    std::vector<int32_t> want(5);
    EXPECT_TRUE(samples_->Get(g, want.data()).ok());
    for (int64_t i = 0; i < 4; ++i) {
      if (batch.inputs[b * 4 + i] != want[i] || batch.targets[b * 4 + i] != want[i + 1]) {
        return false;
      }
    }
    return true;
  }

  std::filesystem::path dir_;
  std::shared_ptr<const TrainingSamples> samples_;
};

TEST_F(SkippingStreamTest, SkippedSamplesNeverComeAndTheOrderIsKeptUnderAnyDp) {
  // Ranges that start and end inside micro-steps, one at the very start, touching ones that
  // merge, and one added later that overlaps an earlier one.
  const std::vector<SampleRange> skips = {{0, 2}, {10, 14}, {14, 15}, {20, 37}, {30, 45}};
  std::vector<int64_t> order;  // the dp = 1 sequence with the skipped indices left out
  for (int64_t g = 0; order.size() < 400; ++g) {
    bool skip = false;
    for (const SampleRange& x : skips) skip = skip || (g >= x.begin && g < x.end);
    if (!skip) order.push_back(g);
  }
  for (int64_t dp : {1, 2, 4}) {
    for (int64_t m : {1, 3}) {
      std::vector<SampleStream> ranks;
      for (int64_t r = 0; r < dp; ++r) {
        ranks.emplace_back(samples_, r, dp, m);
        for (const SampleRange& x : skips) ASSERT_TRUE(ranks.back().Skip(x).ok());
      }
      EXPECT_EQ(ranks[0].skipped(), (std::vector<SampleRange>{{0, 2}, {10, 15}, {20, 45}}));
      size_t next = 0;
      for (int step = 0; step < 30; ++step) {
        for (int64_t r = 0; r < dp; ++r) {
          TokenBatch b;
          ASSERT_TRUE(ranks[r].Next(b).ok());
          for (int64_t row = 0; row < m; ++row) {
            ASSERT_TRUE(RowIs(b, row, order[next + r * m + row]))
                << "dp " << dp << " m " << m << " step " << step << " rank " << r;
          }
        }
        next += m * dp;
        // The position is just past the last sample the micro-step read, on every rank.
        for (int64_t r = 0; r < dp; ++r) {
          ASSERT_EQ(ranks[r].consumed_samples(), order[next - 1] + 1);
        }
      }
    }
  }
}

TEST_F(SkippingStreamTest, RestoreKeepsTheRangesAndAnotherDpContinuesTheSameSequence) {
  SampleStream a(samples_, 0, 1, 2);
  TokenBatch b;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(a.Next(b).ok());  // position 10
  // A rollback to position 4 that skips [4, 10), plus a range ahead of the position.
  DataLoaderState saved = a.State();
  saved.consumed_samples = 4;
  saved.skipped = {{4, 10}, {16, 18}};
  absl::StatusOr<DataLoaderState> parsed = DataLoaderState::FromJson(saved.ToJson());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  std::vector<int64_t> want = {10, 11, 12, 13, 14, 15, 18, 19, 20, 21, 22, 23};
  // Resumed at dp = 3 with micro-batch 2: rank r reads want[r*2 .. r*2+1], then want[6 + ...].
  std::vector<SampleStream> ranks;
  for (int64_t r = 0; r < 3; ++r) {
    ranks.emplace_back(samples_, r, 3, 2);
    ASSERT_TRUE(ranks.back().Restore(*parsed).ok());
    EXPECT_EQ(ranks.back().skipped(), parsed->skipped);
  }
  for (int step = 0; step < 2; ++step) {
    for (int64_t r = 0; r < 3; ++r) {
      ASSERT_TRUE(ranks[r].Next(b).ok());
      EXPECT_TRUE(RowIs(b, 0, want[step * 6 + r * 2])) << step << " " << r;
      EXPECT_TRUE(RowIs(b, 1, want[step * 6 + r * 2 + 1])) << step << " " << r;
    }
  }
  EXPECT_EQ(ranks[0].consumed_samples(), 24);
  // The state a checkpoint would save now keeps the ranges.
  EXPECT_EQ(ranks[2].State().skipped, (std::vector<SampleRange>{{4, 10}, {16, 18}}));
  EXPECT_FALSE(a.Skip({5, 5}).ok());
  EXPECT_FALSE(a.Skip({-1, 5}).ok());
}

}  // namespace
}  // namespace lattice
