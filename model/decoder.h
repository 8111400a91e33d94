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
// Tensor parallelism shards these by heads (qkv rows, proj columns), by d_ff (fc rows, mlp.proj
// columns) and by vocabulary rows (wte, lm_head); norms and the biases added after a row-parallel
// linear are replicated. Parameter.sharding maps each local shard onto the names and layouts
// above. The model knows nothing about MPI: parallel/ passes a ModelShard and TensorParallelOps
// (model/tensor_parallel.h) and drives chunks through ForwardChunk/BackwardChunk.
//
// The implementation is split by concern: decoder.cc (creation, validation, sizes),
// decoder_params.cc (parameter declaration, sharding, initialisation, weight views),
// decoder_activations.cc (activation sets, scratch, the memory plan), decoder_forward.cc,
// decoder_backward.cc, and decoder_decode.cc (generation with a KV cache, through the same
// layer forward as training).
//
// Every op runs through a kernels::Backend (kernels/backend.h): the decoder holds no CPU code of
// its own. Its scratch and activation sets come from arenas of that backend, sized by the same
// code that plans them (PlanMemory), so a step in the steady state allocates nothing.
#ifndef LATTICE_MODEL_DECODER_H_
#define LATTICE_MODEL_DECODER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <utility>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/parameters.h"
#include "model/tensor_parallel.h"
#include "runtime/config.h"
#include "runtime/tensor.h"

namespace lattice {

// Bytes a decoder allocates, computed before allocating anything (Decoder::PlanMemory) and
// equal to what Create then allocates (tests/model/decoder_test.cc checks it).
// Scratch and activations are counted as their arenas hand them out (kernels::Arena: every
// tensor rounded up to the arena's 64-element alignment).
struct DecoderMemory {
  int64_t params = 0;              // fp32 values of this rank's parameters
  int64_t grads = 0;               // their gradients
  int64_t scratch = 0;             // backward scratch (one micro-batch)
  int64_t activations_per_set = 0; // one micro-batch's activations of all this rank's chunks
  int64_t head_bytes = 0;          // the part of it the head chunk keeps (logits, final norm)
  int64_t total(int64_t sets_in_flight) const {
    return params + grads + scratch + activations_per_set * sets_in_flight;
  }
};

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
  // The whole model on one rank, with activations for micro-batches of (batch, cfg.seq_len).
  static absl::StatusOr<std::unique_ptr<Decoder>> Create(const ModelConfig& cfg, int64_t batch);
  // One rank's part (model/tensor_parallel.h). `tp` (needed when shard.tp_size > 1) must
  // outlive the decoder. InvalidArgument names the sizes that do not divide.
  static absl::StatusOr<std::unique_ptr<Decoder>> Create(const ModelConfig& cfg, int64_t batch,
                                                          const ModelShard& shard,
                                                          TensorParallelOps* tp);

  // Parameter count of a configuration, without allocating anything (presets up to 70B).
  static int64_t CountParameters(const ModelConfig& cfg);
  // What Create(cfg, batch, shard, ...) would allocate, without allocating it. InvalidArgument
  // as Create for shards that do not fit the configuration.
  static absl::StatusOr<DecoderMemory> PlanMemory(const ModelConfig& cfg, int64_t batch,
                                                  const ModelShard& shard);
  // Names and unsharded shapes of the whole model's parameters, in declaration order.
  static std::vector<std::pair<std::string, Shape>> ParameterShapes(const ModelConfig& cfg);

  const ModelConfig& config() const { return cfg_; }
  const ModelShard& shard() const { return shard_; }
  int64_t batch() const { return batch_; }
  ParameterSet& params() { return params_; }
  const ParameterSet& params() const { return params_; }
  // Initialises every parameter from (seed, name, global index) and zeroes the padded vocab
  // rows: every sharding holds exactly the unsharded model's initial values.
  void InitializeWeights(uint64_t seed);

  // ---- The whole model (shard().whole()). ----
  // Forward over tokens (B, T) with B <= batch and T <= seq_len. With targets (B, T) (and an
  // optional loss_mask (B, T)) computes the per-token losses; without, only the logits.
  ForwardResult Forward(const int32_t* tokens, const int32_t* targets, const float* loss_mask,
                        int64_t b, int64_t t);
  // Backward of the last Forward (which must have had targets). Every token's loss gradient is
  // `dloss` (e.g. 1 / tokens in the global batch). Parameter gradients ACCUMULATE.
  void Backward(float dloss);

