// The parallel training engine: data, tensor (+sequence) and pipeline parallelism together, for
// any layout (tp, dp, pp, vpp) of the process grid, with the same math as one process.
//
// Each rank builds its part of the model (model/tensor_parallel.h: ModelShard) from the grid:
//   tensor parallel   heads, d_ff and vocabulary rows split over the tp group (Megatron's
//                     column/row-parallel linears, vocab-parallel embedding and cross-entropy),
//                     optionally with sequence parallelism for the norms and residual adds;
//   pipeline parallel virtual stage v = chunk * pp + pp_rank holds layers
//                     [v * L / (pp*vpp), (v+1) * L / (pp*vpp)); stage 0 holds the embedding, the
//                     last one the final norm, the LM head and the loss; a tied embedding has a
//                     copy on the last stage kept equal by an all-reduce of its gradient over the
//                     embedding group;
//   data parallel     gradients summed over the dp group in buckets (all-reduce, or
//                     reduce-scatter + sharded AdamW + all-gather with ZeRO-1).
//
// One step: the micro-batches of this data-parallel rank run through the pipeline schedule
// (parallel/pipeline_schedule.h; activations and gradients move between stages with
// non-blocking sends and blocking receives); then the tensor-parallel gradient syncs
// (sequence-parallel replicas, replicated kv heads), the embedding-group sync, the
// data-parallel reduction, the global gradient norm (each element counted once, summed in rank
// order so every rank decides the same), clipping, and the optimizer.
//
// Every step's loss is the mean over all counted targets of the global batch, and the
// gradients are those of that mean: the layout changes only the order of floating-point sums.
// With tp = pp = 1 this is plain data parallelism (or one process when dp = 1), and the
// data-parallel reduction of each gradient bucket overlaps the last backward pass.
//
// The optimizer is model/optimizer.h's AdamW over this rank's segments: every parameter for
// plain data parallelism, this data-parallel rank's shard with ZeRO-1 (whose updated
// parameters are then all-gathered bucket by bucket, each all-gather launched as soon as its
// bucket is updated).
//
// Per step, each rank sends (bus-bytes convention of communicator.h; ExpectedStepVolume below
// computes it and the tests compare it with the measured counters):
//   token count + validity     AllGather over dp      (dp-1) * 16
//   loss sum + norm^2          AllGather over world   (world-1) * 16
//   gradients, plain DP        AllReduce per bucket   floor(2 (dp-1) * 4 n_b / dp)
//   gradients, ZeRO-1          ReduceScatter          (dp-1) * 4 c_b per bucket
//   parameters, ZeRO-1         AllGather              (dp-1) * 4 c_b per bucket (not when skipped;
//                                                     2 bytes per element with bf16/fp16)
//   + the tensor-parallel collectives of every layer and the pipeline transfers.
#ifndef LATTICE_PARALLEL_ENGINE_H_
#define LATTICE_PARALLEL_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "model/decoder.h"
#include "model/optimizer.h"
#include "model/tensor_parallel.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"
#include "parallel/loss_scaler.h"
#include "parallel/pipeline_schedule.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"
#include "runtime/data/dataset.h"

namespace lattice {

// TensorParallelOps over a communicator (the tp group), with the sticky error the model expects.
class CommTensorParallelOps final : public TensorParallelOps {
 public:
  explicit CommTensorParallelOps(Communicator& comm) : comm_(comm) {}
  int rank() const override { return comm_.rank(); }
  int size() const override { return comm_.size(); }
  void AllReduceSum(float* buf, int64_t n) override;
  void AllReduceMax(float* buf, int64_t n) override;
  void AllGather(const float* in, float* out, int64_t n_per_rank) override;
  void ReduceScatter(const float* in, float* out, int64_t n_per_rank) override;
  absl::Status status() const override { return status_; }

