#include "model/decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/residual.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "kernels/vocab_parallel.h"

namespace lattice {

namespace k = kernels::cpu;

absl::StatusOr<std::unique_ptr<Decoder>> Decoder::Create(const ModelConfig& cfg, int64_t batch) {
  return Create(cfg, batch, ModelShard(), nullptr);
}

absl::StatusOr<std::unique_ptr<Decoder>> Decoder::Create(const ModelConfig& cfg, int64_t batch,
                                                         const ModelShard& shard,
                                                         TensorParallelOps* tp) {
  if (batch < 1) return absl::InvalidArgumentError(absl::StrCat("batch=", batch, " must be >= 1"));
  Config probe;
  probe.model = cfg;
  LATTICE_RETURN_IF_ERROR(probe.Validate());
  const int64_t n = shard.tp_size;
  if (n < 1 || shard.tp_rank < 0 || shard.tp_rank >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor-parallel rank ", shard.tp_rank, " of size ", n, " is invalid"));
  }
  if (n > 1) {
    if (tp == nullptr || tp->size() != n || tp->rank() != shard.tp_rank) {
      return absl::InvalidArgumentError("tensor parallelism needs ops over the tp group");
    }
    const int64_t k = cfg.kv_heads();
    if (cfg.n_head % n != 0) {
      return absl::InvalidArgumentError(absl::StrCat("model.n_head=", cfg.n_head,
                                                     " is not divisible by parallel.tp=", n));
    }
    if (k % n != 0 && n % k != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.n_kv_head=", k, " and parallel.tp=", n,
                       ": kv heads are split when n_kv_head % tp == 0 and replicated when "
                       "tp % n_kv_head == 0; neither holds"));
    }
    if (cfg.ff_dim() % n != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.d_ff=", cfg.ff_dim(), " is not divisible by parallel.tp=", n));
    }
    if (cfg.padded_vocab() % n != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the padded vocabulary ", cfg.padded_vocab(), " (model.vocab_size=", cfg.vocab_size,
          " rounded up to model.vocab_pad_multiple=", cfg.vocab_pad_multiple,
          ") is not divisible by parallel.tp=", n, "; use a vocab_pad_multiple divisible by tp"));
    }
  }
  for (size_t c = 0; c < shard.chunks.size(); ++c) {
    const std::vector<int64_t>& chunk = shard.chunks[c];
    if (chunk.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("model chunk ", c, " holds no layer"));
    }
    for (size_t i = 0; i < chunk.size(); ++i) {
      if (chunk[i] < 0 || chunk[i] >= cfg.n_layer || (i > 0 && chunk[i] != chunk[i - 1] + 1)) {
        return absl::InvalidArgumentError(
            absl::StrCat("model chunk ", c, ": layer ", chunk[i], " is outside 0..",
                         cfg.n_layer - 1, " or not consecutive"));
      }
    }
  }
  std::unique_ptr<Decoder> d(new Decoder(cfg, batch, shard, tp));
  d->DeclareParameters();
  d->params_.Allocate();
  d->AllocateScratch();
  return d;
}

int64_t Decoder::CountParameters(const ModelConfig& cfg) {
  Decoder d(cfg, 1, ModelShard(), nullptr);
  d.DeclareParameters();
  return d.params_.numel();
}

std::vector<std::pair<std::string, Shape>> Decoder::ParameterShapes(const ModelConfig& cfg) {
  Decoder d(cfg, 1, ModelShard(), nullptr);
  d.DeclareParameters();
  std::vector<std::pair<std::string, Shape>> out;
  for (const Parameter& p : d.params_.params()) out.emplace_back(p.name, p.shape);
  return out;
}

Decoder::Decoder(const ModelConfig& cfg, int64_t batch, const ModelShard& shard,
                 TensorParallelOps* tp)
    : cfg_(cfg), batch_(batch), shard_(shard), tp_(tp) {
  llama_ = cfg.arch == Arch::kLlama;
  tpn_ = shard.tp_size;
  tpr_ = shard.tp_rank;
  sp_ = shard.sequence_parallel && tpn_ > 1;
  c_ = cfg.d_model;
  h_ = cfg.n_head;
  k_ = cfg.kv_heads();
  d_ = cfg.head_dim();
  f_ = cfg.ff_dim();
  vp_ = cfg.padded_vocab();
  v_ = cfg.vocab_size;
  hl_ = h_ / tpn_;
  // kv heads: split when n_kv_head % tp == 0, otherwise each rank holds the one its q heads use.
  kl_ = k_ % tpn_ == 0 ? k_ / tpn_ : 1;
  kv_begin_ = k_ % tpn_ == 0 ? tpr_ * kl_ : tpr_ / (tpn_ / k_);
  fl_ = f_ / tpn_;
  vl_ = vp_ / tpn_;
  qkv_dim_ = (hl_ + 2 * kl_) * d_;
  fc_dim_ = llama_ ? 2 * fl_ : fl_;
  chunks_ = shard.chunks;
  if (chunks_.empty()) {
    chunks_.emplace_back();
    for (int64_t l = 0; l < cfg.n_layer; ++l) chunks_[0].push_back(l);
  }
  pool_.resize(chunks_.size());
}

