#include "parallel/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "model/weights_file.h"
#include "parallel/engine.h"
#include "parallel/process_grid.h"
#include "runtime/io/fault_injection.h"
#include "runtime/io/json_limits.h"
#include "runtime/io/output_file.h"
#include "runtime/status.h"

namespace lattice {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// Tag of the point-to-point messages that carry each rank's box list to rank 0 (any value
// works: the checkpoint communicator carries nothing else).
constexpr int kDescriptionTag = 7;

bool IsVocabulary(const std::string& name) { return name == "wte" || name == "lm_head"; }

// Global rows of a parameter that a checkpoint stores: the vocabulary without its padding.
int64_t StoredRows(const Parameter& p, int64_t vocab) {
  return IsVocabulary(p.name) ? vocab : p.sharding.global_shape[0];
}

Shape StoredShape(const std::string& name, Shape global, int64_t vocab) {
  if (IsVocabulary(name)) global[0] = vocab;
  return global;
}

// Calls emit(box, local) for the global boxes that hold the parameter's local elements
// [lb, le) (flat indices relative to the parameter), each box contiguous in local memory from
// local element `local`: only rows below row_limit, and only the rows this rank owns when
// owners_only (model/parameters.h). A range that starts or ends inside a row gives a one-row
// box for each partial row.
template <typename Emit>
void ForEachBox(const Parameter& p, int64_t lb, int64_t le, int64_t row_limit, bool owners_only,
                Emit emit) {
  const int64_t lc = p.local_cols();
  const bool one_dim = p.sharding.global_shape.size() == 1;
  const int64_t col0 = p.sharding.col_begin;
  for (const RowSegment& s : p.sharding.segments) {
    if (owners_only && !s.owner) continue;
    const int64_t rows = std::clamp<int64_t>(row_limit - s.global_begin, 0, s.count);
    const int64_t a = std::max(lb, s.local_begin * lc);
    const int64_t b = std::min(le, (s.local_begin + rows) * lc);
    for (int64_t at = a; at < b;) {
      const int64_t r = at / lc, c = at % lc;
      const int64_t grow = s.global_begin + (r - s.local_begin);
      Box box;
      int64_t len;
      if (c != 0 || b - at < lc) {
        len = std::min(lc - c, b - at);
        box = Box{{grow, col0 + c}, {1, len}};
      } else {
        const int64_t n = (b - at) / lc;
        len = n * lc;
        box = one_dim ? Box{{grow}, {n}} : Box{{grow, col0}, {n, lc}};
      }
      emit(std::move(box), at);
      at += len;
    }
  }
}

// Copies the intersection of two boxes of one tensor from `src` (laid out over src_box) to
// `dst` (over dst_box); returns the elements copied.
int64_t CopyIntersection(const Box& src_box, const float* src, const Box& dst_box, float* dst) {
  const size_t nd = src_box.offset.size();
  std::vector<int64_t> lo(nd), hi(nd);
  for (size_t d = 0; d < nd; ++d) {
    lo[d] = std::max(src_box.offset[d], dst_box.offset[d]);
    hi[d] = std::min(src_box.offset[d] + src_box.shape[d], dst_box.offset[d] + dst_box.shape[d]);
    if (lo[d] >= hi[d]) return 0;
  }
  std::vector<int64_t> src_stride(nd, 1), dst_stride(nd, 1);
  for (size_t d = nd - 1; d-- > 0;) {
    src_stride[d] = src_stride[d + 1] * src_box.shape[d + 1];
    dst_stride[d] = dst_stride[d + 1] * dst_box.shape[d + 1];
  }
  const int64_t run = hi[nd - 1] - lo[nd - 1];
  std::vector<int64_t> idx(lo.begin(), lo.end());
  int64_t copied = 0;
  for (;;) {
    int64_t so = 0, dof = 0;
    for (size_t d = 0; d < nd; ++d) {
      so += (idx[d] - src_box.offset[d]) * src_stride[d];
      dof += (idx[d] - dst_box.offset[d]) * dst_stride[d];
    }
    std::memcpy(dst + dof, src + so, static_cast<size_t>(run) * sizeof(float));
    copied += run;
    // Next index over dims [0, nd-1) (the last dim is the contiguous run).
    size_t d = nd - 1;
    while (d-- > 0) {
      if (++idx[d] < hi[d]) break;
      idx[d] = lo[d];
    }
    if (d == static_cast<size_t>(-1)) break;
  }
  return copied;
}

bool Intersects(const Box& a, const Box& b) {
  for (size_t d = 0; d < a.offset.size(); ++d) {
    if (a.offset[d] + a.shape[d] <= b.offset[d] || b.offset[d] + b.shape[d] <= a.offset[d]) {
      return false;
    }
  }
  return true;
}

absl::Status FsyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return absl::OkStatus();  // a directory we may not open: the kernel's to flush
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL && err != EROFS && err != ENOTSUP) {
    return absl::DataLossError(absl::StrCat(dir, ": fsync failed: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

absl::Status RemoveTree(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(p.string(), ": ", ec.message()));
  return absl::OkStatus();
}

// Rename `from` over `to`. A committed directory at `to` (a checkpoint of the same iteration
// from an earlier run) is swapped out atomically (renameat2 RENAME_EXCHANGE) and removed, so
// there is no moment without a committed checkpoint of that iteration.
absl::Status RenameIntoPlace(const std::string& from, const std::string& to) {
  std::error_code ec;
  if (fs::exists(to, ec)) {
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) != 0) {
      return absl::PermissionDeniedError(absl::StrCat("cannot exchange '", from, "' with '", to,
                                                      "': ", std::strerror(errno)));
    }
    return RemoveTree(from);
  }
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot rename '", from, "' to '", to, "': ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// Rank 0's part of the commit: the index (the commit marker), the rename, `latest`.
absl::Status CommitDirectory(const std::string& root, const std::string& tmp_dir,
                             const CheckpointIndex& index, std::string* final_dir) {
  const std::string index_path = (fs::path(tmp_dir) / kCheckpointIndexFile).string();
  absl::Status valid = ValidateIndex(index, index_path);
  if (!valid.ok()) {
    // The ranks' boxes must tile every tensor; anything else is a bug in the registry.
    return absl::InternalError(absl::StrCat("refusing to commit: ", valid.message()));
  }
  MaybeInjectFault("before_index", 0, index.iteration);
  LATTICE_RETURN_IF_ERROR(WriteOutputFile(index_path, index.ToJson()));
  MaybeInjectFault("after_index", 0, index.iteration);
  const std::string name = CheckpointDirName(index.iteration);
  *final_dir = (fs::path(root) / name).string();
  LATTICE_RETURN_IF_ERROR(RenameIntoPlace(tmp_dir, *final_dir));
  LATTICE_RETURN_IF_ERROR(FsyncDirectory(root));
  return WriteOutputFile((fs::path(root) / kCheckpointLatestFile).string(), name + "\n");
}

// Retention: keeps the newest `keep` committed checkpoints, those whose iteration is a
// multiple of keep_every, the newest one and the one just committed; removes the rest, each
// first renamed out of the committed namespace so a crash never leaves half of one listed.
absl::StatusOr<std::vector<std::string>> ApplyRetention(const CheckpointOptions& o,
                                                        const std::string& just_committed) {
  std::vector<std::string> removed;
  if (o.keep <= 0) return removed;
  LATTICE_ASSIGN_OR_RETURN(std::vector<CheckpointEntry> all, ListCheckpoints(o.root));
  const size_t n = all.size();
  for (size_t i = 0; i < n; ++i) {
    const CheckpointEntry& e = all[i];
    const bool newest = i + 1 == n || i + static_cast<size_t>(o.keep) >= n;
    const bool milestone = o.keep_every > 0 && e.iteration % o.keep_every == 0;
    if (newest || milestone || fs::path(e.path) == fs::path(just_committed)) continue;
    const fs::path doomed = fs::path(o.root) / absl::StrCat(kCheckpointTempPrefix, "delete.",
                                                            fs::path(e.path).filename().string());
    if (::rename(e.path.c_str(), doomed.c_str()) != 0) {
      return absl::PermissionDeniedError(absl::StrCat(
          e.path, ": cannot retire the checkpoint: ", std::strerror(errno)));
    }
    LATTICE_RETURN_IF_ERROR(RemoveTree(doomed));
    removed.push_back(e.path);
  }
  if (!removed.empty()) LATTICE_RETURN_IF_ERROR(FsyncDirectory(o.root));
  return removed;
}

// Rank 0 gets every rank's string (in rank order); other ranks get an empty list.
absl::StatusOr<std::vector<std::string>> GatherStrings(Communicator& comm,
                                                       const std::string& mine) {
  const int world = comm.size();
  uint64_t len = mine.size();
  std::vector<uint64_t> lens(world);
  LATTICE_RETURN_IF_ERROR(comm.AllGather(&len, lens.data(), sizeof(uint64_t), CommType::kU8));
  std::vector<std::string> all;
  if (comm.rank() != 0) {
    if (len > 0) {
      LATTICE_RETURN_IF_ERROR(comm.Send(mine.data(), len, CommType::kU8, 0, kDescriptionTag));
    }
    return all;
  }
  all.resize(world);
  all[0] = mine;
  for (int r = 1; r < world; ++r) {
    all[r].resize(lens[r]);
    if (lens[r] > 0) {
      LATTICE_RETURN_IF_ERROR(
          comm.Recv(all[r].data(), lens[r], CommType::kU8, r, kDescriptionTag));
    }
  }
  return all;
}

// A TensorParallelOps for ranks that are laid out but never run (reshard): the decoder needs
// one to be built with tp > 1; nothing calls it.
class UnusedTensorParallelOps final : public TensorParallelOps {
 public:
  UnusedTensorParallelOps(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void AllReduceSum(float*, int64_t) override { Fail(); }
  void AllReduceMax(float*, int64_t) override { Fail(); }
  void AllGather(const float*, float*, int64_t) override { Fail(); }
  void ReduceScatter(const float*, float*, int64_t) override { Fail(); }
  absl::Status status() const override { return status_; }

 private:
  void Fail() { status_ = absl::InternalError("a laid-out rank ran a collective"); }
  int rank_, size_;
  absl::Status status_;
};

// Merges consecutive pieces that are one box in both places: the next rows of the same columns,
// stored right after in memory (the q, k and v rows of a qkv weight at tp = 1, say).
void MergeAdjacent(std::vector<StatePiece>* pieces) {
  std::vector<StatePiece> out;
  for (StatePiece& p : *pieces) {
    if (!out.empty()) {
      StatePiece& q = out.back();
      bool same_cols = q.box.offset.size() == p.box.offset.size();
      for (size_t d = 1; same_cols && d < p.box.offset.size(); ++d) {
        same_cols = q.box.offset[d] == p.box.offset[d] && q.box.shape[d] == p.box.shape[d];
      }
      if (same_cols && q.box.offset[0] + q.box.shape[0] == p.box.offset[0] &&
          q.data + q.box.numel() == p.data) {
        q.box.shape[0] += p.box.shape[0];
        continue;
      }
    }
    out.push_back(std::move(p));
  }
  *pieces = std::move(out);
}

}  // namespace

std::string ModelKey(const std::string& param) { return "model/" + param; }
std::string ExpAvgKey(const std::string& param) { return "optimizer/exp_avg/" + param; }
std::string ExpAvgSqKey(const std::string& param) { return "optimizer/exp_avg_sq/" + param; }
std::string MasterKey(const std::string& param) { return "optimizer/master/" + param; }

// ---- The registry --------------------------------------------------------------------------

TrainStateRegistry TrainStateRegistry::ForRank(const ModelConfig& cfg, ParameterSet& params,
                                               const BucketLayout& layout, int dp_rank,
                                               const std::vector<OptimizerSegment>& segments,
                                               float* m, float* v, int64_t state_numel,
                                               float* master) {
  TrainStateRegistry reg;
  reg.params_ = &params;
  reg.model_ = cfg;
  reg.vocab_ = cfg.vocab_size;
  reg.m_ = m;
  reg.v_ = v;
  reg.state_numel_ = state_numel;
  const std::vector<Parameter>& ps = params.params();
  float* values = params.flat_values().f32();
  const bool with_optimizer = m != nullptr && v != nullptr;
  const bool with_master = with_optimizer && master != nullptr;
  reg.master_ = with_master ? master : nullptr;

  // The optimizer segments by flat position, to find where a flat element's moments live.
  std::vector<const OptimizerSegment*> by_begin;
  for (const OptimizerSegment& s : segments) by_begin.push_back(&s);
  std::sort(by_begin.begin(), by_begin.end(),
            [](const OptimizerSegment* a, const OptimizerSegment* b) { return a->begin < b->begin; });
  auto state_index = [&](int64_t flat, int64_t n) -> int64_t {
    auto it = std::upper_bound(by_begin.begin(), by_begin.end(), flat,
                               [](int64_t f, const OptimizerSegment* s) { return f < s->begin; });
    LATTICE_CHECK_MSG(it != by_begin.begin(), "flat element before every optimizer segment");
    const OptimizerSegment* s = *(it - 1);
    LATTICE_CHECK_MSG(flat + n <= s->end, "a box crosses optimizer segments");
    return s->state_offset + (flat - s->begin);
  };

  // Tensors in parameter order: model/<p>, then the two moments.
  std::map<std::string, size_t> slot;
  for (const Parameter& p : ps) {
    const Shape shape = StoredShape(p.name, p.sharding.global_shape, cfg.vocab_size);
    slot[ModelKey(p.name)] = reg.tensors_.size();
    reg.tensors_.push_back(StateTensor{ModelKey(p.name), shape, {}, {}});
    if (with_optimizer) {
      slot[ExpAvgKey(p.name)] = reg.tensors_.size();
      reg.tensors_.push_back(StateTensor{ExpAvgKey(p.name), shape, {}, {}});
      slot[ExpAvgSqKey(p.name)] = reg.tensors_.size();
      reg.tensors_.push_back(StateTensor{ExpAvgSqKey(p.name), shape, {}, {}});
    }
    if (with_master) {
      slot[MasterKey(p.name)] = reg.tensors_.size();
      reg.tensors_.push_back(StateTensor{MasterKey(p.name), shape, {}, {}});
    }
  }

  // Saves: this data-parallel rank's chunk of every bucket, owned rows only.
  for (const ShardSegment& seg : ShardSegments(params, layout, dp_rank)) {
    const Parameter& p = ps[seg.param];
    const int64_t limit = StoredRows(p, cfg.vocab_size);
    ForEachBox(p, seg.begin - p.offset, seg.end - p.offset, limit, /*owners_only=*/true,
               [&](Box box, int64_t local) {
                 const int64_t flat = p.offset + local;
                 reg.tensors_[slot[ModelKey(p.name)]].saves.push_back({box, values + flat});
                 if (with_optimizer) {
                   const int64_t si = state_index(flat, box.numel());
                   if (with_master) {
                     reg.tensors_[slot[MasterKey(p.name)]].saves.push_back({box, master + si});
                   }
                   reg.tensors_[slot[ExpAvgKey(p.name)]].saves.push_back({box, m + si});
                   reg.tensors_[slot[ExpAvgSqKey(p.name)]].saves.push_back({std::move(box), v + si});
                 }
               });
  }
  // Loads: every element held, replicas included; the moments of the optimizer's segments.
  for (const Parameter& p : ps) {
    ForEachBox(p, 0, NumElements(p.shape), StoredRows(p, cfg.vocab_size), /*owners_only=*/false,
               [&](Box box, int64_t local) {
                 reg.tensors_[slot[ModelKey(p.name)]].loads.push_back(
                     {std::move(box), values + p.offset + local});
               });
  }
  if (with_optimizer) {
    for (const OptimizerSegment& s : segments) {
      auto it = std::upper_bound(ps.begin(), ps.end(), s.begin,
                                 [](int64_t f, const Parameter& q) { return f < q.offset; });
      const Parameter& p = *(it - 1);
      ForEachBox(p, s.begin - p.offset, s.end - p.offset, StoredRows(p, cfg.vocab_size),
                 /*owners_only=*/false, [&](Box box, int64_t local) {
                   const int64_t si = s.state_offset + (p.offset + local - s.begin);
                   if (with_master) {
                     reg.tensors_[slot[MasterKey(p.name)]].loads.push_back({box, master + si});
                   }
                   reg.tensors_[slot[ExpAvgKey(p.name)]].loads.push_back({box, m + si});
                   reg.tensors_[slot[ExpAvgSqKey(p.name)]].loads.push_back({std::move(box), v + si});
                 });
    }
  }
  for (StateTensor& t : reg.tensors_) {
    MergeAdjacent(&t.saves);
    MergeAdjacent(&t.loads);
  }
  return reg;
}

TrainStateRegistry TrainStateRegistry::ForEngine(ParallelEngine& engine, bool weights_only) {
  AdamW& opt = engine.optimizer();
  const int64_t state = opt.m().numel();
  return ForRank(engine.model().config(), engine.model().params(), engine.bucket_layout(),
                 engine.grid().dp_rank(), opt.segments(), weights_only ? nullptr : opt.m().f32(),
                 weights_only ? nullptr : opt.v().f32(), weights_only ? 0 : state,
                 weights_only || !opt.has_masters() ? nullptr : opt.master().f32());
}

TrainStateRegistry TrainStateRegistry::ForModel(Decoder& model) {
  ParameterSet& params = model.params();
  // One rank: a single bucket holding everything, which data-parallel rank 0 owns.
  absl::StatusOr<BucketLayout> layout =
      MakeBucketLayout(params.numel(), 1, 4 * std::max<int64_t>(params.numel(), 1));
  LATTICE_CHECK(layout.ok());
  return ForRank(model.config(), params, *layout, 0, {}, nullptr, nullptr, 0);
}

void TrainStateRegistry::ClearUncovered() const {
  if (m_ != nullptr) std::memset(m_, 0, static_cast<size_t>(state_numel_) * sizeof(float));
  if (v_ != nullptr) std::memset(v_, 0, static_cast<size_t>(state_numel_) * sizeof(float));
  if (master_ != nullptr) {
    std::memset(master_, 0, static_cast<size_t>(state_numel_) * sizeof(float));
  }
  for (const Parameter& p : params_->params()) {
    if (!IsVocabulary(p.name)) continue;
    const int64_t lc = p.local_cols();
    for (int64_t r = 0; r < p.local_rows(); ++r) {
      if (p.GlobalIndex(r * lc) / p.global_cols() >= vocab_) {
        std::memset(p.value.f32() + r * lc, 0, static_cast<size_t>(lc) * sizeof(float));
      }
    }
  }
}

uint64_t TrainStateRegistry::save_bytes() const {
  uint64_t n = 0;
  for (const StateTensor& t : tensors_) {
    for (const StatePiece& s : t.saves) n += 4 * static_cast<uint64_t>(s.box.numel());
  }
  return n;
}

CheckpointLayout LayoutOf(const Config& cfg) {
  const ParallelConfig& p = cfg.parallel;
  CheckpointLayout l;
  l.tp = static_cast<int>(p.tp);
  l.dp = static_cast<int>(p.dp);
  l.pp = static_cast<int>(p.pp);
  l.vpp = static_cast<int>(p.vpp);
  l.world = l.tp * l.dp * l.pp;
  l.zero1 = p.zero1;
  l.sequence_parallel = p.sequence_parallel && p.tp > 1;
  l.schedule = p.schedule == PipelineSchedule::kGpipe         ? "gpipe"
               : p.schedule == PipelineSchedule::kInterleaved ? "interleaved"
                                                              : "1f1b";
  return l;
}

CheckpointContents ContentsOf(const CheckpointIndex& index) {
  return static_cast<const CheckpointContents&>(index);
}

// ---- Saving --------------------------------------------------------------------------------

namespace {

struct BoxRecord {
  std::string key;
  Box box;
};

// The shard of one rank: the tensors to write and the boxes they are. The weights come first
// (in registry order), then the optimizer's tensors (in registry order): on a resume every
// data-parallel replica reads the weights of its peers' files but only its own moments, so the
// weights of a file are one contiguous range, which the kernel reads ahead as one stream,
// instead of every small weight box sitting between two moment boxes (a seek each, cold).
void CollectShard(const TrainStateRegistry& registry, std::vector<ShardTensor>* tensors,
                  std::vector<BoxRecord>* boxes) {
  for (const bool weights : {true, false}) {
    for (const StateTensor& t : registry.tensors()) {
      if (absl::StartsWith(t.key, "model/") != weights) continue;
      for (const StatePiece& s : t.saves) {
        tensors->push_back(ShardTensor{BoxTensorName(t.key, s.box), s.box.shape, s.data,
                                       4 * static_cast<uint64_t>(s.box.numel())});
        boxes->push_back(BoxRecord{t.key, s.box});
      }
    }
  }
}

std::map<std::string, std::string> ShardMetadata(int rank, int world, int64_t iteration) {
  return {{"format", "pt"},
          {"lattice_checkpoint_format_version", std::to_string(kCheckpointFormatVersion)},
          {"rank", std::to_string(rank)},
          {"world", std::to_string(world)},
          {"iteration", std::to_string(iteration)}};
}

// This rank's file and boxes, as JSON for rank 0.
std::string DescribeShard(const CheckpointFile& file, const std::vector<BoxRecord>& boxes,
                          const ShardPlan& plan, const std::vector<ShardTensor>& tensors,
                          const std::vector<uint32_t>& crcs) {
  nlohmann::json j;
  j["file"] = {{"name", file.name}, {"bytes", file.bytes}, {"rank", file.rank}};
  nlohmann::json list = nlohmann::json::array();
  for (size_t i = 0; i < boxes.size(); ++i) {
    list.push_back({boxes[i].key, boxes[i].box.offset, boxes[i].box.shape, tensors[i].name,
                    plan.offsets[i], tensors[i].nbytes, crcs[i]});
  }
  j["boxes"] = std::move(list);
  return j.dump();
}

// Rank 0: the index from every rank's description.
absl::StatusOr<CheckpointIndex> AssembleIndex(const CheckpointContents& c,
                                              const std::vector<std::string>& descriptions,
                                              const std::vector<std::pair<std::string, Shape>>&
                                                  shapes) {
  CheckpointIndex idx;
  static_cast<CheckpointContents&>(idx) = c;
  for (const auto& [key, shape] : shapes) idx.tensors[key].shape = shape;
  for (size_t r = 0; r < descriptions.size(); ++r) {
    // Written by this program a moment ago; parsed with the same bounds as anything else.
    LATTICE_ASSIGN_OR_RETURN(nlohmann::json j, ParseJson(descriptions[r]));
    CheckpointFile f;
    f.name = j["file"]["name"].get<std::string>();
    f.bytes = j["file"]["bytes"].get<uint64_t>();
    f.rank = j["file"]["rank"].get<int>();
    const int file = static_cast<int>(idx.files.size());
    idx.files.push_back(std::move(f));
    for (const nlohmann::json& b : j["boxes"]) {
      StoredBox sb;
      const std::string key = b[0].get<std::string>();
      sb.box.offset = b[1].get<std::vector<int64_t>>();
      sb.box.shape = b[2].get<std::vector<int64_t>>();
      sb.name = b[3].get<std::string>();
      sb.byte_offset = b[4].get<uint64_t>();
      sb.nbytes = b[5].get<uint64_t>();
      sb.crc32c = b[6].get<uint32_t>();
      sb.file = file;
      auto it = idx.tensors.find(key);
      if (it == idx.tensors.end()) {
        return absl::InternalError(absl::StrCat("rank ", r, " saved unknown tensor '", key, "'"));
      }
      it->second.boxes.push_back(std::move(sb));
    }
  }
  for (auto& [key, t] : idx.tensors) {
    std::sort(t.boxes.begin(), t.boxes.end(), [](const StoredBox& a, const StoredBox& b) {
      return a.box.offset < b.box.offset;
    });
  }
  return idx;
}

// Every state tensor's key and stored shape for a model (the moments when with_optimizer).
std::vector<std::pair<std::string, Shape>> StateShapes(const ModelConfig& cfg,
                                                       bool with_optimizer,
                                                       bool with_masters = false) {
  std::vector<std::pair<std::string, Shape>> out;
  for (const auto& [name, shape] : Decoder::ParameterShapes(cfg)) {
    const Shape stored = StoredShape(name, shape, cfg.vocab_size);
    out.emplace_back(ModelKey(name), stored);
    if (with_optimizer) {
      out.emplace_back(ExpAvgKey(name), stored);
      out.emplace_back(ExpAvgSqKey(name), stored);
    }
    if (with_optimizer && with_masters) out.emplace_back(MasterKey(name), stored);
  }
  return out;
}

void RunWriter(const std::string& path, const ShardPlan& plan,
               const std::vector<ShardTensor>& tensors, const uint8_t* image, bool direct_io,
               int rank, int64_t iteration, absl::Status* status, std::vector<uint32_t>* crcs,
               double* seconds) {
  const auto start = Clock::now();
  bool halfway = false;
  ShardWriteOptions o;
  o.direct_io = direct_io;
  o.image = image;
  o.progress = [&](uint64_t written, uint64_t total) {
    if (!halfway && 2 * written >= total) {
      halfway = true;
      MaybeInjectFault("shard_write", rank, iteration);
    }
  };
  absl::StatusOr<std::vector<uint32_t>> r = WriteShard(path, plan, tensors, o);
  *status = r.status();
  if (r.ok()) *crcs = std::move(r).value();
  *seconds = Seconds(start);
}

}  // namespace

struct CheckpointSaver::Pending {
  CheckpointContents contents;
  std::vector<std::pair<std::string, Shape>> shapes;
  std::string tmp_dir;
  CheckpointFile file;
  std::vector<ShardTensor> tensors;
  std::vector<BoxRecord> boxes;
  ShardPlan plan;
  AlignedHostBuffer host;  // async: the shard's file image the writer reads
  std::thread writer;
  std::atomic<bool> done{false};
  absl::Status status;
  std::vector<uint32_t> crcs;
  double copy_seconds = 0, write_seconds = 0;
  Clock::time_point start;
};

CheckpointSaver::CheckpointSaver(std::unique_ptr<Communicator> comm, CheckpointOptions options)
    : comm_(std::move(comm)), options_(std::move(options)) {}

CheckpointSaver::~CheckpointSaver() {
  if (pending_ != nullptr && pending_->writer.joinable()) pending_->writer.join();
}

absl::StatusOr<std::unique_ptr<CheckpointSaver>> CheckpointSaver::Create(
    Communicator& world, const CheckpointOptions& options) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, world.Split(0, world.rank()));
  absl::Status made;
  if (world.rank() == 0) {
    std::error_code ec;
    fs::create_directories(options.root, ec);
    if (ec || !fs::is_directory(options.root, ec)) {
      made = absl::PermissionDeniedError(absl::StrCat(
          "checkpoint.dir: cannot create directory '", options.root, "'",
          ec ? absl::StrCat(": ", ec.message()) : ""));
    }
  }
  LATTICE_RETURN_IF_ERROR(AgreeOnStatus(*comm, made));
  return std::unique_ptr<CheckpointSaver>(new CheckpointSaver(std::move(comm), options));
}

