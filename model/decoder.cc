#include "model/decoder.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
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

namespace lattice {

namespace k = kernels::cpu;

absl::StatusOr<std::unique_ptr<Decoder>> Decoder::Create(const ModelConfig& cfg, int64_t batch) {
  if (batch < 1) return absl::InvalidArgumentError(absl::StrCat("batch=", batch, " must be >= 1"));
  Config probe;
  probe.model = cfg;
  LATTICE_RETURN_IF_ERROR(probe.Validate());
  std::unique_ptr<Decoder> d(new Decoder(cfg, batch));
  d->DeclareParameters();
  d->params_.Allocate();
  d->AllocateActivations();
  return d;
}

int64_t Decoder::CountParameters(const ModelConfig& cfg) {
  Decoder d(cfg, 1);
  d.DeclareParameters();
  return d.params_.numel();
}

Decoder::Decoder(const ModelConfig& cfg, int64_t batch) : cfg_(cfg), batch_(batch) {
  llama_ = cfg.arch == Arch::kLlama;
  c_ = cfg.d_model;
  h_ = cfg.n_head;
  k_ = cfg.kv_heads();
  d_ = cfg.head_dim();
  f_ = cfg.ff_dim();
  vp_ = cfg.padded_vocab();
  v_ = cfg.vocab_size;
  qkv_dim_ = (h_ + 2 * k_) * d_;
  fc_dim_ = llama_ ? 2 * f_ : f_;
}

std::string Decoder::L(int64_t layer, const char* suffix) const {
  return absl::StrCat("h.", layer, ".", suffix);
}

void Decoder::DeclareParameters() {
  const float std = cfg_.init_std;
  // GPT-2 / Megatron scale the residual-branch output projections by 1/sqrt(2 * n_layer).
  const float proj_std = std / std::sqrt(2.0f * static_cast<float>(cfg_.n_layer));
  const bool bias = !llama_;
  params_.Declare("wte", {vp_, c_}, true, ParamInit::kNormal, std);
  if (!llama_) params_.Declare("wpe", {cfg_.seq_len, c_}, true, ParamInit::kNormal, std);
  auto norm = [&](const std::string& name) {
    params_.Declare(name + ".weight", {c_}, false, ParamInit::kOnes, 0);
    if (bias) params_.Declare(name + ".bias", {c_}, false, ParamInit::kZeros, 0);
  };
  auto linear = [&](const std::string& name, int64_t out, int64_t in, float s) {
    params_.Declare(name + ".weight", {out, in}, true, ParamInit::kNormal, s);
    if (bias) params_.Declare(name + ".bias", {out}, false, ParamInit::kZeros, 0);
  };
  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    norm(L(l, "norm1"));
    linear(L(l, "attn.qkv"), qkv_dim_, c_, std);
    linear(L(l, "attn.proj"), c_, h_ * d_, proj_std);
    norm(L(l, "norm2"));
    linear(L(l, "mlp.fc"), fc_dim_, c_, std);
    linear(L(l, "mlp.proj"), c_, f_, proj_std);
  }
  norm("norm_f");
  if (!cfg_.tied()) params_.Declare("lm_head", {vp_, c_}, true, ParamInit::kNormal, std);
}