 private:
  Communicator& comm_;
  absl::Status status_;
};

// Checks micro-batches (at least one; shapes within (micro_batch_size, seq_len); tokens and
// targets inside the vocabulary) and counts their targets. InvalidArgument names the
// micro-batch, the data-parallel rank and the value.
absl::Status ValidateTokenBatches(const std::vector<TokenBatch>& batches, const ModelConfig& mc,
                                  int64_t micro_batch_size, int dp_rank, int64_t* tokens);

struct EngineStepResult {
  double loss = 0;        // mean loss over the counted targets of the global batch
  double grad_norm = 0;   // global gradient norm before clipping
  float clip = 1.0f;      // factor applied to the gradients (0 on a skipped step)
  int64_t tokens = 0;     // counted targets of the global batch
  bool skipped = false;   // loss or norm not finite: no update anywhere
  // fp16: the gradients held an inf or NaN on some rank (the step is skipped and the loss
  // scaler backs off, parallel/loss_scaler.h); loss_scale is the scale after this step's update
  // (Megatron's console value; 1 without fp16).
  bool overflow = false;
  float loss_scale = 1.0f;
  CommVolume bytes;       // this rank's communication during the step (all its groups)
  int peak_in_flight = 0; // most micro-batch activation sets alive at once on this rank
  int buckets = 0;        // data-parallel gradient buckets
  int overlapped_buckets = 0;  // dp buckets reduced while the backward pass was running
};

// Per-rank memory in bytes.
struct EngineMemory {
  int64_t params = 0;            // this rank's shard of the fp32 parameters (= master weights)
  int64_t grads = 0;
  // AdamW m, v and, with bf16/fp16, the fp32 master weights (of the dp shard with ZeRO-1).
  int64_t optimizer_state = 0;
  int64_t comm_buffers = 0;      // the staging buffer of the padded bucket (ZeRO-1 only)
  int64_t activations_per_micro_batch = 0;  // all of this rank's chunks
  int64_t activations_peak = 0;  // at the peak of the last step's schedule
  int64_t scratch = 0;           // the model's backward scratch
  int64_t total() const {
    return params + grads + optimizer_state + comm_buffers + activations_peak + scratch;
  }
};

struct EngineOptions {
  // Data-parallel gradient bucket size (PyTorch DDP's 25 MiB default); tests use small ones.
  int64_t bucket_bytes = kDefaultBucketBytes;
  // Test hook: called on every rank after the pipeline schedule of each training step (before
  // any gradient reduction), with the iteration being computed (1-based) and the rank's
  // parameters, so a test can plant a value in one rank's gradients.
  std::function<void(int64_t iteration, ParameterSet& params)> gradient_hook;
};

class ParallelEngine {
 public:
  // `cfg` must have passed Config::ValidateLayout(world.size()). Collective over `world`
  // (splits the grid's groups). Initialises the weights from train.seed.
  static absl::StatusOr<std::unique_ptr<ParallelEngine>> Create(const Config& cfg,
                                                                Communicator& world,
                                                                const EngineOptions& options = {});
  ~ParallelEngine();

  const ProcessGrid& grid() const { return grid_; }
  Decoder& model() { return *model_; }
  const Decoder& model() const { return *model_; }
  // Micro-batches per step of each data-parallel rank: global_batch / (micro_batch * dp).
  int micro_batches() const { return micro_batches_; }
  // "tp=2 dp=2 pp=2 vpp=1 schedule=1f1b sp=off zero1=on"
  std::string LayoutString() const;

  // One optimizer step. `micro_batches` are this rank's data-parallel rank's micro-batches
  // (the same on every tp and pp rank of it), micro_batches() of them. Collective over the
  // world. Invalid batches are an error on every rank before anything is computed; a
  // communication error leaves the ranks out of step (abort the world).
  absl::StatusOr<EngineStepResult> Step(const std::vector<TokenBatch>& micro_batches, float lr);

  // Forward and backward of a Step without the update (and without counting an iteration):
  // the gradients of the global batch, reduced as Step reduces them (GatherGradients reads
  // them), the loss, the norm and the clip coefficient Step would apply. Collective.
  absl::StatusOr<EngineStepResult> ComputeGradients(const std::vector<TokenBatch>& micro_batches);

