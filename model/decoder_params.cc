// Parameter declaration (names, shapes, tensor-parallel sharding), initialisation, and the
// weight views the forward and backward passes use (resolved once, after allocation: a step
// does no name lookups).
#include <cmath>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "model/decoder.h"

namespace lattice {

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

Decoder::View Decoder::ParamView(const std::string& name) const {
  const Parameter* p = params_.Find(name);
  if (p == nullptr) return View();
  return View{kernels::ViewOf(p->value), kernels::ViewOf(p->grad)};
}

std::pair<int64_t, int64_t> Decoder::Range(const std::string& first,
                                           const std::string& last) const {
  const Parameter& a = params_.Get(first);
  const Parameter& z = params_.Get(last);
  return {a.offset, z.offset + z.value.numel()};
}

void Decoder::ResolveWeights() {
  for (const auto& chunk : chunks_) {
    for (int64_t l : chunk) {
      LayerWeights& w = layer_weights_[l];
      w.norm1_w = ParamView(L(l, "norm1.weight"));
      w.norm1_b = ParamView(L(l, "norm1.bias"));
      w.qkv_w = ParamView(L(l, "attn.qkv.weight"));
      w.qkv_b = ParamView(L(l, "attn.qkv.bias"));
      w.proj_w = ParamView(L(l, "attn.proj.weight"));
      w.proj_b = ParamView(L(l, "attn.proj.bias"));
      w.norm2_w = ParamView(L(l, "norm2.weight"));
      w.norm2_b = ParamView(L(l, "norm2.bias"));
      w.fc_w = ParamView(L(l, "mlp.fc.weight"));
      w.fc_b = ParamView(L(l, "mlp.fc.bias"));
      w.mlp_proj_w = ParamView(L(l, "mlp.proj.weight"));
      w.mlp_proj_b = ParamView(L(l, "mlp.proj.bias"));
      std::tie(w.first_offset, w.end_offset) =
          Range(L(l, "norm1.weight"), llama_ ? L(l, "mlp.proj.weight") : L(l, "mlp.proj.bias"));
    }
  }
  ends_.wte = ParamView("wte");
  ends_.wpe = ParamView("wpe");
  ends_.norm_f_w = ParamView("norm_f.weight");
  ends_.norm_f_b = ParamView("norm_f.bias");
  ends_.head = ParamView(cfg_.tied() ? "wte" : "lm_head");
  if (shard_.head) {
    norm_f_range_ = Range("norm_f.weight", llama_ ? "norm_f.weight" : "norm_f.bias");
    if (!cfg_.tied()) head_range_ = Range("lm_head", "lm_head");
  }
  if (shard_.embedding) embed_range_ = Range("wte", llama_ ? "wte" : "wpe");
}

void Decoder::InitializeWeights(uint64_t seed) {
  params_.Initialize(seed);
  // Zero the padded vocabulary rows (global rows >= vocab_size) wherever this rank holds them.
  for (const char* name : {"wte", "lm_head"}) {
    if (const Parameter* p = params_.Find(name)) {
      for (int64_t r = 0; r < p->local_rows(); ++r) {
        if (p->GlobalIndex(r * c_) / c_ >= v_) {
          be_->Zero(kernels::ViewOf(p->value).Sub(r * c_, c_));
        }
      }
    }
  }
}

void Decoder::ReportReady(int64_t begin, int64_t end) const {
  if (grad_ready_ && end > begin) grad_ready_(begin, end);
}

}  // namespace lattice
