// Sharded checkpoints of the whole training state, in global coordinates, for any layout
// (docs/checkpoints.md; the file format is runtime/io/checkpoint_format.h's).
//
// The registry. TrainStateRegistry is the one list a checkpoint walks: per parameter, the
// global tensors "model/<name>", "optimizer/exp_avg/<name>" and "optimizer/exp_avg_sq/<name>"
// (fp32 is the only precision, so the weights are their own master copy and there is no loss
// scale), each with the boxes this rank SAVES and the boxes it LOADS. Beside the tensors the
// index carries the counters (iteration, optimizer step, skipped and NaN iterations), the seed,
// the data loader's state (consumed samples, blend sources), the config and the source layout.
// The vocabulary tensors are stored unpadded (V rows): their padding rows are zero and are
// re-created on load.
//
// Who writes what. Every element of every tensor is written by exactly one rank: the tensor-
// parallel owner of its rows (model/parameters.h: replicated norms and biases, replicated kv
// heads and the last stage's copy of a tied embedding are written once), and among the
// data-parallel ranks the one whose ZeRO-1 chunk holds it (parallel/data_parallel.h: the
// bucket chunks). So with ZeRO-1 the moments are written by their owner, from its shard, and
// the writes of replicated weights are spread over the data-parallel ranks in every case. A
// flat chunk that cuts a parameter mid-row becomes up to three boxes (partial row, full rows,
// partial row).
//
// Loading. Any layout loads any checkpoint of the same model: every rank computes the boxes
// it holds (replicas included, the ZeRO-1 shard of the moments), reads only the stored boxes
// that intersect them, checks each one's CRC-32C, and copies the intersection. The index is
// validated before any data is read (runtime/io/checkpoint_format.h, ValidateIndex: every
// element covered once), and the model it was saved for must have the same shapes. The data
// position is a global sample index, so changing dp keeps the global sample order exactly.
//
// Commit protocol (CheckpointSaver). Rank 0 creates <root>/.tmp.step_N; every rank writes its
// shard there (runtime/io/output_file.h: temporary, fsync, rename, directory fsync) and reports
// success; only when every rank succeeded does rank 0 write index.json (the commit marker),
// rename the directory to <root>/step_N, fsync the root, update `latest` (write, fsync,
// rename, fsync) and apply retention. A save that fails anywhere leaves no step_N: discovery,
// resume and retention only ever see committed checkpoints, and leftovers are removed at the
// next start.
//
// Async saves copy this rank's boxes into one host buffer at the step boundary and write it
// from a background thread that never touches a communicator; every later step boundary the
// ranks agree (one tiny all-reduce) whether all writers are done, and the first boundary where
// they are commits it. An error surfaces at that commit (the next save or the end of training
// waits for it); two saves never overlap; the files are byte for byte those of a sync save.
#ifndef LATTICE_PARALLEL_CHECKPOINT_H_
#define LATTICE_PARALLEL_CHECKPOINT_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/decoder.h"
#include "model/optimizer.h"
#include "model/parameters.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"
#include "runtime/config.h"
#include "runtime/io/checkpoint_format.h"

