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
                               const float* loss_mask, int64_t b, int64_t t,
                               const int32_t* doc_starts) {
  LATTICE_CHECK_MSG(shard_.whole(), "Forward needs the whole model; use ForwardChunk");
  last_whole_ = {0, 0};
  return ForwardChunk(0, 0, tokens, targets, loss_mask, nullptr, nullptr, b, t, doc_starts);
}

void Decoder::EmbedForward(ActSet& s, TensorView x) {
  const int64_t b = s.b, t = s.t, n = b * t;
  const TensorView tokens = ViewOf(s.tokens);
  const TensorView wpe = ends_.wpe.w;
  // Packed examples: each example's positions start at 0 (the same single add per element).
  const ConstView docs = s.has_docs ? ConstView(ViewOf(s.doc_starts)) : ConstView();
  if (tpn_ == 1) {
    be_->EmbeddingForward(x, tokens, ends_.wte.w, docs.present() ? TensorView() : wpe, b, t, c_,
                          s.pos0);
    if (docs.present() && wpe.present()) {
      be_->PositionEmbeddingForwardDocs(x, wpe, docs, n, c_, 0, t);
    }
    return;
  }
  // Vocab-parallel: each rank looks up the rows it holds, the partial sums are reduced.
  const TensorView e = ViewOf(embed_full_);
  be_->EmbeddingShardForward(e, tokens, ends_.wte.w, tpr_ * vl_, vl_, n, c_);
  const int64_t rows = HiddenRows(b, t);
  LeaveRegion(e, x, rows);
  if (wpe.present() && docs.present()) {
    be_->PositionEmbeddingForwardDocs(x, wpe, docs, rows, c_, sp_ ? tpr_ * rows : 0, t);
  } else if (wpe.present()) {
    be_->PositionEmbeddingForward(x, wpe, rows, c_, sp_ ? tpr_ * rows : 0, t, s.pos0);
  }
}

void Decoder::AttentionCore(LayerActs& a, const ActSet& s) {
  if (s.has_docs) {  // packed examples: document-masked
    be_->AttentionForwardDocs(ViewOf(a.atty), ViewOf(a.att_lse), ViewOf(a.qkv),
                              ViewOf(s.doc_starts), s.b, s.t, hl_, kl_, d_);
    return;
  }
  be_->AttentionForward(ViewOf(a.atty), ViewOf(a.att_lse), ViewOf(a.qkv), s.b, s.t, hl_, kl_, d_);
}

