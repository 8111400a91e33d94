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
#include <optional>
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
  int64_t recompute_scratch = 0;   // part of scratch: the layer set recompute regenerates into
  int64_t classifier_scratch = 0;  // part of scratch: one chunk of the fused head's logits
  // activations_per_set by category: layers x layer_bytes (what one layer keeps under the
  // recompute mode) + chunks x chunk_io_bytes (tokens, targets, mask, chunk output) + head_bytes.
  int64_t layer_bytes = 0, chunk_io_bytes = 0;
  int64_t layers = 0, chunks = 0;
  int64_t total(int64_t sets_in_flight) const {
    return params + grads + scratch + activations_per_set * sets_in_flight;
  }
};

// How a decoder trades memory for compute (train.recompute, train.classifier_chunk).
struct DecoderOptions {
  Recompute recompute = Recompute::kNone;
  // Token rows per chunk of the fused lm head + cross-entropy (kernels/classifier.h): its
  // scratch is chunk x (Vp/tp + 4) floats. 256 gives the CPU's GEMMs ~77 flops per byte of
  // weight traffic (docs/precision.md), well above a CPU's ridge point.
  int64_t classifier_chunk = 256;
  // The backend every op runs on (null: kernels::DefaultBackend()); it must outlive the
  // decoder. The engine passes a kernels::StorageRoundingBackend for bf16/fp16.
  kernels::Backend* backend = nullptr;
  static DecoderOptions From(const TrainConfig& t) {
    return {t.recompute, t.classifier_chunk, nullptr};
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
  // `recompute` (train.recompute, docs/memory.md) decides which layer activations a
  // micro-batch keeps for the backward and which the backward regenerates: the numbers are the
  // same bit for bit in every mode.
  static absl::StatusOr<std::unique_ptr<Decoder>> Create(const ModelConfig& cfg, int64_t batch,
                                                          const ModelShard& shard,
                                                          TensorParallelOps* tp,
                                                          const DecoderOptions& options = {});

  // Parameter count of a configuration, without allocating anything (presets up to 70B).
  static int64_t CountParameters(const ModelConfig& cfg);
  // What Create(cfg, batch, shard, ...) would allocate, without allocating it. InvalidArgument
  // as Create for shards that do not fit the configuration.
  static absl::StatusOr<DecoderMemory> PlanMemory(const ModelConfig& cfg, int64_t batch,
                                                  const ModelShard& shard,
                                                  const DecoderOptions& options = {});
  // Names and unsharded shapes of the whole model's parameters, in declaration order.
  static std::vector<std::pair<std::string, Shape>> ParameterShapes(const ModelConfig& cfg);

  const ModelConfig& config() const { return cfg_; }
  const ModelShard& shard() const { return shard_; }
  Recompute recompute() const { return recompute_; }
  int64_t classifier_chunk() const { return cls_chunk_; }
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
                        int64_t b, int64_t t, const int32_t* doc_starts = nullptr);
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
  // `doc_starts` (B, T), host memory, optional: packed examples (runtime/data/sft.h); every
  // chunk of the micro-batch must get the same. Attention and positions then stay inside each
  // example (kernels/backend.h, document masking).
  ForwardResult ForwardChunk(int chunk, int micro, const int32_t* tokens, const int32_t* targets,
                             const float* loss_mask, const float* input, float* output, int64_t b,
                             int64_t t, const int32_t* doc_starts = nullptr);
  // With an accumulator set, the head adds each micro-batch's loss sum to slot `slot` of `acc`
  // on the device and ForwardResult::loss_sum stays 0 (the caller reads the step's sum once);
  // null (the default) reads it back into loss_sum. `acc` must outlive its use here.
  // Training: the loss gradient `dloss` the coming head forwards' backward will use (the
  // engine knows it before the forwards). The head then computes its gradients in the forward
  // (the fused classifier, kernels/classifier.h) and a micro-batch keeps the (N, C) input
  // gradient instead of (N, Vp) logits. nullopt (evaluation, and the default): the forward
  // computes the loss alone and the backward, if any, runs the fused pass then.
  void set_head_loss_gradient(std::optional<float> dloss) { head_dloss_ = dloss; }
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
  // Of scratch_bytes(), the recompute layer set (0 with train.recompute=none).
  int64_t recompute_scratch_bytes() const { return recompute_bytes_; }
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
  Decoder(const ModelConfig& cfg, int64_t batch, const ModelShard& shard, TensorParallelOps* tp,
          const DecoderOptions& options = {});
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
  // Which fields an activation set keeps (kept = true) or the recompute layer set rc_ holds
  // (kept = false) under recompute_: `make` sizes (and maybe allocates) each one.
  void LayerFields(LayerActs& a, bool kept, const std::function<Tensor(Shape)>& make) const;
  // The fields a layer's forward and backward work on: the kept ones of `kept`, the others
  // from rc_ (every field is kept when recompute_ is kNone).
  LayerActs Working(const LayerActs& kept) const;