std::string Decoder::L(int64_t layer, const char* suffix) const {
  return absl::StrCat("h.", layer, ".", suffix);
}

void Decoder::DeclareParameters() {
  const float std = cfg_.init_std;
  // GPT-2 / Megatron scale the residual-branch output projections by 1/sqrt(2 * n_layer).
  const float proj_std = std / std::sqrt(2.0f * static_cast<float>(cfg_.n_layer));
  const bool bias = !llama_;
  const bool replica_owner = tpr_ == 0;
  const GradSync replica_sync = sp_ ? GradSync::kTensorParallelSum : GradSync::kNone;
  // A parameter every tensor-parallel rank holds whole.
  auto replicated = [&](const std::string& name, Shape shape, bool wd, ParamInit init, float s) {
    Sharding sh;
    sh.global_shape = shape;
    sh.segments.push_back(RowSegment{0, 0, shape[0], replica_owner});
    sh.grad_sync = replica_sync;
    params_.DeclareSharded(name, std::move(shape), std::move(sh), wd, init, s);
  };
  // Rows split across tensor-parallel ranks (column-parallel linears, vocab rows).
  auto row_split = [&](const std::string& name, Shape global, std::vector<RowSegment> segs,
                       bool wd, ParamInit init, float s, GradSync sync = GradSync::kNone) {
    Shape local = global;
    local[0] = 0;
    for (const RowSegment& g : segs) local[0] += g.count;
    Sharding sh;
    sh.global_shape = std::move(global);
    sh.segments = std::move(segs);
    sh.grad_sync = sync;
    params_.DeclareSharded(name, std::move(local), std::move(sh), wd, init, s);
  };
  auto norm = [&](const std::string& name) {
    replicated(name + ".weight", {c_}, false, ParamInit::kOnes, 0);
    if (bias) replicated(name + ".bias", {c_}, false, ParamInit::kZeros, 0);
  };
  auto vocab = [&](const std::string& name, bool owner) {
    row_split(name, {vp_, c_}, {RowSegment{0, tpr_ * vl_, vl_, owner}}, true, ParamInit::kNormal,
              std);
  };
  // The tied embedding lives on the first stage; a last stage without it holds a copy that the
  // embedding group keeps in sync (not counted twice).
  if (shard_.embedding || (shard_.head && cfg_.tied())) vocab("wte", shard_.embedding);
  if (shard_.embedding && !llama_) {
    replicated("wpe", {cfg_.seq_len, c_}, true, ParamInit::kNormal, std);
  }
  const bool kv_replicated = k_ % tpn_ != 0;
  const bool kv_owner = !kv_replicated || tpr_ % (tpn_ / k_) == 0;
  const int kv_replicas = kv_replicated ? static_cast<int>(tpn_ / k_) : 1;
  for (const auto& chunk : chunks_) {
    for (int64_t l : chunk) {
      norm(L(l, "norm1"));
      auto qkv_segs = [&](int64_t width) {
        return std::vector<RowSegment>{
            RowSegment{0, tpr_ * hl_ * width, hl_ * width, true},
            RowSegment{hl_ * width, (h_ + kv_begin_) * width, kl_ * width, kv_owner, kv_replicas},
            RowSegment{(hl_ + kl_) * width, (h_ + k_ + kv_begin_) * width, kl_ * width, kv_owner,
                       kv_replicas}};
      };
      const GradSync kv_sync = kv_replicated ? GradSync::kReplicaRowSum : GradSync::kNone;
      row_split(L(l, "attn.qkv.weight"), {(h_ + 2 * k_) * d_, c_}, qkv_segs(d_), true,
                ParamInit::kNormal, std, kv_sync);
      if (bias) {
        row_split(L(l, "attn.qkv.bias"), {(h_ + 2 * k_) * d_}, qkv_segs(d_), false,
                  ParamInit::kZeros, 0, kv_sync);
      }
      {
        Sharding sh;
        sh.global_shape = {c_, h_ * d_};
        sh.col_begin = tpr_ * hl_ * d_;
        params_.DeclareSharded(L(l, "attn.proj.weight"), {c_, hl_ * d_}, std::move(sh), true,
                               ParamInit::kNormal, proj_std);
      }
      if (bias) replicated(L(l, "attn.proj.bias"), {c_}, false, ParamInit::kZeros, 0);
      norm(L(l, "norm2"));
      std::vector<RowSegment> fc_segs{RowSegment{0, tpr_ * fl_, fl_, true}};
      if (llama_) fc_segs.push_back(RowSegment{fl_, f_ + tpr_ * fl_, fl_, true});
      row_split(L(l, "mlp.fc.weight"), {llama_ ? 2 * f_ : f_, c_}, fc_segs, true,
                ParamInit::kNormal, std);
      if (bias) row_split(L(l, "mlp.fc.bias"), {f_}, fc_segs, false, ParamInit::kZeros, 0);
      {
        Sharding sh;
        sh.global_shape = {c_, f_};
        sh.col_begin = tpr_ * fl_;
        params_.DeclareSharded(L(l, "mlp.proj.weight"), {c_, fl_}, std::move(sh), true,
                               ParamInit::kNormal, proj_std);
      }
      if (bias) replicated(L(l, "mlp.proj.bias"), {c_}, false, ParamInit::kZeros, 0);
    }
  }
  if (shard_.head) {
    norm("norm_f");
    if (!cfg_.tied()) vocab("lm_head", true);
  }
}

