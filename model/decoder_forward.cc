// The forward pass: embedding, layers, head (+ loss), and the tensor-parallel region
// boundaries. Decoding with a KV cache (decoder_decode.cc) runs the same layer forward.
#include <cstring>

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
#include "model/decoder.h"

namespace lattice {

namespace k = kernels::cpu;

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

void Decoder::NormForward(float* out, float* mean, float* rstd, const float* in, const View& w,
                          const View& b, int64_t rows) const {
  if (llama_) {
    k::RmsNormForward(out, rstd, in, w.w, rows, c_, cfg_.norm_eps);
  } else {
    k::LayerNormForward(out, mean, rstd, in, w.w, b.w, rows, c_, cfg_.norm_eps);
  }
}

// ---- Forward -------------------------------------------------------------------------------

ForwardResult Decoder::Forward(const int32_t* tokens, const int32_t* targets,
                               const float* loss_mask, int64_t b, int64_t t) {
  LATTICE_CHECK_MSG(shard_.whole(), "Forward needs the whole model; use ForwardChunk");
  last_whole_ = {0, 0};
  return ForwardChunk(0, 0, tokens, targets, loss_mask, nullptr, nullptr, b, t);
}

void Decoder::EmbedForward(ActSet& s, float* x) {
  const int64_t b = s.b, t = s.t, n = b * t;
  const int32_t* tokens = s.tokens.i32();
  const float* wpe = ends_.wpe.w;
  if (tpn_ == 1) {
    k::EmbeddingForward(x, tokens, ends_.wte.w, wpe, b, t, c_, s.pos0);
    return;
  }
  // Vocab-parallel: each rank looks up the rows it holds, the partial sums are reduced.
  float* e = embed_full_.f32();
  k::EmbeddingShardForward(e, tokens, ends_.wte.w, tpr_ * vl_, vl_, n, c_);
  const int64_t rows = HiddenRows(b, t);
  LeaveRegion(e, x, rows);
  if (wpe != nullptr) {
    const int64_t first = sp_ ? tpr_ * rows : 0;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const float* p = wpe + ((first + i) % t + s.pos0) * c_;
      for (int64_t j = 0; j < c_; ++j) x[i * c_ + j] += p[j];
    }
  }
}

void Decoder::Attention(LayerActs& a, int64_t l, const ActSet& s, const DecodeContext* decode) {
  const int64_t b = s.b, t = s.t;
  float* qkv = a.qkv.f32();
  if (llama_) {
    k::RopeForward(qkv, b, t, hl_, d_, qkv_dim_, s.pos0, cfg_.rope_theta);
    k::RopeForward(qkv + hl_ * d_, b, t, kl_, d_, qkv_dim_, s.pos0, cfg_.rope_theta);
  }
  if (decode == nullptr) {
    k::AttentionForward(a.atty.f32(), a.att_lse.f32(), qkv, b, t, hl_, kl_, d_);
    return;
  }
  // With a cache (one sequence): append this block's keys and values, then every query
  // attends to the cached positions up to its own (causal).
  KvCache& cache = *decode->cache;
  float* kc = cache.k[l].f32();
  float* vc = cache.v[l].f32();
  for (int64_t i = 0; i < t; ++i) {
    const float* row = qkv + i * qkv_dim_;
    std::memcpy(kc + (s.pos0 + i) * k_ * d_, row + h_ * d_, k_ * d_ * sizeof(float));
    std::memcpy(vc + (s.pos0 + i) * k_ * d_, row + (h_ + k_) * d_, k_ * d_ * sizeof(float));
  }
  for (int64_t i = 0; i < t; ++i) {
    k::AttentionDecode(a.atty.f32() + i * h_ * d_, qkv + i * qkv_dim_, kc, vc, s.pos0 + i + 1,
                       h_, k_, d_);
  }
}

