#include "parallel/engine.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "parallel/launch_env.h"
#include "runtime/profiler.h"
#include "runtime/status.h"
#include "runtime/system.h"

namespace lattice {

// The step's device scalars (step_scalars_): 0 the loss sum, 1 the owned gradients' sum of
// squares, 2 (fp16) the overflow check's sum of every applied gradient.
constexpr int kStepScalarSlots = 3;

// ---- Tensor-parallel ops over a communicator ----------------------------------------------
// The "phase.*" profiler scopes of this file time a step's phases for `lattice bench`
// (launcher/bench_command.cc); off unless profiling (one relaxed atomic load each). Phases nest:
// tp_comm runs inside forward and backward, dp_param_gather_wait inside optimizer.

void CommTensorParallelOps::AllReduceSum(float* buf, int64_t n) {
  profiler::Scope phase("phase.tp_comm", profiler::Category::kPhase);
  if (status_.ok()) status_ = comm_.AllReduce(buf, n, CommType::kF32, ReduceOp::kSum);
}
void CommTensorParallelOps::AllReduceMax(float* buf, int64_t n) {
  profiler::Scope phase("phase.tp_comm", profiler::Category::kPhase);
  if (status_.ok()) status_ = comm_.AllReduce(buf, n, CommType::kF32, ReduceOp::kMax);
}
void CommTensorParallelOps::AllGather(const float* in, float* out, int64_t n_per_rank) {
  profiler::Scope phase("phase.tp_comm", profiler::Category::kPhase);
  if (status_.ok()) status_ = comm_.AllGather(in, out, n_per_rank, CommType::kF32);
}
void CommTensorParallelOps::ReduceScatter(const float* in, float* out, int64_t n_per_rank) {
  profiler::Scope phase("phase.tp_comm", profiler::Category::kPhase);
  if (status_.ok()) {
    status_ = comm_.ReduceScatter(in, out, n_per_rank, CommType::kF32, ReduceOp::kSum);
  }
}

std::vector<int64_t> StageLayers(int64_t n_layer, int virtual_stages, int v) {
  std::vector<int64_t> layers;
  const int64_t per = n_layer / virtual_stages;
  for (int64_t l = v * per; l < (v + 1) * per; ++l) layers.push_back(l);
  return layers;
}

// ---- Construction --------------------------------------------------------------------------

ParallelEngine::ParallelEngine(const Config& cfg, Communicator& world, ProcessGrid grid,
                               const EngineOptions& options)
    : cfg_(cfg), world_(world), grid_(std::move(grid)), options_(options) {}

ParallelEngine::~ParallelEngine() = default;

absl::StatusOr<std::unique_ptr<ParallelEngine>> ParallelEngine::Create(
    const Config& cfg, Communicator& world, const EngineOptions& options) {
  const ParallelConfig& p = cfg.parallel;
  LATTICE_ASSIGN_OR_RETURN(
      ProcessGrid grid, ProcessGrid::Create(world.size(), world.rank(), static_cast<int>(p.tp),
                                            static_cast<int>(p.pp), static_cast<int>(p.dp)));
  std::unique_ptr<ParallelEngine> e(new ParallelEngine(cfg, world, std::move(grid), options));
  const ProcessGrid& g = e->grid_;
  const int64_t per_step = cfg.train.micro_batch_size * g.dp_size();
  if (cfg.train.global_batch_size % per_step != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train.global_batch_size=", cfg.train.global_batch_size,
        " is not divisible by train.micro_batch_size*dp = ", per_step));
  }
  e->micro_batches_ = static_cast<int>(cfg.train.global_batch_size / per_step);
  e->vpp_ = static_cast<int>(p.vpp);
  if (p.schedule == PipelineSchedule::kInterleaved && e->micro_batches_ % g.pp_size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel.schedule=interleaved needs the micro-batches per step (", e->micro_batches_,
        " = train.global_batch_size / (train.micro_batch_size * dp)) to be a multiple of "
        "parallel.pp=", g.pp_size()));
  }
  LATTICE_ASSIGN_OR_RETURN(e->comms_, SplitGrid(world, g));

  const ModelShard shard = ShardFor(cfg, g);
  // Memory is planned, not discovered: refuse (on every rank, before allocating anything) a
  // model this node cannot hold.
  absl::StatusOr<EngineMemory> plan =
      PlanMemory(cfg, g, shard, e->micro_batches_, options.bucket_bytes);
  absl::Status fits = plan.status();
  if (fits.ok()) fits = CheckFits(*plan, world.size());
  LATTICE_RETURN_IF_ERROR(AgreeOnStatus(world, fits));
  e->plan_ = *plan;
  if (g.tp_size() > 1) e->tp_ops_ = std::make_unique<CommTensorParallelOps>(*e->comms_.tp);
  DecoderOptions model_options = DecoderOptions::From(cfg.train);
  e->raw_be_ = &kernels::DefaultBackend();
  if (cfg.train.precision != DType::kF32) {
    // Mixed precision on an fp32-computing backend: activations and their gradients are
    // stored rounded to the compute dtype (docs/precision.md).
    e->storage_backend_ = kernels::MakeStorageRoundingBackend(*e->raw_be_, cfg.train.precision);
    model_options.backend = e->storage_backend_.get();
  }
  if (cfg.train.precision == DType::kF16) {
    LossScalerConfig lc;
    lc.initial_scale = cfg.train.initial_loss_scale;
    lc.min_scale = cfg.train.min_loss_scale;
    lc.growth_interval = cfg.train.loss_scale_window;
    lc.hysteresis = cfg.train.hysteresis;
    LATTICE_ASSIGN_OR_RETURN(DynamicLossScaler scaler, DynamicLossScaler::Create(lc));
    e->scaler_ = std::move(scaler);
  }
  LATTICE_ASSIGN_OR_RETURN(e->model_, Decoder::Create(cfg.model, cfg.train.micro_batch_size,
                                                      shard, e->tp_ops_.get(), model_options));
  e->model_->InitializeWeights(cfg.train.seed);
  // The activation arena holds the schedule's peak from the start: no step allocates.
  e->model_->ReserveActivations(e->plan_.activations_peak);
  kernels::Backend& be = e->model_->backend();
  // Slot 0: the step's loss sum (the head adds each micro-batch's); slot 1: the sum of squares
  // of the owned gradients; (fp16) slot 2: the sum of every gradient this rank's optimizer
  // applies, finite or not. Read once per step.
  e->step_scalars_ =
      std::make_unique<kernels::DeviceScalars>(be.AllocateScalars(kStepScalarSlots));
  e->model_->set_loss_accumulator(e->step_scalars_.get(), 0);

  ParameterSet& params = e->model_->params();
  LATTICE_ASSIGN_OR_RETURN(e->layout_,
                           MakeBucketLayout(params.numel(), g.dp_size(), options.bucket_bytes));
  float* staging = nullptr;
  if (p.zero1) {
    for (size_t i = 0; i < e->layout_.buckets.size(); ++i) {
      if (e->layout_.needs_padding(i)) {
        const int64_t n = e->layout_.padded(i);
        e->staging_ = Tensor(be.AllocateStorage(n * static_cast<int64_t>(sizeof(float))), 0, {n},
                             DType::kF32);
      }
    }
    if (e->staging_.defined()) staging = e->staging_.f32();
    if (cfg.train.precision != DType::kF32) {
      // ZeRO-1's parameter all-gather moves the compute copy in the compute dtype (the values
      // are bf16/fp16 values: the cast is exact both ways), one slice per bucket so that the
      // gathers can overlap.
      int64_t total = 0;
      for (size_t i = 0; i < e->layout_.buckets.size(); ++i) {
        e->gather_offsets_.push_back(total);
        total += e->layout_.padded(i);
      }
      e->gather_half_ = Tensor(be.AllocateStorage(2 * std::max<int64_t>(total, 1)), 0,
                               {total}, cfg.train.precision);
    }
    // The optimizer holds this rank's shard; segments come in shard (= bucket) order, so each
    // bucket's segments are a contiguous run of them.
    std::vector<ShardSegment> shard = ShardSegments(params, e->layout_, g.dp_rank());
    std::vector<OptimizerSegment> segs(shard.begin(), shard.end());
    size_t at = 0;
    for (size_t i = 0; i < e->layout_.buckets.size(); ++i) {
      const GradBucket& b = e->layout_.buckets[i];
      const size_t first = at;
      while (at < segs.size() && segs[at].state_offset < b.shard_offset + b.chunk) ++at;
      e->bucket_segments_.emplace_back(first, at);
    }
    LATTICE_CHECK_MSG(at == segs.size(), "shard segments out of bucket order");
    e->optimizer_ =
        std::make_unique<AdamW>(cfg.train, std::move(segs), e->layout_.shard_numel, *e->raw_be_);
  } else {
    e->optimizer_ = std::make_unique<AdamW>(params, cfg.train, *e->raw_be_);
  }
  // bf16/fp16: the initial weights become the fp32 masters, the weights their compute copy.
  e->optimizer_->InitMastersFrom(params.flat_values().f32(), params.numel());
  // The tensor-parallel gradient syncs' buffer (SyncTensorParallelGrads): the packed replicated
  // gradients, or the largest parameter with replicated kv rows.
  if (g.tp_size() > 1) {
    int64_t packed = 0, largest = 0;
    for (const Parameter& prm : params.params()) {
      if (prm.sharding.grad_sync == GradSync::kTensorParallelSum) packed += prm.grad.numel();
      if (prm.sharding.grad_sync == GradSync::kReplicaRowSum) {
        largest = std::max(largest, NumElements(prm.sharding.global_shape));
      }
    }
    const int64_t n = std::max(packed, largest);
    if (n > 0) {
      e->sync_buffer_ = Tensor(be.AllocateStorage(n * static_cast<int64_t>(sizeof(float))), 0,
                               {n}, DType::kF32);
    }
  }
  e->overlap_dp_ = g.tp_size() == 1 && g.pp_size() == 1;
  e->reducer_ = std::make_unique<GradReducer>(
      *e->comms_.dp, e->layout_,
      p.zero1 ? GradReduction::kReduceScatter : GradReduction::kAllReduce, staging);

  // Norm ranges: owner segments intersected with this dp rank's owned part of each bucket.
  std::vector<std::pair<int64_t, int64_t>> owned;
  for (size_t i = 0; i < e->layout_.buckets.size(); ++i) {
    const OwnedRange r = e->layout_.Owned(i, g.dp_rank());
    if (r.numel() > 0) owned.emplace_back(r.begin, r.end);
  }
  for (const Parameter& prm : params.params()) {
    const int64_t lc = prm.local_cols();
    for (const RowSegment& seg : prm.sharding.segments) {
      if (!seg.owner) continue;
      const int64_t b = prm.offset + seg.local_begin * lc, end = b + seg.count * lc;
      for (const auto& [ob, oe] : owned) {
        const int64_t lo = std::max(b, ob), hi = std::min(end, oe);
        if (lo < hi) e->norm_ranges_.emplace_back(lo, hi);
      }
    }
  }
  std::sort(e->norm_ranges_.begin(), e->norm_ranges_.end());
  return e;
}