namespace lattice {

class ParallelEngine;

// State tensor keys.
std::string ModelKey(const std::string& param);       // "model/<param>"
std::string ExpAvgKey(const std::string& param);      // "optimizer/exp_avg/<param>"
std::string ExpAvgSqKey(const std::string& param);    // "optimizer/exp_avg_sq/<param>"
std::string MasterKey(const std::string& param);      // "optimizer/master/<param>"

// A global box of a state tensor held by this rank, its elements contiguous (row-major over
// the box) at `data`.
struct StatePiece {
  Box box;
  float* data = nullptr;
};

struct StateTensor {
  std::string key;
  Shape shape;                     // global, vocabulary unpadded
  std::vector<StatePiece> saves;   // what this rank writes (each element on exactly one rank)
  std::vector<StatePiece> loads;   // everything this rank holds (replicas included)
};

// One rank's training state, as a checkpoint sees it.
class TrainStateRegistry {
 public:
  // A rank of the engine's layout: weights, and AdamW's moments unless weights_only.
  static TrainStateRegistry ForEngine(ParallelEngine& engine, bool weights_only = false);
  // One whole model's weights (eval, generate, export).
  static TrainStateRegistry ForModel(Decoder& model);
  // Any rank, described by its parameters and optimizer state: `segments` are the optimizer's
  // (state_offset into m and v, state_numel elements each), `layout` and `dp_rank` choose which
  // data-parallel rank writes which elements. m, v may be null (weights only); `master` (laid
  // out like m and v) is null without mixed precision.
  static TrainStateRegistry ForRank(const ModelConfig& cfg, ParameterSet& params,
                                    const BucketLayout& layout, int dp_rank,
                                    const std::vector<OptimizerSegment>& segments, float* m,
                                    float* v, int64_t state_numel, float* master = nullptr);

  const std::vector<StateTensor>& tensors() const { return tensors_; }
  const ModelConfig& model_config() const { return model_; }
  bool has_optimizer() const { return m_ != nullptr; }
  bool has_masters() const { return master_ != nullptr; }
  // Zeroes what no checkpoint covers before a load (the padded vocabulary rows, AdamW's
  // padding), so that nothing of the state before the load survives it.
  void ClearUncovered() const;
  // Bytes this rank saves.
  uint64_t save_bytes() const;

 private:
  std::vector<StateTensor> tensors_;
  ModelConfig model_;
  ParameterSet* params_ = nullptr;
  int64_t vocab_ = 0;
  float* m_ = nullptr;
  float* v_ = nullptr;
  float* master_ = nullptr;
  int64_t state_numel_ = 0;
};

// CheckpointContents (the counters and what else a checkpoint carries beside the tensors) is
// runtime/io/checkpoint_format.h's; the index extends it.
// The layout of `cfg` (after ValidateLayout) as the index records it.
CheckpointLayout LayoutOf(const Config& cfg);

struct CheckpointOptions {
  std::string root;         // checkpoint.dir
  bool async = false;
  bool direct_io = true;    // checkpoint.direct_io: shards written with O_DIRECT
  int64_t keep = 0;         // 0: keep every checkpoint
  int64_t keep_every = 0;
};

// What one committed save cost (maxima over the ranks, bytes summed).
struct SaveStats {
  int64_t iteration = 0;
  std::string path;
  uint64_t bytes = 0;          // shard bytes of all ranks
  double copy_seconds = 0;     // async: copying state into the host buffer (the step pause)
  double write_seconds = 0;    // writing and fsyncing the shard (on the background thread)
  double commit_seconds = 0;   // agreement, index, renames, retention
  double total_seconds = 0;    // from the start of Save to the commit
  int64_t host_copy_bytes = 0;  // the async copy's buffer (0 for sync saves), largest rank
  std::vector<std::string> removed;  // checkpoints retention deleted
};

class CheckpointSaver {
 public:
  // Collective over `world` (splits a communicator of its own, so checkpoint traffic never
  // mixes with the engine's counters). Rank 0 creates the root.
  static absl::StatusOr<std::unique_ptr<CheckpointSaver>> Create(Communicator& world,
                                                                 const CheckpointOptions& options);
  // Waits for a running writer; its result is dropped (call Finish() to commit it).
  ~CheckpointSaver();

