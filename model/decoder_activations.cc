// Activation sets (one per chunk and micro-batch in flight, pooled), the backward scratch, and
// the memory plan: the same code sizes a buffer whether it allocates it or only counts it, so
// Decoder::PlanMemory is exactly what Create allocates.
#include <algorithm>
#include <functional>
#include <utility>

#include "model/decoder.h"

namespace lattice {

namespace {

// Makes a tensor of `shape` in `arena`, or (arena = null) only counts the bytes the arena
// would hand out for it.
class Sizer {
 public:
  explicit Sizer(kernels::Arena* arena) : arena_(arena) {}
  Tensor operator()(Shape shape, DType dt = DType::kF32) {
    bytes_ += kernels::Arena::AlignedBytes(NumElements(shape), dt);
    return arena_ != nullptr ? arena_->Allocate(std::move(shape), dt) : Tensor();
  }
  int64_t bytes() const { return bytes_; }

 private:
  kernels::Arena* arena_;
  int64_t bytes_ = 0;
};

}  // namespace

void Decoder::AllocateScratch(bool allocate) {
  const int64_t b = batch_, t = cfg_.seq_len;
  auto make = [&](kernels::Arena* arena) {
    Sizer S(arena);
    dresidual_ = S({b * t, c_});
    dnorm_ = S({b * t, c_});
    dfull_ = S({b * t, c_});
    dqkv_ = S({b * t, qkv_dim_});
    datty_ = S({b * t, hl_ * d_});
    dfc_ = S({b * t, fc_dim_});
    dact_ = S({b * t, fl_});
    proj_out_ = S({b * t, c_});
    if (tpn_ > 1) embed_full_ = S({b * t, c_});
    if (shard_.head) {
      const int64_t at = S.bytes();
      cls_scratch_ = S({kernels::ClassifierScratchFloats(cls_chunk_, vl_)});
      classifier_bytes_ = S.bytes() - at;
    }
    // The recompute layer set comes last, so that its bytes are the difference.
    const int64_t before = S.bytes();
    rc_ = LayerActs();
    LayerFields(rc_, /*kept=*/false, [&](Shape shape) { return S(std::move(shape)); });
    recompute_bytes_ = S.bytes() - before;
    return S.bytes();
  };
  // Counted first, so that the arena is one block of exactly the scratch.
  scratch_bytes_ = make(nullptr);
  if (allocate) {
    scratch_arena_ = std::make_unique<kernels::Arena>(*be_, scratch_bytes_);
    make(scratch_arena_.get());
    // The loss sum of Forward calls made without an accumulator (eval, tests, bench).
    loss_scalars_ = std::make_unique<kernels::DeviceScalars>(be_->AllocateScalars(1));
  }
  activation_bytes_ = 0;
  for (int c = 0; c < num_chunks(); ++c) activation_bytes_ += NewActSet(c, false)->bytes;
}

void Decoder::ReserveActivations(int64_t bytes) {
  if (act_arena_ == nullptr) {
    act_arena_ = std::make_unique<kernels::Arena>(*be_, bytes);
  } else {
    act_arena_->Reserve(bytes);
  }
}

int64_t Decoder::arena_allocations() const {
  return (scratch_arena_ ? scratch_arena_->allocations() : 0) +
         (act_arena_ ? act_arena_->allocations() : 0);
}

int64_t Decoder::arena_blocks() const {
  return (scratch_arena_ ? scratch_arena_->blocks() : 0) +
         (act_arena_ ? act_arena_->blocks() : 0);
}

std::unique_ptr<Decoder::ActSet> Decoder::NewActSet(int chunk, bool allocate) const {
  const int64_t b = batch_, t = cfg_.seq_len, n = b * t;
  const int64_t r = sp_ ? (n + tpn_ - 1) / tpn_ : n;
  auto s = std::make_unique<ActSet>();
  Sizer A(allocate ? act_arena_.get() : nullptr);
  s->tokens = A({b, t}, DType::kI32);
  s->targets = A({b, t}, DType::kI32);
  s->mask = A({b, t});
  s->doc_starts = A({b, t}, DType::kI32);
  s->layers.resize(chunks_[chunk].size());
  for (LayerActs& a : s->layers) {
    LayerFields(a, /*kept=*/true, [&](Shape shape) { return A(std::move(shape)); });
  }
  s->residual_out = A({r, c_});
  if (chunk + 1 == num_chunks() && shard_.head) {
    s->normf = A({r, c_});
    if (sp_) s->normf_full = A({n, c_});
    if (!llama_) s->normf_mean = A({r});
    s->normf_rstd = A({r});
    s->dhead = A({n, c_});
  }
  s->bytes = A.bytes();
  return s;
}

void Decoder::LayerFields(LayerActs& a, bool kept,
                          const std::function<Tensor(Shape)>& make) const {
  const int64_t b = batch_, t = cfg_.seq_len, n = b * t;
  const int64_t r = sp_ ? (n + tpn_ - 1) / tpn_ : n;
  // Selective regenerates what needs no GEMM (norms, attention core, activation function);
  // full regenerates everything from the layer's input (docs/memory.md).
  const bool cheap = recompute_ != Recompute::kNone;
  const bool all = recompute_ == Recompute::kFull;
  auto put = [&](Tensor& field, Shape shape, bool recomputed) {
    if (recomputed != kept) field = make(std::move(shape));
  };
  put(a.residual, {r, c_}, false);
  put(a.norm1, {r, c_}, cheap);
  if (sp_) put(a.norm1_full, {n, c_}, cheap);
  if (!llama_) put(a.norm1_mean, {r}, cheap);
  put(a.norm1_rstd, {r}, cheap);
  put(a.qkv, {n, qkv_dim_}, all);
  put(a.att_lse, {b, hl_, t}, cheap);
  put(a.atty, {n, hl_ * d_}, cheap);
  put(a.residual2, {r, c_}, all);
  put(a.norm2, {r, c_}, cheap);
  if (sp_) put(a.norm2_full, {n, c_}, cheap);
  if (!llama_) put(a.norm2_mean, {r}, cheap);
  put(a.norm2_rstd, {r}, cheap);
  put(a.fc, {n, fc_dim_}, all);
  put(a.act, {n, fl_}, cheap);
}

Decoder::LayerActs Decoder::Working(const LayerActs& kept) const {
  if (recompute_ == Recompute::kNone) return kept;
  LayerActs w = kept;
  auto fill = [](Tensor& field, const Tensor& from) {
    if (!field.defined()) field = from;
  };
  fill(w.residual, rc_.residual);
  fill(w.norm1, rc_.norm1);
  fill(w.norm1_full, rc_.norm1_full);
  fill(w.norm1_mean, rc_.norm1_mean);
  fill(w.norm1_rstd, rc_.norm1_rstd);
  fill(w.qkv, rc_.qkv);
  fill(w.att_lse, rc_.att_lse);
  fill(w.atty, rc_.atty);
  fill(w.residual2, rc_.residual2);
  fill(w.norm2, rc_.norm2);
  fill(w.norm2_full, rc_.norm2_full);
  fill(w.norm2_mean, rc_.norm2_mean);
  fill(w.norm2_rstd, rc_.norm2_rstd);
  fill(w.fc, rc_.fc);
  fill(w.act, rc_.act);
  return w;
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
      // One set of every chunk unless the engine reserved its schedule's peak.
      if (act_arena_ == nullptr) ReserveActivations(activation_bytes_);
      s = NewActSet(chunk, /*allocate=*/true);
    }
    it = live_.emplace(key, std::move(s)).first;
    ++in_flight_;
    live_bytes_ += it->second->bytes;
    peak_in_flight_ = std::max(peak_in_flight_, in_flight_);
    peak_activation_bytes_ = std::max(peak_activation_bytes_, live_bytes_);
  }
  it->second->b = b;
  it->second->t = t;
  it->second->pos0 = 0;
  it->second->has_docs = false;
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

const float* Decoder::logits() const {
  LATTICE_CHECK_MSG(logits_.defined(), "logits() without a Forward without targets");
  return logits_.f32();
}

}  // namespace lattice