void Decoder::LayerForward(LayerActs& a, int64_t l, const ActSet& s, float* out,
                           const DecodeContext* decode) {
  const int64_t n = s.b * s.t, rows = HiddenRows(s.b, s.t);
  const bool tp = tpn_ > 1;
  const LayerWeights& w = layer_weights_.at(l);
  const float* in = a.residual.f32();
  // Attention block.
  NormForward(a.norm1.f32(), llama_ ? nullptr : a.norm1_mean.f32(), a.norm1_rstd.f32(), in,
              w.norm1_w, w.norm1_b, rows);
  const float* xn = EnterRegion(a.norm1.f32(), sp_ ? a.norm1_full.f32() : nullptr, rows);
  k::MatmulForward(a.qkv.f32(), xn, w.qkv_w.w, w.qkv_b.w, n, c_, qkv_dim_);
  Attention(a, l, s, decode);
  // The row-parallel projection: its bias is added once, after the reduction.
  k::MatmulForward(proj_out_.f32(), a.atty.f32(), w.proj_w.w, tp ? nullptr : w.proj_b.w, n,
                   hl_ * d_, c_);
  // The reduced projection: in place, except that sequence parallelism scatters it to R rows.
  float* y = sp_ ? dresidual_.f32() : proj_out_.f32();
  LeaveRegion(proj_out_.f32(), y, rows);
  if (tp && !llama_) AddRowBias(y, w.proj_b.w, rows, c_);
  k::ResidualForward(a.residual2.f32(), in, y, rows * c_);
  // MLP block.
  NormForward(a.norm2.f32(), llama_ ? nullptr : a.norm2_mean.f32(), a.norm2_rstd.f32(),
              a.residual2.f32(), w.norm2_w, w.norm2_b, rows);
  const float* xn2 = EnterRegion(a.norm2.f32(), sp_ ? a.norm2_full.f32() : nullptr, rows);
  if (llama_) {
    k::MatmulForward(a.fc.f32(), xn2, w.fc_w.w, w.fc_b.w, n, c_, fc_dim_);
    k::SwiGluForward(a.act.f32(), a.fc.f32(), n, fl_);
  } else {
    // The fc bias is added in the GELU's pass over the product (one pass fewer).
    k::MatmulForward(a.fc.f32(), xn2, w.fc_w.w, nullptr, n, c_, fc_dim_);
    k::BiasGeluForward(a.fc.f32(), a.act.f32(), w.fc_b.w, n, fl_);
  }
  k::MatmulForward(proj_out_.f32(), a.act.f32(), w.mlp_proj_w.w, tp ? nullptr : w.mlp_proj_b.w,
                   n, fl_, c_);
  LeaveRegion(proj_out_.f32(), y, rows);
  if (tp && !llama_) AddRowBias(y, w.mlp_proj_b.w, rows, c_);
  k::ResidualForward(out, a.residual2.f32(), y, rows * c_);
}

ForwardResult Decoder::HeadForward(ActSet& s, const float* x, bool with_loss) {
  const int64_t n = s.b * s.t, rows = HiddenRows(s.b, s.t);
  NormForward(s.normf.f32(), llama_ ? nullptr : s.normf_mean.f32(), s.normf_rstd.f32(), x,
              ends_.norm_f_w, ends_.norm_f_b, rows);
  const float* xn = EnterRegion(s.normf.f32(), sp_ ? s.normf_full.f32() : nullptr, rows);
  k::MatmulForward(s.logits.f32(), xn, ends_.head.w, nullptr, n, c_, vl_);
  ForwardResult r;
  if (!with_loss) return r;
  const int32_t* targets = s.targets.i32();
  const float* mask = s.has_mask ? s.mask.f32() : nullptr;
  float* losses = dnorm_.f32();  // (N) of scratch, free during forward
  if (tpn_ == 1) {
    // The logits become the softmax probabilities, which HeadBackward turns into the gradient.
    r.num_tokens = k::CrossEntropyForwardProbs(losses, s.logits.f32(), targets, mask, n, v_, vp_);
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

void Decoder::ChunkForward(int chunk, ActSet& s, const float* input,
                           const DecodeContext* decode) {
  const int64_t rows = HiddenRows(s.b, s.t);
  const std::vector<int64_t>& layers = chunks_[chunk];
  float* x = layers.empty() ? s.residual_out.f32() : s.layers[0].residual.f32();
  if (ChunkHasEmbedding(chunk)) {
    EmbedForward(s, x);
  } else {
    LATTICE_CHECK(input != nullptr);
    std::memcpy(x, input, rows * c_ * sizeof(float));
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    float* out = i + 1 < layers.size() ? s.layers[i + 1].residual.f32() : s.residual_out.f32();
    LayerForward(s.layers[i], layers[i], s, out, decode);
  }
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
  LATTICE_CHECK(!ChunkHasEmbedding(chunk) || tokens != nullptr);
  ChunkForward(chunk, s, input, nullptr);
  if (!head) {
    LATTICE_CHECK(output != nullptr);
    std::memcpy(output, s.residual_out.f32(), rows * c_ * sizeof(float));
    return ForwardResult();
  }
  return HeadForward(s, s.residual_out.f32(), targets != nullptr);
}

}  // namespace lattice