ModelShard ParallelEngine::ShardFor(const Config& cfg, const ProcessGrid& g) {
  ModelShard shard;
  shard.tp_rank = g.tp_rank();
  shard.tp_size = g.tp_size();
  shard.sequence_parallel = cfg.parallel.sequence_parallel;
  const int vpp = static_cast<int>(cfg.parallel.vpp);
  const int virtual_stages = g.pp_size() * vpp;
  for (int c = 0; c < vpp; ++c) {
    shard.chunks.push_back(
        StageLayers(cfg.model.n_layer, virtual_stages, c * g.pp_size() + g.pp_rank()));
  }
  shard.embedding = g.IsFirstStage();
  shard.head = g.IsLastStage();
  return shard;
}

absl::StatusOr<EngineMemory> ParallelEngine::PlanMemory(const Config& cfg, const ProcessGrid& g,
                                                        const ModelShard& shard,
                                                        int micro_batches,
                                                        int64_t bucket_bytes) {
  LATTICE_ASSIGN_OR_RETURN(DecoderMemory d,
                           Decoder::PlanMemory(cfg.model, cfg.train.micro_batch_size, shard,
                                               DecoderOptions::From(cfg.train)));
  EngineMemory m;
  m.params = d.params;
  m.grads = d.grads;
  m.scratch = d.scratch;
  const int64_t numel = d.params / static_cast<int64_t>(sizeof(float));
  const int64_t dp = g.dp_size();
  // AdamW's m and v: of the whole local model, or of the ZeRO-1 shard (ceil(numel / dp)); the
  // short bucket's staging buffer is at most one padded bucket of dp * chunk elements.
  // m and v, plus the fp32 masters with bf16/fp16 (model/optimizer.h).
  const int64_t state_bytes = cfg.train.precision == DType::kF32 ? 8 : 12;
  m.optimizer_state = state_bytes * (cfg.parallel.zero1 ? (numel + dp - 1) / dp : numel);
  if (cfg.parallel.zero1) {
    LATTICE_ASSIGN_OR_RETURN(BucketLayout layout,
                             MakeBucketLayout(numel, static_cast<int>(dp), bucket_bytes));
    for (size_t i = 0; i < layout.buckets.size(); ++i) {
      if (layout.needs_padding(i)) m.comm_buffers += 4 * layout.padded(i);
      // bf16/fp16: the updated compute copies travel in their own dtype (2 bytes per element
      // of every padded bucket).
      if (cfg.train.precision != DType::kF32) m.comm_buffers += 2 * layout.padded(i);
    }
  }
  m.activations_per_micro_batch = d.activations_per_set;
  // Activation sets alive at the schedule's peak (parallel/pipeline_schedule.h): GPipe keeps
  // every micro-batch, 1F1B at most pp - stage, interleaving Megatron's warmup + 1 chunk-sets.
  const int pp = g.pp_size(), stage = g.pp_rank(), vpp = static_cast<int>(cfg.parallel.vpp);
  int64_t sets = 0;
  switch (cfg.parallel.schedule) {
    case PipelineSchedule::kGpipe:
      sets = static_cast<int64_t>(micro_batches) * vpp;
      break;
    case PipelineSchedule::kOneFOneB:
      sets = std::min(pp - stage, micro_batches);
      break;
    case PipelineSchedule::kInterleaved:
      sets = std::min((pp - stage - 1) * 2 + (vpp - 1) * pp + 1, micro_batches * vpp);
      break;
  }
  // A chunk-set of interleaving holds 1/vpp of the layers (the head chunk a little more).
  m.activations_peak = vpp > 1 ? sets * ((d.activations_per_set + vpp - 1) / vpp + d.head_bytes)
                               : sets * d.activations_per_set;
  return m;
}

