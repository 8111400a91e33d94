// Training samples from token files: fixed-length windows, a seeded shuffle, weighted blends,
// and the loader position that checkpoints save.
//
// Samples. A source of N tokens holds S = (N - 1) / T samples for seq_len T: sample w is the
// window of T + 1 tokens starting at token w * T (stride T, so consecutive windows share one
// token and targets are the inputs shifted by one). Windows run across document boundaries, as
// in Megatron and llm.c (the EOT tokens in the stream mark them). Trailing tokens that do not
// fill a window are not used.
//
// Order. Every sample has a GLOBAL index g = 0, 1, 2, ... With one source, local index l = g;
// epoch e = l / S and position p = l % S; the window read is Permute_{seed,source,e}(p), a
// Feistel permutation of [0, S) keyed by CounterRng (cycle-walking keeps it inside [0, S)). So
// each epoch visits every window once in a fresh order, any index can be computed without the
// ones before it (O(1) memory, random access), and the order depends only on (seed, data),
// never on threads, ranks or the data-parallel size.
//
// Blends (data.blend: [[0.7, A], [0.3, B]]). Global index g goes to the source with the largest
// deficit weight_d * (g + 1) - count_d(g) (ties: the lower index), as Megatron's blended dataset
// does, so after n samples each source has supplied n * weight_d samples to within about one.
// The sample's local index is count_d(g); each source then has its own shuffle and epochs.
//
// Data parallelism (Megatron's sampler). With dp ranks and micro-batch size m, one micro-step
// consumes m * dp consecutive global indices: rank r of dp, at consumed-sample offset s, reads
// global indices s + r * m ... s + r * m + m - 1, and then every rank advances s by m * dp.
// Interleaving the ranks' micro-batches therefore reproduces the dp = 1 sequence exactly, and
// the position to checkpoint is one number, the consumed samples (DataLoaderState).
//
// Skipped ranges (runtime/data/sample_ranges.h). A loss-spike rollback marks global ranges
// [begin, end) as never to be read again. A micro-step then takes the next m * dp indices
// outside them (rank r the r-th group of m), and s moves past the last one; so the sequence is
// the dp = 1 sequence with those indices left out, under any dp. The ranges are saved with s.
#ifndef LATTICE_RUNTIME_DATA_DATASET_H_
#define LATTICE_RUNTIME_DATA_DATASET_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/data/sample_ranges.h"
#include "runtime/data/token_file.h"

namespace lattice {

struct Config;

// A Feistel permutation of [0, n) keyed by (seed, stream): the shuffle behind every epoch.
// Exposed for tests. Requires 0 <= x < n.
uint64_t FeistelPermute(uint64_t x, uint64_t n, uint64_t seed, absl::string_view stream);

struct SampleOptions {
  int64_t seq_len = 0;     // T: every sample is T + 1 tokens
  uint64_t seed = 0;       // train.seed
  // > 0: every token of every sample is checked to be < vocab_size (DataLoss naming the file,
  // the token position and the id). 0: no check.
  int64_t vocab_size = 0;
  // Names the shuffle streams, so train and val orders differ for the same seed.
  std::string name = "train";
};

struct WeightedSource {
  double weight = 1.0;
  std::shared_ptr<const TokenSource> source;
};

// What a checkpoint saves about the data: where the loader is and what it was reading, so a
// restore can refuse data that would give different samples.
struct DataLoaderState {
  static constexpr int kVersion = 1;
  struct Source {
    std::string path;
    int64_t num_tokens = 0;
    double weight = 1.0;
  };
  // The global index where the next micro-step starts: samples consumed by all data-parallel
  // ranks together, skipped ones included (runtime/data/sample_ranges.h).
  int64_t consumed_samples = 0;
  uint64_t seed = 0;
  int64_t seq_len = 0;
  std::vector<Source> sources;
  // Global sample ranges the loader never yields (loss-spike rollbacks, docs/recovery.md),
  // merged. JSON "skipped": [[begin, end], ...]; absent in older checkpoints (none).
  std::vector<SampleRange> skipped;