absl::StatusOr<std::optional<SaveStats>> CheckpointSaver::Save(const TrainStateRegistry& registry,
                                                               const CheckpointContents& contents) {
  std::optional<SaveStats> previous;
  if (pending_ != nullptr) {
    LATTICE_ASSIGN_OR_RETURN(SaveStats s, Commit());
    previous = std::move(s);
  }
  const int rank = comm_->rank(), world = comm_->size();
  auto p = std::make_unique<Pending>();
  p->start = Clock::now();
  p->contents = contents;
  p->shapes =
      StateShapes(registry.model_config(), registry.has_optimizer(), registry.has_masters());
  p->tmp_dir = (fs::path(options_.root) /
                absl::StrCat(kCheckpointTempPrefix, CheckpointDirName(contents.iteration)))
                   .string();
  absl::Status made;
  if (rank == 0) {
    std::error_code ec;
    fs::remove_all(p->tmp_dir, ec);
    if (!ec) fs::create_directories(p->tmp_dir, ec);
    if (ec) {
      made = absl::PermissionDeniedError(
          absl::StrCat(p->tmp_dir, ": cannot create the checkpoint directory: ", ec.message()));
    }
  }
  LATTICE_RETURN_IF_ERROR(AgreeOnStatus(*comm_, made));

  CollectShard(registry, &p->tensors, &p->boxes);
  LATTICE_ASSIGN_OR_RETURN(p->plan,
                           PlanShard(p->tensors, ShardMetadata(rank, world, contents.iteration)));
  p->file = CheckpointFile{ShardFileName(rank, world), p->plan.file_bytes, rank};
  const std::string path = (fs::path(p->tmp_dir) / p->file.name).string();
  const int64_t iteration = contents.iteration;
  if (options_.async) {
    // The state at this step boundary, as the shard's file image, in one aligned host buffer
    // the writer owns and writes without another copy. The buffer of the previous save (or of
    // Prepare) is reused: its pages are resident, so the pause is one memcpy.
    const auto copy_start = Clock::now();
    if (host_.size() < p->plan.file_bytes) {
      host_ = AlignedHostBuffer();
      LATTICE_ASSIGN_OR_RETURN(host_, AlignedHostBuffer::Allocate(p->plan.file_bytes));
    }
    p->host = std::move(host_);
    CopyShardImage(p->plan, &p->tensors, p->host.data());
    p->copy_seconds = Seconds(copy_start);
    Pending* raw = p.get();
    const bool direct_io = options_.direct_io;
    p->writer = std::thread([raw, path, rank, iteration, direct_io] {
      RunWriter(path, raw->plan, raw->tensors, raw->host.data(), direct_io, rank, iteration,
                &raw->status, &raw->crcs, &raw->write_seconds);
      raw->done.store(true, std::memory_order_release);
    });
    pending_ = std::move(p);
    return previous;
  }
  RunWriter(path, p->plan, p->tensors, nullptr, options_.direct_io, rank, iteration, &p->status,
            &p->crcs, &p->write_seconds);
  p->done.store(true, std::memory_order_release);
  pending_ = std::move(p);
  LATTICE_ASSIGN_OR_RETURN(SaveStats s, Commit());
  return std::optional<SaveStats>(std::move(s));
}