  // ---- One model chunk of one micro-batch (pipeline and tensor parallelism). ----
  // Rows of the hidden state passed between chunks: b*t, or b*t/tp with sequence parallelism.
  int64_t HiddenRows(int64_t b, int64_t t) const;
  int num_chunks() const { return static_cast<int>(chunks_.size()); }
  bool ChunkHasEmbedding(int chunk) const { return chunk == 0 && shard_.embedding; }
  bool ChunkHasHead(int chunk) const { return chunk + 1 == num_chunks() && shard_.head; }
  // Forward of chunk `chunk` for micro-batch `micro`, keeping its activations until
  // BackwardChunk (or DropActivations). The embedding chunk reads `tokens` (B, T), others
  // `input` (HiddenRows, C); the head chunk reads `targets`/`loss_mask` and returns the loss
  // (identical on every tensor-parallel rank), others write `output` (HiddenRows, C).
  // `tokens`, `targets`, `loss_mask`, `input` and `output` are host memory (copied to and from
  // the backend).
  ForwardResult ForwardChunk(int chunk, int micro, const int32_t* tokens, const int32_t* targets,
                             const float* loss_mask, const float* input, float* output, int64_t b,
                             int64_t t);
  // With an accumulator set, the head adds each micro-batch's loss sum to slot `slot` of `acc`
  // on the device and ForwardResult::loss_sum stays 0 (the caller reads the step's sum once);
  // null (the default) reads it back into loss_sum. `acc` must outlive its use here.
  void set_loss_accumulator(kernels::DeviceScalars* acc, int slot) {
    loss_acc_ = acc;
    loss_slot_ = slot;
  }
  // Backward of that forward: `doutput` (HiddenRows, C) unless the chunk has the head (then
  // every counted token's loss gradient is `dloss`); writes `dinput` (HiddenRows, C) unless the
  // chunk has the embedding. Parameter gradients ACCUMULATE. Frees the activations.
  void BackwardChunk(int chunk, int micro, float dloss, const float* doutput, float* dinput);
  void DropActivations(int chunk, int micro);

  // Called during Backward each time the gradients of a contiguous range [begin, end) of the
  // flat parameter buffer are complete for this micro-batch (the final norm and untied head
  // first, then layers L-1 .. 0, then the embeddings), so data parallelism can start reducing a
  // bucket while the backward pass goes on. Ranges of one Backward are disjoint and cover all.
  using GradReadyFn = std::function<void(int64_t begin, int64_t end)>;
  void set_grad_ready_callback(GradReadyFn fn) { grad_ready_ = std::move(fn); }

  // Logits (B, T, Vp) of the last whole-model Forward without targets.
  const float* logits() const;

  // Generation (whole model only): a cache for up to max_len positions; DecodeStep appends one
  // token at position cache.len and writes logits (Vp) for the next token.
  KvCache NewKvCache(int64_t max_len) const;
  void DecodeStep(int32_t token, KvCache& cache, float* logits_out);

  // The backend every op of this decoder runs on.
  kernels::Backend& backend() const { return *be_; }
  // Sizes the activation arena before the first step for `bytes` of activation sets (a
  // schedule's peak in flight, ParallelEngine::PlanMemory); without it the arena starts with
  // one set of every chunk and grows by a block when more are alive at once. Call before the
  // first ForwardChunk.
  void ReserveActivations(int64_t bytes);
  // Tensors the scratch and activation arenas handed out, and device blocks they allocated
  // (the steady-state step changes neither).
  int64_t arena_allocations() const;
  int64_t arena_blocks() const;

  // Bytes of activations kept for one micro-batch (all of this rank's chunks), and of the
  // scratch buffers; reported by the trainer.
  int64_t activation_bytes() const { return activation_bytes_; }
  int64_t scratch_bytes() const { return scratch_bytes_; }
  // Micro-batch activation sets (one per chunk and micro-batch) alive now and at the peak
  // since the last ResetPeak(); a pipeline schedule's memory bound is asserted on these.
  int in_flight() const { return in_flight_; }
  int peak_in_flight() const { return peak_in_flight_; }
  int64_t peak_activation_bytes() const { return peak_activation_bytes_; }
  void ResetPeak() { peak_in_flight_ = in_flight_; peak_activation_bytes_ = live_bytes_; }

