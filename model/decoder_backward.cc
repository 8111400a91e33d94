// The backward pass (gradients ACCUMULATE into the parameter gradients), reporting each
// completed flat range of gradients so data parallelism can reduce it while backward goes on.
#include "model/decoder.h"

namespace lattice {

using kernels::ConstView;
using kernels::TensorView;
using kernels::ViewOf;

void Decoder::NormBackward(TensorView dx, const View& w, const View& b, ConstView dout,
                           ConstView in, ConstView mean, ConstView rstd, int64_t rows) const {
  if (llama_) {
    be_->RmsNormBackward(dx, w.g, dout, in, w.w, rstd, rows, c_);
  } else {
    be_->LayerNormBackward(dx, w.g, b.g, dout, in, w.w, mean, rstd, rows, c_);
  }
}

void Decoder::Backward(float dloss) {
  LATTICE_CHECK_MSG(live_.count({0, 0}) == 1, "Backward without Forward");
  BackwardChunk(0, 0, dloss, nullptr, nullptr);
}

void Decoder::HeadBackward(ActSet& s, float dloss, TensorView dres) {
  const int64_t n = s.b * s.t, rows = HiddenRows(s.b, s.t);
  const TensorView dlogits = ViewOf(s.logits);  // in place: the logits become their gradient
  const TensorView targets = ViewOf(s.targets);
  const ConstView mask = s.has_mask ? ConstView(ViewOf(s.mask)) : ConstView();
  if (tpn_ == 1) {
    // HeadForward left the softmax probabilities in the logits buffer.
    be_->CrossEntropyBackwardProbs(dlogits, targets, mask, dloss, n, v_, vp_);
  } else {
    be_->CrossEntropyShardBackward(dlogits, dlogits, targets, mask, ViewOf(s.row_max),
                                   ViewOf(s.sum_exp), dloss, n, vl_, tpr_ * vl_, v_);
  }
  const ConstView xn = sp_ ? ViewOf(s.normf_full) : ViewOf(s.normf);
  const TensorView dxn = ViewOf(dnorm_);
  const TensorView dfull = tpn_ > 1 ? ViewOf(dfull_) : dxn;
  // The *To kernels write their input gradient over the scratch buffer: no zeroing passes.
  be_->MatmulBackwardTo(dfull, ends_.head.g, TensorView(), dlogits, xn, ends_.head.w, n, c_,
                        vl_);
  EnterRegionBackward(dfull, dxn, rows);
  be_->Zero(dres.Sub(0, rows * c_));
  NormBackward(dres, ends_.norm_f_w, ends_.norm_f_b, dxn, ViewOf(s.residual_out),
               ViewOf(s.normf_mean), ViewOf(s.normf_rstd), rows);
  ReportReady(norm_f_range_.first, norm_f_range_.second);
  ReportReady(head_range_.first, head_range_.second);
}

void Decoder::LayerBackward(LayerActs& a, int64_t l, int64_t b, int64_t t, TensorView dres) {
  const int64_t n = b * t, rows = HiddenRows(b, t);
  const bool tp = tpn_ > 1;
  const LayerWeights& w = layer_weights_.at(l);
  const TensorView dfull = ViewOf(dfull_);
  const TensorView dxn = ViewOf(dnorm_);
  const TensorView dfc = ViewOf(dfc_), dact = ViewOf(dact_);
  const TensorView dqkv = ViewOf(dqkv_), datty = ViewOf(datty_);
  // MLP block: dres is the gradient of the layer output = of residual2 through the skip.
  if (tp && !llama_) {
    be_->MatmulBackward(TensorView(), TensorView(), w.mlp_proj_b.g, dres, ConstView(),
                        ConstView(), rows, 0, c_);
  }
  const ConstView dy = LeaveRegionBackward(dres, dfull, rows);
  be_->MatmulBackwardTo(dact, w.mlp_proj_w.g, tp ? TensorView() : w.mlp_proj_b.g, dy,
                        ViewOf(a.act), w.mlp_proj_w.w, n, fl_, c_);
  if (llama_) {
    be_->Zero(dfc.Sub(0, n * fc_dim_));
    be_->SwiGluBackward(dfc, ViewOf(a.fc), dact, n, fl_);
  } else {
    // Written over the scratch: no zeroing pass over the (N, F) buffer.
    be_->GeluBackwardTo(dfc, ViewOf(a.fc), dact, n * fl_);
  }
  const TensorView dn = tp ? dfull : dxn;
  be_->MatmulBackwardTo(dn, w.fc_w.g, w.fc_b.g, dfc, sp_ ? ViewOf(a.norm2_full) : ViewOf(a.norm2),
                        w.fc_w.w, n, c_, fc_dim_);
  EnterRegionBackward(dn, dxn, rows);
  NormBackward(dres, w.norm2_w, w.norm2_b, dxn, ViewOf(a.residual2), ViewOf(a.norm2_mean),
               ViewOf(a.norm2_rstd), rows);
  // Attention block: dres is now the gradient of residual2.
  if (tp && !llama_) {
    be_->MatmulBackward(TensorView(), TensorView(), w.proj_b.g, dres, ConstView(), ConstView(),
                        rows, 0, c_);
  }
  const ConstView dy2 = LeaveRegionBackward(dres, dfull, rows);
  be_->MatmulBackwardTo(datty, w.proj_w.g, tp ? TensorView() : w.proj_b.g, dy2, ViewOf(a.atty),
                        w.proj_w.w, n, hl_ * d_, c_);
  be_->AttentionBackwardTo(dqkv, datty, ViewOf(a.qkv), ViewOf(a.atty), ViewOf(a.att_lse), b, t,
                           hl_, kl_, d_);
  if (llama_) {
    be_->RopeBackward(dqkv, b, t, hl_, d_, qkv_dim_, 0, cfg_.rope_theta);
    be_->RopeBackward(dqkv.Sub(hl_ * d_), b, t, kl_, d_, qkv_dim_, 0, cfg_.rope_theta);
  }
  be_->MatmulBackwardTo(dn, w.qkv_w.g, w.qkv_b.g, dqkv,
                        sp_ ? ViewOf(a.norm1_full) : ViewOf(a.norm1), w.qkv_w.w, n, c_,
                        qkv_dim_);
  EnterRegionBackward(dn, dxn, rows);
  NormBackward(dres, w.norm1_w, w.norm1_b, dxn, ViewOf(a.residual), ViewOf(a.norm1_mean),
               ViewOf(a.norm1_rstd), rows);
  ReportReady(w.first_offset, w.end_offset);
}

void Decoder::EmbedBackward(ActSet& s, ConstView dx) {
  const int64_t b = s.b, t = s.t, n = b * t;
  const TensorView tokens = ViewOf(s.tokens);
  const TensorView dwpe = ends_.wpe.g;
  if (tpn_ == 1) {
    be_->EmbeddingBackward(ends_.wte.g, dwpe, dx, tokens, b, t, c_, 0);
    return;
  }
  const int64_t rows = HiddenRows(b, t);
  if (dwpe.present()) {
    be_->PositionEmbeddingBackward(dwpe, dx, rows, c_, sp_ ? tpr_ * rows : 0, t);
  }
  const ConstView full = LeaveRegionBackward(dx, ViewOf(embed_full_), rows);
  be_->EmbeddingShardBackward(ends_.wte.g, full, tokens, tpr_ * vl_, vl_, n, c_);
}

void Decoder::BackwardChunk(int chunk, int micro, float dloss, const float* doutput,
                            float* dinput) {
  auto it = live_.find(std::make_pair(chunk, micro));
  LATTICE_CHECK_MSG(it != live_.end(), "BackwardChunk without ForwardChunk");
  ActSet& s = *it->second;
  const int64_t rows = HiddenRows(s.b, s.t);
  const TensorView dres = ViewOf(dresidual_);
  if (ChunkHasHead(chunk)) {
    HeadBackward(s, dloss, dres);
  } else {
    LATTICE_CHECK(doutput != nullptr);
    be_->CopyFromHost(dres, doutput, DType::kF32, rows * c_);
  }
  const std::vector<int64_t>& layers = chunks_[chunk];
  for (size_t i = layers.size(); i-- > 0;) LayerBackward(s.layers[i], layers[i], s.b, s.t, dres);
  if (ChunkHasEmbedding(chunk)) {
    EmbedBackward(s, dres);
    ReportReady(embed_range_.first, embed_range_.second);
  } else {
    LATTICE_CHECK(dinput != nullptr);
    be_->CopyToHost(dinput, DType::kF32, dres, rows * c_);
  }
  Release(chunk, micro);
}

}  // namespace lattice