absl::Status CheckpointSaver::Prepare(const TrainStateRegistry& registry) {
  if (!options_.async) return absl::OkStatus();
  std::vector<ShardTensor> tensors;
  std::vector<BoxRecord> boxes;
  CollectShard(registry, &tensors, &boxes);
  // The header's size depends on the iteration's digits only by a few bytes; a page of slack.
  LATTICE_ASSIGN_OR_RETURN(ShardPlan plan,
                           PlanShard(tensors, ShardMetadata(comm_->rank(), comm_->size(), 0)));
  const uint64_t bytes = plan.file_bytes + OutputFile::kDirectAlignment;
  if (host_.size() < bytes) {
    host_ = AlignedHostBuffer();
    LATTICE_ASSIGN_OR_RETURN(host_, AlignedHostBuffer::Allocate(bytes));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<SaveStats>> CheckpointSaver::Poll() {
  if (pending_ == nullptr) return std::optional<SaveStats>();
  int32_t done = pending_->done.load(std::memory_order_acquire) ? 1 : 0;
  LATTICE_RETURN_IF_ERROR(comm_->AllReduce(&done, 1, CommType::kI32, ReduceOp::kMin));
  if (done == 0) return std::optional<SaveStats>();
  LATTICE_ASSIGN_OR_RETURN(SaveStats s, Commit());
  return std::optional<SaveStats>(std::move(s));
}

absl::StatusOr<std::optional<SaveStats>> CheckpointSaver::Finish() {
  if (pending_ == nullptr) return std::optional<SaveStats>();
  LATTICE_ASSIGN_OR_RETURN(SaveStats s, Commit());
  return std::optional<SaveStats>(std::move(s));
}

absl::StatusOr<SaveStats> CheckpointSaver::Commit() {
  std::unique_ptr<Pending> p = std::move(pending_);
  if (p->writer.joinable()) p->writer.join();
  if (p->host.data() != nullptr) host_ = std::move(p->host);  // the writer is done with it
  const int rank = comm_->rank();
  const auto commit_start = Clock::now();
  const std::string what = absl::StrCat("checkpoint of iteration ", p->contents.iteration);
  absl::Status agreed = AgreeOnStatus(*comm_, p->status);
  if (!agreed.ok()) {
    if (rank == 0) (void)RemoveTree(p->tmp_dir);
    return Annotate(agreed, absl::StrCat(what, " was not saved"));
  }
  LATTICE_ASSIGN_OR_RETURN(
      std::vector<std::string> descriptions,
      GatherStrings(*comm_, DescribeShard(p->file, p->boxes, p->plan, p->tensors, p->crcs)));
  SaveStats stats;
  stats.iteration = p->contents.iteration;
  absl::Status committed;
  std::string removed_text;
  if (rank == 0) {
    absl::StatusOr<CheckpointIndex> idx = AssembleIndex(p->contents, descriptions, p->shapes);
    committed = idx.status();
    if (committed.ok()) committed = CommitDirectory(options_.root, p->tmp_dir, *idx, &stats.path);
    if (committed.ok()) {
      absl::StatusOr<std::vector<std::string>> removed = ApplyRetention(options_, stats.path);
      committed = removed.status();
      if (removed.ok()) removed_text = absl::StrJoin(*removed, "\n");
    }
    if (!committed.ok()) (void)RemoveTree(p->tmp_dir);
  }
  LATTICE_RETURN_IF_ERROR(Annotate(AgreeOnStatus(*comm_, committed), what));
  // The costs, maxima over the ranks (bytes summed).
  // Host memory the save holds beside the model: the async copy (a sync save writes from the
  // model's own buffers).
  const int64_t extra = static_cast<int64_t>(host_.size());
  double mine[4] = {p->copy_seconds, p->write_seconds, static_cast<double>(extra),
                    static_cast<double>(p->file.bytes)};
  std::vector<double> all(4 * comm_->size());
  LATTICE_RETURN_IF_ERROR(comm_->AllGather(mine, all.data(), sizeof(mine), CommType::kU8));
  for (int r = 0; r < comm_->size(); ++r) {
    stats.copy_seconds = std::max(stats.copy_seconds, all[4 * r]);
    stats.write_seconds = std::max(stats.write_seconds, all[4 * r + 1]);
    stats.host_copy_bytes = std::max(stats.host_copy_bytes, static_cast<int64_t>(all[4 * r + 2]));
    stats.bytes += static_cast<uint64_t>(all[4 * r + 3]);
  }
  if (rank == 0) {
    stats.removed = removed_text.empty() ? std::vector<std::string>()
                                         : std::vector<std::string>(absl::StrSplit(removed_text, '\n'));
  }
  stats.commit_seconds = Seconds(commit_start);
  stats.total_seconds = Seconds(p->start);
  if (rank != 0) {
    stats.path = (fs::path(options_.root) / CheckpointDirName(p->contents.iteration)).string();
  }
  return stats;
}

// ---- Loading -------------------------------------------------------------------------------

namespace {

// "model.d_ff: checkpoint 128, config 256; ..." for the model keys that change shapes.
std::string ModelDifferences(const ModelConfig& a, const ModelConfig& b) {
  std::vector<std::string> d;
  auto cmp = [&](const char* key, int64_t x, int64_t y) {
    if (x != y) d.push_back(absl::StrCat(key, ": checkpoint ", x, ", config ", y));
  };
  if (a.arch != b.arch) {
    d.push_back(absl::StrCat("model.arch: checkpoint ", a.arch == Arch::kGpt2 ? "gpt2" : "llama",
                             ", config ", b.arch == Arch::kGpt2 ? "gpt2" : "llama"));
  }
  cmp("model.n_layer", a.n_layer, b.n_layer);
  cmp("model.d_model", a.d_model, b.d_model);
  cmp("model.n_head", a.n_head, b.n_head);
  cmp("model.n_kv_head", a.kv_heads(), b.kv_heads());
  cmp("model.d_ff", a.ff_dim(), b.ff_dim());
  cmp("model.vocab_size", a.vocab_size, b.vocab_size);
  cmp("model.seq_len", a.seq_len, b.seq_len);
  cmp("model.tie_embeddings", a.tied(), b.tied());
  return d.empty() ? "" : absl::StrCat(" (", absl::StrJoin(d, "; "), ")");
}

}  // namespace

absl::Status CheckCompatible(const CheckpointReader& reader, const ModelConfig& cfg,
                             bool need_optimizer) {
  const CheckpointIndex& idx = reader.index();
  const std::string path = (fs::path(reader.dir()) / kCheckpointIndexFile).string();
  absl::StatusOr<Config> saved = ParseConfig(idx.config_yaml, {}, absl::StrCat(path, " config"));
  if (!saved.ok()) return absl::DataLossError(std::string(saved.status().message()));
  const std::string diff = ModelDifferences(saved->model, cfg);
  std::set<std::string> expected;
  for (const auto& [key, shape] : StateShapes(cfg, need_optimizer)) {
    expected.insert(key);
    auto it = idx.tensors.find(key);
    if (it == idx.tensors.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": has no tensor '", key, "'",
          absl::StartsWith(key, "optimizer/") ? " (a weights-only checkpoint?)" : "",
          "; the config's model needs it", diff));
    }
    if (it->second.shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor '", key, "' has shape ", ShapeToString(it->second.shape),
          " in the checkpoint, the config's model needs ", ShapeToString(shape), diff));
    }
  }
  for (const auto& [key, t] : idx.tensors) {
    if (absl::StartsWith(key, "model/") && expected.count(key) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor '", key, "' is not a parameter of the config's model", diff));
    }
  }
  return absl::OkStatus();
}