void Decoder::AllocateScratch() {
  const int64_t b = batch_, t = cfg_.seq_len;
  int64_t scratch = 0;
  auto S = [&](Shape s) {
    Tensor x = Tensor::Zeros(std::move(s), DType::kF32);
    scratch += x.nbytes();
    return x;
  };
  dresidual_ = S({b * t, c_});
  dnorm_ = S({b * t, c_});
  dfull_ = S({b * t, c_});
  dqkv_ = S({b * t, qkv_dim_});
  datt_ = S({b, hl_, t, t});
  datty_ = S({b * t, hl_ * d_});
  dfc_ = S({b * t, fc_dim_});
  dact_ = S({b * t, fl_});
  proj_out_ = S({b * t, c_});
  if (tpn_ > 1) embed_full_ = S({b * t, c_});
  scratch_bytes_ = scratch;
  activation_bytes_ = 0;
  for (int c = 0; c < num_chunks(); ++c) activation_bytes_ += NewActSet(c)->bytes;
}

std::unique_ptr<Decoder::ActSet> Decoder::NewActSet(int chunk) const {
  const int64_t b = batch_, t = cfg_.seq_len, n = b * t;
  const int64_t r = sp_ ? (n + tpn_ - 1) / tpn_ : n;
  auto s = std::make_unique<ActSet>();
  auto A = [&](Shape shape, DType dt = DType::kF32) {
    Tensor x = Tensor::Zeros(std::move(shape), dt);
    s->bytes += x.nbytes();
    return x;
  };
  s->tokens = A({b, t}, DType::kI32);
  s->targets = A({b, t}, DType::kI32);
  s->mask = A({b, t});
  s->layers.resize(chunks_[chunk].size());
  for (LayerActs& a : s->layers) {
    a.residual = A({r, c_});
    a.norm1 = A({r, c_});
    if (sp_) a.norm1_full = A({n, c_});
    if (!llama_) a.norm1_mean = A({r});
    a.norm1_rstd = A({r});
    a.qkv = A({n, qkv_dim_});
    a.att = A({b, hl_, t, t});
    a.atty = A({n, hl_ * d_});
    a.residual2 = A({r, c_});
    a.norm2 = A({r, c_});
    if (sp_) a.norm2_full = A({n, c_});
    if (!llama_) a.norm2_mean = A({r});
    a.norm2_rstd = A({r});
    a.fc = A({n, fc_dim_});
    a.act = A({n, fl_});
  }
  s->residual_out = A({r, c_});
  if (chunk + 1 == num_chunks() && shard_.head) {
    s->normf = A({r, c_});
    if (sp_) s->normf_full = A({n, c_});
    if (!llama_) s->normf_mean = A({r});
    s->normf_rstd = A({r});
    s->logits = A({n, vl_});
    if (tpn_ > 1) {
      s->row_max = A({n});
      s->sum_exp = A({n});
      s->tlogit = A({n});
    }
  }
  return s;
}

Decoder::ActSet* Decoder::Acquire(int chunk, int micro, int64_t b, int64_t t) {
  auto key = std::make_pair(chunk, micro);
  auto it = live_.find(key);
  if (it == live_.end()) {
    std::unique_ptr<ActSet> s;
    if (!pool_[chunk].empty()) {
      s = std::move(pool_[chunk].back());
      pool_[chunk].pop_back();
    } else {
      s = NewActSet(chunk);
    }
    it = live_.emplace(key, std::move(s)).first;
    ++in_flight_;
    live_bytes_ += it->second->bytes;
    peak_in_flight_ = std::max(peak_in_flight_, in_flight_);
    peak_activation_bytes_ = std::max(peak_activation_bytes_, live_bytes_);
  }
  it->second->b = b;
  it->second->t = t;
  return it->second.get();
}

void Decoder::Release(int chunk, int micro) {
  auto it = live_.find(std::make_pair(chunk, micro));
  if (it == live_.end()) return;
  --in_flight_;
  live_bytes_ -= it->second->bytes;
  pool_[chunk].push_back(std::move(it->second));
  live_.erase(it);
}

void Decoder::DropActivations(int chunk, int micro) { Release(chunk, micro); }

int64_t Decoder::HiddenRows(int64_t b, int64_t t) const { return sp_ ? b * t / tpn_ : b * t; }

const float* Decoder::logits() const {
  auto it = live_.find(last_whole_);
  LATTICE_CHECK_MSG(it != live_.end(), "logits() without a Forward");
  return it->second->logits.f32();
}

// ---- Tensor-parallel region boundaries -----------------------------------------------------

const float* Decoder::EnterRegion(const float* x, float* full, int64_t rows) {
  if (!sp_) return x;  // identity forward; the backward all-reduces
  tp_->AllGather(x, full, rows * c_);
  return full;
}

