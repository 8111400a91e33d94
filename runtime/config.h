// The typed lattice configuration: YAML file + `--set a.b=value` overrides, one Validate().
//
// Every key is declared once (config.cc) with its type and default. Unknown keys, wrong types
// and inconsistent values are errors whose message names the key and the numbers.
// Format version: the top-level key `version: 1` (optional, must be 1 when present).
#ifndef LATTICE_RUNTIME_CONFIG_H_
#define LATTICE_RUNTIME_CONFIG_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/dtype.h"

namespace lattice {

enum class Arch { kGpt2, kLlama };

struct ModelConfig {
  Arch arch = Arch::kGpt2;        // model.arch: gpt2 | llama
  int64_t n_layer = 2;            // model.n_layer
  int64_t d_model = 64;           // model.d_model
  int64_t n_head = 4;             // model.n_head
  int64_t n_kv_head = 0;          // model.n_kv_head (0 = n_head; < n_head = GQA/MQA; llama only)
  int64_t d_ff = 0;               // model.d_ff (0 = 4*d_model for gpt2; required for llama)
  int64_t vocab_size = 256;       // model.vocab_size (real tokens)
  int64_t vocab_pad_multiple = 64;// model.vocab_pad_multiple (padded vocab, masked from the loss)
  int64_t seq_len = 64;           // model.seq_len (also max positions for gpt2)
  float norm_eps = 1e-5f;         // model.norm_eps
  float rope_theta = 10000.0f;    // model.rope_theta (llama)
  int tie_embeddings = -1;        // model.tie_embeddings (-1 = arch default: gpt2 yes, llama no)
  float init_std = 0.02f;         // model.init_std (residual projections scaled by 1/sqrt(2L))

  // Derived, valid after Config::Validate().
  int64_t padded_vocab() const;
  int64_t head_dim() const { return d_model / n_head; }
  int64_t kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  int64_t ff_dim() const { return d_ff > 0 ? d_ff : 4 * d_model; }
  bool tied() const { return tie_embeddings < 0 ? arch == Arch::kGpt2 : tie_embeddings != 0; }

  bool operator==(const ModelConfig&) const = default;
};

enum class LrDecay { kCosine, kLinear, kConstant };

// Activation recompute (docs/memory.md): none keeps every layer activation for the backward;
// selective recomputes the attention core, the activation function and the norms (Megatron's
// selective); full keeps only each layer's input and reruns the layer forward in the backward.
enum class Recompute { kNone, kSelective, kFull };

// train.spike: roll back to the newest checkpoint and skip the data since then on a loss spike
// or a run of non-finite steps (launcher/spike.h, docs/recovery.md). Off unless window or
// max_nonfinite is set.
struct SpikeConfig {
  int64_t window = 0;         // train.spike.window: good losses the z test looks at; 0 = no z test
  // train.spike.z_threshold: a good loss this many standard deviations above the window's mean
  // is a spike. 6: under Gaussian noise a one-sided 6-sigma step has probability ~1e-9, so a
  // million-step run sees no false rollback, while real spikes are tens of sigma.
  double z_threshold = 6.0;
  int64_t max_nonfinite = 0;  // train.spike.max_nonfinite: non-finite steps in a row; 0 = never
  // train.spike.max_rollbacks: rollbacks one process may do; the next trigger is an error. 3: a
  // spike that comes back after three different windows were skipped is not the data's fault.
  int64_t max_rollbacks = 3;

  bool enabled() const { return window > 0 || max_nonfinite > 0; }
  bool operator==(const SpikeConfig&) const = default;
};

struct TrainConfig {
  uint64_t seed = 1234;             // train.seed
  int64_t micro_batch_size = 4;     // train.micro_batch_size
  int64_t global_batch_size = 0;    // train.global_batch_size (0 = micro_batch_size * dp)
  int64_t steps = 100;              // train.steps (optimizer steps, Megatron train-iters)
  float lr = 3e-4f;                 // train.lr
  float min_lr = 3e-5f;             // train.min_lr
  int64_t warmup_steps = 10;        // train.warmup_steps
  LrDecay lr_decay = LrDecay::kCosine;  // train.lr_decay: cosine | linear | constant
  float weight_decay = 0.1f;        // train.weight_decay (never on norms or biases)
  float beta1 = 0.9f;               // train.beta1
  float beta2 = 0.95f;              // train.beta2
  float adam_eps = 1e-8f;           // train.adam_eps
  float grad_clip = 1.0f;           // train.grad_clip (<= 0 disables)
  int64_t log_interval = 1;         // train.log_interval
  int64_t eval_interval = 0;        // train.eval_interval (0 = never)
  int64_t eval_iters = 10;          // train.eval_iters (global batches per evaluation)
  std::string metrics_file;         // train.metrics_file (JSONL, one object per step)
  std::string tensorboard_dir;      // train.tensorboard_dir (TensorBoard event files; "" = none)
  double peak_tflops = 0;           // train.peak_tflops (device dense peak per rank, for MFU; 0 = unknown)
  std::string init_weights;         // train.init_weights (safetensors to start from)
  // train.init_from: weights to fine-tune from (a lattice checkpoint directory, e.g. one made by
  // `lattice convert --from hf`, or a safetensors file); fresh optimizer, iteration 0. The same
  // loader as init_weights; at most one of the two may be set.
  std::string init_from;
  std::string save_weights;         // train.save_weights (safetensors written at the end)
  bool overwrite_init_weights = false;  // train.overwrite_init_weights (save_weights may be init_weights)
  int threads = 0;                  // train.threads (0 = all cores)
  // train.exit_after_minutes: save a checkpoint and stop (exit status 75, launcher/preemption.h)
  // at the first step boundary this many minutes after the start; 0 = no limit.
  double exit_after_minutes = 0;
  Recompute recompute = Recompute::kNone;  // train.recompute: none | selective | full
  int64_t classifier_chunk = 256;   // train.classifier_chunk (token rows per lm-head chunk)
  SpikeConfig spike;                // train.spike.*
  // train.precision: fp32 | bf16 | fp16 (docs/precision.md): the compute dtype of parameters
  // copies, activations and their gradients; fp32 master weights, moments and main gradients
  // either way.
  DType precision = DType::kF32;
  // fp16 dynamic loss scaling, Megatron-LM's flags (parallel/loss_scaler.h).
  double initial_loss_scale = 4294967296.0;  // train.initial_loss_scale (2^32)
  double min_loss_scale = 1.0;               // train.min_loss_scale
  int64_t loss_scale_window = 1000;          // train.loss_scale_window
  int64_t hysteresis = 2;                    // train.hysteresis

