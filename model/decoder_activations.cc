// Activation sets (one per chunk and micro-batch in flight, pooled), the backward scratch, and
// the memory plan: the same code sizes a buffer whether it allocates it or only counts it, so
// Decoder::PlanMemory is exactly what Create allocates.
#include <algorithm>
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
  s->layers.resize(chunks_[chunk].size());
  for (LayerActs& a : s->layers) {
    a.residual = A({r, c_});
    a.norm1 = A({r, c_});
    if (sp_) a.norm1_full = A({n, c_});
    if (!llama_) a.norm1_mean = A({r});
    a.norm1_rstd = A({r});
    a.qkv = A({n, qkv_dim_});
    a.att_lse = A({b, hl_, t});
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
  s->bytes = A.bytes();
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
  auto it = live_.find(last_whole_);
  LATTICE_CHECK_MSG(it != live_.end(), "logits() without a Forward");
  return it->second->logits.f32();
}

}  // namespace lattice
