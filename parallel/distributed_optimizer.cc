#include "parallel/distributed_optimizer.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/adamw.h"
#include "kernels/grad_norm.h"
#include "runtime/status.h"

namespace lattice {

DistributedOptimizer::DistributedOptimizer(const ParameterSet& params, const TrainConfig& cfg,
                                           const BucketLayout& layout, int rank, float* staging)
    : cfg_(cfg), layout_(layout), rank_(rank), staging_(staging) {
  LATTICE_CHECK_MSG(layout.numel == params.numel(), "the bucket layout is for another model");
  LATTICE_CHECK(rank >= 0 && rank < layout.dp);
  for (size_t i = 0; i < layout.buckets.size(); ++i) {
    LATTICE_CHECK_MSG(!layout.needs_padding(i) || staging != nullptr,
                      "a padded bucket needs a staging buffer");
  }
  segments_ = ShardSegments(params, layout, rank);
  m_ = Tensor::Zeros({layout.shard_numel}, DType::kF32);
  v_ = Tensor::Zeros({layout.shard_numel}, DType::kF32);
}

double DistributedOptimizer::ShardSumOfSquares(const ParameterSet& params) const {
  return OwnedSumOfSquares(params.flat_grads().f32(), layout_, rank_);
}

absl::Status DistributedOptimizer::Step(const ParameterSet& params, Communicator& comm, float lr,
                                        float grad_scale) {
  LATTICE_CHECK_MSG(comm.size() == layout_.dp && comm.rank() == rank_,
                    "the distributed optimizer was built for another data-parallel group");
  ++step_;
  kernels::cpu::AdamWArgs args;
  args.lr = lr;
  args.beta1 = cfg_.beta1;
  args.beta2 = cfg_.beta2;
  args.eps = cfg_.adam_eps;
  args.step = step_;
  args.grad_scale = grad_scale;
  float* values = params.flat_values().f32();
  const float* grads = params.flat_grads().f32();
  float* m = m_.f32();
  float* v = v_.f32();

  absl::Status error;
  std::vector<std::unique_ptr<Work>> works(layout_.buckets.size());
  size_t seg = 0;
  for (size_t i = 0; i < layout_.buckets.size(); ++i) {
    const GradBucket& b = layout_.buckets[i];
    // Segments come in shard order, so this bucket's are the next ones within its chunk.
    for (; seg < segments_.size() && segments_[seg].shard_offset < b.shard_offset + b.chunk;
         ++seg) {
      const ShardSegment& s = segments_[seg];
      args.weight_decay = s.weight_decay ? cfg_.weight_decay : 0.0f;
      kernels::cpu::AdamWUpdate(values + s.begin, grads + s.begin, m + s.shard_offset,
                                v + s.shard_offset, s.numel(), args);
    }
    float* full = values + b.begin;
    if (layout_.needs_padding(i)) {
      const OwnedRange own = layout_.Owned(i, rank_);
      std::fill(staging_, staging_ + layout_.padded(i), 0.0f);
      if (own.numel() > 0) {
        std::memcpy(staging_ + (own.begin - b.begin), values + own.begin,
                    static_cast<size_t>(own.numel()) * sizeof(float));
      }
      full = staging_;
    }
    absl::StatusOr<std::unique_ptr<Work>> w =
        comm.IAllGather(full + static_cast<int64_t>(rank_) * b.chunk, full,
                        static_cast<size_t>(b.chunk), CommType::kF32);
    if (w.ok()) {
      works[i] = std::move(w).value();
    } else if (error.ok()) {
      error = Annotate(w.status(), absl::StrCat("parameter bucket ", i));
    }
  }
  LATTICE_CHECK_MSG(seg == segments_.size(), "shard segments out of bucket order");
  absl::Status waited = WaitAll(works);
  if (!error.ok()) return error;
  LATTICE_RETURN_IF_ERROR(waited);
  for (size_t i = 0; i < layout_.buckets.size(); ++i) {
    if (!layout_.needs_padding(i)) continue;
    const GradBucket& b = layout_.buckets[i];
    std::memcpy(values + b.begin, staging_, static_cast<size_t>(b.numel()) * sizeof(float));
  }
  return absl::OkStatus();
}

}  // namespace lattice
