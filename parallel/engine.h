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
#ifndef LATTICE_PARALLEL_ENGINE_H_
#define LATTICE_PARALLEL_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "model/decoder.h"
#include "model/optimizer.h"
#include "model/tensor_parallel.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"
#include "parallel/distributed_optimizer.h"
#include "parallel/dp_step.h"
#include "parallel/pipeline_schedule.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"

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

struct EngineStepResult {
  double loss = 0;        // mean loss over the counted targets of the global batch
  double grad_norm = 0;   // global gradient norm before clipping
  float clip = 1.0f;      // factor applied to the gradients (0 on a skipped step)
  int64_t tokens = 0;     // counted targets of the global batch
  bool skipped = false;   // loss or norm not finite: no update anywhere
  CommVolume bytes;       // this rank's communication during the step (all its groups)
  int peak_in_flight = 0; // most micro-batch activation sets alive at once on this rank
  int overlapped_buckets = 0;  // dp buckets reduced while the backward pass was running
};

// Per-rank memory in bytes.
struct EngineMemory {
  int64_t params = 0;            // this rank's shard of the fp32 parameters (= master weights)
  int64_t grads = 0;
  int64_t optimizer_state = 0;   // AdamW m, v (of the dp shard with ZeRO-1)
  int64_t comm_buffers = 0;
  int64_t activations_per_micro_batch = 0;  // all of this rank's chunks
  int64_t activations_peak = 0;  // at the peak of the last step's schedule
  int64_t total() const {
    return params + grads + optimizer_state + comm_buffers + activations_peak;
  }
};

class ParallelEngine {
 public:
  // `cfg` must have passed Config::ValidateLayout(world.size()). Collective over `world`
  // (splits the grid's groups). Initialises the weights from train.seed.
  static absl::StatusOr<std::unique_ptr<ParallelEngine>> Create(const Config& cfg,
                                                                Communicator& world);
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

  // Forward only over this data-parallel rank's micro-batches (any number, the same on every
  // rank): {loss sum, counted targets} summed over the data-parallel ranks, on every rank.
  absl::StatusOr<std::pair<double, int64_t>> Evaluate(const std::vector<TokenBatch>& micro_batches);

  // The unsharded parameters, in the whole model's declaration order, on every rank
  // (collective over the world).
  absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> GatherParameters();
  // Copies this rank's shards out of unsharded parameters: `get(name)` returns the tensor of
  // that name (or nullptr: an error naming it). Shapes must match the configuration.
  absl::Status LoadParameters(const std::function<const Tensor*(const std::string&)>& get);

  int64_t step() const;
  void set_step(int64_t s);
  EngineMemory memory() const;
  // The analytic communication volume of this rank for one Step over micro-batches of these
  // shapes (the formulas of the header comments of communicator.h and this file), to compare
  // with EngineStepResult::bytes.
  CommVolume ExpectedStepVolume(const std::vector<TokenBatch>& micro_batches, bool skipped) const;

 private:
  ParallelEngine(const Config& cfg, Communicator& world, ProcessGrid grid);
  absl::Status CheckBatches(const std::vector<TokenBatch>& batches, int64_t* tokens) const;
  // Runs the pipeline schedule (or a forward-only pass) over the micro-batches.
  absl::Status RunSchedule(const std::vector<TokenBatch>& batches, float dloss, bool train,
                           double* loss_sum);
  absl::Status SyncTensorParallelGrads();
  absl::Status SyncEmbeddingGrads();
  double OwnedSumOfSquares() const;
  CommCounters TotalCounters() const;

  Config cfg_;
  Communicator& world_;
  ProcessGrid grid_;
  GridCommunicators comms_;
  std::unique_ptr<CommTensorParallelOps> tp_ops_;
  std::unique_ptr<Decoder> model_;
  int micro_batches_ = 1;
  int vpp_ = 1;
  // tp == pp == 1: no gradient syncs precede the data-parallel reduction, so it is overlapped
  // with the last micro-batch's backward pass (bucket by bucket, as DataParallelEngine).
  bool overlap_dp_ = false;
  BucketLayout layout_;
  Tensor staging_;
  std::unique_ptr<GradReducer> reducer_;
  std::unique_ptr<AdamW> adamw_;
  std::unique_ptr<DistributedOptimizer> sharded_;
  // Flat ranges [begin, end) counted in the gradient norm by this rank: owned (not a replica)
  // and in this data-parallel rank's part of the reduction.
  std::vector<std::pair<int64_t, int64_t>> norm_ranges_;
};

// The layers of virtual pipeline stage v (of pp*vpp), an even split.
std::vector<int64_t> StageLayers(int64_t n_layer, int virtual_stages, int v);

}  // namespace lattice

#endif  // LATTICE_PARALLEL_ENGINE_H_