void Decoder::EnterRegionBackward(float* dfull, float* dx, int64_t rows) {
  if (tpn_ == 1) {
    if (dx != dfull) std::memcpy(dx, dfull, rows * c_ * sizeof(float));
    return;
  }
  if (sp_) {
    tp_->ReduceScatter(dfull, dx, rows * c_);
  } else {
    tp_->AllReduceSum(dfull, rows * c_);
    if (dx != dfull) std::memcpy(dx, dfull, rows * c_ * sizeof(float));
  }
}

void Decoder::LeaveRegion(float* partial, float* out, int64_t rows) {
  if (tpn_ == 1) {
    if (out != partial) std::memcpy(out, partial, rows * c_ * sizeof(float));
    return;
  }
  if (sp_) {
    tp_->ReduceScatter(partial, out, rows * c_);
  } else {
    tp_->AllReduceSum(partial, rows * c_);
    if (out != partial) std::memcpy(out, partial, rows * c_ * sizeof(float));
  }
}

const float* Decoder::LeaveRegionBackward(const float* dout, float* dfull, int64_t rows) {
  if (!sp_) return dout;
  tp_->AllGather(dout, dfull, rows * c_);
  return dfull;
}

void Decoder::AddRowBias(float* x, const float* bias, int64_t rows, int64_t c) const {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < c; ++j) x[i * c + j] += bias[j];
  }
}

// ---- Forward -------------------------------------------------------------------------------

ForwardResult Decoder::Forward(const int32_t* tokens, const int32_t* targets,
                               const float* loss_mask, int64_t b, int64_t t) {
  LATTICE_CHECK_MSG(shard_.whole(), "Forward needs the whole model; use ForwardChunk");
  last_whole_ = {0, 0};
  ForwardResult r = ForwardChunk(0, 0, tokens, targets, loss_mask, nullptr, nullptr, b, t);
  return r;
}

void Decoder::Backward(float dloss) {
  LATTICE_CHECK_MSG(live_.count({0, 0}) == 1, "Backward without Forward");
  BackwardChunk(0, 0, dloss, nullptr, nullptr);
}

void Decoder::EmbedForward(ActSet& s, float* x) {
  const int64_t b = s.b, t = s.t, n = b * t;
  const int32_t* tokens = s.tokens.i32();
  const float* wpe = llama_ ? nullptr : params_.value("wpe");
  if (tpn_ == 1) {
    k::EmbeddingForward(x, tokens, params_.value("wte"), wpe, b, t, c_, 0);
    return;
  }
  // Vocab-parallel: each rank looks up the rows it holds, the partial sums are reduced.
  float* e = embed_full_.f32();
  k::EmbeddingShardForward(e, tokens, params_.value("wte"), tpr_ * vl_, vl_, n, c_);
  const int64_t rows = HiddenRows(b, t);
  LeaveRegion(e, x, rows);
  if (wpe != nullptr) {
    const int64_t first = sp_ ? tpr_ * rows : 0;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const float* p = wpe + ((first + i) % t) * c_;
      for (int64_t j = 0; j < c_; ++j) x[i * c_ + j] += p[j];
    }
  }
}

void Decoder::EmbedBackward(ActSet& s, const float* dx) {
  const int64_t b = s.b, t = s.t, n = b * t;
  const int32_t* tokens = s.tokens.i32();
  float* dwpe = llama_ ? nullptr : params_.grad("wpe");
  if (tpn_ == 1) {
    k::EmbeddingBackward(params_.grad("wte"), dwpe, dx, tokens, b, t, c_, 0);
    return;
  }
  const int64_t rows = HiddenRows(b, t);
  if (dwpe != nullptr) {
    // Serial over rows: positions repeat across the batch (no races, a fixed order).
    const int64_t first = sp_ ? tpr_ * rows : 0;
    for (int64_t i = 0; i < rows; ++i) {
      float* p = dwpe + ((first + i) % t) * c_;
      for (int64_t j = 0; j < c_; ++j) p[j] += dx[i * c_ + j];
    }
  }
  const float* full = LeaveRegionBackward(dx, embed_full_.f32(), rows);
  k::EmbeddingShardBackward(params_.grad("wte"), full, tokens, tpr_ * vl_, vl_, n, c_);
}

