// The forward pass: embedding, layers, head (+ loss), and the tensor-parallel region
// boundaries. Decoding with a KV cache (decoder_decode.cc) runs the same layer forward.
#include "model/decoder.h"

namespace lattice {

using kernels::ConstView;
using kernels::TensorView;
using kernels::ViewOf;

namespace {

// Targets the loss counts (target >= 0 and mask != 0), from the host copies: what the
// cross-entropy kernels count, without reading anything back from the device.
int64_t CountTargets(const int32_t* targets, const float* mask, int64_t n) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    count += targets[i] >= 0 && (mask == nullptr || mask[i] != 0.0f) ? 1 : 0;
  }
  return count;
}

}  // namespace

// ---- Tensor-parallel region boundaries -----------------------------------------------------

ConstView Decoder::EnterRegion(ConstView x, TensorView full, int64_t rows) {
  if (!sp_) return x;  // identity forward; the backward all-reduces
  tp_->AllGather(x.f32(), full.f32(), rows * c_);
  return full;
}

void Decoder::EnterRegionBackward(TensorView dfull, TensorView dx, int64_t rows) {
  if (tpn_ == 1) {
    if (dx.data != dfull.data) be_->Copy(dx, dfull.Sub(0, rows * c_));
    return;
  }
  if (sp_) {
    tp_->ReduceScatter(dfull.f32(), dx.f32(), rows * c_);
  } else {
    tp_->AllReduceSum(dfull.f32(), rows * c_);
    if (dx.data != dfull.data) be_->Copy(dx, dfull.Sub(0, rows * c_));
  }
}

void Decoder::LeaveRegion(TensorView partial, TensorView out, int64_t rows) {
  if (tpn_ == 1) {
    if (out.data != partial.data) be_->Copy(out, partial.Sub(0, rows * c_));
    return;
  }
  if (sp_) {
    tp_->ReduceScatter(partial.f32(), out.f32(), rows * c_);
  } else {
    tp_->AllReduceSum(partial.f32(), rows * c_);
    if (out.data != partial.data) be_->Copy(out, partial.Sub(0, rows * c_));
  }
}

ConstView Decoder::LeaveRegionBackward(ConstView dout, TensorView dfull, int64_t rows) {
  if (!sp_) return dout;
  tp_->AllGather(dout.f32(), dfull.f32(), rows * c_);
  return dfull;
}

void Decoder::NormForward(TensorView out, TensorView mean, TensorView rstd, ConstView in,
                          const View& w, const View& b, int64_t rows) const {
  if (llama_) {
    be_->RmsNormForward(out, rstd, in, w.w, rows, c_, cfg_.norm_eps);
  } else {
    be_->LayerNormForward(out, mean, rstd, in, w.w, b.w, rows, c_, cfg_.norm_eps);
  }
}

// ---- Forward -------------------------------------------------------------------------------

ForwardResult Decoder::Forward(const int32_t* tokens, const int32_t* targets,
                               const float* loss_mask, int64_t b, int64_t t) {
  LATTICE_CHECK_MSG(shard_.whole(), "Forward needs the whole model; use ForwardChunk");
  last_whole_ = {0, 0};
  return ForwardChunk(0, 0, tokens, targets, loss_mask, nullptr, nullptr, b, t);
}

void Decoder::EmbedForward(ActSet& s, TensorView x) {
  const int64_t b = s.b, t = s.t, n = b * t;
  const TensorView tokens = ViewOf(s.tokens);
  const TensorView wpe = ends_.wpe.w;
  if (tpn_ == 1) {
    be_->EmbeddingForward(x, tokens, ends_.wte.w, wpe, b, t, c_, s.pos0);
    return;
  }
  // Vocab-parallel: each rank looks up the rows it holds, the partial sums are reduced.
  const TensorView e = ViewOf(embed_full_);
  be_->EmbeddingShardForward(e, tokens, ends_.wte.w, tpr_ * vl_, vl_, n, c_);
  const int64_t rows = HiddenRows(b, t);
  LeaveRegion(e, x, rows);
  if (wpe.present()) {
    be_->PositionEmbeddingForward(x, wpe, rows, c_, sp_ ? tpr_ * rows : 0, t, s.pos0);
  }
}