  std::string ToJson() const;
  // InvalidArgument naming the field for malformed JSON or another version.
  static absl::StatusOr<DataLoaderState> FromJson(absl::string_view json);
};

// One micro-batch of token ids, as the engine and the model consume it: inputs (b, t) and
// targets (b, t) (the inputs shifted by one; a target < 0 is not counted in the loss).
struct TokenBatch {
  int64_t b = 0;
  int64_t t = 0;
  std::vector<int32_t> inputs;   // (b, t)
  std::vector<int32_t> targets;  // (b, t)
  // Packed examples (runtime/data/sft.h): (b, t), the row position where each token's example
  // starts (0 <= doc_starts[t] <= t, each example a contiguous run); attention and positions
  // stay inside the example. Empty: every row is one sequence.
  std::vector<int32_t> doc_starts;
};

// What a data-parallel cursor (SampleStream) reads: rows by global index, and the state a
// checkpoint saves. Pretraining windows (TrainingSamples) and fine-tuning rows
// (runtime/data/sft.h) implement it.
class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual int64_t seq_len() const = 0;
  // Rows [first_global_index, first_global_index + batch) into `out`, resized to (batch,
  // seq_len).
  virtual absl::Status ReadBatch(int64_t first_global_index, int64_t batch,
                                 TokenBatch& out) const = 0;
  virtual DataLoaderState State(int64_t consumed_samples) const = 0;
  virtual absl::Status CheckState(const DataLoaderState& state) const = 0;
};

// Random access to the sample sequence of one or more weighted sources. Thread-safe.
class TrainingSamples final : public SampleSource {
 public:
  // InvalidArgument when seq_len < 1, a weight is not finite and > 0, there are no sources, or a
  // source is too short for one sample (the message names the file and the counts).
  static absl::StatusOr<std::unique_ptr<TrainingSamples>> Create(
      std::vector<WeightedSource> sources, const SampleOptions& options);

  // out[0..seq_len] = the tokens of global sample `global_index` (>= 0; there is no end, epochs
  // repeat with fresh orders).
  absl::Status Get(int64_t global_index, int32_t* out) const;
  // inputs (B, T) and targets (B, T), row b from global sample first_global_index + b; targets
  // are the inputs shifted by one.
  absl::Status GetBatch(int64_t first_global_index, int64_t batch, int32_t* inputs,
                        int32_t* targets) const;
  // The same into a TokenBatch of `batch` rows.
  absl::StatusOr<TokenBatch> GetBatch(int64_t first_global_index, int64_t batch) const;
  absl::Status ReadBatch(int64_t first_global_index, int64_t batch,
                         TokenBatch& out) const override;

  struct Location {
    int source = 0;           // index into the sources
    int64_t local_index = 0;  // the source's own sample counter
    int64_t epoch = 0;        // local_index / samples_per_epoch(source)
    int64_t window = 0;       // the window read: tokens [window * T, window * T + T + 1)
  };
  Location Locate(int64_t global_index) const;

  int64_t seq_len() const override { return options_.seq_len; }
  int num_sources() const { return static_cast<int>(sources_.size()); }
  const TokenSource& source(int i) const { return *sources_[i].source; }
  double weight(int i) const { return weights_[i]; }  // normalised to sum 1
  int64_t samples_per_epoch(int i) const { return samples_per_epoch_[i]; }

  // The state to checkpoint after `consumed_samples` global samples.
  DataLoaderState State(int64_t consumed_samples) const override;
  // OK when `state` was written for the same seed, seq_len and sources (paths may differ: data
  // can move; token counts and weights may not). InvalidArgument naming the difference.
  absl::Status CheckState(const DataLoaderState& state) const override;

 private:
  TrainingSamples() = default;
  // (source, local index) of a global index, through the blend schedule.
  std::pair<int, int64_t> Assign(int64_t global_index) const;
  void SimulateBlock(int64_t block, std::vector<int64_t>* counts, uint8_t* which,
                     int64_t* local) const;

  SampleOptions options_;
  std::vector<WeightedSource> sources_;
  std::vector<double> weights_;            // (K,) normalised
  std::vector<int64_t> samples_per_epoch_;  // (K,)
  std::vector<std::string> shuffle_streams_;  // (K,) prefix of each source's shuffle stream