namespace {

// The number of the first stored box of every tensor of the index (BoxesRead's numbering);
// *total: the number of stored boxes.
std::map<std::string, size_t> FirstBoxNumbers(const CheckpointIndex& idx, size_t* total) {
  std::map<std::string, size_t> first;
  size_t n = 0;
  for (const auto& [key, t] : idx.tensors) {
    first[key] = n;
    n += t.boxes.size();
  }
  *total = n;
  return first;
}

// Calls fn(tensor, piece, i, stored) for every stored box `stored` (box i of the tensor in the
// index) that load piece `piece` of a registry tensor intersects; tensors the index lacks are
// skipped (ReadState names them).
template <typename Fn>
void ForEachIntersection(const CheckpointIndex& idx, const TrainStateRegistry& registry, Fn fn) {
  for (const StateTensor& t : registry.tensors()) {
    auto it = idx.tensors.find(t.key);
    if (it == idx.tensors.end()) continue;
    const std::vector<StoredBox>& boxes = it->second.boxes;
    for (size_t p = 0; p < t.loads.size(); ++p) {
      for (size_t i = 0; i < boxes.size(); ++i) {
        if (Intersects(boxes[i].box, t.loads[p].box)) fn(t, p, i, boxes[i]);
      }
    }
  }
}

}  // namespace