void Decoder::LayerForward(LayerActs& a, int64_t l, int64_t b, int64_t t, float* out) {
  const int64_t n = b * t, rows = HiddenRows(b, t);
  const float eps = cfg_.norm_eps;
  const bool tp = tpn_ > 1;
  const float* in = a.residual.f32();
  auto bias = [&](const char* name) { return llama_ ? nullptr : params_.value(L(l, name)); };
  // Attention block.
  if (llama_) {
    k::RmsNormForward(a.norm1.f32(), a.norm1_rstd.f32(), in, params_.value(L(l, "norm1.weight")),
                      rows, c_, eps);
  } else {
    k::LayerNormForward(a.norm1.f32(), a.norm1_mean.f32(), a.norm1_rstd.f32(), in,
                        params_.value(L(l, "norm1.weight")), params_.value(L(l, "norm1.bias")),
                        rows, c_, eps);
  }
  const float* xn = EnterRegion(a.norm1.f32(), sp_ ? a.norm1_full.f32() : nullptr, rows);
  k::MatmulForward(a.qkv.f32(), xn, params_.value(L(l, "attn.qkv.weight")), bias("attn.qkv.bias"),
                   n, c_, qkv_dim_);
  if (llama_) {
    k::RopeForward(a.qkv.f32(), b, t, hl_, d_, qkv_dim_, 0, cfg_.rope_theta);
    k::RopeForward(a.qkv.f32() + hl_ * d_, b, t, kl_, d_, qkv_dim_, 0, cfg_.rope_theta);
  }
  k::AttentionForward(a.atty.f32(), a.att.f32(), a.qkv.f32(), b, t, hl_, kl_, d_);
  // The row-parallel projection: its bias is added once, after the reduction.
  k::MatmulForward(proj_out_.f32(), a.atty.f32(), params_.value(L(l, "attn.proj.weight")),
                   tp ? nullptr : bias("attn.proj.bias"), n, hl_ * d_, c_);
  // The reduced projection: in place, except that sequence parallelism scatters it to R rows.
  float* y = sp_ ? dresidual_.f32() : proj_out_.f32();
  LeaveRegion(proj_out_.f32(), y, rows);
  if (tp && !llama_) AddRowBias(y, bias("attn.proj.bias"), rows, c_);
  k::ResidualForward(a.residual2.f32(), in, y, rows * c_);
  // MLP block.
  if (llama_) {
    k::RmsNormForward(a.norm2.f32(), a.norm2_rstd.f32(), a.residual2.f32(),
                      params_.value(L(l, "norm2.weight")), rows, c_, eps);
  } else {
    k::LayerNormForward(a.norm2.f32(), a.norm2_mean.f32(), a.norm2_rstd.f32(), a.residual2.f32(),
                        params_.value(L(l, "norm2.weight")), params_.value(L(l, "norm2.bias")),
                        rows, c_, eps);
  }
  const float* xn2 = EnterRegion(a.norm2.f32(), sp_ ? a.norm2_full.f32() : nullptr, rows);
  k::MatmulForward(a.fc.f32(), xn2, params_.value(L(l, "mlp.fc.weight")), bias("mlp.fc.bias"), n,
                   c_, fc_dim_);
  if (llama_) {
    k::SwiGluForward(a.act.f32(), a.fc.f32(), n, fl_);
  } else {
    k::GeluForward(a.act.f32(), a.fc.f32(), n * fl_);
  }
  k::MatmulForward(proj_out_.f32(), a.act.f32(), params_.value(L(l, "mlp.proj.weight")),
                   tp ? nullptr : bias("mlp.proj.bias"), n, fl_, c_);
  LeaveRegion(proj_out_.f32(), y, rows);
  if (tp && !llama_) AddRowBias(y, bias("mlp.proj.bias"), rows, c_);
  k::ResidualForward(out, a.residual2.f32(), y, rows * c_);
}

ForwardResult Decoder::HeadForward(ActSet& s, const float* x, bool with_loss) {
  const int64_t n = s.b * s.t, rows = HiddenRows(s.b, s.t);
  const float eps = cfg_.norm_eps;
  if (llama_) {
    k::RmsNormForward(s.normf.f32(), s.normf_rstd.f32(), x, params_.value("norm_f.weight"), rows,
                      c_, eps);
  } else {
    k::LayerNormForward(s.normf.f32(), s.normf_mean.f32(), s.normf_rstd.f32(), x,
                        params_.value("norm_f.weight"), params_.value("norm_f.bias"), rows, c_,
                        eps);
  }
  const float* xn = EnterRegion(s.normf.f32(), sp_ ? s.normf_full.f32() : nullptr, rows);
  const float* head = params_.value(cfg_.tied() ? "wte" : "lm_head");
  k::MatmulForward(s.logits.f32(), xn, head, nullptr, n, c_, vl_);
  ForwardResult r;
  if (!with_loss) return r;
  const int32_t* targets = s.targets.i32();
  const float* mask = s.has_mask ? s.mask.f32() : nullptr;
  float* losses = dnorm_.f32();  // (N) of scratch, free during forward
  if (tpn_ == 1) {
    r.num_tokens = k::CrossEntropyForward(losses, s.logits.f32(), targets, mask, n, v_, vp_);
  } else {
    // Vocab-parallel cross-entropy: no rank ever holds a full row of logits.
    const int64_t begin = tpr_ * vl_;
    k::CrossEntropyShardMax(s.row_max.f32(), s.logits.f32(), n, vl_, begin, v_);
    tp_->AllReduceMax(s.row_max.f32(), n);
    k::CrossEntropyShardStats(s.sum_exp.f32(), s.tlogit.f32(), s.logits.f32(), targets,
                              s.row_max.f32(), n, vl_, begin, v_);
    tp_->AllReduceSum(s.sum_exp.f32(), n);
    tp_->AllReduceSum(s.tlogit.f32(), n);
    r.num_tokens = k::CrossEntropyShardLoss(losses, s.row_max.f32(), s.sum_exp.f32(),
                                            s.tlogit.f32(), targets, mask, n);
  }
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += losses[i];
  r.loss_sum = sum;
  return r;
}

