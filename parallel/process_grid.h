// The process grid: how the ranks of a job are arranged into tensor-, data- and
// pipeline-parallel groups.
//
// A ProcessGrid is a plain value built once from (world, rank, tp, pp, dp) and passed by const
// reference to whatever needs a group; there is no global parallel state anywhere in lattice.
//
// Rank order is Megatron's: tensor parallel fastest, then data parallel, then pipeline:
//
//   rank = tp_rank + tp * (dp_rank + dp * pp_rank)
//
// so the ranks of one tensor-parallel group are adjacent (one node, the fastest links) and the
// pipeline stages are the slowest-varying coordinate. Example, world 8 = tp 2 x dp 2 x pp 2:
//
//   rank   0 1 2 3 4 5 6 7
//   tp     0 1 0 1 0 1 0 1
//   dp     0 0 1 1 0 0 1 1
//   pp     0 0 0 0 1 1 1 1
//
//   tp groups {0,1} {2,3} {4,5} {6,7};  dp groups {0,2} {1,3} {4,6} {5,7};
//   pp groups {0,4} {1,5} {2,6} {3,7};  embedding groups = pp groups' first and last stages.
#ifndef LATTICE_PARALLEL_PROCESS_GRID_H_
#define LATTICE_PARALLEL_PROCESS_GRID_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lattice {

class Communicator;

// A rank's position in the grid.
struct GridCoord {
  int tp = 0;
  int dp = 0;
  int pp = 0;
  bool operator==(const GridCoord&) const = default;
};

// Arguments for Communicator::Split that carve one kind of group out of the world: ranks with
// the same color land in one communicator, ordered by key.
struct SplitArgs {
  int color = 0;
  int key = 0;
};

class ProcessGrid {
 public:
  // Validates the sizes against the world. dp = 0 derives dp = world / (tp * pp), which must
  // divide exactly. Every error is kInvalidArgument and names the numbers involved.
  static absl::StatusOr<ProcessGrid> Create(int world_size, int rank, int tp, int pp, int dp = 0);

  // A world of one: tp = dp = pp = 1, rank 0.
  static ProcessGrid Single();

  int world_size() const { return world_size_; }
  int rank() const { return rank_; }
  int tp_size() const { return tp_; }
  int dp_size() const { return dp_; }
  int pp_size() const { return pp_; }

  // This rank's coordinates.
  const GridCoord& coord() const { return coord_; }
  int tp_rank() const { return coord_.tp; }
  int dp_rank() const { return coord_.dp; }
  int pp_rank() const { return coord_.pp; }

  // Global rank <-> coordinates for any rank of the grid. Out-of-range arguments are a lattice
  // bug (the grid is the only source of coordinates) and fail a CHECK.
  int RankOf(const GridCoord& c) const;
  int RankOf(int tp_rank, int dp_rank, int pp_rank) const { return RankOf({tp_rank, dp_rank, pp_rank}); }
  GridCoord CoordOf(int rank) const;

  // Global ranks of this rank's groups, in group-rank order (the order Split produces, so
  // position i of the list is group rank i).
  std::vector<int> TpGroup() const;        // same dp, pp; tp = 0..tp-1
  std::vector<int> DpGroup() const;        // same tp, pp; dp = 0..dp-1
  std::vector<int> PpGroup() const;        // same tp, dp; pp = 0..pp-1
  std::vector<int> ModelParallelGroup() const;  // same dp; all tp x pp ranks, in rank order
  // First and last pipeline stage of this rank's pipeline (they share the tied word embedding).
  // One rank when pp = 1. Ranks in the middle stages are not members (InEmbeddingGroup false)
  // but the list still names their pipeline's first and last stage.
  std::vector<int> EmbeddingGroup() const;
  bool InEmbeddingGroup() const { return IsFirstStage() || IsLastStage(); }

  // Pipeline neighbours. They wrap around (the next of the last stage is the first), which
  // interleaved schedules rely on; check IsFirstStage/IsLastStage before using them for a
  // non-interleaved schedule. With pp = 1 both are this rank.
  bool IsFirstStage() const { return coord_.pp == 0; }
  bool IsLastStage() const { return coord_.pp == pp_ - 1; }
  int NextStageRank() const;
  int PrevStageRank() const;

  // Split arguments that produce each group from the world communicator. Every rank of the
  // world must call Split with its own arguments (a collective). EmbeddingSplit gives middle
  // stages the "no group" color.
  SplitArgs TpSplit() const;
  SplitArgs DpSplit() const;
  SplitArgs PpSplit() const;
  SplitArgs ModelParallelSplit() const;
  SplitArgs EmbeddingSplit() const;

  // "ProcessGrid(world=8 tp=2 dp=2 pp=2; rank 5 = tp 1, dp 0, pp 1)".
  std::string ToString() const;

 private:
  ProcessGrid(int world_size, int rank, int tp, int pp, int dp);

  int world_size_ = 1;
  int rank_ = 0;
  int tp_ = 1;
  int pp_ = 1;
  int dp_ = 1;
  GridCoord coord_;
};

// The communicators of one rank's groups, each split from the world.
struct GridCommunicators {
  std::unique_ptr<Communicator> tp;
  std::unique_ptr<Communicator> dp;
  std::unique_ptr<Communicator> pp;
  std::unique_ptr<Communicator> model_parallel;
  // Null on middle pipeline stages (they are in no embedding group).
  std::unique_ptr<Communicator> embedding;

  GridCommunicators();
  GridCommunicators(GridCommunicators&&) noexcept;
  GridCommunicators& operator=(GridCommunicators&&) noexcept;
  ~GridCommunicators();
};

// Splits `world` into this rank's groups. A collective over the world: every rank calls it.
// kInvalidArgument when the world communicator does not match the grid (size or rank).
absl::StatusOr<GridCommunicators> SplitGrid(Communicator& world, const ProcessGrid& grid);

}  // namespace lattice

#endif  // LATTICE_PARALLEL_PROCESS_GRID_H_