std::vector<int32_t> BoxesRead(const CheckpointReader& reader,
                               const TrainStateRegistry& registry) {
  const CheckpointIndex& idx = reader.index();
  size_t total = 0;
  const std::map<std::string, size_t> first = FirstBoxNumbers(idx, &total);
  std::vector<int32_t> read(total, 0);
  ForEachIntersection(idx, registry,
                      [&](const StateTensor& t, size_t, size_t i, const StoredBox&) {
                        read[first.at(t.key) + i] = 1;
                      });
  return read;
}

absl::Status ReadState(CheckpointReader& reader, const TrainStateRegistry& registry,
                       bool* masters_loaded, const std::vector<int32_t>* readers) {
  registry.ClearUncovered();
  const CheckpointIndex& idx = reader.index();
  size_t total_boxes = 0;
  const std::map<std::string, size_t> first_box = FirstBoxNumbers(idx, &total_boxes);
  if (readers != nullptr && readers->size() != total_boxes) {
    return absl::InvalidArgumentError(absl::StrCat(
        reader.dir(), ": ReadState: ", readers->size(), " reader counts for ", total_boxes,
        " stored boxes"));
  }
  // Every (piece this rank holds, stored box it intersects), read in the order of the boxes in
  // the files: the registry's order (a weight, then its moments, then the next weight) jumps
  // between distant offsets, which on a cold cache turns each of the ~1000 mostly small boxes
  // into its own seek with no readahead.
  struct Task {
    const StateTensor* tensor;
    size_t piece;
    size_t box;
    const StoredBox* stored;
  };
  std::vector<Task> tasks;
  bool masters = false;
  for (const StateTensor& t : registry.tensors()) {
    auto it = idx.tensors.find(t.key);
    const bool is_master = absl::StartsWith(t.key, "optimizer/master/");
    if (it == idx.tensors.end() && is_master) continue;  // optional (the header comment)
    if (is_master) masters = true;
    if (it == idx.tensors.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(reader.dir(), ": the checkpoint has no tensor '", t.key, "'"));
    }
  }
  ForEachIntersection(idx, registry,
                      [&](const StateTensor& t, size_t p, size_t i, const StoredBox& stored) {
                        tasks.push_back({&t, p, i, &stored});
                      });
  // Files in turn, starting at the one this rank reads most of (the shard it wrote, at the same
  // layout) and going round: the replicas of a data-parallel group each read their own file
  // from the disk first and then find their peers' weights already in the page cache, instead
  // of all of them reading file 0 together (half the streams the disk could serve).
  std::map<int, uint64_t> per_file;
  for (const Task& task : tasks) per_file[task.stored->file] += task.stored->nbytes;
  int first = 0;
  uint64_t most = 0;
  for (const auto& [file, n] : per_file) {
    if (n > most) first = file, most = n;
  }
  const int nfiles = static_cast<int>(idx.files.size());
  auto turn = [&](int file) { return (file - first + nfiles) % std::max(nfiles, 1); };
  std::stable_sort(tasks.begin(), tasks.end(), [&](const Task& a, const Task& b) {
    if (a.stored->file != b.stored->file) return turn(a.stored->file) < turn(b.stored->file);
    return a.stored->byte_offset < b.stored->byte_offset;
  });
  std::map<std::pair<const StateTensor*, size_t>, int64_t> copied;
  // The boxes that this rank alone reads, and holds whole (at the layout that saved: most of
  // the moments, each ZeRO owner its own range), go through ReadRun (O_DIRECT, requests of up
  // to 8 MiB, no page cache to fill); the rest through the page cache, where the other ranks
  // that read a box (the data-parallel replicas of a weight; both pipeline stages of a tied
  // embedding, its moments too) find it.
  auto run_box = [&](const Task& t) {
    return readers != nullptr && reader.direct_io() &&
           (*readers)[first_box.at(t.tensor->key) + t.box] == 1 &&
           t.stored->box == t.tensor->loads[t.piece].box;
  };
  constexpr uint64_t kGap = 64 << 10;  // bytes between two boxes read and dropped, at most
  std::vector<CheckpointReader::BoxRead> run;
  for (size_t i = 0; i < tasks.size();) {
    if (run_box(tasks[i])) {
      const StoredBox& head = *tasks[i].stored;
      uint64_t end = head.byte_offset + head.nbytes;
      size_t j = i + 1;
      while (j < tasks.size() && run_box(tasks[j]) && tasks[j].stored->file == head.file &&
             tasks[j].stored->byte_offset >= end && tasks[j].stored->byte_offset - end <= kGap &&
             tasks[j].stored->byte_offset + tasks[j].stored->nbytes - head.byte_offset <=
                 CheckpointReader::kRunBytes) {
        end = tasks[j].stored->byte_offset + tasks[j].stored->nbytes;
        ++j;
      }
      run.clear();
      for (size_t k = i; k < j; ++k) {
        const StatePiece& piece = tasks[k].tensor->loads[tasks[k].piece];
        run.push_back({&tasks[k].tensor->key, tasks[k].box, piece.data});
        copied[{tasks[k].tensor, tasks[k].piece}] += piece.box.numel();
      }
      LATTICE_RETURN_IF_ERROR(reader.ReadRun(run));
      i = j;
      continue;
    }
    const Task& task = tasks[i++];
    const StatePiece& piece = task.tensor->loads[task.piece];
    int64_t& n = copied[{task.tensor, task.piece}];
    if (task.stored->box == piece.box) {
      // Held whole (the saving layout's own boxes): straight into place.
      LATTICE_RETURN_IF_ERROR(reader.Read(task.tensor->key, task.box, piece.data));
      n += piece.box.numel();
      continue;
    }
    LATTICE_ASSIGN_OR_RETURN(const float* data, reader.Box(task.tensor->key, task.box));
    n += CopyIntersection(task.stored->box, data, piece.box, piece.data);
  }
  for (const StateTensor& t : registry.tensors()) {
    if (idx.tensors.count(t.key) == 0) continue;  // an absent master (checked above)
    for (size_t p = 0; p < t.loads.size(); ++p) {
      auto it = copied.find({&t, p});
      const int64_t n = it == copied.end() ? 0 : it->second;
      if (n != t.loads[p].box.numel()) {
        return absl::DataLossError(absl::StrCat(reader.dir(), ": tensor '", t.key, "' box ",
                                                t.loads[p].box.ToString(),
                                                ": the checkpoint covers ", n, " of its ",
                                                t.loads[p].box.numel(), " elements"));
      }
    }
  }
  if (masters_loaded != nullptr) *masters_loaded = masters;
  return absl::OkStatus();
}

