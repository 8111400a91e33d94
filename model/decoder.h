// The decoder-only transformer (GPT-2 and Llama families) with an explicit forward and backward.
//
// Parameter names and layouts (lattice's own; the Hugging Face mapping is the convert command's):
//   wte                  (Vp, C)        token embedding, Vp = vocab padded (rows >= V stay zero)
//   wpe                  (T, C)         learned positions (gpt2 only)
//   h.{i}.norm1.weight   (C)            LayerNorm (gpt2, + .bias) or RMSNorm (llama)
//   h.{i}.attn.qkv.weight ((H+2K)*D, C) rows: q heads | k heads | v heads (+ .bias for gpt2)
//   h.{i}.attn.proj.weight (C, H*D)     (+ .bias for gpt2)
//   h.{i}.norm2.weight   (C)            (+ .bias for gpt2)
//   h.{i}.mlp.fc.weight  (F, C) gpt2 | (2F, C) llama, rows: gate | up   (+ .bias for gpt2)
//   h.{i}.mlp.proj.weight (C, F)        (+ .bias for gpt2)
//   norm_f.weight        (C)            (+ .bias for gpt2)
//   lm_head              (Vp, C)        only when embeddings are untied
// C = d_model, H = n_head, K = n_kv_head, D = C/H, F = d_ff, T = seq_len.
//
// The model knows nothing about parallelism; parallel/ drives it through its layer methods.
#ifndef LATTICE_MODEL_DECODER_H_
#define LATTICE_MODEL_DECODER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/parameters.h"
#include "runtime/config.h"
#include "runtime/tensor.h"

namespace lattice {

struct ForwardResult {
  double loss_sum = 0;     // sum of per-token losses over counted targets
  int64_t num_tokens = 0;  // counted targets (target >= 0 and mask != 0)
};

// The per-layer key/value cache used by generation.
struct KvCache {
  int64_t max_len = 0;
  int64_t len = 0;          // positions filled
  std::vector<Tensor> k;    // per layer (max_len, K, D)
  std::vector<Tensor> v;    // per layer (max_len, K, D)
};

class Decoder {
 public:
  // Allocates parameters and the activations of one micro-batch of (batch, cfg.seq_len).
  static absl::StatusOr<std::unique_ptr<Decoder>> Create(const ModelConfig& cfg, int64_t batch);

  // Parameter count of a configuration, without allocating anything (presets up to 70B).
  static int64_t CountParameters(const ModelConfig& cfg);

  const ModelConfig& config() const { return cfg_; }
  ParameterSet& params() { return params_; }
  const ParameterSet& params() const { return params_; }
  // Initialises every parameter from (seed, name, index) and zeroes the padded vocab rows.
  void InitializeWeights(uint64_t seed);

  // Forward over tokens (B, T) with B <= batch and T <= seq_len. With targets (B, T) (and an
  // optional loss_mask (B, T)) computes the per-token losses; without, only the logits.
  ForwardResult Forward(const int32_t* tokens, const int32_t* targets, const float* loss_mask,
                        int64_t b, int64_t t);
  // Backward of the last Forward (which must have had targets). Every token's loss gradient is
  // `dloss` (e.g. 1 / tokens in the global batch). Parameter gradients ACCUMULATE.
  void Backward(float dloss);

  // Called during Backward each time the gradients of a contiguous range [begin, end) of the
  // flat parameter buffer are complete for this micro-batch (the final norm and untied head
  // first, then layers L-1 .. 0, then the embeddings), so data parallelism can start reducing a
  // bucket while the backward pass goes on. Ranges of one Backward are disjoint and cover all.
  using GradReadyFn = std::function<void(int64_t begin, int64_t end)>;
  void set_grad_ready_callback(GradReadyFn fn) { grad_ready_ = std::move(fn); }

  // Logits (B, T, Vp) of the last Forward without targets (with targets they are overwritten by
  // the fused loss backward only in Backward()).
  const float* logits() const { return logits_.f32(); }

  // Generation: a cache for up to max_len positions; DecodeStep appends one token at position
  // cache.len and writes logits (Vp) for the next token.
  KvCache NewKvCache(int64_t max_len) const;
  void DecodeStep(int32_t token, KvCache& cache, float* logits_out);

  // Bytes of activations kept for one micro-batch (what Backward needs), and of the scratch
  // gradient buffers; reported by the trainer.
  int64_t activation_bytes() const { return activation_bytes_; }
  int64_t scratch_bytes() const { return scratch_bytes_; }

  // Matmul parameters (for the MFU convention: 6 * N_matmul + 6 * L * C * T flops per token).
  int64_t num_matmul_params() const;
  // Training FLOPs per token of a step with sequence length t (REFERENCE.md section 4).
  double FlopsPerToken(int64_t t) const;

 private:
  explicit Decoder(const ModelConfig& cfg, int64_t batch);
  void DeclareParameters();
  void AllocateActivations();
  std::string L(int64_t layer, const char* suffix) const;

  struct LayerActs {
    Tensor residual;   // (B, T, C) input of the layer
    Tensor norm1;      // (B, T, C)
    Tensor norm1_mean; // (B, T) gpt2 only
    Tensor norm1_rstd; // (B, T)
    Tensor qkv;        // (B, T, (H+2K)*D) after RoPE
    Tensor att;        // (B, H, T, T) softmax probabilities
    Tensor atty;       // (B, T, H*D) attention output before the projection
    Tensor residual2;  // (B, T, C) after the attention residual
    Tensor norm2;      // (B, T, C)
    Tensor norm2_mean; // (B, T)
    Tensor norm2_rstd; // (B, T)
    Tensor fc;         // (B, T, F) gpt2 pre-GELU | (B, T, 2F) llama gate|up
    Tensor act;        // (B, T, F) GELU / SwiGLU output
  };

  ModelConfig cfg_;
  int64_t batch_;
  bool llama_;
  int64_t c_, h_, k_, d_, f_, vp_, v_, qkv_dim_, fc_dim_;
  ParameterSet params_;

  // Activations of the last forward.
  std::vector<LayerActs> acts_;
  Tensor residual_out_;  // (B, T, C) output of the last layer
  Tensor normf_, normf_mean_, normf_rstd_;  // (B, T, C), (B, T), (B, T)
  Tensor logits_;        // (B, T, Vp)
  Tensor losses_;        // (B, T)
  Tensor tokens_, targets_, mask_;  // copies of the last inputs (B, T)
  bool has_mask_ = false;
  int64_t last_b_ = 0, last_t_ = 0;

  // Scratch for backward (and the projection outputs of forward).
  Tensor dresidual_;  // (B, T, C)
  Tensor dnorm_;      // (B, T, C)
  Tensor dqkv_;       // (B, T, (H+2K)*D)
  Tensor datt_;       // (B, H, T, T)
  Tensor datty_;      // (B, T, H*D)
  Tensor dfc_;        // (B, T, fc_dim)
  Tensor dact_;       // (B, T, F)
  Tensor proj_out_;   // (B, T, C) forward scratch for the attention / MLP projections

  int64_t activation_bytes_ = 0;
  int64_t scratch_bytes_ = 0;
  GradReadyFn grad_ready_;
  // Report the parameters whose names start with `prefix` (a contiguous range) as ready.
  void ReportReady(const std::string& first, const std::string& last);
};

}  // namespace lattice

#endif  // LATTICE_MODEL_DECODER_H_
