// The backward pass (gradients ACCUMULATE into the parameter gradients), reporting each
// completed flat range of gradients so data parallelism can reduce it while backward goes on.
#include <cstring>

#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "kernels/vocab_parallel.h"
#include "model/decoder.h"

namespace lattice {

namespace k = kernels::cpu;

void Decoder::NormBackward(float* dx, const View& w, const View& b, const float* dout,
                           const float* in, const float* mean, const float* rstd,
                           int64_t rows) const {
  if (llama_) {
    k::RmsNormBackward(dx, w.g, dout, in, w.w, rstd, rows, c_);
  } else {
    k::LayerNormBackward(dx, w.g, b.g, dout, in, w.w, mean, rstd, rows, c_);
  }
}

void Decoder::Backward(float dloss) {
  LATTICE_CHECK_MSG(live_.count({0, 0}) == 1, "Backward without Forward");
  BackwardChunk(0, 0, dloss, nullptr, nullptr);
}

void Decoder::HeadBackward(ActSet& s, float dloss, float* dres) {
  const int64_t n = s.b * s.t, rows = HiddenRows(s.b, s.t);
  float* dlogits = s.logits.f32();  // in place: the logits become their gradient
  const int32_t* targets = s.targets.i32();
  const float* mask = s.has_mask ? s.mask.f32() : nullptr;
  if (tpn_ == 1) {
    // HeadForward left the softmax probabilities in the logits buffer.
    k::CrossEntropyBackwardProbs(dlogits, targets, mask, dloss, n, v_, vp_);
  } else {
    k::CrossEntropyShardBackward(dlogits, s.logits.f32(), targets, mask, s.row_max.f32(),
                                 s.sum_exp.f32(), dloss, n, vl_, tpr_ * vl_, v_);
  }
  const float* xn = sp_ ? s.normf_full.f32() : s.normf.f32();
  float* dxn = dnorm_.f32();
  float* dfull = tpn_ > 1 ? dfull_.f32() : dxn;
  // The *To kernels write their input gradient over the scratch buffer: no zeroing passes.
  k::MatmulBackwardTo(dfull, ends_.head.g, nullptr, dlogits, xn, ends_.head.w, n, c_, vl_);
  EnterRegionBackward(dfull, dxn, rows);
  std::memset(dres, 0, rows * c_ * sizeof(float));
  NormBackward(dres, ends_.norm_f_w, ends_.norm_f_b, dxn, s.residual_out.f32(),
               llama_ ? nullptr : s.normf_mean.f32(), s.normf_rstd.f32(), rows);
  ReportReady(norm_f_range_.first, norm_f_range_.second);
  ReportReady(head_range_.first, head_range_.second);
}

void Decoder::LayerBackward(LayerActs& a, int64_t l, int64_t b, int64_t t, float* dres) {
  const int64_t n = b * t, rows = HiddenRows(b, t);
  const bool tp = tpn_ > 1;
  const LayerWeights& w = layer_weights_.at(l);
  float* dfull = dfull_.f32();
  float* dxn = dnorm_.f32();
  // MLP block: dres is the gradient of the layer output = of residual2 through the skip.
  if (tp && !llama_) {
    k::MatmulBackward(nullptr, nullptr, w.mlp_proj_b.g, dres, nullptr, nullptr, rows, 0, c_);
  }
  const float* dy = LeaveRegionBackward(dres, dfull, rows);
  k::MatmulBackwardTo(dact_.f32(), w.mlp_proj_w.g, tp ? nullptr : w.mlp_proj_b.g, dy,
                      a.act.f32(), w.mlp_proj_w.w, n, fl_, c_);
  if (llama_) {
    std::memset(dfc_.raw(), 0, n * fc_dim_ * sizeof(float));
    k::SwiGluBackward(dfc_.f32(), a.fc.f32(), dact_.f32(), n, fl_);
  } else {
    // Written over the scratch: no zeroing pass over the (N, F) buffer.
    k::GeluBackwardTo(dfc_.f32(), a.fc.f32(), dact_.f32(), n * fl_);
  }
  float* dn = tp ? dfull : dxn;
  k::MatmulBackwardTo(dn, w.fc_w.g, w.fc_b.g, dfc_.f32(),
                      sp_ ? a.norm2_full.f32() : a.norm2.f32(), w.fc_w.w, n, c_, fc_dim_);
  EnterRegionBackward(dn, dxn, rows);
  NormBackward(dres, w.norm2_w, w.norm2_b, dxn, a.residual2.f32(),
               llama_ ? nullptr : a.norm2_mean.f32(), a.norm2_rstd.f32(), rows);
  // Attention block: dres is now the gradient of residual2.
  if (tp && !llama_) {
    k::MatmulBackward(nullptr, nullptr, w.proj_b.g, dres, nullptr, nullptr, rows, 0, c_);
  }
  const float* dy2 = LeaveRegionBackward(dres, dfull, rows);
  k::MatmulBackwardTo(datty_.f32(), w.proj_w.g, tp ? nullptr : w.proj_b.g, dy2, a.atty.f32(),
                      w.proj_w.w, n, hl_ * d_, c_);
  k::AttentionBackwardTo(dqkv_.f32(), datty_.f32(), a.qkv.f32(), a.atty.f32(), a.att_lse.f32(),
                         b, t, hl_, kl_, d_);
  if (llama_) {
    k::RopeBackward(dqkv_.f32(), b, t, hl_, d_, qkv_dim_, 0, cfg_.rope_theta);
    k::RopeBackward(dqkv_.f32() + hl_ * d_, b, t, kl_, d_, qkv_dim_, 0, cfg_.rope_theta);
  }
  k::MatmulBackwardTo(dn, w.qkv_w.g, w.qkv_b.g, dqkv_.f32(),
                      sp_ ? a.norm1_full.f32() : a.norm1.f32(), w.qkv_w.w, n, c_, qkv_dim_);
  EnterRegionBackward(dn, dxn, rows);
  NormBackward(dres, w.norm1_w, w.norm1_b, dxn, a.residual.f32(),
               llama_ ? nullptr : a.norm1_mean.f32(), a.norm1_rstd.f32(), rows);
  ReportReady(w.first_offset, w.end_offset);
}

void Decoder::EmbedBackward(ActSet& s, const float* dx) {
  const int64_t b = s.b, t = s.t, n = b * t;
  const int32_t* tokens = s.tokens.i32();
  float* dwpe = ends_.wpe.g;
  if (tpn_ == 1) {
    k::EmbeddingBackward(ends_.wte.g, dwpe, dx, tokens, b, t, c_, 0);
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
  k::EmbeddingShardBackward(ends_.wte.g, full, tokens, tpr_ * vl_, vl_, n, c_);
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
    ReportReady(embed_range_.first, embed_range_.second);
  } else {
    LATTICE_CHECK(dinput != nullptr);
    std::memcpy(dinput, dres, rows * c_ * sizeof(float));
  }
  Release(chunk, micro);
}

}  // namespace lattice