absl::Status ParallelEngine::CheckFits(const EngineMemory& plan, int world_size) {
  absl::StatusOr<LaunchEnv> env = ReadLaunchEnv();
  const int local = env.ok() && env->local_size > 0 ? env->local_size : world_size;
  const MemoryInfo mem = AvailableMemory();
  if (mem.available_bytes < 0) return absl::OkStatus();  // unknown: nothing to refuse on
  const int64_t per_rank = mem.available_bytes / std::max(1, local);
  if (plan.total() <= per_rank) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the model needs ", FormatGiB(plan.total()), " per rank (parameters ",
      FormatGiB(plan.params), ", gradients ", FormatGiB(plan.grads), ", optimizer state ",
      FormatGiB(plan.optimizer_state), ", activations ", FormatGiB(plan.activations_peak),
      " at the schedule's peak, scratch ", FormatGiB(plan.scratch), "), but this node has ",
      FormatGiB(mem.available_bytes), " available (", mem.source, ") for its ", local,
      " rank(s), ", FormatGiB(per_rank), " each; use a smaller model or "
      "train.micro_batch_size, or shard it over more ranks (parallel.tp, parallel.pp, "
      "parallel.zero1)"));
}

std::string ParallelEngine::LayoutString() const {
  const ParallelConfig& p = cfg_.parallel;
  const char* schedule = p.schedule == PipelineSchedule::kGpipe         ? "gpipe"
                         : p.schedule == PipelineSchedule::kInterleaved ? "interleaved"
                                                                        : "1f1b";
  return absl::StrCat("tp=", grid_.tp_size(), " dp=", grid_.dp_size(), " pp=", grid_.pp_size(),
                      " vpp=", vpp_, " schedule=", schedule,
                      " sp=", p.sequence_parallel && grid_.tp_size() > 1 ? "on" : "off",
                      " zero1=", p.zero1 ? "on" : "off");
}

EngineMemory ParallelEngine::memory() const {
  EngineMemory m;
  const ParameterSet& p = model_->params();
  m.params = static_cast<int64_t>(p.flat_values().nbytes());
  m.grads = static_cast<int64_t>(p.flat_grads().nbytes());
  m.optimizer_state = optimizer_->state_bytes();
  m.comm_buffers = staging_.defined() ? static_cast<int64_t>(staging_.nbytes()) : 0;
  if (gather_half_.defined()) m.comm_buffers += static_cast<int64_t>(gather_half_.nbytes());
  m.activations_per_micro_batch = model_->activation_bytes();
  m.activations_peak = model_->peak_activation_bytes();
  m.scratch = model_->scratch_bytes();
  return m;
}

CommCounters ParallelEngine::TotalCounters() const {
  CommCounters t;
  auto add = [&t](const Communicator* c) {
    if (c == nullptr) return;
    const CommCounters& x = c->counters();
    auto acc = [](OpCounter& a, const OpCounter& b) {
      a.calls += b.calls;
      a.bytes += b.bytes;
    };
    acc(t.all_reduce, x.all_reduce);
    acc(t.reduce_scatter, x.reduce_scatter);
    acc(t.all_gather, x.all_gather);
    acc(t.broadcast, x.broadcast);
    acc(t.send, x.send);
    acc(t.recv, x.recv);
    t.barrier_calls += x.barrier_calls;
  };
  add(&world_);
  add(comms_.tp.get());
  add(comms_.dp.get());
  add(comms_.pp.get());
  add(comms_.embedding.get());
  return t;
}

absl::Status ValidateTokenBatches(const std::vector<TokenBatch>& batches, const ModelConfig& mc,
                                  int64_t micro_batch_size, int dp_rank, int64_t* tokens) {
  if (batches.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel step: data-parallel rank ", dp_rank,
        " has no micro-batch (global batch / (micro_batch_size * dp) must be >= 1)"));
  }
  int64_t count = 0;
  for (size_t i = 0; i < batches.size(); ++i) {
    const TokenBatch& mb = batches[i];
    const std::string where = absl::StrCat("parallel step: micro-batch ", i,
                                           " of data-parallel rank ", dp_rank, ": ");
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
    // Packed examples (runtime/data/sft.h): each row a sequence of contiguous runs.
    if (!mb.doc_starts.empty()) {
      if (mb.doc_starts.size() != n) {
        return absl::InvalidArgumentError(absl::StrCat(where, "has ", mb.doc_starts.size(),
                                                       " doc_starts for ", n, " tokens"));
      }
      for (int64_t r = 0; r < mb.b; ++r) {
        const int32_t* ds = mb.doc_starts.data() + r * mb.t;
        for (int64_t i = 0; i < mb.t; ++i) {
          if (ds[i] != i && (i == 0 || ds[i] != ds[i - 1])) {
            return absl::InvalidArgumentError(absl::StrCat(
                where, "doc_starts[", r, "][", i, "] = ", ds[i], " neither starts an example at ",
                i, " nor continues the one at ", i == 0 ? 0 : ds[i - 1]));
          }
        }
      }
    }
  }
  *tokens = count;
  return absl::OkStatus();
}

absl::Status ParallelEngine::CheckBatches(const std::vector<TokenBatch>& batches,
                                          int64_t* tokens) const {
  LATTICE_RETURN_IF_ERROR(ValidateTokenBatches(batches, cfg_.model, cfg_.train.micro_batch_size,
                                               grid_.dp_rank(), tokens));
  for (const TokenBatch& b : batches) {
    if (!b.doc_starts.empty() && !model_->backend().SupportsDocumentMasking()) {
      return absl::UnimplementedError(
          "packed examples (data.pack=true) need document-masked attention, which this "
          "backend does not implement yet; set data.pack=false");
    }
  }
  if (cfg_.parallel.sequence_parallel && grid_.tp_size() > 1) {
    for (const TokenBatch& b : batches) {
      if ((b.b * b.t) % grid_.tp_size() != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "sequence parallelism: a micro-batch of ", b.b, "x", b.t,
            " tokens does not split over parallel.tp=", grid_.tp_size()));
      }
    }
  }
  return absl::OkStatus();
}