ForwardResult Decoder::ForwardChunk(int chunk, int micro, const int32_t* tokens,
                                    const int32_t* targets, const float* loss_mask,
                                    const float* input, float* output, int64_t b, int64_t t) {
  LATTICE_CHECK(chunk >= 0 && chunk < num_chunks());
  LATTICE_CHECK(b >= 1 && b <= batch_ && t >= 1 && t <= cfg_.seq_len);
  LATTICE_CHECK_MSG(!sp_ || (b * t) % tpn_ == 0, "sequence parallel needs b*t % tp == 0");
  const int64_t n = b * t, rows = HiddenRows(b, t);
  ActSet& s = *Acquire(chunk, micro, b, t);
  const bool head = ChunkHasHead(chunk);
  if (tokens != nullptr) std::memcpy(s.tokens.raw(), tokens, n * sizeof(int32_t));
  s.has_mask = head && loss_mask != nullptr;
  if (head && targets != nullptr) {
    std::memcpy(s.targets.raw(), targets, n * sizeof(int32_t));
    if (s.has_mask) std::memcpy(s.mask.raw(), loss_mask, n * sizeof(float));
  }
  const std::vector<int64_t>& layers = chunks_[chunk];
  float* x = layers.empty() ? s.residual_out.f32() : s.layers[0].residual.f32();
  if (ChunkHasEmbedding(chunk)) {
    LATTICE_CHECK(tokens != nullptr);
    EmbedForward(s, x);
  } else {
    LATTICE_CHECK(input != nullptr);
    std::memcpy(x, input, rows * c_ * sizeof(float));
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    float* out = i + 1 < layers.size() ? s.layers[i + 1].residual.f32() : s.residual_out.f32();
    LayerForward(s.layers[i], layers[i], b, t, out);
  }
  if (!head) {
    LATTICE_CHECK(output != nullptr);
    std::memcpy(output, s.residual_out.f32(), rows * c_ * sizeof(float));
    return ForwardResult();
  }
  return HeadForward(s, s.residual_out.f32(), targets != nullptr);
}

// ---- Backward ------------------------------------------------------------------------------

void Decoder::HeadBackward(ActSet& s, float dloss, float* dres) {
  const int64_t n = s.b * s.t, rows = HiddenRows(s.b, s.t);
  float* dlogits = s.logits.f32();  // in place: the logits become their gradient
  const int32_t* targets = s.targets.i32();
  const float* mask = s.has_mask ? s.mask.f32() : nullptr;
  if (tpn_ == 1) {
    k::CrossEntropyBackward(dlogits, s.logits.f32(), targets, mask, dloss, n, v_, vp_);
  } else {
    k::CrossEntropyShardBackward(dlogits, s.logits.f32(), targets, mask, s.row_max.f32(),
                                 s.sum_exp.f32(), dloss, n, vl_, tpr_ * vl_, v_);
  }
  const std::string head = cfg_.tied() ? "wte" : "lm_head";
  const float* xn = sp_ ? s.normf_full.f32() : s.normf.f32();
  float* dxn = dnorm_.f32();
  float* dfull = tpn_ > 1 ? dfull_.f32() : dxn;
  std::memset(dfull, 0, n * c_ * sizeof(float));
  k::MatmulBackward(dfull, params_.grad(head), nullptr, dlogits, xn, params_.value(head), n, c_,
                    vl_);
  EnterRegionBackward(dfull, dxn, rows);
  std::memset(dres, 0, rows * c_ * sizeof(float));
  if (llama_) {
    k::RmsNormBackward(dres, params_.grad("norm_f.weight"), dxn, s.residual_out.f32(),
                       params_.value("norm_f.weight"), s.normf_rstd.f32(), rows, c_);
  } else {
    k::LayerNormBackward(dres, params_.grad("norm_f.weight"), params_.grad("norm_f.bias"), dxn,
                         s.residual_out.f32(), params_.value("norm_f.weight"),
                         s.normf_mean.f32(), s.normf_rstd.f32(), rows, c_);
  }
  ReportReady("norm_f.weight", llama_ ? "norm_f.weight" : "norm_f.bias");
  if (!cfg_.tied()) ReportReady("lm_head", "lm_head");
}

