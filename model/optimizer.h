// AdamW over the flat parameter buffer (decoupled weight decay, none on norms and biases), the
// learning-rate schedule (linear warmup, then cosine / linear / constant decay to min_lr) and
// global-norm gradient clipping.
//
// One optimizer for every layout. AdamW updates a list of segments of the flat buffers and
// keeps its moments for exactly those segments:
//   - one process, or plain data parallelism: the segments are every parameter (WholeModel),
//     and every replica applies the same update;
//   - ZeRO-1 (Megatron's distributed optimizer): the segments are this data-parallel rank's
//     shard (parallel/data_parallel.h, ShardSegments), so the moments cost 8 bytes per element
//     of the shard, and parallel/ all-gathers the updated parameters afterwards.
// With train.precision fp32 the model is its own master copy: the update writes the parameters
// in place. With bf16/fp16 (docs/precision.md) the optimizer also owns fp32 MASTER weights for
// its segments (laid out like the moments, so with ZeRO-1 only the shard's): the update runs on
// the master, then writes the parameters as the master rounded to the compute dtype (the
// compute copy every op reads; ZeRO-1 all-gathers those). The update, the moments and the
// masters live on the parameters' backend (kernels/backend.h: one AdamW op per segment).
//
// Two counters: the optimizer's step (updates applied, used for Adam's bias correction) is not
// the trainer's iteration (steps attempted, used for the learning-rate schedule). A skipped
// iteration (non-finite loss or norm) applies no update and leaves the optimizer's step alone,
// as torch.optim and Megatron do.
#ifndef LATTICE_MODEL_OPTIMIZER_H_
#define LATTICE_MODEL_OPTIMIZER_H_

#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "model/parameters.h"
#include "runtime/config.h"
#include "runtime/tensor.h"

namespace lattice {

// Megatron's schedule: lr rises linearly over warmup_steps (iteration 1 gets lr/warmup), then
// decays from lr to min_lr over the remaining iterations. `iteration` is 1-based.
float LearningRate(const TrainConfig& cfg, int64_t iteration);

// A contiguous range of the flat parameter buffers that lies inside one parameter, and where
// its moments live in the optimizer's state.
struct OptimizerSegment {
  int64_t begin = 0;         // flat element range [begin, end)
  int64_t end = 0;
  int64_t state_offset = 0;  // position of `begin` in the moment buffers
  bool weight_decay = true;  // the owning parameter's flag
  int64_t numel() const { return end - begin; }
};

// Every parameter, with the moments laid out like the flat buffer (state_offset == begin).
std::vector<OptimizerSegment> WholeModelSegments(const ParameterSet& params);

class AdamW {
 public:
  // `segments` must be disjoint, inside the parameter buffers, and their state ranges inside
  // [0, state_numel). The moments are allocated on `backend`, which runs the updates.
  AdamW(const TrainConfig& cfg, std::vector<OptimizerSegment> segments, int64_t state_numel,
        kernels::Backend& backend = kernels::DefaultBackend());
  // The whole model (one process or plain data parallelism).
  AdamW(const ParameterSet& params, const TrainConfig& cfg,
        kernels::Backend& backend = kernels::DefaultBackend());

  // Starts an update: increments the step (bias correction uses the new value).
  void BeginStep() { ++step_; }
  // Updates segments [first, last) of `values` from `grads` (both flat buffers) with learning
  // rate `lr`; grads are multiplied by grad_scale first (the clipping coefficient). Between
  // BeginStep calls every segment is updated once (in pieces, so that parallel/ can start the
  // all-gather of a bucket while the next one is updated).
  void UpdateSegments(size_t first, size_t last, float* values, const float* grads, float lr,
                      float grad_scale);
  // BeginStep + every segment.
  void Step(const ParameterSet& params, float lr, float grad_scale);

  // Mixed precision: master[segment] = values[segment] (fp32) for every segment, then values =
  // values rounded to the compute dtype over [0, numel) (every element the rank holds: the
  // replicas round the same values to the same bits). Called after the weights are
  // initialised or loaded without masters. No-op for fp32.
  void InitMastersFrom(float* values, int64_t numel);
  // Mixed precision: values = the masters rounded (after a checkpoint loaded the masters), for
  // this optimizer's segments. No-op for fp32.
  void WriteComputeCopy(float* values);
  bool has_masters() const { return master_.defined(); }
  DType compute_dtype() const { return cfg_.precision; }
  const Tensor& master() const { return master_; }  // (state_numel,) or undefined (fp32)

  int64_t step() const { return step_; }
  void set_step(int64_t s) { step_ = s; }
  const std::vector<OptimizerSegment>& segments() const { return segments_; }
  const Tensor& m() const { return m_; }  // (state_numel,) first moments
  const Tensor& v() const { return v_; }  // (state_numel,) second moments
  // Moments, and masters under mixed precision.
  int64_t state_bytes() const {
    return static_cast<int64_t>(m_.nbytes() + v_.nbytes() +
                                (master_.defined() ? master_.nbytes() : 0));
  }

 private:
  TrainConfig cfg_;
  kernels::Backend* be_;
  std::vector<OptimizerSegment> segments_;
  Tensor m_, v_;
  Tensor master_;  // mixed precision only
  int64_t step_ = 0;
};

// sqrt of the sum of squares of all gradients. The second form sums into `acc` (slot 0, zeroed
// first) on the backend and reads it once: no allocation, for a step's loop.
double GlobalGradNorm(const ParameterSet& params);
double GlobalGradNorm(const ParameterSet& params, kernels::DeviceScalars& acc);

}  // namespace lattice

#endif  // LATTICE_MODEL_OPTIMIZER_H_
