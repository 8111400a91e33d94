#include "parallel/process_grid.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "parallel/communicator.h"
#include "runtime/status.h"

namespace lattice {

ProcessGrid::ProcessGrid(int world_size, int rank, int tp, int pp, int dp)
    : world_size_(world_size), rank_(rank), tp_(tp), pp_(pp), dp_(dp) {
  coord_ = CoordOf(rank);
}

absl::StatusOr<ProcessGrid> ProcessGrid::Create(int world_size, int rank, int tp, int pp, int dp) {
  const std::string sizes =
      absl::StrCat("world size ", world_size, ", tp ", tp, ", pp ", pp, ", dp ", dp,
                   dp == 0 ? " (derive)" : "");
  if (world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("process grid: world size must be >= 1 (",
                                                   sizes, ")"));
  }
  if (tp < 1 || pp < 1 || dp < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "process grid: tensor-model-parallel-size (tp) and pipeline-model-parallel-size (pp) "
        "must be >= 1 and dp >= 1 (or 0 to derive it) (",
        sizes, ")"));
  }
  if (rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("process grid: rank ", rank, " is outside [0, ", world_size, ") (", sizes, ")"));
  }
  // 64-bit products: tp * pp * dp of three plausible ints may overflow int.
  const int64_t model = static_cast<int64_t>(tp) * pp;
  if (dp == 0) {
    if (world_size % model != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "process grid: world size ", world_size, " is not divisible by tp * pp = ", tp, " * ",
          pp, " = ", model, ", so dp = world / (tp * pp) is not a whole number"));
    }
    dp = static_cast<int>(world_size / model);
  } else if (model * dp != world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "process grid: world size ", world_size, " != tp * dp * pp = ", tp, " * ", dp, " * ", pp,
        " = ", model * dp));
  }
  return ProcessGrid(world_size, rank, tp, pp, dp);
}

ProcessGrid ProcessGrid::Single() { return ProcessGrid(1, 0, 1, 1, 1); }

int ProcessGrid::RankOf(const GridCoord& c) const {
  LATTICE_CHECK_MSG(c.tp >= 0 && c.tp < tp_ && c.dp >= 0 && c.dp < dp_ && c.pp >= 0 && c.pp < pp_,
                    absl::StrCat("coordinate (tp ", c.tp, ", dp ", c.dp, ", pp ", c.pp,
                                 ") outside ", ToString()));
  return c.tp + tp_ * (c.dp + dp_ * c.pp);
}

GridCoord ProcessGrid::CoordOf(int rank) const {
  LATTICE_CHECK_MSG(rank >= 0 && rank < world_size_,
                    absl::StrCat("rank ", rank, " outside world of ", world_size_));
  GridCoord c;
  c.tp = rank % tp_;
  c.dp = (rank / tp_) % dp_;
  c.pp = rank / (tp_ * dp_);
  return c;
}

std::vector<int> ProcessGrid::TpGroup() const {
  std::vector<int> ranks;
  for (int t = 0; t < tp_; ++t) ranks.push_back(RankOf(t, coord_.dp, coord_.pp));
  return ranks;
}

std::vector<int> ProcessGrid::DpGroup() const {
  std::vector<int> ranks;
  for (int d = 0; d < dp_; ++d) ranks.push_back(RankOf(coord_.tp, d, coord_.pp));
  return ranks;
}

std::vector<int> ProcessGrid::PpGroup() const {
  std::vector<int> ranks;
  for (int p = 0; p < pp_; ++p) ranks.push_back(RankOf(coord_.tp, coord_.dp, p));
  return ranks;
}

std::vector<int> ProcessGrid::ModelParallelGroup() const {
  std::vector<int> ranks;
  for (int p = 0; p < pp_; ++p) {
    for (int t = 0; t < tp_; ++t) ranks.push_back(RankOf(t, coord_.dp, p));
  }
  return ranks;
}

std::vector<int> ProcessGrid::EmbeddingGroup() const {
  std::vector<int> ranks = {RankOf(coord_.tp, coord_.dp, 0)};
  if (pp_ > 1) ranks.push_back(RankOf(coord_.tp, coord_.dp, pp_ - 1));
  return ranks;
}

