// One data-parallel training step: every rank runs its own micro-batches of the global batch
// (Megatron's sampler, runtime/dataset.h) through its replica of the model, the gradients are
// summed across ranks bucket by bucket while the last backward pass is still running, and
// either every rank applies AdamW to everything (plain DP) or each applies it to its shard and
// the parameters are all-gathered (ZeRO-1, distributed_optimizer.h).
//
// The step reproduces launcher/trainer.cc's single-process Trainer::Step over the whole global
// batch: the loss is the mean over every counted target of the global batch (dloss = 1 / the
// global count, so gradients are SUMMED across ranks, never averaged), the gradient norm is
// global, clipping uses train.grad_clip, and a step whose loss or norm is not finite is skipped
// on every rank (its optimizer step still counts, as Megatron's does).
//
// Per step, each rank sends (bus-bytes convention of communicator.h, p = dp, n_b = bucket
// lengths, c_b = ceil(n_b / p), all fp32):
//   token count + validity   AllGather   (p-1) * 16
//   gradients, plain DP      AllReduce   sum_b floor(2 (p-1) * 4 n_b / p)
//   gradients, ZeRO-1        ReduceScatter  sum_b (p-1) * 4 c_b = 4 (p-1) ceil(numel / p)
//   loss sum + norm^2        AllGather   (p-1) * 16
//   parameters, ZeRO-1       AllGather   4 (p-1) ceil(numel / p)   (not on a skipped step)
// ExpectedStepVolume computes this; the engine measures it from the communicator's counters.
#ifndef LATTICE_PARALLEL_DP_STEP_H_
#define LATTICE_PARALLEL_DP_STEP_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/decoder.h"
#include "model/optimizer.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"
#include "parallel/distributed_optimizer.h"
#include "runtime/config.h"
#include "runtime/tensor.h"

namespace lattice {

// One micro-batch of this rank: inputs (b, t) and targets (b, t) (targets < 0 are not counted).
// The same shape as launcher/trainer.h's MicroBatch, which sits a floor above.
struct TokenBatch {
  int64_t b = 0, t = 0;
  std::vector<int32_t> inputs;   // (b, t)
  std::vector<int32_t> targets;  // (b, t)
};

// Checks this rank's micro-batches (at least one; shapes within (micro_batch_size, seq_len);
// tokens and targets inside the vocabulary) and counts their targets. InvalidArgument names the
// micro-batch, the (data-parallel) rank and the value.
absl::Status ValidateTokenBatches(const std::vector<TokenBatch>& batches, const ModelConfig& mc,
                                  int64_t micro_batch_size, int rank, int64_t* tokens);

// Communication of one rank, by operation (counts of calls and wire bytes).
struct CommVolume {
  OpCounter all_reduce;
  OpCounter reduce_scatter;
  OpCounter all_gather;
  OpCounter other;  // broadcast, send (none in a step; kept so nothing goes unseen)

  int64_t bytes() const {
    return all_reduce.bytes + reduce_scatter.bytes + all_gather.bytes + other.bytes;
  }
  std::string ToString() const;
  bool operator==(const CommVolume&) const = default;

  // What `after` counted beyond `before` (the counters of one communicator).
  static CommVolume Between(const CommCounters& before, const CommCounters& after);
};

// The analytic volume of one step (see the table above).
CommVolume ExpectedStepVolume(const BucketLayout& layout, bool zero1, bool skipped);
// The same from the numbers that determine the layout. InvalidArgument as MakeBucketLayout.
absl::StatusOr<CommVolume> ExpectedStepVolume(int64_t numel, int dp, bool zero1,
                                              int64_t bucket_bytes, bool skipped);

struct DataParallelStepResult {
  double loss = 0;        // mean loss over the counted targets of the global batch
  double grad_norm = 0;   // global gradient norm before clipping
  float clip = 1.0f;      // the factor the gradients were scaled by (1: no clipping, 0: skipped)
  int64_t tokens = 0;     // counted targets of the global batch
  bool skipped = false;   // loss or norm not finite: no update on any rank
  CommVolume bytes;       // this rank's communication during the step
  int buckets = 0;
  int overlapped_buckets = 0;  // reductions launched while backward work remained
};

// Per-rank memory of the training state, in bytes.
struct DataParallelMemory {
  int64_t params = 0;           // the full fp32 replica (also the master weights, fp32 model)
  int64_t grads = 0;            // the full fp32 gradient buffer
  int64_t optimizer_state = 0;  // AdamW m and v: 8 * numel, or 8 * ceil(numel / dp) with ZeRO-1
  int64_t comm_buffers = 0;     // the staging buffer of the padded bucket (ZeRO-1 only)
  int64_t total() const { return params + grads + optimizer_state + comm_buffers; }
};

struct DataParallelOptions {
  bool zero1 = false;                       // parallel.zero1
  int64_t bucket_bytes = kDefaultBucketBytes;
};

class DataParallelEngine {
 public:
  // `model` (created with batch >= train.micro_batch_size) and `dp_comm` must outlive the
  // engine; every rank of dp_comm creates one with the same model configuration and options,
  // and the replicas must start equal (same seed or weights, or BroadcastParameters()). The
  // optimizer starts at step 0.
  static absl::StatusOr<std::unique_ptr<DataParallelEngine>> Create(
      Decoder& model, const TrainConfig& train, Communicator& dp_comm,
      const DataParallelOptions& options);

  // One optimizer step over this rank's micro-batches (at least one, each with b <= the
  // decoder's batch and t <= seq_len) at learning rate `lr`. Collective over dp_comm: every
  // rank calls it once per step. Invalid micro-batches on any rank are an error on every rank
  // (InvalidArgument on the rank that passed them, FailedPrecondition on the others) before
  // anything is computed. A communication error leaves the ranks out of step: abort the world.
  absl::StatusOr<DataParallelStepResult> Step(const std::vector<TokenBatch>& local_micro_batches,
                                              float lr);

  // Copies rank 0's parameters to every rank (collective), e.g. after rank 0 loaded weights.
  absl::Status BroadcastParameters();

  int64_t step() const;  // optimizer steps taken (skipped ones included)
  void set_step(int64_t s);
  bool zero1() const { return options_.zero1; }
  const BucketLayout& layout() const { return layout_; }
  DataParallelMemory memory() const;
  // The analytic volume of one of this engine's steps.
  CommVolume ExpectedStepVolume(bool skipped) const;
  // Moments in the flat layout (numel) for plain DP, or the shard layout (shard_numel) for ZeRO-1.
  const Tensor& adam_m() const;
  const Tensor& adam_v() const;

 private:
  DataParallelEngine(Decoder& model, const TrainConfig& train, Communicator& comm,
                     const DataParallelOptions& options, BucketLayout layout);
  absl::Status CheckBatches(const std::vector<TokenBatch>& batches, int64_t* tokens) const;

  Decoder& model_;
  TrainConfig train_;
  Communicator& comm_;
  DataParallelOptions options_;
  BucketLayout layout_;
  Tensor staging_;  // (padded length of the padded bucket,) ZeRO-1 only, when one exists
  std::unique_ptr<GradReducer> reducer_;
  std::unique_ptr<AdamW> adamw_;                   // plain DP
  std::unique_ptr<DistributedOptimizer> sharded_;  // ZeRO-1
};

}  // namespace lattice

#endif  // LATTICE_PARALLEL_DP_STEP_H_