  // Everything one chunk keeps for one micro-batch.
  struct ActSet {
    int64_t b = 0, t = 0;
    int64_t pos0 = 0;  // position of the first token (> 0 only when decoding with a cache)
    bool has_mask = false;
    Tensor tokens, targets, mask;  // (B, T)
    bool has_docs = false;
    Tensor doc_starts;             // (B, T) i32 packed examples (has_docs), see ForwardChunk
    std::vector<LayerActs> layers;
    Tensor residual_out;           // (R, C) output of the chunk's last layer
    Tensor normf, normf_full, normf_mean, normf_rstd;  // head only
    Tensor dhead;                  // (N, C) head only: the classifier's input gradient
    bool head_grads = false;       // the forward's fused pass already made dhead and dweight
    float head_dloss = 0;          // ... with this loss gradient
    int64_t bytes = 0;
  };
  // Decoding: where the chunk's layers read and append keys and values.
  struct DecodeContext {
    KvCache* cache = nullptr;
  };
  // Regenerates the fields of `a` that live in rc_ before the layer's backward, running the
  // same kernels and tensor-parallel collectives in the same order as the forward did.
  void RecomputeLayer(LayerActs& a, int64_t l, const ActSet& s);
  // The attention core over qkv after RoPE: atty and att_lse (forward and selective recompute).
  void AttentionCore(LayerActs& a, const ActSet& s);
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
  // `docs`: the set's doc_starts when it has packed examples, else absent.
  void LayerBackward(LayerActs& a, int64_t l, int64_t b, int64_t t, TensorView dres,
                     ConstView docs);
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
  Recompute recompute_ = Recompute::kNone;
  // True while RecomputeLayer reruns a whole layer forward: the layer's row-parallel outputs
  // then go to dfull_, as dresidual_ carries the backward's gradient.
  bool recomputing_ = false;
  LayerActs rc_;  // the recompute layer set: one per rank, shared by every layer and micro-batch
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
  // The fused classifier: rows per chunk and its scratch (one chunk's logits, of scratch_arena_).
  int64_t cls_chunk_ = 0;
  Tensor cls_scratch_;
  std::optional<float> head_dloss_;
  // Whole logits (N, Vp/tp), only where they are an output (Forward without targets: eval
  // --dump-logits, generate): allocated on first use, outside the training memory plan.
  std::unique_ptr<kernels::Arena> logits_arena_;
  Tensor logits_;
  // The head's fused classifier (training: loss and gradients; else the loss alone), adding
  // the loss sum to (acc, slot).
  void Classify(ActSet& s, kernels::ConstView xn, bool train, float dloss,
                kernels::DeviceScalars& acc, int slot);
  kernels::DeviceScalars* loss_acc_ = nullptr;
  int loss_slot_ = 0;

  int64_t activation_bytes_ = 0;
  int64_t scratch_bytes_ = 0;
  int64_t recompute_bytes_ = 0;  // of scratch_bytes_, rc_'s
  int64_t classifier_bytes_ = 0;  // of scratch_bytes_, cls_scratch_'s
  GradReadyFn grad_ready_;
  // Reports the flat range [begin, end) as ready.
  void ReportReady(int64_t begin, int64_t end) const;
  // The flat range of the parameters named `first` .. `last` (declared consecutively).
  std::pair<int64_t, int64_t> Range(const std::string& first, const std::string& last) const;
  std::pair<int64_t, int64_t> head_range_{0, 0}, norm_f_range_{0, 0}, embed_range_{0, 0};
};

}  // namespace lattice

#endif  // LATTICE_MODEL_DECODER_H_