void Decoder::AllocateActivations() {
  const int64_t b = batch_, t = cfg_.seq_len;
  int64_t act = 0, scratch = 0;
  auto A = [&](Shape s, DType dt = DType::kF32) {
    Tensor x = Tensor::Zeros(std::move(s), dt);
    act += x.nbytes();
    return x;
  };
  auto S = [&](Shape s) {
    Tensor x = Tensor::Zeros(std::move(s), DType::kF32);
    scratch += x.nbytes();
    return x;
  };
  acts_.resize(cfg_.n_layer);
  for (LayerActs& a : acts_) {
    a.residual = A({b, t, c_});
    a.norm1 = A({b, t, c_});
    if (!llama_) a.norm1_mean = A({b, t});
    a.norm1_rstd = A({b, t});
    a.qkv = A({b, t, qkv_dim_});
    a.att = A({b, h_, t, t});
    a.atty = A({b, t, h_ * d_});
    a.residual2 = A({b, t, c_});
    a.norm2 = A({b, t, c_});
    if (!llama_) a.norm2_mean = A({b, t});
    a.norm2_rstd = A({b, t});
    a.fc = A({b, t, fc_dim_});
    a.act = A({b, t, f_});
  }
  residual_out_ = A({b, t, c_});
  normf_ = A({b, t, c_});
  if (!llama_) normf_mean_ = A({b, t});
  normf_rstd_ = A({b, t});
  logits_ = A({b, t, vp_});
  losses_ = A({b, t});
  tokens_ = A({b, t}, DType::kI32);
  targets_ = A({b, t}, DType::kI32);
  mask_ = A({b, t});
  dresidual_ = S({b, t, c_});
  dnorm_ = S({b, t, c_});
  dqkv_ = S({b, t, qkv_dim_});
  datt_ = S({b, h_, t, t});
  datty_ = S({b, t, h_ * d_});
  dfc_ = S({b, t, fc_dim_});
  dact_ = S({b, t, f_});
  proj_out_ = S({b, t, c_});
  activation_bytes_ = act;
  scratch_bytes_ = scratch;
}

ForwardResult Decoder::Forward(const int32_t* tokens, const int32_t* targets,
                               const float* loss_mask, int64_t b, int64_t t) {
  LATTICE_CHECK(b >= 1 && b <= batch_ && t >= 1 && t <= cfg_.seq_len);
  last_b_ = b;
  last_t_ = t;
  const int64_t n = b * t;
  const float eps = cfg_.norm_eps;
  std::memcpy(tokens_.raw(), tokens, n * sizeof(int32_t));
  has_mask_ = loss_mask != nullptr;
  if (targets != nullptr) std::memcpy(targets_.raw(), targets, n * sizeof(int32_t));
  if (has_mask_) std::memcpy(mask_.raw(), loss_mask, n * sizeof(float));

  float* x = cfg_.n_layer > 0 ? acts_[0].residual.f32() : residual_out_.f32();
  k::EmbeddingForward(x, tokens, params_.value("wte"), llama_ ? nullptr : params_.value("wpe"), b,
                      t, c_, 0);

  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    LayerActs& a = acts_[l];
    float* out = l + 1 < cfg_.n_layer ? acts_[l + 1].residual.f32() : residual_out_.f32();
    const float* in = a.residual.f32();
    // Attention block.
    if (llama_) {
      k::RmsNormForward(a.norm1.f32(), a.norm1_rstd.f32(), in, params_.value(L(l, "norm1.weight")),
                        n, c_, eps);
    } else {
      k::LayerNormForward(a.norm1.f32(), a.norm1_mean.f32(), a.norm1_rstd.f32(), in,
                          params_.value(L(l, "norm1.weight")), params_.value(L(l, "norm1.bias")),
                          n, c_, eps);
    }
    k::MatmulForward(a.qkv.f32(), a.norm1.f32(), params_.value(L(l, "attn.qkv.weight")),
                     llama_ ? nullptr : params_.value(L(l, "attn.qkv.bias")), n, c_, qkv_dim_);
    if (llama_) {
      k::RopeForward(a.qkv.f32(), b, t, h_, d_, qkv_dim_, 0, cfg_.rope_theta);
      k::RopeForward(a.qkv.f32() + h_ * d_, b, t, k_, d_, qkv_dim_, 0, cfg_.rope_theta);
    }
    k::AttentionForward(a.atty.f32(), a.att.f32(), a.qkv.f32(), b, t, h_, k_, d_);
    k::MatmulForward(proj_out_.f32(), a.atty.f32(), params_.value(L(l, "attn.proj.weight")),
                     llama_ ? nullptr : params_.value(L(l, "attn.proj.bias")), n, h_ * d_, c_);
    k::ResidualForward(a.residual2.f32(), in, proj_out_.f32(), n * c_);
    // MLP block.
    if (llama_) {
      k::RmsNormForward(a.norm2.f32(), a.norm2_rstd.f32(), a.residual2.f32(),
                        params_.value(L(l, "norm2.weight")), n, c_, eps);
    } else {
      k::LayerNormForward(a.norm2.f32(), a.norm2_mean.f32(), a.norm2_rstd.f32(), a.residual2.f32(),
                          params_.value(L(l, "norm2.weight")), params_.value(L(l, "norm2.bias")),
                          n, c_, eps);
    }
    k::MatmulForward(a.fc.f32(), a.norm2.f32(), params_.value(L(l, "mlp.fc.weight")),
                     llama_ ? nullptr : params_.value(L(l, "mlp.fc.bias")), n, c_, fc_dim_);
    if (llama_) {
      k::SwiGluForward(a.act.f32(), a.fc.f32(), n, f_);
    } else {
      k::GeluForward(a.act.f32(), a.fc.f32(), n * f_);
    }
    k::MatmulForward(proj_out_.f32(), a.act.f32(), params_.value(L(l, "mlp.proj.weight")),
                     llama_ ? nullptr : params_.value(L(l, "mlp.proj.bias")), n, f_, c_);
    k::ResidualForward(out, a.residual2.f32(), proj_out_.f32(), n * c_);
  }

  if (llama_) {
    k::RmsNormForward(normf_.f32(), normf_rstd_.f32(), residual_out_.f32(),
                      params_.value("norm_f.weight"), n, c_, eps);
  } else {
    k::LayerNormForward(normf_.f32(), normf_mean_.f32(), normf_rstd_.f32(), residual_out_.f32(),
                        params_.value("norm_f.weight"), params_.value("norm_f.bias"), n, c_, eps);
  }
  const float* head = params_.value(cfg_.tied() ? "wte" : "lm_head");
  k::MatmulForward(logits_.f32(), normf_.f32(), head, nullptr, n, c_, vp_);

  ForwardResult r;
  if (targets == nullptr) return r;
  r.num_tokens = k::CrossEntropyForward(losses_.f32(), logits_.f32(), targets,
                                        has_mask_ ? mask_.f32() : nullptr, n, v_, vp_);
  const float* losses = losses_.f32();
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += losses[i];
  r.loss_sum = sum;
  return r;
}