// ---- The schedule ---------------------------------------------------------------------------

namespace {

struct PendingSend {
  std::unique_ptr<std::vector<float>> buf;
  std::unique_ptr<Work> work;
};

}  // namespace

absl::Status ParallelEngine::RunSchedule(const std::vector<TokenBatch>& batches, float dloss,
                                         bool train) {
  const int pp = grid_.pp_size(), s = grid_.pp_rank();
  const int m_count = static_cast<int>(batches.size());
  const int64_t c = cfg_.model.d_model;
  Decoder& model = *model_;
  // Training: the head computes its gradients in the forward (the fused classifier); an
  // evaluation must leave them alone.
  model.set_head_loss_gradient(train ? std::optional<float>(dloss) : std::nullopt);
  std::vector<PipeAction> actions;
  if (train) {
    LATTICE_ASSIGN_OR_RETURN(actions, BuildPipelineSchedule(cfg_.parallel.schedule, pp, vpp_, s,
                                                           m_count));
  } else {
    // Forward only, in (micro-batch, chunk) order: every dependency comes earlier in that
    // order on some rank, so non-blocking sends and blocking receives cannot deadlock.
    for (int m = 0; m < m_count; ++m) {
      for (int ch = 0; ch < vpp_; ++ch) {
        actions.push_back(PipeAction{PipeAction::Kind::kForward, m, ch});
      }
    }
  }
  Communicator* ppc = comms_.pp.get();
  const int prev = (s + pp - 1) % pp, next = (s + 1) % pp;
  std::deque<PendingSend> sends;
  // Host buffers of the pipeline messages, reused from step to step (the first step grows
  // the pool; later ones allocate nothing): a send's buffer returns to the pool once the send
  // has completed.
  std::vector<float>& in = pipe_in_;
  auto take = [this](int64_t n) {
    std::unique_ptr<std::vector<float>> b;
    if (pipe_pool_.empty()) {
      b = std::make_unique<std::vector<float>>();
    } else {
      b = std::move(pipe_pool_.back());
      pipe_pool_.pop_back();
    }
    b->resize(static_cast<size_t>(n));
    return b;
  };
  auto retire = [this](PendingSend& p) {
    if (p.buf) pipe_pool_.push_back(std::move(p.buf));
  };
  model.ResetPeak();
  auto tp_status = [&]() {
    return tp_ops_ ? tp_ops_->status() : absl::OkStatus();
  };
  for (const PipeAction& a : actions) {
    const TokenBatch& mb = batches[a.micro_batch];
    const int v = a.chunk * pp + s;
    const int64_t rows = model.HiddenRows(mb.b, mb.t);
    if (a.kind == PipeAction::Kind::kForward) {
      const bool first = model.ChunkHasEmbedding(a.chunk);
      const bool last = model.ChunkHasHead(a.chunk);
      if (!first) {
        in.resize(rows * c);
        profiler::Scope phase("phase.pipeline_wait", profiler::Category::kPhase);
        LATTICE_RETURN_IF_ERROR(Annotate(
            ppc->Recv(in.data(), in.size(), CommType::kF32, prev, 2 * v),
            absl::StrCat("pipeline: receiving activations of micro-batch ", a.micro_batch)));
      }
      PendingSend out;
      if (!last) out.buf = take(rows * c);
      // The head adds the loss sum to step_scalars_ slot 0 (set_loss_accumulator).
      {
        profiler::Scope phase("phase.forward", profiler::Category::kPhase);
        // Packed examples: every stage reads the segments with the tokens (each rank holds
        // its data-parallel rank's micro-batches), so every layer masks by document.
        model.ForwardChunk(a.chunk, a.micro_batch, mb.inputs.data(), mb.targets.data(), nullptr,
                           first ? nullptr : in.data(), last ? nullptr : out.buf->data(), mb.b,
                           mb.t, mb.doc_starts.empty() ? nullptr : mb.doc_starts.data());
      }
      LATTICE_RETURN_IF_ERROR(Annotate(tp_status(), "tensor-parallel forward"));
      if (!last) {
        LATTICE_ASSIGN_OR_RETURN(
            out.work,
            ppc->ISend(out.buf->data(), out.buf->size(), CommType::kF32, next, 2 * (v + 1)));
        sends.push_back(std::move(out));
      }
      if (!train) model.DropActivations(a.chunk, a.micro_batch);
    } else {
      const bool first = model.ChunkHasEmbedding(a.chunk);
      const bool last = model.ChunkHasHead(a.chunk);
      if (!last) {
        in.resize(rows * c);
        profiler::Scope phase("phase.pipeline_wait", profiler::Category::kPhase);
        LATTICE_RETURN_IF_ERROR(Annotate(
            ppc->Recv(in.data(), in.size(), CommType::kF32, next, 2 * v + 1),
            absl::StrCat("pipeline: receiving gradients of micro-batch ", a.micro_batch)));
      }
      PendingSend out;
      if (!first) out.buf = take(rows * c);
      // With the whole model on this rank, the data-parallel reduction of each bucket starts
      // as soon as the last backward pass has finished its gradients (overlap).
      const bool overlap = overlap_dp_ && &a == &actions.back();
      if (overlap) {
        reducer_->Begin(model.params().flat_grads().f32());
        model.set_grad_ready_callback(
            [this](int64_t begin, int64_t end) { reducer_->OnGradsReady(begin, end); });
      }
      {
        profiler::Scope phase("phase.backward", profiler::Category::kPhase);
        model.BackwardChunk(a.chunk, a.micro_batch, dloss, last ? nullptr : in.data(),
                            first ? nullptr : out.buf->data());
      }
      if (overlap) model.set_grad_ready_callback(nullptr);
      LATTICE_RETURN_IF_ERROR(Annotate(tp_status(), "tensor-parallel backward"));
      if (!first) {
        LATTICE_ASSIGN_OR_RETURN(
            out.work,
            ppc->ISend(out.buf->data(), out.buf->size(), CommType::kF32, prev, 2 * v - 1));
        sends.push_back(std::move(out));
      }
    }
    // Completed sends free their buffers as we go.
    while (!sends.empty() && sends.size() > 8) {
      profiler::Scope phase("phase.pipeline_wait", profiler::Category::kPhase);
      LATTICE_RETURN_IF_ERROR(sends.front().work->Wait());
      retire(sends.front());
      sends.pop_front();
    }
  }
  profiler::Scope phase("phase.pipeline_wait", profiler::Category::kPhase);
  for (PendingSend& p : sends) {
    LATTICE_RETURN_IF_ERROR(p.work->Wait());
    retire(p);
  }
  return absl::OkStatus();
}

// ---- Gradient synchronisation ---------------------------------------------------------------