  // Matmul parameters of the whole model (for the MFU convention).
  int64_t num_matmul_params() const;
  // Training FLOPs per token of a step with sequence length t (REFERENCE.md section 4).
  double FlopsPerToken(int64_t t) const;

 private:
  Decoder(const ModelConfig& cfg, int64_t batch, const ModelShard& shard, TensorParallelOps* tp);
  static absl::Status ValidateShard(const ModelConfig& cfg, int64_t batch,
                                    const ModelShard& shard, const TensorParallelOps* tp);
  void DeclareParameters();
  // Resolves every parameter's value/gradient once (after Allocate): no name lookups in a step.
  void ResolveWeights();
  // Scratch buffers; with allocate = false only counts their bytes.
  void AllocateScratch(bool allocate);
  std::string L(int64_t layer, const char* suffix) const;

  // One parameter's value and gradient (null when the model has no such parameter, e.g.
  // biases in Llama).
  struct View {
    kernels::TensorView w;
    kernels::TensorView g;
  };
  struct LayerWeights {
    View norm1_w, norm1_b, qkv_w, qkv_b, proj_w, proj_b, norm2_w, norm2_b, fc_w, fc_b,
        mlp_proj_w, mlp_proj_b;
    int64_t first_offset = 0, end_offset = 0;  // flat range of the layer's parameters
  };
  struct EndWeights {
    View wte, wpe, norm_f_w, norm_f_b, head;  // head: lm_head, or wte when tied
  };
  View ParamView(const std::string& name) const;

  struct LayerActs {
    Tensor residual;   // (R, C) input of the layer (R = hidden rows)
    Tensor norm1;      // (R, C)
    Tensor norm1_full; // (N, C) gathered (sequence parallel only)
    Tensor norm1_mean; // (R) gpt2 only
    Tensor norm1_rstd; // (R)
    Tensor qkv;        // (N, (h+2k)*D) local heads, after RoPE
    Tensor att_lse;    // (B, h, T) log-sum-exp of each attention row (probabilities recomputed)
    Tensor atty;       // (N, h*D) attention output before the projection
    Tensor residual2;  // (R, C) after the attention residual
    Tensor norm2;      // (R, C)
    Tensor norm2_full; // (N, C) sequence parallel only
    Tensor norm2_mean; // (R)
    Tensor norm2_rstd; // (R)
    Tensor fc;         // (N, f) gpt2 pre-GELU | (N, 2f) llama gate|up
    Tensor act;        // (N, f) GELU / SwiGLU output
  };
  // Everything one chunk keeps for one micro-batch.
  struct ActSet {
    int64_t b = 0, t = 0;
    int64_t pos0 = 0;  // position of the first token (> 0 only when decoding with a cache)
    bool has_mask = false;
    Tensor tokens, targets, mask;  // (B, T)
    std::vector<LayerActs> layers;
    Tensor residual_out;           // (R, C) output of the chunk's last layer
    Tensor normf, normf_full, normf_mean, normf_rstd;  // head only
    Tensor logits;                 // (N, Vp/tp) head only
    Tensor row_max, sum_exp, tlogit;  // (N) head only, tp > 1
    int64_t bytes = 0;
  };
  // Decoding: where the chunk's layers read and append keys and values.
  struct DecodeContext {
    KvCache* cache = nullptr;
  };
  ActSet* Acquire(int chunk, int micro, int64_t b, int64_t t);
  // An activation set for `chunk` (with allocate = false: only its bytes are counted).
  std::unique_ptr<ActSet> NewActSet(int chunk, bool allocate) const;
  void Release(int chunk, int micro);

