#include "parallel/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/grad_norm.h"
#include "runtime/status.h"

namespace lattice {

// ---- Tensor-parallel ops over a communicator ----------------------------------------------

void CommTensorParallelOps::AllReduceSum(float* buf, int64_t n) {
  if (status_.ok()) status_ = comm_.AllReduce(buf, n, CommType::kF32, ReduceOp::kSum);
}
void CommTensorParallelOps::AllReduceMax(float* buf, int64_t n) {
  if (status_.ok()) status_ = comm_.AllReduce(buf, n, CommType::kF32, ReduceOp::kMax);
}
void CommTensorParallelOps::AllGather(const float* in, float* out, int64_t n_per_rank) {
  if (status_.ok()) status_ = comm_.AllGather(in, out, n_per_rank, CommType::kF32);
}
void CommTensorParallelOps::ReduceScatter(const float* in, float* out, int64_t n_per_rank) {
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

ParallelEngine::ParallelEngine(const Config& cfg, Communicator& world, ProcessGrid grid)
    : cfg_(cfg), world_(world), grid_(std::move(grid)) {}

ParallelEngine::~ParallelEngine() = default;

absl::StatusOr<std::unique_ptr<ParallelEngine>> ParallelEngine::Create(const Config& cfg,
                                                                       Communicator& world) {
  const ParallelConfig& p = cfg.parallel;
  LATTICE_ASSIGN_OR_RETURN(
      ProcessGrid grid, ProcessGrid::Create(world.size(), world.rank(), static_cast<int>(p.tp),
                                            static_cast<int>(p.pp), static_cast<int>(p.dp)));
  std::unique_ptr<ParallelEngine> e(new ParallelEngine(cfg, world, std::move(grid)));
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

  ModelShard shard;
  shard.tp_rank = g.tp_rank();
  shard.tp_size = g.tp_size();
  shard.sequence_parallel = p.sequence_parallel;
  const int virtual_stages = g.pp_size() * e->vpp_;
  for (int c = 0; c < e->vpp_; ++c) {
    shard.chunks.push_back(
        StageLayers(cfg.model.n_layer, virtual_stages, c * g.pp_size() + g.pp_rank()));
  }
  shard.embedding = g.IsFirstStage();
  shard.head = g.IsLastStage();
  if (g.tp_size() > 1) e->tp_ops_ = std::make_unique<CommTensorParallelOps>(*e->comms_.tp);
  LATTICE_ASSIGN_OR_RETURN(e->model_, Decoder::Create(cfg.model, cfg.train.micro_batch_size,
                                                      shard, e->tp_ops_.get()));
  e->model_->InitializeWeights(cfg.train.seed);

  ParameterSet& params = e->model_->params();
  LATTICE_ASSIGN_OR_RETURN(e->layout_,
                           MakeBucketLayout(params.numel(), g.dp_size(), kDefaultBucketBytes));
  float* staging = nullptr;
  if (p.zero1) {
    for (size_t i = 0; i < e->layout_.buckets.size(); ++i) {
      if (e->layout_.needs_padding(i)) {
        e->staging_ = Tensor::Zeros({e->layout_.padded(i)}, DType::kF32);
      }
    }
    if (e->staging_.defined()) staging = e->staging_.f32();
    e->sharded_ = std::make_unique<DistributedOptimizer>(params, cfg.train, e->layout_,
                                                         g.dp_rank(), staging);
  } else {
    e->adamw_ = std::make_unique<AdamW>(params, cfg.train);
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

int64_t ParallelEngine::step() const { return sharded_ ? sharded_->step() : adamw_->step(); }

void ParallelEngine::set_step(int64_t s) {
  if (sharded_) {
    sharded_->set_step(s);
  } else {
    adamw_->set_step(s);
  }
}

EngineMemory ParallelEngine::memory() const {
  EngineMemory m;
  const ParameterSet& p = model_->params();
  m.params = static_cast<int64_t>(p.flat_values().nbytes());
  m.grads = static_cast<int64_t>(p.flat_grads().nbytes());
  m.optimizer_state = sharded_ ? sharded_->state_bytes() : adamw_->state_bytes();
  m.comm_buffers = staging_.defined() ? static_cast<int64_t>(staging_.nbytes()) : 0;
  m.activations_per_micro_batch = model_->activation_bytes();
  m.activations_peak = model_->peak_activation_bytes();
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

absl::Status ParallelEngine::CheckBatches(const std::vector<TokenBatch>& batches,
                                          int64_t* tokens) const {
  LATTICE_RETURN_IF_ERROR(ValidateTokenBatches(batches, cfg_.model, cfg_.train.micro_batch_size,
                                               grid_.dp_rank(), tokens));
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
  std::vector<float> buf;
  std::unique_ptr<Work> work;
};

}  // namespace

absl::Status ParallelEngine::RunSchedule(const std::vector<TokenBatch>& batches, float dloss,
                                         bool train, double* loss_sum) {
  const int pp = grid_.pp_size(), s = grid_.pp_rank();
  const int m_count = static_cast<int>(batches.size());
  const int64_t c = cfg_.model.d_model;
  Decoder& model = *model_;
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
  std::vector<float> in, din;
  *loss_sum = 0;
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
        LATTICE_RETURN_IF_ERROR(Annotate(
            ppc->Recv(in.data(), in.size(), CommType::kF32, prev, 2 * v),
            absl::StrCat("pipeline: receiving activations of micro-batch ", a.micro_batch)));
      }
      PendingSend out;
      if (!last) out.buf.resize(rows * c);
      ForwardResult r = model.ForwardChunk(a.chunk, a.micro_batch, mb.inputs.data(),
                                           mb.targets.data(), nullptr, first ? nullptr : in.data(),
                                           last ? nullptr : out.buf.data(), mb.b, mb.t);
      LATTICE_RETURN_IF_ERROR(Annotate(tp_status(), "tensor-parallel forward"));
      if (last) {
        *loss_sum += r.loss_sum;
      } else {
        LATTICE_ASSIGN_OR_RETURN(
            out.work, ppc->ISend(out.buf.data(), out.buf.size(), CommType::kF32, next, 2 * (v + 1)));
        sends.push_back(std::move(out));
      }
      if (!train) model.DropActivations(a.chunk, a.micro_batch);
    } else {
      const bool first = model.ChunkHasEmbedding(a.chunk);
      const bool last = model.ChunkHasHead(a.chunk);
      if (!last) {
        in.resize(rows * c);
        LATTICE_RETURN_IF_ERROR(Annotate(
            ppc->Recv(in.data(), in.size(), CommType::kF32, next, 2 * v + 1),
            absl::StrCat("pipeline: receiving gradients of micro-batch ", a.micro_batch)));
      }
      PendingSend out;
      if (!first) out.buf.resize(rows * c);
      // With the whole model on this rank, the data-parallel reduction of each bucket starts
      // as soon as the last backward pass has finished its gradients (overlap).
      const bool overlap = overlap_dp_ && &a == &actions.back();
      if (overlap) {
        reducer_->Begin(model.params().flat_grads().f32());
        model.set_grad_ready_callback(
            [this](int64_t begin, int64_t end) { reducer_->OnGradsReady(begin, end); });
      }
      model.BackwardChunk(a.chunk, a.micro_batch, dloss, last ? nullptr : in.data(),
                          first ? nullptr : out.buf.data());
      if (overlap) model.set_grad_ready_callback(nullptr);
      LATTICE_RETURN_IF_ERROR(Annotate(tp_status(), "tensor-parallel backward"));
      if (!first) {
        LATTICE_ASSIGN_OR_RETURN(
            out.work, ppc->ISend(out.buf.data(), out.buf.size(), CommType::kF32, prev, 2 * v - 1));
        sends.push_back(std::move(out));
      }
    }
    // Completed sends free their buffers as we go.
    while (!sends.empty() && sends.size() > 8) {
      LATTICE_RETURN_IF_ERROR(sends.front().work->Wait());
      sends.pop_front();
    }
  }
  for (PendingSend& p : sends) LATTICE_RETURN_IF_ERROR(p.work->Wait());
  return absl::OkStatus();
}

// ---- Gradient synchronisation ---------------------------------------------------------------

absl::Status ParallelEngine::SyncTensorParallelGrads() {
  if (grid_.tp_size() == 1) return absl::OkStatus();
  Communicator& tp = *comms_.tp;
  const ParameterSet& params = model_->params();
  // Partial gradients of replicated parameters (sequence parallelism): one packed all-reduce.
  std::vector<float> packed;
  for (const Parameter& p : params.params()) {
    if (p.sharding.grad_sync != GradSync::kTensorParallelSum) continue;
    packed.insert(packed.end(), p.grad.f32(), p.grad.f32() + p.grad.numel());
  }
  if (!packed.empty()) {
    LATTICE_RETURN_IF_ERROR(Annotate(
        tp.AllReduce(packed.data(), packed.size(), CommType::kF32, ReduceOp::kSum),
        "sequence-parallel gradient all-reduce"));
    size_t at = 0;
    for (const Parameter& p : params.params()) {
      if (p.sharding.grad_sync != GradSync::kTensorParallelSum) continue;
      std::memcpy(p.grad.f32(), packed.data() + at, p.grad.numel() * sizeof(float));
      at += p.grad.numel();
    }
  }
  // Replicated kv heads: the ranks sharing a kv head each hold part of its gradient. Sum them
  // through a buffer of the whole parameter (each rank adds its shared rows at their place).
  for (const Parameter& p : params.params()) {
    if (p.sharding.grad_sync != GradSync::kReplicaRowSum) continue;
    const int64_t lc = p.local_cols(), gc = p.global_cols();
    std::vector<float> full(NumElements(p.sharding.global_shape), 0.0f);
    for (const RowSegment& seg : p.sharding.segments) {
      if (seg.replicas <= 1) continue;
      for (int64_t r = 0; r < seg.count; ++r) {
        const float* src = p.grad.f32() + (seg.local_begin + r) * lc;
        float* dst = full.data() + (seg.global_begin + r) * gc + p.sharding.col_begin;
        for (int64_t j = 0; j < lc; ++j) dst[j] += src[j];
      }
    }
    LATTICE_RETURN_IF_ERROR(Annotate(
        tp.AllReduce(full.data(), full.size(), CommType::kF32, ReduceOp::kSum),
        absl::StrCat("replicated kv-head gradient all-reduce of ", p.name)));
    for (const RowSegment& seg : p.sharding.segments) {
      if (seg.replicas <= 1) continue;
      for (int64_t r = 0; r < seg.count; ++r) {
        std::memcpy(p.grad.f32() + (seg.local_begin + r) * lc,
                    full.data() + (seg.global_begin + r) * gc + p.sharding.col_begin,
                    lc * sizeof(float));
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
  return Annotate(comms_.embedding->AllReduce(wte.grad, ReduceOp::kSum),
                  "tied embedding gradient all-reduce (first and last pipeline stage)");
}

double ParallelEngine::OwnedSumOfSquares() const {
  const float* g = model_->params().flat_grads().f32();
  double sum = 0;
  for (const auto& [b, e] : norm_ranges_) sum += kernels::cpu::SumOfSquares(g + b, e - b);
  return sum;
}

// ---- Step -----------------------------------------------------------------------------------

absl::StatusOr<EngineStepResult> ParallelEngine::Step(const std::vector<TokenBatch>& batches,
                                                      float lr) {
  const CommCounters before = TotalCounters();
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
  const float dloss = res.tokens > 0 ? 1.0f / static_cast<float>(res.tokens) : 0.0f;
  double loss_sum = 0;
  LATTICE_RETURN_IF_ERROR(RunSchedule(batches, dloss, /*train=*/true, &loss_sum));
  res.peak_in_flight = model_->peak_in_flight();

  if (!overlap_dp_) {
    // The tensor-parallel and embedding syncs come first; then the whole buffer is ready.
    LATTICE_RETURN_IF_ERROR(SyncTensorParallelGrads());
    LATTICE_RETURN_IF_ERROR(SyncEmbeddingGrads());
    reducer_->Begin(params.flat_grads().f32());
    reducer_->OnGradsReady(0, params.numel());
  }
  LATTICE_RETURN_IF_ERROR(Annotate(reducer_->Finish(), "data parallel gradient reduction"));
  res.overlapped_buckets = reducer_->stats().overlapped;

  // The loss comes from the last stage's first tensor-parallel rank of every dp rank; the norm
  // from every rank's owned elements. Summed in rank order, every rank sees the same bits.
  const bool loss_rank = grid_.IsLastStage() && grid_.tp_rank() == 0;
  double sums[2] = {loss_rank ? loss_sum : 0.0, OwnedSumOfSquares()};
  LATTICE_RETURN_IF_ERROR(SumInRankOrder(world_, absl::MakeSpan(sums)));
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
    res.clip = kernels::cpu::ClipCoefficient(res.grad_norm, cfg_.train.grad_clip);
    if (sharded_) {
      LATTICE_RETURN_IF_ERROR(
          Annotate(sharded_->Step(params, *comms_.dp, lr, res.clip), "distributed optimizer"));
    } else {
      adamw_->Step(params, lr, res.clip);
    }
  }
  res.bytes = CommVolume::Between(before, TotalCounters());
  return res;
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
  double loss_sum = 0;
  LATTICE_RETURN_IF_ERROR(RunSchedule(batches, 0.0f, /*train=*/false, &loss_sum));
  const bool loss_rank = grid_.IsLastStage() && grid_.tp_rank() == 0;
  double sums[2] = {loss_rank ? loss_sum : 0.0,
                    loss_rank ? static_cast<double>(local_tokens) : 0.0};
  LATTICE_RETURN_IF_ERROR(SumInRankOrder(world_, absl::MakeSpan(sums)));
  return std::make_pair(sums[0], static_cast<int64_t>(sums[1]));
}

// ---- Parameters in and out ------------------------------------------------------------------

absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> ParallelEngine::GatherParameters() {
  std::vector<std::pair<std::string, Tensor>> out;
  const ParameterSet& params = model_->params();
  for (auto& [name, shape] : Decoder::ParameterShapes(cfg_.model)) {
    Tensor full = Tensor::Zeros(shape, DType::kF32);
    const Parameter* p = params.Find(name);
    if (p != nullptr && grid_.dp_rank() == 0) {
      const int64_t lc = p->local_cols(), gc = p->global_cols();
      for (const RowSegment& seg : p->sharding.segments) {
        if (!seg.owner) continue;
        for (int64_t r = 0; r < seg.count; ++r) {
          std::memcpy(full.f32() + (seg.global_begin + r) * gc + p->sharding.col_begin,
                      p->value.f32() + (seg.local_begin + r) * lc, lc * sizeof(float));
        }
      }
    }
    LATTICE_RETURN_IF_ERROR(
        Annotate(world_.AllReduce(full, ReduceOp::kSum), absl::StrCat("gathering ", name)));
    out.emplace_back(name, std::move(full));
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
    for (const RowSegment& seg : p.sharding.segments) {
      for (int64_t r = 0; r < seg.count; ++r) {
        std::memcpy(p.value.f32() + (seg.local_begin + r) * lc,
                    full->f32() + (seg.global_begin + r) * gc + p.sharding.col_begin,
                    lc * sizeof(float));
      }
    }
  }
  return absl::OkStatus();
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
  add(v.all_gather, AllGatherWireBytes(16 * static_cast<int64_t>(grid_.world_size()),
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
        // Vocab-parallel cross-entropy: max, sum of exponentials, target logit.
        for (int k = 0; k < 3; ++k) add(v.all_reduce, AllReduceWireBytes(4 * n, tp));
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
      if (!skipped) add(v.all_gather, AllGatherWireBytes(4 * layout_.padded(i), dp));
    } else {
      add(v.all_reduce, AllReduceWireBytes(4 * layout_.buckets[i].numel(), dp));
    }
  }
  return v;
}

}  // namespace lattice