void Decoder::Attention(LayerActs& a, int64_t l, const ActSet& s, const DecodeContext* decode) {
  const int64_t b = s.b, t = s.t;
  const TensorView qkv = ViewOf(a.qkv);
  if (llama_ && s.has_docs) {  // packed examples: positions restart at every example
    const ConstView docs = ViewOf(s.doc_starts);
    be_->RopeForwardDocs(qkv, docs, b, t, hl_, d_, qkv_dim_, cfg_.rope_theta);
    be_->RopeForwardDocs(qkv.Sub(hl_ * d_), docs, b, t, kl_, d_, qkv_dim_, cfg_.rope_theta);
  } else if (llama_) {
    be_->RopeForward(qkv, b, t, hl_, d_, qkv_dim_, s.pos0, cfg_.rope_theta);
    be_->RopeForward(qkv.Sub(hl_ * d_), b, t, kl_, d_, qkv_dim_, s.pos0, cfg_.rope_theta);
  }
  if (decode == nullptr) {
    AttentionCore(a, s);
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
  // The reduced projection: in place, except that sequence parallelism scatters it to R rows
  // (into dresidual_, free in the forward; into dfull_ when the backward recomputes the layer).
  const TensorView y = sp_ ? ViewOf(recomputing_ ? dfull_ : dresidual_) : proj_out;
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

void Decoder::Classify(ActSet& s, ConstView xn, bool train, float dloss,
                       kernels::DeviceScalars& acc, int slot) {
  const int64_t n = s.b * s.t;
  kernels::ClassifierArgs args;
  args.n = n;
  args.c = c_;
  args.v = v_;
  args.rows = vl_;
  args.row_begin = tpr_ * vl_;
  args.chunk_tokens = cls_chunk_;
  args.dloss = dloss;
  // Vocab-parallel: each chunk's row maxima and (exp-sum, target logit) pairs are reduced over
  // the tensor-parallel group, in the same order on every rank.
  kernels::ClassifierAllReduce reduce;
  if (tpn_ > 1) {
    reduce = [this](float* data, int64_t count, kernels::ClassifierReduceOp op) {
      if (op == kernels::ClassifierReduceOp::kMax) {
        tp_->AllReduceMax(data, count);
      } else {
        tp_->AllReduceSum(data, count);
      }
    };
  }
  const ConstView targets = ViewOf(s.targets);
  const ConstView mask = s.has_mask ? ConstView(ViewOf(s.mask)) : ConstView();
  if (train) {
    be_->ClassifierForwardBackward(ViewOf(s.dhead), ends_.head.g, ViewOf(cls_scratch_), xn,
                                   ends_.head.w, targets, mask, args, reduce, acc, slot);
  } else {
    be_->ClassifierForward(ViewOf(cls_scratch_), xn, ends_.head.w, targets, mask, args, reduce,
                           acc, slot);
  }
}

ForwardResult Decoder::HeadForward(ActSet& s, ConstView x, bool with_loss) {
  const int64_t n = s.b * s.t, rows = HiddenRows(s.b, s.t);
  NormForward(ViewOf(s.normf), ViewOf(s.normf_mean), ViewOf(s.normf_rstd), x, ends_.norm_f_w,
              ends_.norm_f_b, rows);
  const ConstView xn = EnterRegion(ViewOf(s.normf), ViewOf(s.normf_full), rows);
  ForwardResult r;
  if (!with_loss) {
    // The logits are the output (eval --dump-logits, generate): the only place they are whole.
    if (!logits_.defined()) {
      const int64_t numel = batch_ * cfg_.seq_len * vl_;
      logits_arena_ = std::make_unique<kernels::Arena>(
          *be_, kernels::Arena::AlignedBytes(numel, DType::kF32));
      logits_ = logits_arena_->Allocate({batch_ * cfg_.seq_len, vl_}, DType::kF32);
    }
    be_->MatmulForward(ViewOf(logits_), xn, ends_.head.w, ConstView(), n, c_, vl_);
    return r;
  }
  // The fused classifier (kernels/classifier.h): no (N, Vp) logits are kept. In training
  // (set_head_loss_gradient) it makes the head's gradients now, keeping the (N, C) dhead.
  s.head_grads = head_dloss_.has_value();
  s.head_dloss = head_dloss_.value_or(0.0f);
  if (loss_acc_ != nullptr) {
    Classify(s, xn, s.head_grads, s.head_dloss, *loss_acc_, loss_slot_);  // read once per step
  } else {
    be_->ZeroScalars(*loss_scalars_);
    Classify(s, xn, s.head_grads, s.head_dloss, *loss_scalars_, 0);
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
    LayerActs work = Working(s.layers[i]);  // recomputable fields go to rc_
    LayerForward(work, layers[i], s, out, decode);
  }
}

ForwardResult Decoder::ForwardChunk(int chunk, int micro, const int32_t* tokens,
                                    const int32_t* targets, const float* loss_mask,
                                    const float* input, float* output, int64_t b, int64_t t,
                                    const int32_t* doc_starts) {
  LATTICE_CHECK(chunk >= 0 && chunk < num_chunks());
  LATTICE_CHECK(b >= 1 && b <= batch_ && t >= 1 && t <= cfg_.seq_len);
  LATTICE_CHECK_MSG(!sp_ || (b * t) % tpn_ == 0, "sequence parallel needs b*t % tp == 0");
  const int64_t n = b * t, rows = HiddenRows(b, t);
  ActSet& s = *Acquire(chunk, micro, b, t);
  const bool head = ChunkHasHead(chunk);
  if (tokens != nullptr) be_->CopyFromHost(ViewOf(s.tokens), tokens, DType::kI32, n);
  s.has_docs = doc_starts != nullptr;
  if (s.has_docs) be_->CopyFromHost(ViewOf(s.doc_starts), doc_starts, DType::kI32, n);
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
