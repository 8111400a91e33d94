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
  const int64_t rows = HiddenRows(s.b, s.t);
  if (!s.head_grads) {
    // The forward computed the loss alone (a whole-model Forward, then Backward(dloss)): the
    // fused pass now. Its loss sum was counted by the forward and goes to a discarded slot.
    const ConstView xn = sp_ ? ViewOf(s.normf_full) : ViewOf(s.normf);
    Classify(s, xn, /*train=*/true, dloss, *loss_scalars_, 0);
  } else {
    // Its gradients were added in the forward with that loss gradient (the same bits as here).
    LATTICE_CHECK_MSG(s.head_dloss == dloss,
                      "BackwardChunk's dloss differs from set_head_loss_gradient's");
  }
  // dhead is this rank's partial input gradient of the (N, C) normed rows: reduced over the
  // tensor-parallel group (scattered to R rows with sequence parallelism), in place otherwise.
  const TensorView dfull = ViewOf(s.dhead);
  const TensorView dxn = sp_ ? ViewOf(dnorm_) : dfull;
  EnterRegionBackward(dfull, dxn, rows);
  be_->Zero(dres.Sub(0, rows * c_));
  NormBackward(dres, ends_.norm_f_w, ends_.norm_f_b, dxn, ViewOf(s.residual_out),
               ViewOf(s.normf_mean), ViewOf(s.normf_rstd), rows);
  ReportReady(norm_f_range_.first, norm_f_range_.second);
  ReportReady(head_range_.first, head_range_.second);
}

void Decoder::LayerBackward(LayerActs& a, int64_t l, int64_t b, int64_t t, TensorView dres,
                            ConstView docs) {
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
  if (docs.present()) {  // packed examples (decoder_forward.cc: AttentionCore, Attention)
    be_->AttentionBackwardDocsTo(dqkv, datty, ViewOf(a.qkv), ViewOf(a.atty), ViewOf(a.att_lse),
                                 docs, b, t, hl_, kl_, d_);
  } else {
    be_->AttentionBackwardTo(dqkv, datty, ViewOf(a.qkv), ViewOf(a.atty), ViewOf(a.att_lse), b, t,
                             hl_, kl_, d_);
  }
  if (llama_ && docs.present()) {
    be_->RopeBackwardDocs(dqkv, docs, b, t, hl_, d_, qkv_dim_, cfg_.rope_theta);
    be_->RopeBackwardDocs(dqkv.Sub(hl_ * d_), docs, b, t, kl_, d_, qkv_dim_, cfg_.rope_theta);
  } else if (llama_) {
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

void Decoder::RecomputeLayer(LayerActs& a, int64_t l, const ActSet& s) {
  if (recompute_ == Recompute::kNone) return;
  if (recompute_ == Recompute::kFull) {
    // The whole layer forward again, from its kept input: the same kernels and collectives as
    // the forward, so every regenerated field is the forward's bit for bit. Its output is not
    // needed (the next layer's input is kept): dnorm_ is free until the layer's backward.
    recomputing_ = true;
    LayerForward(a, l, s, ViewOf(dnorm_), nullptr);
    recomputing_ = false;
    return;
  }
  // Selective: the norms (and their sequence-parallel all-gathers), the attention core over
  // the kept qkv (after RoPE) and the activation function over the kept fc (after its bias),
  // each the forward's own call on the forward's inputs.
  const int64_t n = s.b * s.t, rows = HiddenRows(s.b, s.t);
  const LayerWeights& w = layer_weights_.at(l);
  NormForward(ViewOf(a.norm1), ViewOf(a.norm1_mean), ViewOf(a.norm1_rstd), ViewOf(a.residual),
              w.norm1_w, w.norm1_b, rows);
  EnterRegion(ViewOf(a.norm1), ViewOf(a.norm1_full), rows);
  AttentionCore(a, s);
  NormForward(ViewOf(a.norm2), ViewOf(a.norm2_mean), ViewOf(a.norm2_rstd), ViewOf(a.residual2),
              w.norm2_w, w.norm2_b, rows);
  EnterRegion(ViewOf(a.norm2), ViewOf(a.norm2_full), rows);
  if (llama_) {
    be_->SwiGluForward(ViewOf(a.act), ViewOf(a.fc), n, fl_);
  } else {
    // fc already holds the bias the forward's BiasGelu added: GELU alone.
    be_->BiasGeluForward(ViewOf(a.fc), ViewOf(a.act), ConstView(), n, fl_);
  }
}

void Decoder::EmbedBackward(ActSet& s, ConstView dx) {
  const int64_t b = s.b, t = s.t, n = b * t;
  const TensorView tokens = ViewOf(s.tokens);
  const TensorView dwpe = ends_.wpe.g;
  const ConstView docs = s.has_docs ? ConstView(ViewOf(s.doc_starts)) : ConstView();
  if (tpn_ == 1) {
    be_->EmbeddingBackward(ends_.wte.g, docs.present() ? TensorView() : dwpe, dx, tokens, b, t,
                           c_, 0);
    if (docs.present() && dwpe.present()) {
      be_->PositionEmbeddingBackwardDocs(dwpe, dx, docs, n, c_, 0, t);
    }
    return;
  }
  const int64_t rows = HiddenRows(b, t);
  if (dwpe.present() && docs.present()) {
    be_->PositionEmbeddingBackwardDocs(dwpe, dx, docs, rows, c_, sp_ ? tpr_ * rows : 0, t);
  } else if (dwpe.present()) {
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
  for (size_t i = layers.size(); i-- > 0;) {
    LayerActs work = Working(s.layers[i]);
    RecomputeLayer(work, layers[i], s);
    LayerBackward(work, layers[i], s.b, s.t, dres,
                  s.has_docs ? ConstView(ViewOf(s.doc_starts)) : ConstView());
  }
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