  // Forward only over this data-parallel rank's micro-batches (any number, the same on every
  // rank): {loss sum, counted targets} summed over the data-parallel ranks, on every rank.
  absl::StatusOr<std::pair<double, int64_t>> Evaluate(const std::vector<TokenBatch>& micro_batches);

  // The unsharded parameters, in the whole model's declaration order, on every rank
  // (collective over the world).
  absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> GatherParameters();
  // The unsharded gradients of the last Step (summed over the global batch, before clipping),
  // in the same order, on every rank (collective over the world).
  absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> GatherGradients();
  // AdamW's first and second moments as unsharded tensors named like the parameters, on every
  // rank (collective over the world): each element from the rank that holds its update (its
  // ZeRO-1 owner). What a checkpoint of any layout must give back bit for bit.
  absl::StatusOr<std::pair<std::vector<std::pair<std::string, Tensor>>,
                           std::vector<std::pair<std::string, Tensor>>>>
  GatherOptimizerState();
  // Copies this rank's shards out of unsharded parameters: `get(name)` returns the tensor of
  // that name (or nullptr: an error naming it). Shapes must match the configuration.
  absl::Status LoadParameters(const std::function<const Tensor*(const std::string&)>& get);
  // The part of the model the rank at `grid` holds under `cfg`'s layout (its tensor-parallel
  // rank, pipeline chunks, embedding and head), as Create builds it. Also used to lay out the
  // ranks of another layout without running them (lattice ckpt reshard).
  static ModelShard ShardFor(const Config& cfg, const ProcessGrid& grid);

  // After the rank's weights were replaced from outside (a checkpoint's ReadState through the
  // registry): with bf16/fp16, `masters_loaded` says whether the optimizer's fp32 masters came
  // with them; if not they are taken from the weights. The weights become the masters' compute
  // copy either way. No-op for fp32. (LoadParameters does this itself.)
  void WeightsLoaded(bool masters_loaded);
  // The fp16 loss scaler (null for fp32 and bf16): its state is training state.
  DynamicLossScaler* loss_scaler() { return scaler_ ? &*scaler_ : nullptr; }
  const DynamicLossScaler* loss_scaler() const { return scaler_ ? &*scaler_ : nullptr; }
  DType precision() const { return cfg_.train.precision; }

  // Iterations taken (skipped ones included): what the learning-rate schedule counts.
  int64_t iteration() const { return iteration_; }
  void set_iteration(int64_t i) { iteration_ = i; }
  // Updates the optimizer applied (skipped iterations excluded): Adam's bias correction.
  const AdamW& optimizer() const { return *optimizer_; }
  AdamW& optimizer() { return *optimizer_; }
  const BucketLayout& bucket_layout() const { return layout_; }
  EngineMemory memory() const;
  // What Create planned before allocating: equal to memory() for everything but the
  // activations, where it is the schedule's bound (>= the measured peak).
  const EngineMemory& planned_memory() const { return plan_; }
  // The plan of one rank of the grid, computed without allocating anything.
  static absl::StatusOr<EngineMemory> PlanMemory(const Config& cfg, const ProcessGrid& grid,
                                                 const ModelShard& shard, int micro_batches,
                                                 int64_t bucket_bytes);
  // ResourceExhausted naming every part and the GiB available when the plan does not fit into
  // this node's available memory shared by its ranks.
  static absl::Status CheckFits(const EngineMemory& plan, int world_size);
  // The analytic communication volume of this rank for one Step over micro-batches of these
  // shapes (the formulas of the header comments of communicator.h and this file), to compare
  // with EngineStepResult::bytes.
  CommVolume ExpectedStepVolume(const std::vector<TokenBatch>& micro_batches, bool skipped) const;