void Decoder::Attention(LayerActs& a, int64_t l, const ActSet& s, const DecodeContext* decode) {
  const int64_t b = s.b, t = s.t;
  const TensorView qkv = ViewOf(a.qkv);
  if (llama_) {
    be_->RopeForward(qkv, b, t, hl_, d_, qkv_dim_, s.pos0, cfg_.rope_theta);
    be_->RopeForward(qkv.Sub(hl_ * d_), b, t, kl_, d_, qkv_dim_, s.pos0, cfg_.rope_theta);
  }
  if (decode == nullptr) {
    be_->AttentionForward(ViewOf(a.atty), ViewOf(a.att_lse), qkv, b, t, hl_, kl_, d_);
    return;
  }
  // With a cache (one sequence): append this block's keys and values, then every query
  // attends to the cached positions up to its own (causal).
  KvCache& cache = *decode->cache;
  const TensorView kc = ViewOf(cache.k[l]);
  const TensorView vc = ViewOf(cache.v[l]);
  const int64_t kv = k_ * d_;
  for (int64_t i = 0; i < t; ++i) {
    const ConstView row = qkv.Sub(i * qkv_dim_, qkv_dim_);
    be_->Copy(kc.Sub((s.pos0 + i) * kv, kv), row.Sub(h_ * d_, kv));
    be_->Copy(vc.Sub((s.pos0 + i) * kv, kv), row.Sub((h_ + k_) * d_, kv));
  }
  const TensorView atty = ViewOf(a.atty);
  for (int64_t i = 0; i < t; ++i) {
    be_->AttentionDecode(atty.Sub(i * h_ * d_, h_ * d_), qkv.Sub(i * qkv_dim_, h_ * d_), kc, vc,
                         s.pos0 + i + 1, h_, k_, d_);
  }
}

void Decoder::LayerForward(LayerActs& a, int64_t l, const ActSet& s, TensorView out,
                           const DecodeContext* decode) {
  const int64_t n = s.b * s.t, rows = HiddenRows(s.b, s.t);
  const bool tp = tpn_ > 1;
  const LayerWeights& w = layer_weights_.at(l);
  const TensorView in = ViewOf(a.residual);
  const TensorView proj_out = ViewOf(proj_out_);
  // Attention block.
  NormForward(ViewOf(a.norm1), ViewOf(a.norm1_mean), ViewOf(a.norm1_rstd), in, w.norm1_w,
              w.norm1_b, rows);
  const ConstView xn = EnterRegion(ViewOf(a.norm1), ViewOf(a.norm1_full), rows);
  be_->MatmulForward(ViewOf(a.qkv), xn, w.qkv_w.w, w.qkv_b.w, n, c_, qkv_dim_);
  Attention(a, l, s, decode);
  // The row-parallel projection: its bias is added once, after the reduction.
  be_->MatmulForward(proj_out, ViewOf(a.atty), w.proj_w.w, tp ? TensorView() : w.proj_b.w, n,
                     hl_ * d_, c_);
  // The reduced projection: in place, except that sequence parallelism scatters it to R rows.
  const TensorView y = sp_ ? ViewOf(dresidual_) : proj_out;
  LeaveRegion(proj_out, y, rows);
  if (tp && !llama_) be_->AddRowBias(y, w.proj_b.w, rows, c_);
  be_->ResidualForward(ViewOf(a.residual2), in, y, rows * c_);
  // MLP block.
  NormForward(ViewOf(a.norm2), ViewOf(a.norm2_mean), ViewOf(a.norm2_rstd), ViewOf(a.residual2),
              w.norm2_w, w.norm2_b, rows);
  const ConstView xn2 = EnterRegion(ViewOf(a.norm2), ViewOf(a.norm2_full), rows);
  if (llama_) {
    be_->MatmulForward(ViewOf(a.fc), xn2, w.fc_w.w, w.fc_b.w, n, c_, fc_dim_);
    be_->SwiGluForward(ViewOf(a.act), ViewOf(a.fc), n, fl_);
  } else {
    // The fc bias is added in the GELU's pass over the product (one pass fewer).
    be_->MatmulForward(ViewOf(a.fc), xn2, w.fc_w.w, ConstView(), n, c_, fc_dim_);
    be_->BiasGeluForward(ViewOf(a.fc), ViewOf(a.act), w.fc_b.w, n, fl_);
  }
  be_->MatmulForward(proj_out, ViewOf(a.act), w.mlp_proj_w.w,
                     tp ? TensorView() : w.mlp_proj_b.w, n, fl_, c_);
  LeaveRegion(proj_out, y, rows);
  if (tp && !llama_) be_->AddRowBias(y, w.mlp_proj_b.w, rows, c_);
  be_->ResidualForward(out, ViewOf(a.residual2), y, rows * c_);
}