void Decoder::Backward(float dloss) {
  const int64_t b = last_b_, t = last_t_, n = b * t;
  LATTICE_CHECK_MSG(n > 0, "Backward without Forward");
  auto zero = [n](const Tensor& x) { std::memset(x.raw(), 0, n * (x.nbytes() / x.dim(0) / x.dim(1))); };

  // Loss -> logits (in place: the logits buffer becomes dlogits), then the LM head.
  float* dlogits = logits_.f32();
  k::CrossEntropyBackward(dlogits, logits_.f32(), targets_.i32(), has_mask_ ? mask_.f32() : nullptr,
                          dloss, n, v_, vp_);
  const std::string head = cfg_.tied() ? "wte" : "lm_head";
  zero(dnorm_);
  k::MatmulBackward(dnorm_.f32(), params_.grad(head), nullptr, dlogits, normf_.f32(),
                    params_.value(head), n, c_, vp_);
  zero(dresidual_);
  float* dres = dresidual_.f32();
  if (llama_) {
    k::RmsNormBackward(dres, params_.grad("norm_f.weight"), dnorm_.f32(), residual_out_.f32(),
                       params_.value("norm_f.weight"), normf_rstd_.f32(), n, c_);
  } else {
    k::LayerNormBackward(dres, params_.grad("norm_f.weight"), params_.grad("norm_f.bias"),
                         dnorm_.f32(), residual_out_.f32(), params_.value("norm_f.weight"),
                         normf_mean_.f32(), normf_rstd_.f32(), n, c_);
  }

  ReportReady("norm_f.weight", llama_ ? "norm_f.weight" : "norm_f.bias");
  if (!cfg_.tied()) ReportReady("lm_head", "lm_head");

  for (int64_t l = cfg_.n_layer - 1; l >= 0; --l) {
    LayerActs& a = acts_[l];
    // MLP block: dres is the gradient of the layer output = of residual2 through the skip.
    zero(dact_);
    k::MatmulBackward(dact_.f32(), params_.grad(L(l, "mlp.proj.weight")),
                      llama_ ? nullptr : params_.grad(L(l, "mlp.proj.bias")), dres, a.act.f32(),
                      params_.value(L(l, "mlp.proj.weight")), n, f_, c_);
    zero(dfc_);
    if (llama_) {
      k::SwiGluBackward(dfc_.f32(), a.fc.f32(), dact_.f32(), n, f_);
    } else {
      k::GeluBackward(dfc_.f32(), a.fc.f32(), dact_.f32(), n * f_);
    }
    zero(dnorm_);
    k::MatmulBackward(dnorm_.f32(), params_.grad(L(l, "mlp.fc.weight")),
                      llama_ ? nullptr : params_.grad(L(l, "mlp.fc.bias")), dfc_.f32(),
                      a.norm2.f32(), params_.value(L(l, "mlp.fc.weight")), n, c_, fc_dim_);
    if (llama_) {
      k::RmsNormBackward(dres, params_.grad(L(l, "norm2.weight")), dnorm_.f32(), a.residual2.f32(),
                         params_.value(L(l, "norm2.weight")), a.norm2_rstd.f32(), n, c_);
    } else {
      k::LayerNormBackward(dres, params_.grad(L(l, "norm2.weight")),
                           params_.grad(L(l, "norm2.bias")), dnorm_.f32(), a.residual2.f32(),
                           params_.value(L(l, "norm2.weight")), a.norm2_mean.f32(),
                           a.norm2_rstd.f32(), n, c_);
    }
    // Attention block: dres is now the gradient of residual2.
    zero(datty_);
    k::MatmulBackward(datty_.f32(), params_.grad(L(l, "attn.proj.weight")),
                      llama_ ? nullptr : params_.grad(L(l, "attn.proj.bias")), dres, a.atty.f32(),
                      params_.value(L(l, "attn.proj.weight")), n, h_ * d_, c_);
    zero(dqkv_);
    k::AttentionBackward(dqkv_.f32(), datt_.f32(), datty_.f32(), a.qkv.f32(), a.att.f32(), b, t,
                         h_, k_, d_);
    if (llama_) {
      k::RopeBackward(dqkv_.f32(), b, t, h_, d_, qkv_dim_, 0, cfg_.rope_theta);
      k::RopeBackward(dqkv_.f32() + h_ * d_, b, t, k_, d_, qkv_dim_, 0, cfg_.rope_theta);
    }
    zero(dnorm_);
    k::MatmulBackward(dnorm_.f32(), params_.grad(L(l, "attn.qkv.weight")),
                      llama_ ? nullptr : params_.grad(L(l, "attn.qkv.bias")), dqkv_.f32(),
                      a.norm1.f32(), params_.value(L(l, "attn.qkv.weight")), n, c_, qkv_dim_);
    if (llama_) {
      k::RmsNormBackward(dres, params_.grad(L(l, "norm1.weight")), dnorm_.f32(), a.residual.f32(),
                         params_.value(L(l, "norm1.weight")), a.norm1_rstd.f32(), n, c_);
    } else {
      k::LayerNormBackward(dres, params_.grad(L(l, "norm1.weight")),
                           params_.grad(L(l, "norm1.bias")), dnorm_.f32(), a.residual.f32(),
                           params_.value(L(l, "norm1.weight")), a.norm1_mean.f32(),
                           a.norm1_rstd.f32(), n, c_);
    }
    ReportReady(L(l, "norm1.weight"), llama_ ? L(l, "mlp.proj.weight") : L(l, "mlp.proj.bias"));
  }
  k::EmbeddingBackward(params_.grad("wte"), llama_ ? nullptr : params_.grad("wpe"), dres,
                       tokens_.i32(), b, t, c_, 0);
  ReportReady("wte", llama_ ? "wte" : "wpe");
  last_b_ = last_t_ = 0;  // the logits buffer now holds gradients
}

