#include "parallel/dp_step.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/grad_norm.h"
#include "runtime/status.h"

namespace lattice {

// ---- Volume --------------------------------------------------------------------------------

std::string CommVolume::ToString() const {
  auto op = [](const char* name, const OpCounter& c) {
    return absl::StrCat(name, " ", c.calls, "x", c.bytes, " B");
  };
  return absl::StrCat(bytes(), " B: ", op("all_reduce", all_reduce), ", ",
                      op("reduce_scatter", reduce_scatter), ", ", op("all_gather", all_gather),
                      ", ", op("other", other));
}

CommVolume CommVolume::Between(const CommCounters& before, const CommCounters& after) {
  auto diff = [](const OpCounter& a, const OpCounter& b) {
    return OpCounter{b.calls - a.calls, b.bytes - a.bytes};
  };
  CommVolume v;
  v.all_reduce = diff(before.all_reduce, after.all_reduce);
  v.reduce_scatter = diff(before.reduce_scatter, after.reduce_scatter);
  v.all_gather = diff(before.all_gather, after.all_gather);
  const OpCounter bc = diff(before.broadcast, after.broadcast);
  const OpCounter send = diff(before.send, after.send);
  v.other = OpCounter{bc.calls + send.calls, bc.bytes + send.bytes};
  return v;
}

CommVolume ExpectedStepVolume(const BucketLayout& layout, bool zero1, bool skipped) {
  const int p = layout.dp;
  CommVolume v;
  // The two rank-order sums (SumInRankOrder of two 8-byte values each).
  v.all_gather.calls = 2;
  v.all_gather.bytes = 2 * AllGatherWireBytes(16 * static_cast<int64_t>(p), p);
  for (size_t i = 0; i < layout.buckets.size(); ++i) {
    if (zero1) {
      v.reduce_scatter.calls++;
      v.reduce_scatter.bytes += ReduceScatterWireBytes(4 * layout.padded(i), p);
      if (!skipped) {
        v.all_gather.calls++;
        v.all_gather.bytes += AllGatherWireBytes(4 * layout.padded(i), p);
      }
    } else {
      v.all_reduce.calls++;
      v.all_reduce.bytes += AllReduceWireBytes(4 * layout.buckets[i].numel(), p);
    }
  }
  return v;
}

absl::StatusOr<CommVolume> ExpectedStepVolume(int64_t numel, int dp, bool zero1,
                                              int64_t bucket_bytes, bool skipped) {
  LATTICE_ASSIGN_OR_RETURN(BucketLayout layout, MakeBucketLayout(numel, dp, bucket_bytes));
  return ExpectedStepVolume(layout, zero1, skipped);
}

// ---- Engine --------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<DataParallelEngine>> DataParallelEngine::Create(
    Decoder& model, const TrainConfig& train, Communicator& dp_comm,
    const DataParallelOptions& options) {
  LATTICE_ASSIGN_OR_RETURN(BucketLayout layout, MakeBucketLayout(model.params().numel(),
                                                                 dp_comm.size(),
                                                                 options.bucket_bytes));
  std::unique_ptr<DataParallelEngine> e(
      new DataParallelEngine(model, train, dp_comm, options, std::move(layout)));
  return e;
}

DataParallelEngine::DataParallelEngine(Decoder& model, const TrainConfig& train,
                                       Communicator& comm, const DataParallelOptions& options,
                                       BucketLayout layout)
    : model_(model), train_(train), comm_(comm), options_(options), layout_(std::move(layout)) {
  float* staging = nullptr;
  if (options_.zero1) {
    for (size_t i = 0; i < layout_.buckets.size(); ++i) {
      if (layout_.needs_padding(i)) staging_ = Tensor::Zeros({layout_.padded(i)}, DType::kF32);
    }
    if (staging_.defined()) staging = staging_.f32();
    sharded_ = std::make_unique<DistributedOptimizer>(model_.params(), train_, layout_,
                                                      comm_.rank(), staging);
  } else {
    adamw_ = std::make_unique<AdamW>(model_.params(), train_);
  }
  reducer_ = std::make_unique<GradReducer>(
      comm_, layout_, options_.zero1 ? GradReduction::kReduceScatter : GradReduction::kAllReduce,
      staging);
}

int64_t DataParallelEngine::step() const { return sharded_ ? sharded_->step() : adamw_->step(); }

void DataParallelEngine::set_step(int64_t s) {
  if (sharded_) {
    sharded_->set_step(s);
  } else {
    adamw_->set_step(s);
  }
}

const Tensor& DataParallelEngine::adam_m() const { return sharded_ ? sharded_->m() : adamw_->m(); }
const Tensor& DataParallelEngine::adam_v() const { return sharded_ ? sharded_->v() : adamw_->v(); }

DataParallelMemory DataParallelEngine::memory() const {
  DataParallelMemory m;
  const ParameterSet& p = model_.params();
  m.params = static_cast<int64_t>(p.flat_values().nbytes());
  m.grads = static_cast<int64_t>(p.flat_grads().nbytes());
  m.optimizer_state = sharded_ ? sharded_->state_bytes() : adamw_->state_bytes();
  m.comm_buffers = staging_.defined() ? static_cast<int64_t>(staging_.nbytes()) : 0;
  return m;
}

CommVolume DataParallelEngine::ExpectedStepVolume(bool skipped) const {
  return lattice::ExpectedStepVolume(layout_, options_.zero1, skipped);
}

absl::Status DataParallelEngine::BroadcastParameters() {
  return Annotate(comm_.Broadcast(model_.params().flat_values(), 0), "BroadcastParameters");
}