void Decoder::LayerBackward(LayerActs& a, int64_t l, int64_t b, int64_t t, float* dres) {
  const int64_t n = b * t, rows = HiddenRows(b, t);
  const bool tp = tpn_ > 1;
  auto gbias = [&](const char* name) { return llama_ ? nullptr : params_.grad(L(l, name)); };
  float* dfull = dfull_.f32();
  float* dxn = dnorm_.f32();
  // MLP block: dres is the gradient of the layer output = of residual2 through the skip.
  if (tp && !llama_) {
    k::MatmulBackward(nullptr, nullptr, gbias("mlp.proj.bias"), dres, nullptr, nullptr, rows, 0,
                      c_);
  }
  const float* dy = LeaveRegionBackward(dres, dfull, rows);
  std::memset(dact_.raw(), 0, n * fl_ * sizeof(float));
  k::MatmulBackward(dact_.f32(), params_.grad(L(l, "mlp.proj.weight")),
                    tp ? nullptr : gbias("mlp.proj.bias"), dy, a.act.f32(),
                    params_.value(L(l, "mlp.proj.weight")), n, fl_, c_);
  std::memset(dfc_.raw(), 0, n * fc_dim_ * sizeof(float));
  if (llama_) {
    k::SwiGluBackward(dfc_.f32(), a.fc.f32(), dact_.f32(), n, fl_);
  } else {
    k::GeluBackward(dfc_.f32(), a.fc.f32(), dact_.f32(), n * fl_);
  }
  float* dn = tp ? dfull : dxn;
  std::memset(dn, 0, n * c_ * sizeof(float));
  k::MatmulBackward(dn, params_.grad(L(l, "mlp.fc.weight")), gbias("mlp.fc.bias"), dfc_.f32(),
                    sp_ ? a.norm2_full.f32() : a.norm2.f32(), params_.value(L(l, "mlp.fc.weight")),
                    n, c_, fc_dim_);
  EnterRegionBackward(dn, dxn, rows);
  if (llama_) {
    k::RmsNormBackward(dres, params_.grad(L(l, "norm2.weight")), dxn, a.residual2.f32(),
                       params_.value(L(l, "norm2.weight")), a.norm2_rstd.f32(), rows, c_);
  } else {
    k::LayerNormBackward(dres, params_.grad(L(l, "norm2.weight")), params_.grad(L(l, "norm2.bias")),
                         dxn, a.residual2.f32(), params_.value(L(l, "norm2.weight")),
                         a.norm2_mean.f32(), a.norm2_rstd.f32(), rows, c_);
  }
  // Attention block: dres is now the gradient of residual2.
  if (tp && !llama_) {
    k::MatmulBackward(nullptr, nullptr, gbias("attn.proj.bias"), dres, nullptr, nullptr, rows, 0,
                      c_);
  }
  const float* dy2 = LeaveRegionBackward(dres, dfull, rows);
  std::memset(datty_.raw(), 0, n * hl_ * d_ * sizeof(float));
  k::MatmulBackward(datty_.f32(), params_.grad(L(l, "attn.proj.weight")),
                    tp ? nullptr : gbias("attn.proj.bias"), dy2, a.atty.f32(),
                    params_.value(L(l, "attn.proj.weight")), n, hl_ * d_, c_);
  std::memset(dqkv_.raw(), 0, n * qkv_dim_ * sizeof(float));
  k::AttentionBackward(dqkv_.f32(), datt_.f32(), datty_.f32(), a.qkv.f32(), a.att.f32(), b, t, hl_,
                       kl_, d_);
  if (llama_) {
    k::RopeBackward(dqkv_.f32(), b, t, hl_, d_, qkv_dim_, 0, cfg_.rope_theta);
    k::RopeBackward(dqkv_.f32() + hl_ * d_, b, t, kl_, d_, qkv_dim_, 0, cfg_.rope_theta);
  }
  std::memset(dn, 0, n * c_ * sizeof(float));
  k::MatmulBackward(dn, params_.grad(L(l, "attn.qkv.weight")), gbias("attn.qkv.bias"),
                    dqkv_.f32(), sp_ ? a.norm1_full.f32() : a.norm1.f32(),
                    params_.value(L(l, "attn.qkv.weight")), n, c_, qkv_dim_);
  EnterRegionBackward(dn, dxn, rows);
  if (llama_) {
    k::RmsNormBackward(dres, params_.grad(L(l, "norm1.weight")), dxn, a.residual.f32(),
                       params_.value(L(l, "norm1.weight")), a.norm1_rstd.f32(), rows, c_);
  } else {
    k::LayerNormBackward(dres, params_.grad(L(l, "norm1.weight")), params_.grad(L(l, "norm1.bias")),
                         dxn, a.residual.f32(), params_.value(L(l, "norm1.weight")),
                         a.norm1_mean.f32(), a.norm1_rstd.f32(), rows, c_);
  }
  ReportReady(L(l, "norm1.weight"), llama_ ? L(l, "mlp.proj.weight") : L(l, "mlp.proj.bias"));
}

void Decoder::BackwardChunk(int chunk, int micro, float dloss, const float* doutput,
                            float* dinput) {
  auto it = live_.find(std::make_pair(chunk, micro));
  LATTICE_CHECK_MSG(it != live_.end(), "BackwardChunk without ForwardChunk");
  ActSet& s = *it->second;
  const int64_t rows = HiddenRows(s.b, s.t);
  float* dres = dresidual_.f32();
  if (ChunkHasHead(chunk)) {
    HeadBackward(s, dloss, dres);
  } else {
    LATTICE_CHECK(doutput != nullptr);
    std::memcpy(dres, doutput, rows * c_ * sizeof(float));
  }
  const std::vector<int64_t>& layers = chunks_[chunk];
  for (size_t i = layers.size(); i-- > 0;) LayerBackward(s.layers[i], layers[i], s.b, s.t, dres);
  if (ChunkHasEmbedding(chunk)) {
    EmbedBackward(s, dres);
    ReportReady("wte", llama_ ? "wte" : "wpe");
  } else {
    LATTICE_CHECK(dinput != nullptr);
    std::memcpy(dinput, dres, rows * c_ * sizeof(float));
  }
  Release(chunk, micro);
}