ForwardResult Decoder::HeadForward(ActSet& s, ConstView x, bool with_loss) {
  const int64_t n = s.b * s.t, rows = HiddenRows(s.b, s.t);
  NormForward(ViewOf(s.normf), ViewOf(s.normf_mean), ViewOf(s.normf_rstd), x, ends_.norm_f_w,
              ends_.norm_f_b, rows);
  const ConstView xn = EnterRegion(ViewOf(s.normf), ViewOf(s.normf_full), rows);
  const TensorView logits = ViewOf(s.logits);
  be_->MatmulForward(logits, xn, ends_.head.w, ConstView(), n, c_, vl_);
  ForwardResult r;
  if (!with_loss) return r;
  const TensorView targets = ViewOf(s.targets);
  const ConstView mask = s.has_mask ? ConstView(ViewOf(s.mask)) : ConstView();
  const TensorView losses = ViewOf(dnorm_).Sub(0, n);  // (N) of scratch, free during forward
  if (tpn_ == 1) {
    // The logits become the softmax probabilities, which HeadBackward turns into the gradient.
    be_->CrossEntropyForwardProbs(losses, logits, targets, mask, n, v_, vp_);
  } else {
    // Vocab-parallel cross-entropy: no rank ever holds a full row of logits.
    const int64_t begin = tpr_ * vl_;
    const TensorView row_max = ViewOf(s.row_max), sum_exp = ViewOf(s.sum_exp),
                     tlogit = ViewOf(s.tlogit);
    be_->CrossEntropyShardMax(row_max, logits, n, vl_, begin, v_);
    tp_->AllReduceMax(row_max.f32(), n);
    be_->CrossEntropyShardStats(sum_exp, tlogit, logits, targets, row_max, n, vl_, begin, v_);
    tp_->AllReduceSum(sum_exp.f32(), n);
    tp_->AllReduceSum(tlogit.f32(), n);
    be_->CrossEntropyShardLoss(losses, row_max, sum_exp, tlogit, targets, mask, n);
  }
  if (loss_acc_ != nullptr) {
    be_->AccumulateSum(*loss_acc_, loss_slot_, losses);  // read once per step by the caller
  } else {
    be_->ZeroScalars(*loss_scalars_);
    be_->AccumulateSum(*loss_scalars_, 0, losses);
    be_->ReadScalars(*loss_scalars_, &r.loss_sum);
  }
  return r;
}

void Decoder::ChunkForward(int chunk, ActSet& s, const float* input,
                           const DecodeContext* decode) {
  const int64_t rows = HiddenRows(s.b, s.t);
  const std::vector<int64_t>& layers = chunks_[chunk];
  const TensorView x = layers.empty() ? ViewOf(s.residual_out) : ViewOf(s.layers[0].residual);
  if (ChunkHasEmbedding(chunk)) {
    EmbedForward(s, x);
  } else {
    LATTICE_CHECK(input != nullptr);
    be_->CopyFromHost(x, input, DType::kF32, rows * c_);
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    const TensorView out =
        i + 1 < layers.size() ? ViewOf(s.layers[i + 1].residual) : ViewOf(s.residual_out);
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
  if (tokens != nullptr) be_->CopyFromHost(ViewOf(s.tokens), tokens, DType::kI32, n);
  s.has_mask = head && loss_mask != nullptr;
  if (head && targets != nullptr) {
    be_->CopyFromHost(ViewOf(s.targets), targets, DType::kI32, n);
    if (s.has_mask) be_->CopyFromHost(ViewOf(s.mask), loss_mask, DType::kF32, n);
  }
  LATTICE_CHECK(!ChunkHasEmbedding(chunk) || tokens != nullptr);
  ChunkForward(chunk, s, input, nullptr);
  if (!head) {
    LATTICE_CHECK(output != nullptr);
    be_->CopyToHost(output, DType::kF32, ViewOf(s.residual_out), rows * c_);
    return ForwardResult();
  }
  ForwardResult r = HeadForward(s, ViewOf(s.residual_out), targets != nullptr);
  if (targets != nullptr) r.num_tokens = CountTargets(targets, s.has_mask ? loss_mask : nullptr, n);
  return r;
}

}  // namespace lattice
