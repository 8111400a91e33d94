#include "parallel/process_grid.h"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/communicator.h"

namespace lattice {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

ProcessGrid MustCreate(int world, int rank, int tp, int pp, int dp = 0) {
  absl::StatusOr<ProcessGrid> g = ProcessGrid::Create(world, rank, tp, pp, dp);
  EXPECT_TRUE(g.ok()) << g.status();
  return g.ok() ? *g : ProcessGrid::Single();
}

// Megatron's documented example (parallel_state.initialize_model_parallel): 16 GPUs,
// tensor-parallel 2, pipeline-parallel 4, so data-parallel 2.
TEST(ProcessGridTest, MatchesMegatronsSixteenGpuExample) {
  const std::vector<std::vector<int>> tp_groups = {{0, 1},   {2, 3},   {4, 5},   {6, 7},
                                                   {8, 9},   {10, 11}, {12, 13}, {14, 15}};
  const std::vector<std::vector<int>> dp_groups = {{0, 2},   {1, 3},   {4, 6},   {5, 7},
                                                   {8, 10},  {9, 11},  {12, 14}, {13, 15}};
  const std::vector<std::vector<int>> pp_groups = {
      {0, 4, 8, 12}, {1, 5, 9, 13}, {2, 6, 10, 14}, {3, 7, 11, 15}};
  auto group_of = [](const std::vector<std::vector<int>>& groups, int rank) {
    for (const auto& g : groups) {
      if (std::find(g.begin(), g.end(), rank) != g.end()) return g;
    }
    return std::vector<int>();
  };
  for (int rank = 0; rank < 16; ++rank) {
    ProcessGrid g = MustCreate(16, rank, /*tp=*/2, /*pp=*/4);
    EXPECT_EQ(g.dp_size(), 2);
    EXPECT_EQ(g.TpGroup(), group_of(tp_groups, rank)) << "rank " << rank;
    EXPECT_EQ(g.DpGroup(), group_of(dp_groups, rank)) << "rank " << rank;
    EXPECT_EQ(g.PpGroup(), group_of(pp_groups, rank)) << "rank " << rank;
    const std::vector<int> pipe = group_of(pp_groups, rank);
    EXPECT_EQ(g.EmbeddingGroup(), (std::vector<int>{pipe.front(), pipe.back()}));
  }
}

TEST(ProcessGridTest, EightRankTableFromTheHeader) {
  const int want_tp[] = {0, 1, 0, 1, 0, 1, 0, 1};
  const int want_dp[] = {0, 0, 1, 1, 0, 0, 1, 1};
  const int want_pp[] = {0, 0, 0, 0, 1, 1, 1, 1};
  for (int rank = 0; rank < 8; ++rank) {
    ProcessGrid g = MustCreate(8, rank, 2, 2, 2);
    EXPECT_EQ(g.tp_rank(), want_tp[rank]);
    EXPECT_EQ(g.dp_rank(), want_dp[rank]);
    EXPECT_EQ(g.pp_rank(), want_pp[rank]);
  }
  ProcessGrid g5 = MustCreate(8, 5, 2, 2, 2);
  EXPECT_THAT(g5.TpGroup(), ElementsAre(4, 5));
  EXPECT_THAT(g5.DpGroup(), ElementsAre(5, 7));
  EXPECT_THAT(g5.PpGroup(), ElementsAre(1, 5));
  EXPECT_THAT(g5.ModelParallelGroup(), ElementsAre(0, 1, 4, 5));
  EXPECT_THAT(g5.EmbeddingGroup(), ElementsAre(1, 5));
  EXPECT_EQ(g5.ToString(), "ProcessGrid(world=8 tp=2 dp=2 pp=2; rank 5 = tp 1, dp 0, pp 1)");
}

// Every (world, tp, pp) with tp * pp dividing world, up to 24 ranks: the rank order, the
// groups and the split arguments agree with a brute-force enumeration.
TEST(ProcessGridTest, RankOrderAndGroupsForManyShapes) {
  int shapes = 0;
  for (int world = 1; world <= 24; ++world) {
    for (int tp = 1; tp <= world; ++tp) {
      for (int pp = 1; pp <= world; ++pp) {
        if (world % (tp * pp) != 0) continue;
        const int dp = world / (tp * pp);
        ++shapes;
        // Enumerate in Megatron order: pp slowest, then dp, then tp fastest.
        std::vector<GridCoord> coords;
        for (int p = 0; p < pp; ++p)
          for (int d = 0; d < dp; ++d)
            for (int t = 0; t < tp; ++t) coords.push_back({t, d, p});
        ASSERT_EQ(static_cast<int>(coords.size()), world);

        std::vector<ProcessGrid> grids;
        for (int r = 0; r < world; ++r) grids.push_back(MustCreate(world, r, tp, pp, dp));
        for (int r = 0; r < world; ++r) {
          const ProcessGrid& g = grids[static_cast<size_t>(r)];
          const GridCoord c = coords[static_cast<size_t>(r)];
          ASSERT_EQ(g.coord(), c) << "world " << world << " tp " << tp << " pp " << pp
                                  << " rank " << r;
          EXPECT_EQ(g.RankOf(c), r);
          EXPECT_EQ(g.CoordOf(r), c);
          EXPECT_EQ(r, c.tp + tp * (c.dp + dp * c.pp));
          // Group lists: exactly the ranks sharing the other coordinates, in order.
          std::vector<int> want_tp, want_dp, want_pp, want_mp;
          for (int o = 0; o < world; ++o) {
            const GridCoord oc = coords[static_cast<size_t>(o)];
            if (oc.dp == c.dp && oc.pp == c.pp) want_tp.push_back(o);
            if (oc.tp == c.tp && oc.pp == c.pp) want_dp.push_back(o);
            if (oc.tp == c.tp && oc.dp == c.dp) want_pp.push_back(o);
            if (oc.dp == c.dp) want_mp.push_back(o);
          }
          EXPECT_EQ(g.TpGroup(), want_tp);
          EXPECT_EQ(g.DpGroup(), want_dp);
          EXPECT_EQ(g.PpGroup(), want_pp);
          EXPECT_EQ(g.ModelParallelGroup(), want_mp);
          EXPECT_EQ(g.TpGroup()[static_cast<size_t>(c.tp)], r);
          EXPECT_EQ(g.DpGroup()[static_cast<size_t>(c.dp)], r);
          EXPECT_EQ(g.PpGroup()[static_cast<size_t>(c.pp)], r);
          // Pipeline neighbours wrap around.
          EXPECT_EQ(g.NextStageRank(), want_pp[static_cast<size_t>((c.pp + 1) % pp)]);
          EXPECT_EQ(g.PrevStageRank(), want_pp[static_cast<size_t>((c.pp + pp - 1) % pp)]);
          EXPECT_EQ(g.IsFirstStage(), c.pp == 0);
          EXPECT_EQ(g.IsLastStage(), c.pp == pp - 1);
          EXPECT_EQ(g.InEmbeddingGroup(), c.pp == 0 || c.pp == pp - 1);
          std::vector<int> want_emb = {want_pp.front()};
          if (pp > 1) want_emb.push_back(want_pp.back());
          EXPECT_EQ(g.EmbeddingGroup(), want_emb);
        }

        // Split arguments: same color exactly when in the same group, keys order the group
        // the way the group lists do.
        auto check_split = [&](auto split, auto group, const char* name) {
          for (int a = 0; a < world; ++a) {
            const ProcessGrid& ga = grids[static_cast<size_t>(a)];
            const SplitArgs sa = split(ga);
            if (sa.color == Communicator::kNoColor) continue;
            EXPECT_GE(sa.color, 0);
            const std::vector<int> members = group(ga);
            std::vector<std::pair<int, int>> keyed;  // (key, rank) of same-colored ranks
            for (int b = 0; b < world; ++b) {
              const SplitArgs sb = split(grids[static_cast<size_t>(b)]);
              const bool same_group =
                  std::find(members.begin(), members.end(), b) != members.end();
              EXPECT_EQ(sb.color == sa.color, same_group)
                  << name << " world " << world << " tp " << tp << " pp " << pp << " ranks "
                  << a << "," << b;
              if (sb.color == sa.color) keyed.push_back({sb.key, b});
            }
            std::sort(keyed.begin(), keyed.end());
            std::vector<int> ordered;
            for (const auto& kr : keyed) ordered.push_back(kr.second);
            EXPECT_EQ(ordered, members) << name;
          }
        };
        check_split([](const ProcessGrid& g) { return g.TpSplit(); },
                    [](const ProcessGrid& g) { return g.TpGroup(); }, "tp");
        check_split([](const ProcessGrid& g) { return g.DpSplit(); },
                    [](const ProcessGrid& g) { return g.DpGroup(); }, "dp");
        check_split([](const ProcessGrid& g) { return g.PpSplit(); },
                    [](const ProcessGrid& g) { return g.PpGroup(); }, "pp");
        check_split([](const ProcessGrid& g) { return g.ModelParallelSplit(); },
                    [](const ProcessGrid& g) { return g.ModelParallelGroup(); }, "mp");
        check_split([](const ProcessGrid& g) { return g.EmbeddingSplit(); },
                    [](const ProcessGrid& g) { return g.EmbeddingGroup(); }, "embedding");
        for (const ProcessGrid& g : grids) {
          EXPECT_EQ(g.EmbeddingSplit().color == Communicator::kNoColor, !g.InEmbeddingGroup());
        }
      }
    }
  }
  EXPECT_EQ(shapes, 203);  // (tp, pp) pairs with tp * pp dividing world, summed over world = 1..24
}

TEST(ProcessGridTest, ExplicitDpMustMatch) {
  absl::StatusOr<ProcessGrid> g = ProcessGrid::Create(8, 0, 2, 2, 3);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(g.status().message(), HasSubstr("world size 8"));
  EXPECT_THAT(g.status().message(), HasSubstr("tp * dp * pp = 2 * 3 * 2 = 12"));

  ASSERT_TRUE(ProcessGrid::Create(8, 7, 2, 2, 2).ok());
  ASSERT_TRUE(ProcessGrid::Create(12, 11, 2, 2, 3).ok());
}

TEST(ProcessGridTest, DerivedDpMustDivide) {
  absl::StatusOr<ProcessGrid> g = ProcessGrid::Create(6, 0, /*tp=*/4, /*pp=*/1);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(g.status().message(), HasSubstr("world size 6"));
  EXPECT_THAT(g.status().message(), HasSubstr("tp * pp = 4 * 1 = 4"));

  absl::StatusOr<ProcessGrid> big = ProcessGrid::Create(4, 0, 2, 4);
  ASSERT_FALSE(big.ok());
  EXPECT_THAT(big.status().message(), HasSubstr("2 * 4 = 8"));
}

TEST(ProcessGridTest, RejectsNonPositiveSizesAndBadRanks) {
  struct Case {
    int world, rank, tp, pp, dp;
    const char* fragment;
  };
  const Case cases[] = {
      {0, 0, 1, 1, 0, "world size must be >= 1"},
      {4, 0, 0, 1, 0, "tp 0"},
      {4, 0, 1, 0, 0, "pp 0"},
      {4, 0, 1, 1, -2, "dp -2"},
      {4, 4, 1, 1, 0, "rank 4 is outside [0, 4)"},
      {4, -1, 1, 1, 0, "rank -1 is outside [0, 4)"},
      // Products that overflow int must not wrap into a match.
      {4, 0, 65536, 65536, 1, "world size 4 != tp * dp * pp"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ProcessGrid> g = ProcessGrid::Create(c.world, c.rank, c.tp, c.pp, c.dp);
    ASSERT_FALSE(g.ok()) << c.fragment;
    EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument) << c.fragment;
    EXPECT_THAT(g.status().message(), HasSubstr(c.fragment));
  }
}

TEST(ProcessGridTest, SingleIsAWorldOfOne) {
  ProcessGrid g = ProcessGrid::Single();
  EXPECT_EQ(g.world_size(), 1);
  EXPECT_THAT(g.TpGroup(), ElementsAre(0));
  EXPECT_THAT(g.EmbeddingGroup(), ElementsAre(0));
  EXPECT_EQ(g.NextStageRank(), 0);
  EXPECT_EQ(g.PrevStageRank(), 0);
  EXPECT_TRUE(g.IsFirstStage() && g.IsLastStage());
}

TEST(ProcessGridTest, IsAValueType) {
  ProcessGrid a = MustCreate(8, 3, 2, 2);
  ProcessGrid b = a;  // copies, no shared state
  b = MustCreate(8, 6, 2, 2);
  EXPECT_EQ(a.rank(), 3);
  EXPECT_EQ(b.rank(), 6);
  EXPECT_EQ(a.coord(), (GridCoord{1, 1, 0}));
  EXPECT_EQ(b.coord(), (GridCoord{0, 1, 1}));
}

TEST(ProcessGridTest, SplitGridOnSelf) {
  SelfCommunicator world;
  absl::StatusOr<GridCommunicators> comms = SplitGrid(world, ProcessGrid::Single());
  ASSERT_TRUE(comms.ok()) << comms.status();
  for (Communicator* c : {comms->tp.get(), comms->dp.get(), comms->pp.get(),
                          comms->model_parallel.get(), comms->embedding.get()}) {
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->size(), 1);
    EXPECT_EQ(c->rank(), 0);
  }
}

TEST(ProcessGridTest, SplitGridRejectsAGridOfAnotherWorld) {
  SelfCommunicator world;
  absl::StatusOr<GridCommunicators> comms = SplitGrid(world, MustCreate(2, 0, 2, 1));
  ASSERT_FALSE(comms.ok());
  EXPECT_EQ(comms.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(comms.status().message(), HasSubstr("rank 0 of 1"));
  EXPECT_THAT(comms.status().message(), HasSubstr("world=2"));
}

}  // namespace
}  // namespace lattice