int ProcessGrid::NextStageRank() const { return RankOf(coord_.tp, coord_.dp, (coord_.pp + 1) % pp_); }

int ProcessGrid::PrevStageRank() const {
  return RankOf(coord_.tp, coord_.dp, (coord_.pp + pp_ - 1) % pp_);
}

// Colors number the groups of each kind; keys order a group by its own coordinate, so group
// rank i is the i-th entry of the matching *Group() list.
SplitArgs ProcessGrid::TpSplit() const { return {coord_.dp + dp_ * coord_.pp, coord_.tp}; }
SplitArgs ProcessGrid::DpSplit() const { return {coord_.tp + tp_ * coord_.pp, coord_.dp}; }
SplitArgs ProcessGrid::PpSplit() const { return {coord_.tp + tp_ * coord_.dp, coord_.pp}; }
SplitArgs ProcessGrid::ModelParallelSplit() const {
  return {coord_.dp, coord_.tp + tp_ * coord_.pp};
}
SplitArgs ProcessGrid::EmbeddingSplit() const {
  if (!InEmbeddingGroup()) return {Communicator::kNoColor, 0};
  return {coord_.tp + tp_ * coord_.dp, coord_.pp};
}

std::string ProcessGrid::ToString() const {
  return absl::StrCat("ProcessGrid(world=", world_size_, " tp=", tp_, " dp=", dp_, " pp=", pp_,
                      "; rank ", rank_, " = tp ", coord_.tp, ", dp ", coord_.dp, ", pp ",
                      coord_.pp, ")");
}

// ---- Communicators of the grid --------------------------------------------------------------

GridCommunicators::GridCommunicators() = default;
GridCommunicators::GridCommunicators(GridCommunicators&&) noexcept = default;
GridCommunicators& GridCommunicators::operator=(GridCommunicators&&) noexcept = default;
GridCommunicators::~GridCommunicators() = default;

namespace {

absl::StatusOr<std::unique_ptr<Communicator>> SplitGroup(Communicator& world, SplitArgs args,
                                                         const std::vector<int>& expected,
                                                         const char* name) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> c, world.Split(args.color, args.key));
  if (args.color == Communicator::kNoColor) return c;
  // The split must reproduce the grid's own view of the group; anything else is a lattice bug
  // in the colors or keys, reported rather than trained on.
  if (c == nullptr || c->size() != static_cast<int>(expected.size()) ||
      expected[static_cast<size_t>(c->rank())] != world.rank()) {
    return absl::InternalError(absl::StrCat(
        "the ", name, " communicator split from the world (size ",
        c == nullptr ? 0 : c->size(), ", rank ", c == nullptr ? -1 : c->rank(),
        ") does not match the grid's group [", absl::StrJoin(expected, ", "), "] for world rank ",
        world.rank()));
  }
  c->set_name(name);  // what a communicator timeout report calls the group (docs/hangs.md)
  return c;
}

}  // namespace

absl::StatusOr<GridCommunicators> SplitGrid(Communicator& world, const ProcessGrid& grid) {
  if (world.size() != grid.world_size() || world.rank() != grid.rank()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SplitGrid: the world communicator is rank ", world.rank(), " of ", world.size(),
        " but the grid is ", grid.ToString()));
  }
  GridCommunicators out;
  LATTICE_ASSIGN_OR_RETURN(out.tp, SplitGroup(world, grid.TpSplit(), grid.TpGroup(), "tp"));
  LATTICE_ASSIGN_OR_RETURN(out.dp, SplitGroup(world, grid.DpSplit(), grid.DpGroup(), "dp"));
  LATTICE_ASSIGN_OR_RETURN(out.pp, SplitGroup(world, grid.PpSplit(), grid.PpGroup(), "pp"));
  LATTICE_ASSIGN_OR_RETURN(out.model_parallel,
                           SplitGroup(world, grid.ModelParallelSplit(), grid.ModelParallelGroup(),
                                      "model-parallel"));
  LATTICE_ASSIGN_OR_RETURN(out.embedding, SplitGroup(world, grid.EmbeddingSplit(),
                                                     grid.EmbeddingGroup(), "embedding"));
  return out;
}

}  // namespace lattice