absl::Status LoadCheckpointWeights(const std::string& path, Decoder& model) {
  LATTICE_ASSIGN_OR_RETURN(std::string dir, ResolveCheckpoint(path));
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, CheckpointReader::Open(dir));
  LATTICE_RETURN_IF_ERROR(CheckCompatible(*reader, model.config(), /*need_optimizer=*/false));
  return ReadState(*reader, TrainStateRegistry::ForModel(model));
}

absl::Status LoadWeightsFile(const std::string& path, const ModelConfig& cfg,
                             const TrainStateRegistry& registry) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  LATTICE_RETURN_IF_ERROR(CheckWeightsMetadata(*file, cfg));
  std::map<std::string, Shape> shapes;
  for (const auto& [name, shape] : Decoder::ParameterShapes(cfg)) shapes[name] = shape;
  for (const std::string& name : file->names()) {
    if (shapes.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor '", name.substr(0, 120),
          "' is not a parameter of this model (check model.* config)"));
    }
  }
  registry.ClearUncovered();
  for (const StateTensor& t : registry.tensors()) {
    if (!absl::StartsWith(t.key, "model/")) continue;
    const std::string name = t.key.substr(6);
    LATTICE_ASSIGN_OR_RETURN(SafetensorsTensorInfo info, file->Info(name));
    const Shape& shape = shapes[name];
    if (info.shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "' has shape ",
                                                     ShapeToString(info.shape),
                                                     "; the config needs ",
                                                     ShapeToString(shape)));
    }
    // The file's tensor is one box covering it whole (padded vocabulary rows included).
    Box whole{std::vector<int64_t>(shape.size(), 0), shape};
    LATTICE_ASSIGN_OR_RETURN(auto bytes, file->RawBytes(name));
    Tensor converted;
    const float* src = reinterpret_cast<const float*>(bytes.first);
    if (info.dtype_name != "F32" || reinterpret_cast<uintptr_t>(bytes.first) % alignof(float) != 0) {
      converted = Tensor::Zeros(shape, DType::kF32);
      LATTICE_RETURN_IF_ERROR(file->ReadInto(name, converted));
      src = converted.f32();
    }
    for (const StatePiece& piece : t.loads) {
      CopyIntersection(whole, src, piece.box, piece.data);
      const int64_t n = piece.box.numel();
      for (int64_t i = 0; i < n; ++i) {
        if (!std::isfinite(piece.data[i])) {
          return absl::DataLossError(absl::StrCat(
              path, ": tensor '", name, "' holds ", std::isnan(piece.data[i]) ? "NaN" : "Inf",
              " in box ", piece.box.ToString(), " (element ", i,
              " of the box); the file is corrupt or was saved after training diverged"));
        }
      }
    }
  }
  return absl::OkStatus();
}

