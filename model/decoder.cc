// Creation, validation and sizes of the decoder (model/decoder.h says where the rest lives).
#include "model/decoder.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "runtime/system.h"

namespace lattice {

absl::StatusOr<std::unique_ptr<Decoder>> Decoder::Create(const ModelConfig& cfg, int64_t batch) {
  return Create(cfg, batch, ModelShard(), nullptr);
}

absl::Status Decoder::ValidateShard(const ModelConfig& cfg, int64_t batch,
                                    const ModelShard& shard, const TensorParallelOps* tp) {
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
    if (tp != nullptr && (tp->size() != n || tp->rank() != shard.tp_rank)) {
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
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Decoder>> Decoder::Create(const ModelConfig& cfg, int64_t batch,
                                                         const ModelShard& shard,
                                                         TensorParallelOps* tp,
                                                         const DecoderOptions& options) {
  LATTICE_RETURN_IF_ERROR(ValidateShard(cfg, batch, shard, tp));
  if (shard.tp_size > 1 && tp == nullptr) {
    return absl::InvalidArgumentError("tensor parallelism needs ops over the tp group");
  }
  // Refuse what cannot fit before allocating it (the engine checks the whole training state,
  // shared by the node's ranks, before this; eval and generate come here directly).
  LATTICE_ASSIGN_OR_RETURN(DecoderMemory plan, PlanMemory(cfg, batch, shard, options));
  const MemoryInfo mem = AvailableMemory();
  if (mem.available_bytes >= 0 && plan.total(1) > mem.available_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the model needs ", FormatGiB(plan.total(1)), " (parameters ", FormatGiB(plan.params),
        ", gradients ", FormatGiB(plan.grads), ", activations ",
        FormatGiB(plan.activations_per_set), ", scratch ", FormatGiB(plan.scratch),
        ") but this machine has ", FormatGiB(mem.available_bytes), " available (", mem.source,
        ")"));
  }
  std::unique_ptr<Decoder> d(new Decoder(cfg, batch, shard, tp, options));
  d->DeclareParameters();
  d->params_.Allocate(*d->be_);
  d->ResolveWeights();
  d->AllocateScratch(/*allocate=*/true);
  return d;
}

absl::StatusOr<DecoderMemory> Decoder::PlanMemory(const ModelConfig& cfg, int64_t batch,
                                                  const ModelShard& shard,
                                                  const DecoderOptions& options) {
  LATTICE_RETURN_IF_ERROR(ValidateShard(cfg, batch, shard, nullptr));
  if (options.classifier_chunk < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train.classifier_chunk=", options.classifier_chunk, " must be >= 1"));
  }
  // Every layer has the same shapes and sharding, so two probes that declare nothing but the
  // ends (no layer) and the ends plus one layer give the whole plan by multiplication, in time
  // independent of model.n_layer (a model too large to allocate is refused from this plan).
  auto probe = [&](std::vector<int64_t> layers, bool head) {
    ModelShard s = shard;
    s.chunks = {std::move(layers)};
    s.head = head;
    auto d = std::unique_ptr<Decoder>(new Decoder(cfg, batch, s, nullptr, options));
    d->DeclareParameters();
    d->AllocateScratch(/*allocate=*/false);
    return d;
  };
  auto ends = probe({}, shard.head);
  auto one = probe({0}, shard.head);
  auto bare = probe({}, false);
  const int64_t layer_params = one->params_.numel() - ends->params_.numel();
  const int64_t head_act = ends->activation_bytes_ - bare->activation_bytes_;
  const int64_t layer_act = one->activation_bytes_ - ends->activation_bytes_;
  const int64_t chunk_act = bare->activation_bytes_;  // a chunk's set without layers or head
  int64_t layers = 0;
  size_t chunks = 1;
  if (shard.chunks.empty()) {
    layers = cfg.n_layer;
  } else {
    chunks = shard.chunks.size();
    for (const auto& c : shard.chunks) layers += static_cast<int64_t>(c.size());
  }
  DecoderMemory m;
  m.params = (ends->params_.numel() + layers * layer_params) * static_cast<int64_t>(sizeof(float));
  m.grads = m.params;
  m.scratch = ends->scratch_bytes_;
  m.activations_per_set =
      static_cast<int64_t>(chunks) * chunk_act + layers * layer_act + head_act;
  m.head_bytes = head_act;
  m.recompute_scratch = ends->recompute_bytes_;
  m.classifier_scratch = ends->classifier_bytes_;
  m.layer_bytes = layer_act;
  m.chunk_io_bytes = chunk_act;
  m.layers = layers;
  m.chunks = static_cast<int64_t>(chunks);
  return m;
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
                 TensorParallelOps* tp, const DecoderOptions& options)
    : cfg_(cfg), batch_(batch), shard_(shard), tp_(tp), recompute_(options.recompute) {
  if (options.backend != nullptr) be_ = options.backend;
  // A chunk never exceeds the rows of a micro-batch (the scratch is one chunk).
  cls_chunk_ = std::max<int64_t>(1, std::min(options.classifier_chunk, batch * cfg.seq_len));
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

int64_t Decoder::HiddenRows(int64_t b, int64_t t) const { return sp_ ? b * t / tpn_ : b * t; }

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