  bool operator==(const TrainConfig&) const = default;
};

enum class DataFormat { kPretrain, kSft };

struct DataConfig {
  std::string tokenizer;            // data.tokenizer: path to tokenizer.json, or "byte"
  // data.train / data.val: a dataset prefix or file (Megatron .bin/.idx prefix, llm.c shard,
  // nanoGPT .bin, or a text file for the byte tokenizer) ...
  std::string train;
  std::string val;
  // ... or data.blend: [[weight, prefix], ...] for training (then data.train must be empty).
  std::vector<std::pair<double, std::string>> blend;
  // data.format: pretrain (token files above) | sft (data.train / data.val are JSONL
  // instruction data, runtime/data/sft.h, docs/finetune.md).
  DataFormat format = DataFormat::kPretrain;
  bool pack = false;                // data.pack: sft only, several examples per row

  bool operator==(const DataConfig&) const = default;
};

enum class PipelineSchedule { kOneFOneB, kGpipe, kInterleaved };

struct ParallelConfig {
  int64_t tp = 1;                   // parallel.tp
  int64_t pp = 1;                   // parallel.pp
  int64_t vpp = 1;                  // parallel.vpp (virtual stages per rank, interleaved 1F1B)
  int64_t dp = 0;                   // parallel.dp (0 = derived: world / (tp*pp))
  bool sequence_parallel = false;   // parallel.sequence_parallel
  bool zero1 = false;               // parallel.zero1
  PipelineSchedule schedule = PipelineSchedule::kOneFOneB;  // parallel.schedule: 1f1b|gpipe|interleaved
  // parallel.timeout_seconds: how long one communicator operation waits for the other ranks
  // before the job is aborted with a report naming the ranks that did not arrive
  // (docs/hangs.md; LATTICE_COMM_TIMEOUT_S overrides it). = kDefaultCommTimeoutSeconds.
  double timeout_seconds = 300;
  // parallel.abort_watchdog_seconds: how long an abort may take before the process ends itself
  // (parallel/watchdog.h). = kDefaultAbortWatchdogSeconds.
  double abort_watchdog_seconds = 30;

  bool operator==(const ParallelConfig&) const = default;
};

// Sharded checkpoints of the whole training state (parallel/checkpoint.h, docs/checkpoints.md).
struct CheckpointConfig {
  std::string dir;                  // checkpoint.dir (empty = no checkpoints)
  int64_t interval = 0;             // checkpoint.interval (iterations; 0 = only at the end)
  bool async = false;               // checkpoint.async (write from a background thread)
  bool direct_io = true;            // checkpoint.direct_io (shards written with O_DIRECT)
  int64_t keep = 0;                 // checkpoint.keep (newest kept; 0 = keep all)
  int64_t keep_every = 0;           // checkpoint.keep_every (also keep multiples; 0 = none)
  std::string resume = "auto";      // checkpoint.resume: auto | none | <path>

  bool operator==(const CheckpointConfig&) const = default;
};

struct Config {
  int version = 1;
  ModelConfig model;
  TrainConfig train;
  DataConfig data;
  ParallelConfig parallel;
  CheckpointConfig checkpoint;

  // Checks every invariant that does not need the world size; messages name key and numbers.
  absl::Status Validate() const;
  // Checks the layout against the world size; derives parallel.dp and train.global_batch_size
  // when they are 0 (only when every check passes, so a failed call changes nothing).
  absl::Status ValidateLayout(int64_t world_size);
  // The config as YAML (every key, after defaults), for logs and checkpoints.
  std::string ToYaml() const;

  // Field-wise equality (floats compared exactly: ToYaml() round-trips them bit for bit).
  bool operator==(const Config&) const = default;
};

// Loads `path` (may be empty: all defaults), applies `overrides` ("a.b=value", in order), and
// validates. Errors name the file, the key and the value.
absl::StatusOr<Config> LoadConfig(const std::string& path,
                                  const std::vector<std::string>& overrides);
// The same from YAML text (tests).
absl::StatusOr<Config> ParseConfig(absl::string_view yaml_text,
                                   const std::vector<std::string>& overrides,
                                   absl::string_view source_name = "<string>");

}  // namespace lattice

#endif  // LATTICE_RUNTIME_CONFIG_H_