  // Collective. Saves the registry's boxes as the checkpoint of contents.iteration. A save
  // still in flight is waited for and committed first (its stats are returned). Sync: writes
  // and commits before returning (its stats are returned). Async: copies the state and starts
  // the writer.
  absl::StatusOr<std::optional<SaveStats>> Save(const TrainStateRegistry& registry,
                                                const CheckpointContents& contents);
  // Collective. Commits an async save when every rank's writer has finished.
  absl::StatusOr<std::optional<SaveStats>> Poll();
  // Collective. Waits for and commits a save in flight.
  absl::StatusOr<std::optional<SaveStats>> Finish();
  bool in_flight() const { return pending_ != nullptr; }
  // Not collective. Async saves: allocates (and touches) the host copy for the registry's shard
  // now, so that the first save's pause at the step boundary is a copy, not page faults.
  absl::Status Prepare(const TrainStateRegistry& registry);

 private:
  struct Pending;
  CheckpointSaver(std::unique_ptr<Communicator> comm, CheckpointOptions options);
  absl::StatusOr<SaveStats> Commit();

  std::unique_ptr<Communicator> comm_;
  CheckpointOptions options_;
  std::unique_ptr<Pending> pending_;
  // The async copy's buffer (a shard's file image), kept between saves.
  AlignedHostBuffer host_;
};

// ---- Loading -------------------------------------------------------------------------------

// Checks that the checkpoint holds `cfg`'s model: the same shapes (the first tensor that
// differs is named, with the model keys that differ), every weight, and the moments when
// `need_optimizer`. Reads nothing but the index. InvalidArgument naming the index file.
absl::Status CheckCompatible(const CheckpointReader& reader, const ModelConfig& cfg,
                             bool need_optimizer);
// Fills the registry's load boxes from the checkpoint (ClearUncovered first), reading only the
// stored boxes that intersect them. Not collective. DataLoss naming the file, tensor and box.
// A registry's "optimizer/master/" tensors the checkpoint lacks are skipped (see above);
// *masters_loaded (when given) says whether the checkpoint had them.
//
// `readers` (when given): for every stored box (numbered as BoxesRead numbers them), how many
// ranks read it, the sum of BoxesRead over the ranks loading together. The boxes this rank alone
// reads are read with O_DIRECT in requests of up to 8 MiB (CheckpointReader::ReadRun, when the
// reader's direct I/O is on); without it every box goes through the page cache.
absl::Status ReadState(CheckpointReader& reader, const TrainStateRegistry& registry,
                       bool* masters_loaded = nullptr,
                       const std::vector<int32_t>* readers = nullptr);
// 1 for every stored box of the checkpoint (over the index's tensors in key order, each one's
// boxes in order) that ReadState reads for `registry`, else 0. Summed over the loading ranks
// (an all-reduce), the `readers` of ReadState.
std::vector<int32_t> BoxesRead(const CheckpointReader& reader, const TrainStateRegistry& registry);
// The contents (counters, data state, config) of a checkpoint's index.
CheckpointContents ContentsOf(const CheckpointIndex& index);

// Loads the weights of `model` (one whole model) from a checkpoint directory or root.
absl::Status LoadCheckpointWeights(const std::string& path, Decoder& model);
// Loads the registry's weights from a whole-model safetensors file (model/weights_file.h
// names and metadata), copying only the rows and columns this rank holds out of the mapped
// file. DataLoss naming the tensor for non-finite values.
absl::Status LoadWeightsFile(const std::string& path, const ModelConfig& cfg,
                             const TrainStateRegistry& registry);

// ---- Offline commands (lattice ckpt) --------------------------------------------------------

// Rewrites the checkpoint at `src` as the ranks of `target`'s layout (after ValidateLayout)
// would have saved it, one rank at a time in this process, into a new committed checkpoint
// under `out_root` (created), and returns its path. The data state and counters are kept.
absl::StatusOr<std::string> ReshardCheckpoint(const std::string& src, const Config& target,
                                              const std::string& out_root);
// Writes the checkpoint's weights as one safetensors file (model/weights_file.h), for eval,
// generate and conversion.
absl::Status ExportCheckpointWeights(const std::string& src, const std::string& out);

}  // namespace lattice

#endif  // LATTICE_PARALLEL_CHECKPOINT_H_