void Decoder::InitializeWeights(uint64_t seed) {
  params_.Initialize(seed);
  // Zero the padded vocabulary rows (global rows >= vocab_size) wherever this rank holds them.
  for (const char* name : {"wte", "lm_head"}) {
    if (const Parameter* p = params_.Find(name)) {
      for (int64_t r = 0; r < p->local_rows(); ++r) {
        if (p->GlobalIndex(r * c_) / c_ >= v_) {
          std::memset(p->value.f32() + r * c_, 0, c_ * sizeof(float));
        }
      }
    }
  }
}

void Decoder::ReportReady(const std::string& first, const std::string& last) {
  if (!grad_ready_) return;
  const Parameter& a = params_.Get(first);
  const Parameter& z = params_.Get(last);
  grad_ready_(a.offset, z.offset + z.value.numel());
}

KvCache Decoder::NewKvCache(int64_t max_len) const {
  LATTICE_CHECK_MSG(shard_.whole(), "generation needs the whole model");
  KvCache c;
  c.max_len = max_len;
  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    c.k.push_back(Tensor::Zeros({max_len, k_, d_}, DType::kF32));
    c.v.push_back(Tensor::Zeros({max_len, k_, d_}, DType::kF32));
  }
  return c;
}

void Decoder::DecodeStep(int32_t token, KvCache& cache, float* logits_out) {
  LATTICE_CHECK(cache.len < cache.max_len);
  LATTICE_CHECK(llama_ || cache.len < cfg_.seq_len);
  const int64_t pos = cache.len;
  const float eps = cfg_.norm_eps;
  // Single-row buffers (1, C) etc.; reuse the first row of the training scratch.
  float* x = dresidual_.f32();
  float* xn = dnorm_.f32();
  float* qkv = dqkv_.f32();
  float* y = datty_.f32();
  float* fc = dfc_.f32();
  float* act = dact_.f32();
  float* proj = proj_out_.f32();
  float mean, rstd;
  k::EmbeddingForward(x, &token, params_.value("wte"), llama_ ? nullptr : params_.value("wpe"), 1,
                      1, c_, pos);
  auto norm = [&](const std::string& name, const float* in, float* out) {
    if (llama_) {
      k::RmsNormForward(out, &rstd, in, params_.value(name + ".weight"), 1, c_, eps);
    } else {
      k::LayerNormForward(out, &mean, &rstd, in, params_.value(name + ".weight"),
                          params_.value(name + ".bias"), 1, c_, eps);
    }
  };
  auto bias = [&](int64_t l, const char* name) {
    return llama_ ? nullptr : params_.value(L(l, name));
  };
  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    norm(L(l, "norm1"), x, xn);
    k::MatmulForward(qkv, xn, params_.value(L(l, "attn.qkv.weight")), bias(l, "attn.qkv.bias"), 1,
                     c_, qkv_dim_);
    if (llama_) {
      k::RopeForward(qkv, 1, 1, h_, d_, qkv_dim_, pos, cfg_.rope_theta);
      k::RopeForward(qkv + h_ * d_, 1, 1, k_, d_, qkv_dim_, pos, cfg_.rope_theta);
    }
    std::memcpy(cache.k[l].f32() + pos * k_ * d_, qkv + h_ * d_, k_ * d_ * sizeof(float));
    std::memcpy(cache.v[l].f32() + pos * k_ * d_, qkv + (h_ + k_) * d_, k_ * d_ * sizeof(float));
    k::AttentionDecode(y, qkv, cache.k[l].f32(), cache.v[l].f32(), pos + 1, h_, k_, d_);
    k::MatmulForward(proj, y, params_.value(L(l, "attn.proj.weight")), bias(l, "attn.proj.bias"), 1,
                     h_ * d_, c_);
    k::ResidualForward(x, x, proj, c_);
    norm(L(l, "norm2"), x, xn);
    k::MatmulForward(fc, xn, params_.value(L(l, "mlp.fc.weight")), bias(l, "mlp.fc.bias"), 1, c_,
                     fc_dim_);
    if (llama_) {
      k::SwiGluForward(act, fc, 1, f_);
    } else {
      k::GeluForward(act, fc, f_);
    }
    k::MatmulForward(proj, act, params_.value(L(l, "mlp.proj.weight")), bias(l, "mlp.proj.bias"), 1,
                     f_, c_);
    k::ResidualForward(x, x, proj, c_);
  }
  norm("norm_f", x, xn);
  k::MatmulForward(logits_out, xn, params_.value(cfg_.tied() ? "wte" : "lm_head"), nullptr, 1, c_,
                   vp_);
  cache.len = pos + 1;
}

int64_t Decoder::num_matmul_params() const {
  // The whole model's, whatever this rank holds.
  const int64_t per_layer =
      (h_ + 2 * k_) * d_ * c_ + c_ * h_ * d_ + (llama_ ? 2 * f_ : f_) * c_ + c_ * f_;
  return per_layer * cfg_.n_layer + vp_ * c_;  // + the LM head (tied or not, it is a matmul)
}

double Decoder::FlopsPerToken(int64_t t) const {
  return 6.0 * static_cast<double>(num_matmul_params()) +
         6.0 * static_cast<double>(cfg_.n_layer) * static_cast<double>(c_) * static_cast<double>(t);
}

}  // namespace lattice