absl::Status ValidateTokenBatches(const std::vector<TokenBatch>& batches, const ModelConfig& mc,
                                  int64_t micro_batch_size, int rank, int64_t* tokens) {
  if (batches.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data parallel step: data-parallel rank ", rank,
        " has no micro-batch (global batch / (micro_batch_size * dp) must be >= 1)"));
  }
  int64_t count = 0;
  for (size_t i = 0; i < batches.size(); ++i) {
    const TokenBatch& mb = batches[i];
    const std::string where = absl::StrCat("data parallel step: micro-batch ", i, " of rank ",
                                           rank, ": ");
    if (mb.b < 1 || mb.b > micro_batch_size || mb.t < 1 || mb.t > mc.seq_len) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "shape (", mb.b, ", ", mb.t, ") is outside (1..train.micro_batch_size=",
          micro_batch_size, ", 1..model.seq_len=", mc.seq_len, ")"));
    }
    const size_t n = static_cast<size_t>(mb.b * mb.t);
    if (mb.inputs.size() != n || mb.targets.size() != n) {
      return absl::InvalidArgumentError(absl::StrCat(where, "has ", mb.inputs.size(),
                                                     " inputs and ", mb.targets.size(),
                                                     " targets for shape (", mb.b, ", ", mb.t,
                                                     ") = ", n));
    }
    for (size_t k = 0; k < n; ++k) {
      if (mb.inputs[k] < 0 || mb.inputs[k] >= mc.vocab_size || mb.targets[k] >= mc.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, "token ", mb.inputs[k], " / target ", mb.targets[k], " at position ", k,
            " is outside model.vocab_size=", mc.vocab_size));
      }
      count += mb.targets[k] >= 0 ? 1 : 0;
    }
  }
  *tokens = count;
  return absl::OkStatus();
}

absl::Status DataParallelEngine::CheckBatches(const std::vector<TokenBatch>& batches,
                                              int64_t* tokens) const {
  return ValidateTokenBatches(batches, model_.config(), train_.micro_batch_size, comm_.rank(),
                              tokens);
}

absl::StatusOr<DataParallelStepResult> DataParallelEngine::Step(
    const std::vector<TokenBatch>& local_micro_batches, float lr) {
  const CommCounters before = comm_.counters();
  DataParallelStepResult res;
  res.buckets = static_cast<int>(layout_.buckets.size());

  // The global target count first: dloss = 1 / count makes the summed gradients those of the
  // mean loss over the whole global batch. A bad batch anywhere stops every rank here.
  int64_t local_tokens = 0;
  const absl::Status local = CheckBatches(local_micro_batches, &local_tokens);
  int64_t counts[2] = {local.ok() ? local_tokens : 0, local.ok() ? 0 : 1};
  LATTICE_RETURN_IF_ERROR(SumInRankOrder(comm_, absl::MakeSpan(counts)));
  if (counts[1] > 0) {
    if (!local.ok()) return local;
    return absl::FailedPreconditionError(
        absl::StrCat("data parallel step: ", counts[1],
                     " other data-parallel rank(s) passed invalid micro-batches (their errors "
                     "name them); no rank took the step"));
  }
  res.tokens = counts[0];

  ParameterSet& params = model_.params();
  params.ZeroGrads();
  const float dloss = res.tokens > 0 ? 1.0f / static_cast<float>(res.tokens) : 0.0f;
  double loss_sum = 0;
  absl::Status reduced;
  for (size_t i = 0; i < local_micro_batches.size(); ++i) {
    const TokenBatch& mb = local_micro_batches[i];
    ForwardResult r = model_.Forward(mb.inputs.data(), mb.targets.data(), nullptr, mb.b, mb.t);
    loss_sum += r.loss_sum;
    if (i + 1 < local_micro_batches.size()) {
      model_.Backward(dloss);  // accumulate only
      continue;
    }
    // The last micro-batch: reduce each bucket as soon as backward has finished it.
    reducer_->Begin(params.flat_grads().f32());
    model_.set_grad_ready_callback(
        [this](int64_t begin, int64_t end) { reducer_->OnGradsReady(begin, end); });
    model_.Backward(dloss);
    model_.set_grad_ready_callback(nullptr);
    reduced = reducer_->Finish();
  }
  LATTICE_RETURN_IF_ERROR(Annotate(reduced, "data parallel gradient reduction"));
  res.overlapped_buckets = reducer_->stats().overlapped;

  // Loss and squared norm summed in rank order: every rank sees the same bits, so the skip
  // decision and the clip coefficient agree everywhere.
  double sums[2] = {loss_sum, OwnedSumOfSquares(params.flat_grads().f32(), layout_, comm_.rank())};
  LATTICE_RETURN_IF_ERROR(SumInRankOrder(comm_, absl::MakeSpan(sums)));
  res.loss = res.tokens > 0 ? sums[0] / static_cast<double>(res.tokens) : 0.0;
  res.grad_norm = std::sqrt(sums[1]);

  if (!std::isfinite(res.loss) || !std::isfinite(res.grad_norm)) {
    res.skipped = true;
    res.clip = 0.0f;
    if (sharded_) {
      sharded_->SkipStep();
    } else {
      adamw_->set_step(adamw_->step() + 1);
    }
  } else {
    res.clip = kernels::cpu::ClipCoefficient(res.grad_norm, train_.grad_clip);
    if (sharded_) {
      LATTICE_RETURN_IF_ERROR(
          Annotate(sharded_->Step(params, comm_, lr, res.clip), "distributed optimizer"));
    } else {
      adamw_->Step(params, lr, res.clip);
    }
  }
  res.bytes = CommVolume::Between(before, comm_.counters());
  return res;
}

}  // namespace lattice