  // Blend schedule cache: counts at the start of every block simulated so far, plus the last
  // block expanded in full, so sequential reads cost O(1) and a restore at sample g costs one
  // O(g * K) pass.
  static constexpr int64_t kBlendBlock = 4096;
  mutable std::mutex blend_mu_;
  mutable std::vector<int64_t> block_counts_;  // (blocks, K)
  mutable int64_t cached_block_ = -1;
  mutable std::vector<uint8_t> cached_which_;  // (kBlendBlock,)
  mutable std::vector<int64_t> cached_local_;  // (kBlendBlock,)
};

// One data-parallel rank's cursor over a SampleSource (see the header comment for the rule).
class SampleStream {
 public:
  // Requires 0 <= dp_rank < dp_size and micro_batch >= 1 (checked: LATTICE_CHECK).
  SampleStream(std::shared_ptr<const SampleSource> samples, int64_t dp_rank, int64_t dp_size,
               int64_t micro_batch);
  // This rank's next micro-batch: inputs (m, T), targets (m, T); then advances the position.
  absl::Status Next(int32_t* inputs, int32_t* targets);
  // The same into `out` (resized to (m, T)).
  absl::Status Next(TokenBatch& out);
  // Global index of this rank's next first sample.
  int64_t next_global_index() const {
    return NthUnskipped(consumed_, dp_rank_ * micro_batch_, skipped_);
  }
  int64_t consumed_samples() const { return consumed_; }
  DataLoaderState State() const {
    DataLoaderState s = samples_->State(consumed_);
    s.skipped = skipped_;
    return s;
  }
  // Continues from a checkpointed state (CheckState first), its skipped ranges included.
  absl::Status Restore(const DataLoaderState& state);
  // Never yields the global samples [range.begin, range.end) (merged with the ranges skipped
  // already). InvalidArgument unless 0 <= begin < end.
  absl::Status Skip(const SampleRange& range);
  const std::vector<SampleRange>& skipped() const { return skipped_; }
  void set_consumed_samples(int64_t consumed) { consumed_ = consumed; }

 private:
  // Next() when a skipped range lies ahead of the position.
  absl::Status NextSkipping(TokenBatch& out);

  std::shared_ptr<const SampleSource> samples_;
  TokenBatch scratch_;  // Next(inputs, targets) reads through it
  int64_t dp_rank_;
  int64_t dp_size_;
  int64_t micro_batch_;
  int64_t consumed_ = 0;
  std::vector<SampleRange> skipped_;  // merged
};

// Splits a source by documents: validation = the last round(n * val_fraction) documents (at
// least 1), training = the documents before them. Deterministic. InvalidArgument when
// val_fraction is not in (0, 1) or the source has fewer than two documents.
absl::StatusOr<std::pair<std::shared_ptr<const TokenSource>, std::shared_ptr<const TokenSource>>>
SplitTrainVal(std::shared_ptr<const TokenSource> source, double val_fraction);

// What the data section of a config asks for, plus what it does not say.
struct DatasetOptions {
  std::string train;                                  // data.train: one source ...
  std::vector<std::pair<double, std::string>> blend;  // ... or data.blend: [[weight, path], ...]
  std::string val;                                    // data.val (empty: split off the train data)
  double val_fraction = 0.01;  // used when val is empty; 0 = no validation set
  int64_t seq_len = 0;         // model.seq_len
  uint64_t seed = 0;           // train.seed
  int64_t vocab_size = 0;      // model.vocab_size (0 = no id check)
  TokenSourceOptions source_options;  // format override, EOT id (the tokenizer's)

  static DatasetOptions FromConfig(const Config& config);
};

struct Datasets {
  std::shared_ptr<const TrainingSamples> train;
  std::shared_ptr<const TrainingSamples> val;  // null when there is no validation set
};

// Opens the files and builds train and val samples. Without data.val, every training source is
// split by SplitTrainVal and the val parts are blended with the same weights.
absl::StatusOr<Datasets> OpenDatasets(const DatasetOptions& options);

}  // namespace lattice

#endif  // LATTICE_RUNTIME_DATA_DATASET_H_