  // Runs chunk `chunk` forward over a set already holding its tokens (or `input`).
  void ChunkForward(int chunk, ActSet& s, const float* input, const DecodeContext* decode);
  using TensorView = kernels::TensorView;
  using ConstView = kernels::ConstView;
  void EmbedForward(ActSet& s, TensorView x);
  void EmbedBackward(ActSet& s, ConstView dx);
  void LayerForward(LayerActs& a, int64_t l, const ActSet& s, TensorView out,
                    const DecodeContext* decode);
  void Attention(LayerActs& a, int64_t l, const ActSet& s, const DecodeContext* decode);
  void LayerBackward(LayerActs& a, int64_t l, int64_t b, int64_t t, TensorView dres);
  ForwardResult HeadForward(ActSet& s, ConstView x, bool with_loss);
  void HeadBackward(ActSet& s, float dloss, TensorView dres);
  // LayerNorm (gpt2) or RMSNorm (llama) forward/backward.
  void NormForward(TensorView out, TensorView mean, TensorView rstd, ConstView in, const View& w,
                   const View& b, int64_t rows) const;
  void NormBackward(TensorView dx, const View& w, const View& b, ConstView dout, ConstView in,
                    ConstView mean, ConstView rstd, int64_t rows) const;
  // Tensor-parallel region boundaries (identity when tp == 1).
  ConstView EnterRegion(ConstView x, TensorView full, int64_t rows);  // returns (N, C)
  void EnterRegionBackward(TensorView dfull, TensorView dx, int64_t rows);  // (N,C) -> (R,C)
  void LeaveRegion(TensorView partial, TensorView out, int64_t rows);       // (N,C) -> (R,C)
  ConstView LeaveRegionBackward(ConstView dout, TensorView dfull, int64_t rows);  // (R,C) -> (N,C)

  ModelConfig cfg_;
  kernels::Backend* be_ = &kernels::DefaultBackend();
  int64_t batch_;
  ModelShard shard_;
  TensorParallelOps* tp_ = nullptr;
  int tpn_ = 1, tpr_ = 0;
  bool sp_ = false;
  bool llama_;
  // Global sizes, then this rank's local head/kv-head/ffn/vocab sizes.
  int64_t c_, h_, k_, d_, f_, vp_, v_;
  int64_t hl_, kl_, fl_, vl_, kv_begin_, qkv_dim_, fc_dim_;
  std::vector<std::vector<int64_t>> chunks_;
  ParameterSet params_;
  std::map<int64_t, LayerWeights> layer_weights_;  // by global layer index, the layers held
  EndWeights ends_;

  std::map<std::pair<int, int>, std::unique_ptr<ActSet>> live_;
  std::vector<std::vector<std::unique_ptr<ActSet>>> pool_;  // free sets per chunk
  int in_flight_ = 0, peak_in_flight_ = 0;
  int64_t live_bytes_ = 0, peak_activation_bytes_ = 0;
  std::pair<int, int> last_whole_{-1, -1};

  // Scratch for backward (and the projection outputs of forward). N = batch*seq rows.
  Tensor dresidual_;  // (N, C)
  Tensor dnorm_;      // (N, C)
  Tensor dfull_;      // (N, C) gathered gradients / full-row partial sums
  Tensor dqkv_;       // (N, qkv)
  Tensor datty_;      // (N, h*D)
  Tensor dfc_;        // (N, fc)
  Tensor dact_;       // (N, f)
  Tensor proj_out_;   // (N, C) forward scratch for the attention / MLP projections
  Tensor embed_full_; // (N, C) vocab-parallel embedding partial sums

  // Scratch (allocated by Create) and activation sets (allocated when first acquired, pooled
  // after), each from an arena of be_; null until allocated.
  std::unique_ptr<kernels::Arena> scratch_arena_;
  std::unique_ptr<kernels::Arena> act_arena_;
  // The loss sum of a Forward without an accumulator, read back once per call.
  std::unique_ptr<kernels::DeviceScalars> loss_scalars_;
  kernels::DeviceScalars* loss_acc_ = nullptr;
  int loss_slot_ = 0;

  int64_t activation_bytes_ = 0;
  int64_t scratch_bytes_ = 0;
  GradReadyFn grad_ready_;
  // Reports the flat range [begin, end) as ready.
  void ReportReady(int64_t begin, int64_t end) const;
  // The flat range of the parameters named `first` .. `last` (declared consecutively).
  std::pair<int64_t, int64_t> Range(const std::string& first, const std::string& last) const;
  std::pair<int64_t, int64_t> head_range_{0, 0}, norm_f_range_{0, 0}, embed_range_{0, 0};
};

}  // namespace lattice

#endif  // LATTICE_MODEL_DECODER_H_
