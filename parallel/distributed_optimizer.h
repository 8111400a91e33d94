// The distributed optimizer (ZeRO stage 1, as Megatron's --use-distributed-optimizer): every
// data-parallel rank keeps the AdamW moments of its own shard only (data_parallel.h: chunk r
// of every gradient bucket) and updates only the parameters of that shard; an all-gather per
// bucket then brings every rank's full parameter buffer up to date.
//
// The model here is fp32 end to end, so the fp32 master weights ARE the model's parameters: a
// rank's master shard is its owned chunks of the flat value buffer, updated in place, and no
// second copy exists. (With 16-bit model weights the shard would become a separate fp32
// tensor of shard_numel elements; the layout and the collectives stay as they are.)
//
// Per step, after GradReducer (kReduceScatter) has left the summed gradients in the owned
// ranges: ShardSumOfSquares -> the caller sums it over ranks for the global norm and picks the
// clip coefficient -> Step, or SkipStep when the step is skipped (every rank must agree).
#ifndef LATTICE_PARALLEL_DISTRIBUTED_OPTIMIZER_H_
#define LATTICE_PARALLEL_DISTRIBUTED_OPTIMIZER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "model/parameters.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"
#include "runtime/config.h"
#include "runtime/tensor.h"

namespace lattice {

class DistributedOptimizer {
 public:
  // `layout` and `staging` (layout.padded(i) floats for the one padded bucket, or null when no
  // bucket needs padding) must outlive the optimizer. `rank` is this rank's dp rank.
  DistributedOptimizer(const ParameterSet& params, const TrainConfig& cfg,
                       const BucketLayout& layout, int rank, float* staging);

  // Sum of squares of the owned (reduced) gradients.
  double ShardSumOfSquares(const ParameterSet& params) const;

  // AdamW on the owned elements (grads multiplied by grad_scale first, weight decay per the
  // owning parameter's flag), then an all-gather per bucket into every rank's full parameter
  // buffer; bucket i's all-gather is launched as soon as its chunk is updated, so it overlaps
  // the update of the next. Collective over `comm` (size layout.dp). Increments the step.
  absl::Status Step(const ParameterSet& params, Communicator& comm, float lr, float grad_scale);
  // A skipped step still counts for the bias correction, as the single-process trainer does.
  void SkipStep() { ++step_; }

  int64_t step() const { return step_; }
  void set_step(int64_t s) { step_ = s; }
  const Tensor& m() const { return m_; }  // (shard_numel,) first moments of the shard
  const Tensor& v() const { return v_; }  // (shard_numel,) second moments of the shard
  int64_t state_bytes() const { return static_cast<int64_t>(m_.nbytes() + v_.nbytes()); }
  const std::vector<ShardSegment>& segments() const { return segments_; }

 private:
  TrainConfig cfg_;
  const BucketLayout& layout_;
  int rank_;
  float* staging_;
  std::vector<ShardSegment> segments_;
  Tensor m_, v_;
  int64_t step_ = 0;
};

}  // namespace lattice

#endif  // LATTICE_PARALLEL_DISTRIBUTED_OPTIMIZER_H_