// ---- Offline commands ----------------------------------------------------------------------

absl::StatusOr<std::string> ReshardCheckpoint(const std::string& src, const Config& target,
                                              const std::string& out_root) {
  LATTICE_ASSIGN_OR_RETURN(std::string dir, ResolveCheckpoint(src));
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, CheckpointReader::Open(dir));
  const std::string first_param = Decoder::ParameterShapes(target.model)[0].first;
  const bool with_optimizer = reader->index().tensors.count(ExpAvgKey(first_param)) > 0;
  const bool with_masters =
      with_optimizer && reader->index().tensors.count(MasterKey(first_param)) > 0;
  LATTICE_RETURN_IF_ERROR(CheckCompatible(*reader, target.model, with_optimizer));
  const ParallelConfig& pc = target.parallel;
  const int world = static_cast<int>(pc.tp * pc.dp * pc.pp);
  CheckpointContents contents = ContentsOf(reader->index());
  contents.config_yaml = target.ToYaml();
  contents.layout = LayoutOf(target);
  std::error_code ec;
  fs::create_directories(out_root, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(out_root, ": ", ec.message()));
  const std::string tmp_dir =
      (fs::path(out_root) / absl::StrCat(kCheckpointTempPrefix, CheckpointDirName(contents.iteration)))
          .string();
  LATTICE_RETURN_IF_ERROR(RemoveTree(tmp_dir));
  fs::create_directories(tmp_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(tmp_dir, ": ", ec.message()));
  std::vector<std::string> descriptions;
  for (int r = 0; r < world; ++r) {
    LATTICE_ASSIGN_OR_RETURN(ProcessGrid grid,
                             ProcessGrid::Create(world, r, static_cast<int>(pc.tp),
                                                 static_cast<int>(pc.pp), static_cast<int>(pc.dp)));
    const ModelShard shard = ParallelEngine::ShardFor(target, grid);
    UnusedTensorParallelOps ops(shard.tp_rank, shard.tp_size);
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Decoder> model,
                             Decoder::Create(target.model, 1, shard, &ops));
    ParameterSet& params = model->params();
    // The trainer's bucket layout (parallel/engine.h: EngineOptions' default), so the boxes are
    // those that layout's own save writes.
    LATTICE_ASSIGN_OR_RETURN(
        BucketLayout layout,
        MakeBucketLayout(params.numel(), grid.dp_size(), kDefaultBucketBytes));
    std::vector<OptimizerSegment> segments;
    int64_t state_numel = 0;
    if (pc.zero1) {
      for (const ShardSegment& s : ShardSegments(params, layout, grid.dp_rank())) {
        segments.push_back(s);
      }
      state_numel = layout.shard_numel;
    } else {
      segments = WholeModelSegments(params);
      state_numel = params.numel();
    }
    Tensor m, v, master;
    if (with_optimizer) {
      m = Tensor::Zeros({std::max<int64_t>(state_numel, 1)}, DType::kF32);
      v = Tensor::Zeros({std::max<int64_t>(state_numel, 1)}, DType::kF32);
    }
    if (with_masters) master = Tensor::Zeros({std::max<int64_t>(state_numel, 1)}, DType::kF32);
    const TrainStateRegistry reg = TrainStateRegistry::ForRank(
        target.model, params, layout, grid.dp_rank(), segments,
        with_optimizer ? m.f32() : nullptr, with_optimizer ? v.f32() : nullptr, state_numel,
        with_masters ? master.f32() : nullptr);
    LATTICE_RETURN_IF_ERROR(ReadState(*reader, reg));
    std::vector<ShardTensor> tensors;
    std::vector<BoxRecord> boxes;
    CollectShard(reg, &tensors, &boxes);
    LATTICE_ASSIGN_OR_RETURN(ShardPlan plan,
                             PlanShard(tensors, ShardMetadata(r, world, contents.iteration)));
    const CheckpointFile file{ShardFileName(r, world), plan.file_bytes, r};
    LATTICE_ASSIGN_OR_RETURN(std::vector<uint32_t> crcs,
                             WriteShard((fs::path(tmp_dir) / file.name).string(), plan, tensors));
    descriptions.push_back(DescribeShard(file, boxes, plan, tensors, crcs));
  }
  LATTICE_ASSIGN_OR_RETURN(
      CheckpointIndex idx,
      AssembleIndex(contents, descriptions,
                    StateShapes(target.model, with_optimizer, with_masters)));
  std::string final_dir;
  absl::Status committed = CommitDirectory(out_root, tmp_dir, idx, &final_dir);
  if (!committed.ok()) {
    (void)RemoveTree(tmp_dir);
    return committed;
  }
  return final_dir;
}

absl::Status ExportCheckpointWeights(const std::string& src, const std::string& out) {
  LATTICE_ASSIGN_OR_RETURN(std::string dir, ResolveCheckpoint(src));
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, CheckpointReader::Open(dir));
  LATTICE_ASSIGN_OR_RETURN(
      Config cfg, ParseConfig(reader->index().config_yaml, {},
                              (fs::path(dir) / kCheckpointIndexFile).string() + " config"));
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Decoder> model, Decoder::Create(cfg.model, 1));
  LATTICE_RETURN_IF_ERROR(CheckCompatible(*reader, cfg.model, /*need_optimizer=*/false));
  LATTICE_RETURN_IF_ERROR(ReadState(*reader, TrainStateRegistry::ForModel(*model)));
  return SaveWeights(*model, out);
}

}  // namespace lattice