absl::Status ParallelEngine::SyncTensorParallelGrads() {
  if (grid_.tp_size() == 1) return absl::OkStatus();
  profiler::Scope phase("phase.grad_sync", profiler::Category::kPhase);
  Communicator& tp = *comms_.tp;
  const ParameterSet& params = model_->params();
  // The raw backend: these are fp32 main gradients, never rounded to the compute dtype.
  kernels::Backend& be = *raw_be_;
  const kernels::TensorView buf = kernels::ViewOf(sync_buffer_);
  // Partial gradients of replicated parameters (sequence parallelism): one packed all-reduce.
  int64_t packed = 0;
  for (const Parameter& p : params.params()) {
    if (p.sharding.grad_sync != GradSync::kTensorParallelSum) continue;
    be.Copy(buf.Sub(packed, p.grad.numel()), kernels::ViewOf(p.grad));
    packed += p.grad.numel();
  }
  if (packed > 0) {
    LATTICE_RETURN_IF_ERROR(Annotate(
        tp.AllReduce(buf.f32(), static_cast<size_t>(packed), CommType::kF32, ReduceOp::kSum),
        "sequence-parallel gradient all-reduce"));
    int64_t at = 0;
    for (const Parameter& p : params.params()) {
      if (p.sharding.grad_sync != GradSync::kTensorParallelSum) continue;
      be.Copy(kernels::ViewOf(p.grad), buf.Sub(at, p.grad.numel()));
      at += p.grad.numel();
    }
  }
  // Replicated kv heads: the ranks sharing a kv head each hold part of its gradient. Sum them
  // through a buffer of the whole parameter (each rank adds its shared rows at their place).
  for (const Parameter& p : params.params()) {
    if (p.sharding.grad_sync != GradSync::kReplicaRowSum) continue;
    const int64_t lc = p.local_cols(), gc = p.global_cols();
    const int64_t numel = NumElements(p.sharding.global_shape);
    const kernels::TensorView full = buf.Sub(0, numel);
    const kernels::TensorView grad = kernels::ViewOf(p.grad);
    be.Zero(full);
    for (const RowSegment& seg : p.sharding.segments) {
      if (seg.replicas <= 1) continue;
      for (int64_t r = 0; r < seg.count; ++r) {
        const kernels::TensorView dst =
            full.Sub((seg.global_begin + r) * gc + p.sharding.col_begin, lc);
        be.ResidualForward(dst, dst, grad.Sub((seg.local_begin + r) * lc, lc), lc);
      }
    }
    LATTICE_RETURN_IF_ERROR(Annotate(
        tp.AllReduce(full.f32(), static_cast<size_t>(numel), CommType::kF32, ReduceOp::kSum),
        absl::StrCat("replicated kv-head gradient all-reduce of ", p.name)));
    for (const RowSegment& seg : p.sharding.segments) {
      if (seg.replicas <= 1) continue;
      for (int64_t r = 0; r < seg.count; ++r) {
        be.Copy(grad.Sub((seg.local_begin + r) * lc, lc),
                full.Sub((seg.global_begin + r) * gc + p.sharding.col_begin, lc));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ParallelEngine::SyncEmbeddingGrads() {
  if (grid_.pp_size() == 1 || !cfg_.model.tied() || comms_.embedding == nullptr) {
    return absl::OkStatus();
  }
  const Parameter& wte = model_->params().Get("wte");
  profiler::Scope phase("phase.grad_sync", profiler::Category::kPhase);
  return Annotate(comms_.embedding->AllReduce(wte.grad, ReduceOp::kSum),
                  "tied embedding gradient all-reduce (first and last pipeline stage)");
}

void ParallelEngine::AccumulateOwnedSumOfSquares(int slot) {
  kernels::Backend& be = model_->backend();
  const kernels::TensorView g = kernels::ViewOf(model_->params().flat_grads());
  for (const auto& [b, e] : norm_ranges_) {
    be.AccumulateSumOfSquares(*step_scalars_, slot, g.Sub(b, e - b));
  }
}

// ---- Step -----------------------------------------------------------------------------------

absl::StatusOr<EngineStepResult> ParallelEngine::Step(const std::vector<TokenBatch>& batches,
                                                      float lr) {
  const CommCounters before = TotalCounters();
  LATTICE_ASSIGN_OR_RETURN(EngineStepResult res, ForwardBackward(batches));
  ++iteration_;
  if (scaler_) {
    // fp16: ForwardBackward's overflow verdict (the same on every rank) moves the scale.
    scaler_->Update(res.overflow);
    res.loss_scale = scaler_->scale();
  }
  if (res.overflow || !std::isfinite(res.loss) || !std::isfinite(res.grad_norm)) {
    // Megatron's rule: no update on any rank (every rank sees the same sums), the iteration
    // counts, the optimizer's step does not.
    res.skipped = true;
    res.clip = 0.0f;
  } else {
    res.clip = kernels::ClipCoefficient(res.grad_norm, cfg_.train.grad_clip);
    LATTICE_RETURN_IF_ERROR(Annotate(UpdateParameters(lr, res.clip), "optimizer"));
  }
  res.bytes = CommVolume::Between(before, TotalCounters());
  return res;
}

absl::StatusOr<EngineStepResult> ParallelEngine::ComputeGradients(
    const std::vector<TokenBatch>& batches) {
  const CommCounters before = TotalCounters();
  LATTICE_ASSIGN_OR_RETURN(EngineStepResult res, ForwardBackward(batches));
  res.clip = kernels::ClipCoefficient(res.grad_norm, cfg_.train.grad_clip);
  res.bytes = CommVolume::Between(before, TotalCounters());
  return res;
}

absl::StatusOr<EngineStepResult> ParallelEngine::ForwardBackward(
    const std::vector<TokenBatch>& batches) {
  EngineStepResult res;
  int64_t local_tokens = 0;
  absl::Status local = CheckBatches(batches, &local_tokens);
  if (local.ok() && static_cast<int>(batches.size()) != micro_batches_) {
    local = absl::InvalidArgumentError(absl::StrCat(
        "parallel step: data-parallel rank ", grid_.dp_rank(), " passed ", batches.size(),
        " micro-batches; the layout needs ", micro_batches_));
  }
  int64_t counts[2] = {local.ok() ? local_tokens : 0, local.ok() ? 0 : 1};
  LATTICE_RETURN_IF_ERROR(SumInRankOrder(*comms_.dp, absl::MakeSpan(counts)));
  if (counts[1] > 0) {
    if (!local.ok()) return local;
    return absl::FailedPreconditionError(absl::StrCat(
        "parallel step: ", counts[1], " other data-parallel rank(s) passed invalid "
        "micro-batches (their errors name them); no rank took the step"));
  }
  res.tokens = counts[0];
  ParameterSet& params = model_->params();
  params.ZeroGrads();
  float dloss = res.tokens > 0 ? 1.0f / static_cast<float>(res.tokens) : 0.0f;
  // fp16: the loss is scaled before the backward (a power of two by default: exact).
  if (scaler_) dloss *= scaler_->scale();
  kernels::Backend& be = model_->backend();
  be.ZeroScalars(*step_scalars_);
  LATTICE_RETURN_IF_ERROR(RunSchedule(batches, dloss, /*train=*/true));
  if (options_.gradient_hook) options_.gradient_hook(iteration_ + 1, params);
  res.peak_in_flight = model_->peak_in_flight();

  if (!overlap_dp_) {
    // The tensor-parallel and embedding syncs come first; then the whole buffer is ready.
    LATTICE_RETURN_IF_ERROR(SyncTensorParallelGrads());
    LATTICE_RETURN_IF_ERROR(SyncEmbeddingGrads());
    profiler::Scope phase("phase.dp_grad_reduce_exposed", profiler::Category::kPhase);
    reducer_->Begin(params.flat_grads().f32());
    reducer_->OnGradsReady(0, params.numel());
  }
  {
    profiler::Scope phase("phase.dp_grad_reduce_exposed", profiler::Category::kPhase);
    LATTICE_RETURN_IF_ERROR(Annotate(reducer_->Finish(), "data parallel gradient reduction"));
  }
  res.buckets = reducer_->stats().buckets;
  res.overlapped_buckets = reducer_->stats().overlapped;

  // The loss comes from the last stage's first tensor-parallel rank of every dp rank; the norm
  // from every rank's owned elements. Summed in rank order, every rank sees the same bits.
  // Both stayed on the device until this one read.
  profiler::Scope norm_phase("phase.loss_and_norm", profiler::Category::kPhase);
  if (scaler_) {
    // Unscaled before the norm, the clipping and the update (an inf stays inf).
    raw_be_->Scale(kernels::ViewOf(params.flat_grads()), params.numel(), scaler_->inv_scale());
  }
  AccumulateOwnedSumOfSquares(1);
  if (scaler_) {
    // fp16's overflow check covers every gradient this rank's optimizer applies, replicas
    // included (the norm counts each element once, so an inf in a tensor-parallel replica's
    // copy would escape it): Megatron's found_inf over each rank's main gradients.
    const kernels::TensorView g = kernels::ViewOf(params.flat_grads());
    for (const OptimizerSegment& seg : optimizer_->segments()) {
      raw_be_->AccumulateSum(*step_scalars_, 2, g.Sub(seg.begin, seg.numel()));
    }
  }
  double device_sums[kStepScalarSlots];  // ReadScalars copies every slot
  be.ReadScalars(*step_scalars_, device_sums);
  const bool loss_rank = grid_.IsLastStage() && grid_.tp_rank() == 0;
  double sums[3] = {loss_rank ? device_sums[0] : 0.0, device_sums[1],
                    scaler_ ? device_sums[2] : 0.0};
  LATTICE_RETURN_IF_ERROR(SumInRankOrder(world_, absl::MakeSpan(sums, scaler_ ? 3 : 2)));
  res.loss = res.tokens > 0 ? sums[0] / static_cast<double>(res.tokens) : 0.0;
  res.grad_norm = std::sqrt(sums[1]);
  // Every rank summed the same values in the same order: the same verdict everywhere.
  if (scaler_) res.overflow = !std::isfinite(sums[2]) || !std::isfinite(res.grad_norm);
  return res;
}

absl::Status ParallelEngine::UpdateParameters(float lr, float clip) {
  profiler::Scope phase("phase.optimizer", profiler::Category::kPhase);
  ParameterSet& params = model_->params();
  kernels::Backend& be = model_->backend();
  float* values = params.flat_values().f32();
  const float* grads = params.flat_grads().f32();
  optimizer_->BeginStep();
  if (!cfg_.parallel.zero1) {
    optimizer_->UpdateSegments(0, optimizer_->segments().size(), values, grads, lr, clip);
    return absl::OkStatus();
  }
  // ZeRO-1: update this rank's chunk of bucket i, then launch its all-gather, so the gather of
  // one bucket overlaps the update of the next.
  const int rank = grid_.dp_rank();
  absl::Status error;
  std::vector<std::unique_ptr<Work>> works(layout_.buckets.size());
  for (size_t i = 0; i < layout_.buckets.size(); ++i) {
    const GradBucket& b = layout_.buckets[i];
    optimizer_->UpdateSegments(bucket_segments_[i].first, bucket_segments_[i].second, values,
                               grads, lr, clip);
    if (gather_half_.defined()) {
      // The compute copy in its own dtype: this rank's chunk (zero past the real elements of
      // a short bucket) cast into the bucket's slice, gathered, and cast back after the wait.
      const OwnedRange own = layout_.Owned(i, rank);
      const kernels::TensorView slice =
          kernels::ViewOf(gather_half_).Sub(gather_offsets_[i], layout_.padded(i));
      const kernels::TensorView mine = slice.Sub(static_cast<int64_t>(rank) * b.chunk, b.chunk);
      if (own.numel() < b.chunk) be.Zero(mine);
      if (own.numel() > 0) {
        be.Cast(slice.Sub(own.begin - b.begin, own.numel()),
                kernels::F32View(values + own.begin, own.numel()));
      }
      absl::StatusOr<std::unique_ptr<Work>> w =
          comms_.dp->IAllGather(mine.data, slice.data, static_cast<size_t>(b.chunk),
                                CommTypeOf(cfg_.train.precision));
      if (w.ok()) {
        works[i] = std::move(w).value();
      } else if (error.ok()) {
        error = Annotate(w.status(), absl::StrCat("parameter all-gather of bucket ", i));
      }
      continue;
    }
    float* full = values + b.begin;
    if (layout_.needs_padding(i)) {
      // The short bucket travels through a zero-padded staging buffer of dp * chunk elements.
      const OwnedRange own = layout_.Owned(i, rank);
      const kernels::TensorView staging = kernels::ViewOf(staging_);
      be.Zero(staging.Sub(0, layout_.padded(i)));
      if (own.numel() > 0) {
        be.Copy(staging.Sub(own.begin - b.begin, own.numel()),
                kernels::F32View(values + own.begin, own.numel()));
      }
      full = staging.f32();
    }
    absl::StatusOr<std::unique_ptr<Work>> w =
        comms_.dp->IAllGather(full + static_cast<int64_t>(rank) * b.chunk, full,
                              static_cast<size_t>(b.chunk), CommType::kF32);
    if (w.ok()) {
      works[i] = std::move(w).value();
    } else if (error.ok()) {
      error = Annotate(w.status(), absl::StrCat("parameter all-gather of bucket ", i));
    }
  }
  absl::Status waited;
  {
    profiler::Scope wait_phase("phase.dp_param_gather_wait", profiler::Category::kPhase);
    waited = WaitAll(works);
  }
  if (!error.ok()) return error;
  LATTICE_RETURN_IF_ERROR(waited);
  if (gather_half_.defined()) {
    for (size_t i = 0; i < layout_.buckets.size(); ++i) {
      const GradBucket& b = layout_.buckets[i];
      be.Cast(kernels::F32View(values + b.begin, b.numel()),
              kernels::ViewOf(gather_half_).Sub(gather_offsets_[i], b.numel()));
    }
    return absl::OkStatus();
  }
  for (size_t i = 0; i < layout_.buckets.size(); ++i) {
    if (!layout_.needs_padding(i)) continue;
    const GradBucket& b = layout_.buckets[i];
    be.Copy(kernels::F32View(values + b.begin, b.numel()),
            kernels::ViewOf(staging_).Sub(0, b.numel()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::pair<double, int64_t>> ParallelEngine::Evaluate(
    const std::vector<TokenBatch>& batches) {
  int64_t local_tokens = 0;
  const absl::Status local = CheckBatches(batches, &local_tokens);
  int64_t counts[2] = {local.ok() ? local_tokens : 0, local.ok() ? 0 : 1};
  LATTICE_RETURN_IF_ERROR(SumInRankOrder(world_, absl::MakeSpan(counts)));
  if (counts[1] > 0) {
    if (!local.ok()) return local;
    return absl::FailedPreconditionError("evaluation: another rank passed invalid micro-batches");
  }
  kernels::Backend& be = model_->backend();
  be.ZeroScalars(*step_scalars_);
  LATTICE_RETURN_IF_ERROR(RunSchedule(batches, 0.0f, /*train=*/false));
  double device_sums[kStepScalarSlots];  // ReadScalars copies every slot
  be.ReadScalars(*step_scalars_, device_sums);
  const bool loss_rank = grid_.IsLastStage() && grid_.tp_rank() == 0;
  double sums[2] = {loss_rank ? device_sums[0] : 0.0,
                    loss_rank ? static_cast<double>(local_tokens) : 0.0};
  LATTICE_RETURN_IF_ERROR(SumInRankOrder(world_, absl::MakeSpan(sums)));
  return std::make_pair(sums[0], static_cast<int64_t>(sums[1]));
}

// ---- Parameters in and out ------------------------------------------------------------------

absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> ParallelEngine::GatherParameters() {
  return GatherFlat(model_->params().flat_values().f32(), /*dp_sharded=*/false);
}

absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> ParallelEngine::GatherGradients() {
  // ZeRO-1 reduce-scatters the gradients: only the owner of a bucket chunk holds its sum.
  return GatherFlat(model_->params().flat_grads().f32(), /*dp_sharded=*/cfg_.parallel.zero1);
}

absl::StatusOr<std::pair<std::vector<std::pair<std::string, Tensor>>,
                         std::vector<std::pair<std::string, Tensor>>>>
ParallelEngine::GatherOptimizerState() {
  const int64_t numel = model_->params().numel();
  // The moments in flat (parameter) coordinates. Plain data parallelism keeps them that way on
  // every dp rank; ZeRO-1 keeps this rank's shard at each segment's state_offset, spread back
  // here to the flat positions it owns (GatherFlat then takes each element from its owner).
  kernels::Backend& be = model_->backend();
  auto flat = [&](const Tensor& state) -> Tensor {
    if (!cfg_.parallel.zero1) return state;
    Tensor f(be.AllocateStorage(numel * static_cast<int64_t>(sizeof(float))), 0, {numel},
             DType::kF32);
    for (const OptimizerSegment& s : optimizer_->segments()) {
      be.Copy(kernels::ViewOf(f).Sub(s.begin, s.numel()),
              kernels::ViewOf(state).Sub(s.state_offset, s.numel()));
    }
    return f;
  };
  const Tensor m = flat(optimizer_->m()), v = flat(optimizer_->v());
  LATTICE_ASSIGN_OR_RETURN(auto gm, GatherFlat(m.f32(), cfg_.parallel.zero1));
  LATTICE_ASSIGN_OR_RETURN(auto gv, GatherFlat(v.f32(), cfg_.parallel.zero1));
  return std::make_pair(std::move(gm), std::move(gv));
}

absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> ParallelEngine::GatherFlat(
    const float* flat, bool dp_sharded) {
  std::vector<std::pair<std::string, Tensor>> out;
  const ParameterSet& params = model_->params();
  kernels::Backend& be = model_->backend();
  // The flat ranges this data-parallel rank contributes: everything on dp rank 0, or the
  // chunks it owns.
  std::vector<std::pair<int64_t, int64_t>> mine;
  if (!dp_sharded) {
    if (grid_.dp_rank() == 0) mine.emplace_back(0, params.numel());
  } else {
    for (size_t i = 0; i < layout_.buckets.size(); ++i) {
      const OwnedRange o = layout_.Owned(i, grid_.dp_rank());
      if (o.numel() > 0) mine.emplace_back(o.begin, o.end);
    }
  }
  // Every tensor is assembled in one packed buffer (each element written by exactly one rank,
  // zeros elsewhere) and summed over the world in one all-reduce.
  const auto shapes = Decoder::ParameterShapes(cfg_.model);
  int64_t total = 0;
  for (const auto& [name, shape] : shapes) total += NumElements(shape);
  Tensor packed = Tensor::Zeros({total}, DType::kF32);
  int64_t at = 0;
  for (const auto& [name, shape] : shapes) {
    float* full = packed.f32() + at;
    at += NumElements(shape);
    const Parameter* p = params.Find(name);
    if (p != nullptr) {
      const int64_t lc = p->local_cols(), gc = p->global_cols();
      for (const RowSegment& seg : p->sharding.segments) {
        if (!seg.owner) continue;
        for (int64_t r = 0; r < seg.count; ++r) {
          const int64_t local = p->offset + (seg.local_begin + r) * lc;
          float* dst = full + (seg.global_begin + r) * gc + p->sharding.col_begin;
          for (const auto& [mb, me] : mine) {
            const int64_t lo = std::max(mb, local), hi = std::min(me, local + lc);
            if (lo < hi) {
              be.CopyToHost(dst + (lo - local), DType::kF32, kernels::F32View(flat + lo, hi - lo),
                            hi - lo);
            }
          }
        }
      }
    }
  }
  LATTICE_RETURN_IF_ERROR(
      Annotate(world_.AllReduce(packed, ReduceOp::kSum), "gathering the unsharded tensors"));
  at = 0;
  for (const auto& [name, shape] : shapes) {
    Tensor t = Tensor::Zeros(shape, DType::kF32);
    std::copy_n(packed.f32() + at, t.numel(), t.f32());  // host to host
    at += t.numel();
    out.emplace_back(name, std::move(t));
  }
  return out;
}

absl::Status ParallelEngine::LoadParameters(
    const std::function<const Tensor*(const std::string&)>& get) {
  for (const Parameter& p : model_->params().params()) {
    const Tensor* full = get(p.name);
    if (full == nullptr) {
      return absl::NotFoundError(absl::StrCat("parameter '", p.name, "' is missing"));
    }
    if (full->shape() != p.sharding.global_shape || full->dtype() != DType::kF32) {
      return absl::InvalidArgumentError(absl::StrCat(
          "parameter '", p.name, "' has shape ", ShapeToString(full->shape()), " ",
          DTypeName(full->dtype()), "; the configuration needs ",
          ShapeToString(p.sharding.global_shape), " f32"));
    }
    const int64_t lc = p.local_cols(), gc = p.global_cols();
    kernels::Backend& be = model_->backend();
    for (const RowSegment& seg : p.sharding.segments) {
      for (int64_t r = 0; r < seg.count; ++r) {
        be.CopyFromHost(kernels::ViewOf(p.value).Sub((seg.local_begin + r) * lc, lc),
                        full->f32() + (seg.global_begin + r) * gc + p.sharding.col_begin,
                        DType::kF32, lc);
      }
    }
  }
  WeightsLoaded(/*masters_loaded=*/false);
  return absl::OkStatus();
}

void ParallelEngine::WeightsLoaded(bool masters_loaded) {
  ParameterSet& params = model_->params();
  if (masters_loaded) {
    optimizer_->WriteComputeCopy(params.flat_values().f32());
  } else {
    optimizer_->InitMastersFrom(params.flat_values().f32(), params.numel());
  }
}

// ---- The analytic volume ---------------------------------------------------------------------

CommVolume ParallelEngine::ExpectedStepVolume(const std::vector<TokenBatch>& batches,
                                              bool skipped) const {
  CommVolume v;
  auto add = [](OpCounter& op, int64_t bytes) {
    op.calls++;
    op.bytes += bytes;
  };
  const int tp = grid_.tp_size(), dp = grid_.dp_size(), pp = grid_.pp_size();
  const bool sp = cfg_.parallel.sequence_parallel && tp > 1;
  const int64_t c = cfg_.model.d_model;
  const Decoder& model = *model_;
  // The token count (SumInRankOrder of two 8-byte values over dp) and the loss and norm sums
  // (the same over the world).
  add(v.all_gather, AllGatherWireBytes(16 * static_cast<int64_t>(dp), dp));
  // (fp16: a third double, the overflow check's sum.)
  add(v.all_gather, AllGatherWireBytes((scaler_ ? 24 : 16) * static_cast<int64_t>(grid_.world_size()),
                                       grid_.world_size()));
  for (const TokenBatch& mb : batches) {
    const int64_t n = mb.b * mb.t, rows = model.HiddenRows(mb.b, mb.t);
    const int64_t act = 4 * n * c;  // bytes of a full (N, C) activation
    for (int ch = 0; ch < model.num_chunks(); ++ch) {
      // Pipeline: activations forward, gradients backward (point to point, counted as sent).
      if (!model.ChunkHasHead(ch)) add(v.other, 4 * rows * c);
      if (!model.ChunkHasEmbedding(ch)) add(v.other, 4 * rows * c);
      if (tp == 1) continue;
      // Tensor parallel, per layer: forward leaves two regions and backward enters two.
      const int64_t layers =
          static_cast<int64_t>(StageLayers(cfg_.model.n_layer, pp * vpp_, 0).size());
      for (int64_t l = 0; l < layers; ++l) {
        for (int k = 0; k < 2; ++k) {
          if (sp) {
            add(v.all_gather, AllGatherWireBytes(act, tp));          // forward enter
            add(v.reduce_scatter, ReduceScatterWireBytes(act, tp));  // forward leave
            add(v.all_gather, AllGatherWireBytes(act, tp));          // backward leave
            add(v.reduce_scatter, ReduceScatterWireBytes(act, tp));  // backward enter
          } else {
            add(v.all_reduce, AllReduceWireBytes(act, tp));  // forward leave
            add(v.all_reduce, AllReduceWireBytes(act, tp));  // backward enter
          }
          // train.recompute in the backward: full repeats the forward's enter and leave,
          // selective the enter (the norm's all-gather; the identity without sp).
          if (model.recompute() == Recompute::kFull) {
            if (sp) {
              add(v.all_gather, AllGatherWireBytes(act, tp));
              add(v.reduce_scatter, ReduceScatterWireBytes(act, tp));
            } else {
              add(v.all_reduce, AllReduceWireBytes(act, tp));
            }
          } else if (model.recompute() == Recompute::kSelective && sp) {
            add(v.all_gather, AllGatherWireBytes(act, tp));
          }
        }
      }
      if (model.ChunkHasEmbedding(ch)) {
        if (sp) {
          add(v.reduce_scatter, ReduceScatterWireBytes(act, tp));
          add(v.all_gather, AllGatherWireBytes(act, tp));
        } else {
          add(v.all_reduce, AllReduceWireBytes(act, tp));
        }
      }
      if (model.ChunkHasHead(ch)) {
        if (sp) {
          add(v.all_gather, AllGatherWireBytes(act, tp));
          add(v.reduce_scatter, ReduceScatterWireBytes(act, tp));
        } else {
          add(v.all_reduce, AllReduceWireBytes(act, tp));
        }
        // The fused vocab-parallel classifier, per chunk of m rows: the rows' maxima, then
        // their exp-sums and target logits in one call (kernels/classifier.h).
        for (int64_t first = 0; first < n; first += model.classifier_chunk()) {
          const int64_t m = std::min(model.classifier_chunk(), n - first);
          add(v.all_reduce, AllReduceWireBytes(4 * m, tp));
          add(v.all_reduce, AllReduceWireBytes(8 * m, tp));
        }
      }
    }
  }
  // Once per step: tensor-parallel gradient syncs, the tied embedding, data parallel.
  if (tp > 1) {
    int64_t packed = 0;
    for (const Parameter& p : model.params().params()) {
      if (p.sharding.grad_sync == GradSync::kTensorParallelSum) packed += p.value.numel();
      if (p.sharding.grad_sync == GradSync::kReplicaRowSum) {
        add(v.all_reduce, AllReduceWireBytes(4 * NumElements(p.sharding.global_shape), tp));
      }
    }
    if (packed > 0) add(v.all_reduce, AllReduceWireBytes(4 * packed, tp));
  }
  if (pp > 1 && cfg_.model.tied() && grid_.InEmbeddingGroup()) {
    add(v.all_reduce,
        AllReduceWireBytes(4 * model.params().Get("wte").value.numel(), 2));
  }
  for (size_t i = 0; i < layout_.buckets.size(); ++i) {
    if (cfg_.parallel.zero1) {
      add(v.reduce_scatter, ReduceScatterWireBytes(4 * layout_.padded(i), dp));
      // bf16/fp16: the compute copies travel in their 2-byte dtype.
      const int64_t param_bytes = cfg_.train.precision == DType::kF32 ? 4 : 2;
      if (!skipped) add(v.all_gather, AllGatherWireBytes(param_bytes * layout_.padded(i), dp));
    } else {
      add(v.all_reduce, AllReduceWireBytes(4 * layout_.buckets[i].numel(), dp));
    }
  }
  return v;
}

}  // namespace lattice