 private:
  ParallelEngine(const Config& cfg, Communicator& world, ProcessGrid grid,
                 const EngineOptions& options);
  absl::Status CheckBatches(const std::vector<TokenBatch>& batches, int64_t* tokens) const;
  // Validation, the schedule, the gradient syncs and reductions, the loss and norm sums.
  absl::StatusOr<EngineStepResult> ForwardBackward(const std::vector<TokenBatch>& batches);
  // Runs the pipeline schedule (or a forward-only pass) over the micro-batches; the head adds
  // the loss sums to step_scalars_ slot 0.
  absl::Status RunSchedule(const std::vector<TokenBatch>& batches, float dloss, bool train);
  absl::Status SyncTensorParallelGrads();
  absl::Status SyncEmbeddingGrads();
  // step_scalars_[slot] += the sum of squares of the gradients in norm_ranges_.
  void AccumulateOwnedSumOfSquares(int slot);
  // AdamW on this rank's segments, then (ZeRO-1) the all-gather of every bucket.
  absl::Status UpdateParameters(float lr, float clip);
  // Unsharded tensors from a flat buffer laid out like the parameters. Each element comes from
  // the rank that owns it: its tensor-parallel owner (model/parameters.h) on the data-parallel
  // rank that holds its reduced value (`dp_sharded`: the ZeRO-1 owner of its bucket chunk;
  // otherwise data-parallel rank 0).
  absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> GatherFlat(const float* flat,
                                                                         bool dp_sharded);
  CommCounters TotalCounters() const;

  Config cfg_;
  Communicator& world_;
  ProcessGrid grid_;
  GridCommunicators comms_;
  std::unique_ptr<CommTensorParallelOps> tp_ops_;
  // bf16/fp16: the model's backend (kernels/storage_rounding_backend.h), over raw_be_; it
  // outlives the model.
  std::unique_ptr<kernels::Backend> storage_backend_;
  // The backend without storage rounding: the optimizer's and the gradient syncs' (fp32 main
  // gradients and masters are never rounded).
  kernels::Backend* raw_be_ = nullptr;
  std::optional<DynamicLossScaler> scaler_;
  std::unique_ptr<Decoder> model_;
  int micro_batches_ = 1;
  int vpp_ = 1;
  // tp == pp == 1: no gradient syncs precede the data-parallel reduction, so it is overlapped
  // with the last micro-batch's backward pass (bucket by bucket).
  bool overlap_dp_ = false;
  EngineOptions options_;
  BucketLayout layout_;
  Tensor staging_;
  // ZeRO-1 with bf16/fp16: the parameter all-gather's buffer in the compute dtype (every
  // padded bucket, at gather_offsets_[bucket]).
  Tensor gather_half_;
  std::vector<int64_t> gather_offsets_;
  // The tensor-parallel gradient syncs' buffer (tp > 1), allocated once.
  Tensor sync_buffer_;
  // The pipeline's host message buffers (RunSchedule): the receive buffer, and a pool of send
  // buffers that the first step grows to its most sends in flight and later steps reuse.
  std::vector<float> pipe_in_;
  std::vector<std::unique_ptr<std::vector<float>>> pipe_pool_;
  // The step's loss sum and sum of squares on the device (kernels/backend.h), read once.
  std::unique_ptr<kernels::DeviceScalars> step_scalars_;
  std::unique_ptr<GradReducer> reducer_;
  std::unique_ptr<AdamW> optimizer_;
  // Per bucket, the optimizer segments [begin, end) inside this rank's chunk (ZeRO-1).
  std::vector<std::pair<size_t, size_t>> bucket_segments_;
  int64_t iteration_ = 0;
  EngineMemory plan_;
  // Flat ranges [begin, end) counted in the gradient norm by this rank: owned (not a replica)
  // and in this data-parallel rank's part of the reduction.
  std::vector<std::pair<int64_t, int64_t>> norm_ranges_;
};

// The layers of virtual pipeline stage v (of pp*vpp), an even split.
std::vector<int64_t> StageLayers(int64_t n_layer, int virtual_stages, int v);

}  // namespace lattice

#endif  // LATTICE_PARALLEL_ENGINE_H_