void Decoder::InitializeWeights(uint64_t seed) {
  params_.Initialize(seed);
  for (const char* name : {"wte", "lm_head"}) {
    if (const Parameter* p = params_.Find(name)) {
      std::memset(p->value.f32() + v_ * c_, 0, (vp_ - v_) * c_ * sizeof(float));
    }
  }
}

void Decoder::ReportReady(const std::string& first, const std::string& last) {
  if (!grad_ready_) return;
  const Parameter& a = params_.Get(first);
  const Parameter& z = params_.Get(last);
  grad_ready_(a.offset, z.offset + z.value.numel());
}

KvCache Decoder::NewKvCache(int64_t max_len) const {
  KvCache c;
  c.max_len = max_len;
  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    c.k.push_back(Tensor::Zeros({max_len, k_, d_}, DType::kF32));
    c.v.push_back(Tensor::Zeros({max_len, k_, d_}, DType::kF32));
  }
  return c;
}

void Decoder::DecodeStep(int32_t token, KvCache& cache, float* logits_out) {
  LATTICE_CHECK(cache.len < cache.max_len);
  LATTICE_CHECK(llama_ || cache.len < cfg_.seq_len);
  const int64_t pos = cache.len;
  const float eps = cfg_.norm_eps;
  // Single-row buffers (1, C) etc.; reuse the first row of the training scratch.
  float* x = dresidual_.f32();
  float* xn = dnorm_.f32();
  float* qkv = dqkv_.f32();
  float* y = datty_.f32();
  float* fc = dfc_.f32();
  float* act = dact_.f32();
  float* proj = proj_out_.f32();
  float mean, rstd;
  k::EmbeddingForward(x, &token, params_.value("wte"), llama_ ? nullptr : params_.value("wpe"), 1,
                      1, c_, pos);
  auto norm = [&](const std::string& name, const float* in, float* out) {
    if (llama_) {
      k::RmsNormForward(out, &rstd, in, params_.value(name + ".weight"), 1, c_, eps);
    } else {
      k::LayerNormForward(out, &mean, &rstd, in, params_.value(name + ".weight"),
                          params_.value(name + ".bias"), 1, c_, eps);
    }
  };
  auto bias = [&](int64_t l, const char* name) {
    return llama_ ? nullptr : params_.value(L(l, name));
  };
  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    norm(L(l, "norm1"), x, xn);
    k::MatmulForward(qkv, xn, params_.value(L(l, "attn.qkv.weight")), bias(l, "attn.qkv.bias"), 1,
                     c_, qkv_dim_);
    if (llama_) {
      k::RopeForward(qkv, 1, 1, h_, d_, qkv_dim_, pos, cfg_.rope_theta);
      k::RopeForward(qkv + h_ * d_, 1, 1, k_, d_, qkv_dim_, pos, cfg_.rope_theta);
    }
    std::memcpy(cache.k[l].f32() + pos * k_ * d_, qkv + h_ * d_, k_ * d_ * sizeof(float));
    std::memcpy(cache.v[l].f32() + pos * k_ * d_, qkv + (h_ + k_) * d_, k_ * d_ * sizeof(float));
    k::AttentionDecode(y, qkv, cache.k[l].f32(), cache.v[l].f32(), pos + 1, h_, k_, d_);
    k::MatmulForward(proj, y, params_.value(L(l, "attn.proj.weight")), bias(l, "attn.proj.bias"), 1,
                     h_ * d_, c_);
    k::ResidualForward(x, x, proj, c_);
    norm(L(l, "norm2"), x, xn);
    k::MatmulForward(fc, xn, params_.value(L(l, "mlp.fc.weight")), bias(l, "mlp.fc.bias"), 1, c_,
                     fc_dim_);
    if (llama_) {
      k::SwiGluForward(act, fc, 1, f_);
    } else {
      k::GeluForward(act, fc, f_);
    }
    k::MatmulForward(proj, act, params_.value(L(l, "mlp.proj.weight")), bias(l, "mlp.proj.bias"), 1,
                     f_, c_);
    k::ResidualForward(x, x, proj, c_);
  }
  norm("norm_f", x, xn);
  k::MatmulForward(logits_out, xn, params_.value(cfg_.tied() ? "wte" : "lm_head"), nullptr, 1, c_,
                   vp_);
  cache.len = pos + 1;
}

int64_t Decoder::num_matmul_params() const {
  int64_t per_layer = qkv_dim_ * c_ + c_ * h_ * d_ + fc_dim_ * c_ + c_ * f_;
  return per_layer * cfg_.n_layer + vp_ * c_;  // + the LM head (tied or not, it is a matmul)
}

double Decoder::FlopsPerToken(int64_t t) const {
  return 6.0 * static_cast<double>(num_matmul_params()) +
         6.0 * static_cast<double>(cfg_.n_layer) * static_cast<double>(c_) * static_cast<double>(t);
}

}  // namespace lattice
