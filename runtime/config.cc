#include "runtime/config.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/match.h"
#include "runtime/io/yaml_limits.h"
#include "runtime/status.h"

namespace lattice {

int64_t ModelConfig::padded_vocab() const {
  if (vocab_pad_multiple <= 1) return vocab_size;
  return (vocab_size + vocab_pad_multiple - 1) / vocab_pad_multiple * vocab_pad_multiple;
}

namespace {

constexpr int kConfigVersion = 1;

// Sizes above this are certainly typos; capping them keeps every product Validate() forms
// (tp*pp*vpp, micro_batch*dp, 4*d_model, vocab round-up) far from int64 overflow.
constexpr int64_t kMaxSize = int64_t{1} << 40;
constexpr int64_t kMaxParallel = int64_t{1} << 20;

// ---- Scalar parsing and printing ----------------------------------------------------------

std::string Quote(absl::string_view s) {
  constexpr size_t kMax = 80;
  if (s.size() > kMax) return absl::StrCat("'", s.substr(0, kMax), "...'");
  return absl::StrCat("'", s, "'");
}

// How a value that failed to parse is shown in the error message.
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar: return Quote(node.Scalar());
    case YAML::NodeType::Sequence: return "a sequence";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Null: return "nothing (null)";
    case YAML::NodeType::Undefined: return "nothing";
  }
  return "?";
}

// A double-quoted YAML string that parses back to exactly `s`. Bytes >= 0x80 are written as
// they are (a \xNN escape would be read back as the code point U+00NN, two bytes in UTF-8).
std::string YamlQuote(absl::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
  return out;
}

// Shortest text that parses back to the same value.
template <typename T>
std::string ShortestFloat(T v) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, res.ptr);
}

bool ParseBool(absl::string_view text, bool* out) {
  const std::string t = absl::AsciiStrToLower(text);
  if (t == "true" || t == "yes" || t == "on") {
    *out = true;
    return true;
  }
  if (t == "false" || t == "no" || t == "off") {
    *out = false;
    return true;
  }
  return false;
}

// Out-of-range text parses to inf (absl), so finiteness also rejects values beyond the type.
bool ParseFinite(absl::string_view text, float* out) {
  return absl::SimpleAtof(text, out) && std::isfinite(*out);
}
bool ParseFinite(absl::string_view text, double* out) {
  return absl::SimpleAtod(text, out) && std::isfinite(*out);
}

absl::Status TypeError(absl::string_view expected, const YAML::Node& node) {
  return absl::InvalidArgumentError(absl::StrCat("expected ", expected, ", got ", Describe(node)));
}

// ---- The key table ------------------------------------------------------------------------

// One configuration key: its dotted name, the phrase used in type errors, a one-line doc
// (written into ToYaml() as a comment), and how to set it from YAML and print it back. The
// default is whatever the struct initializer in config.h says, so it is written down once.
struct KeySpec {
  std::string key;
  std::string type;
  std::string doc;
  // Sets the field from a YAML node; errors say what was expected, without the key.
  std::function<absl::Status(const YAML::Node&, Config&)> set;
  // The field as YAML flow text.
  std::function<std::string(const Config&)> get;
};

// Field accessors: `[](Config& c) -> auto& { return c.model.n_layer; }`.
#define LATTICE_CONFIG_FIELD(member) [](Config& c) -> auto& { return c.member; }

template <typename F>
auto& Get(F field, const Config& c) {
  // Accessors are written once for the mutable case; reading through them does not write.
  return field(const_cast<Config&>(c));
}

template <typename F>
KeySpec IntKey(std::string key, F field, std::string doc) {
  using T = std::remove_reference_t<decltype(field(std::declval<Config&>()))>;
  static_assert(std::is_integral_v<T>);
  const std::string type = std::is_signed_v<T> ? "an integer" : "a non-negative integer";
  KeySpec k{std::move(key), type, std::move(doc), nullptr, nullptr};
  k.set = [field, type](const YAML::Node& n, Config& c) -> absl::Status {
    T v;
    if (!n.IsScalar() || !absl::SimpleAtoi(n.Scalar(), &v)) return TypeError(type, n);
    field(c) = v;
    return absl::OkStatus();
  };
  k.get = [field](const Config& c) { return absl::StrCat(Get(field, c)); };
  return k;
}

template <typename F>
KeySpec FloatKey(std::string key, F field, std::string doc) {
  using T = std::remove_reference_t<decltype(field(std::declval<Config&>()))>;
  static_assert(std::is_floating_point_v<T>);
  KeySpec k{std::move(key), "a number", std::move(doc), nullptr, nullptr};
  k.set = [field](const YAML::Node& n, Config& c) -> absl::Status {
    T v;
    if (!n.IsScalar() || !ParseFinite(n.Scalar(), &v)) {
      double d;
      const bool numeric = n.IsScalar() && absl::SimpleAtod(n.Scalar(), &d);
      return TypeError(!numeric                     ? "a number"
                       : std::is_same_v<T, float> ? "a finite number within float range"
                                                  : "a finite number",
                       n);
    }
    field(c) = v;
    return absl::OkStatus();
  };
  k.get = [field](const Config& c) { return ShortestFloat(Get(field, c)); };
  return k;
}

template <typename F>
KeySpec BoolKey(std::string key, F field, std::string doc) {
  KeySpec k{std::move(key), "a boolean (true or false)", std::move(doc), nullptr, nullptr};
  k.set = [field](const YAML::Node& n, Config& c) -> absl::Status {
    bool v;
    if (!n.IsScalar() || !ParseBool(n.Scalar(), &v)) {
      return TypeError("a boolean (true or false)", n);
    }
    field(c) = v;
    return absl::OkStatus();
  };
  k.get = [field](const Config& c) -> std::string { return Get(field, c) ? "true" : "false"; };
  return k;
}

template <typename F>
KeySpec StringKey(std::string key, F field, std::string doc) {
  KeySpec k{std::move(key), "a string", std::move(doc), nullptr, nullptr};
  k.set = [field](const YAML::Node& n, Config& c) -> absl::Status {
    if (n.IsNull()) {  // `key:` or `key: ~` clears the value
      field(c).clear();
      return absl::OkStatus();
    }
    if (!n.IsScalar()) return TypeError("a string", n);
    field(c) = n.Scalar();
    return absl::OkStatus();
  };
  k.get = [field](const Config& c) { return YamlQuote(Get(field, c)); };
  return k;
}

template <typename E>
using EnumNames = std::vector<std::pair<std::string, E>>;

template <typename F, typename E = std::remove_reference_t<
                          decltype(std::declval<F>()(std::declval<Config&>()))>>
KeySpec EnumKey(std::string key, F field, EnumNames<E> names, std::string doc) {
  std::vector<std::string> allowed;
  for (const auto& [name, value] : names) allowed.push_back(name);
  const std::string type = absl::StrCat("one of ", absl::StrJoin(allowed, ", "));
  KeySpec k{std::move(key), type, std::move(doc), nullptr, nullptr};
  k.set = [field, names, type](const YAML::Node& n, Config& c) -> absl::Status {
    if (n.IsScalar()) {
      const std::string v = absl::AsciiStrToLower(n.Scalar());
      for (const auto& [name, value] : names) {
        if (v == name) {
          field(c) = value;
          return absl::OkStatus();
        }
      }
    }
    return TypeError(type, n);
  };
  k.get = [field, names](const Config& c) -> std::string {
    for (const auto& [name, value] : names) {
      if (Get(field, c) == value) return name;
    }
    return "?";
  };
  return k;
}

// model.tie_embeddings: -1 (arch default), 0/false, 1/true.
KeySpec TieKey() {
  const std::string type = "-1 (arch default), true/1 or false/0";
  KeySpec k{"model.tie_embeddings", type,
            "share the embedding with the LM head; -1 = arch default (gpt2 yes, llama no)",
            nullptr, nullptr};
  k.set = [type](const YAML::Node& n, Config& c) -> absl::Status {
    if (n.IsScalar()) {
      bool b;
      int64_t v;
      if (ParseBool(n.Scalar(), &b)) {
        c.model.tie_embeddings = b ? 1 : 0;
        return absl::OkStatus();
      }
      if (absl::SimpleAtoi(n.Scalar(), &v) && v >= -1 && v <= 1) {
        c.model.tie_embeddings = static_cast<int>(v);
        return absl::OkStatus();
      }
    }
    return TypeError(type, n);
  };
  k.get = [](const Config& c) -> std::string {
    if (c.model.tie_embeddings < 0) return "-1";
    return c.model.tie_embeddings ? "true" : "false";
  };
  return k;
}

// data.blend: [[weight, prefix], ...]; null or [] clears it.
KeySpec BlendKey() {
  const std::string type = "a list of [weight, prefix] pairs";
  KeySpec k{"data.blend", type,
            "weighted training mixture [[weight, prefix], ...] (instead of data.train)", nullptr,
            nullptr};
  k.set = [type](const YAML::Node& n, Config& c) -> absl::Status {
    if (n.IsNull()) {
      c.data.blend.clear();
      return absl::OkStatus();
    }
    if (!n.IsSequence()) return TypeError(type, n);
    std::vector<std::pair<double, std::string>> blend;
    for (size_t i = 0; i < n.size(); ++i) {
      const YAML::Node item = n[i];
      if (!item.IsSequence() || item.size() != 2 || !item[0].IsScalar() || !item[1].IsScalar()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "entry ", i, ": expected a [weight, prefix] pair, got ", Describe(item)));
      }
      double w;
      if (!ParseFinite(item[0].Scalar(), &w)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "entry ", i, ": expected a finite number as the weight, got ", Describe(item[0])));
      }
      blend.emplace_back(w, item[1].Scalar());
    }
    c.data.blend = std::move(blend);
    return absl::OkStatus();
  };
  k.get = [](const Config& c) {
    std::vector<std::string> items;
    for (const auto& [w, prefix] : c.data.blend) {
      items.push_back(absl::StrCat("[", ShortestFloat(w), ", ", YamlQuote(prefix), "]"));
    }
    return absl::StrCat("[", absl::StrJoin(items, ", "), "]");
  };
  return k;
}

const std::vector<KeySpec>& Keys() {
  static const std::vector<KeySpec>* const keys = new std::vector<KeySpec>{
      EnumKey("model.arch", LATTICE_CONFIG_FIELD(model.arch),
              EnumNames<Arch>{{"gpt2", Arch::kGpt2}, {"llama", Arch::kLlama}},
              "decoder family"),
      IntKey("model.n_layer", LATTICE_CONFIG_FIELD(model.n_layer), "transformer blocks"),
      IntKey("model.d_model", LATTICE_CONFIG_FIELD(model.d_model), "hidden size"),
      IntKey("model.n_head", LATTICE_CONFIG_FIELD(model.n_head), "attention (query) heads"),
      IntKey("model.n_kv_head", LATTICE_CONFIG_FIELD(model.n_kv_head),
             "key/value heads; 0 = n_head, fewer = GQA/MQA (llama only)"),
      IntKey("model.d_ff", LATTICE_CONFIG_FIELD(model.d_ff),
             "MLP hidden size; 0 = 4*d_model (gpt2), required for llama"),
      IntKey("model.vocab_size", LATTICE_CONFIG_FIELD(model.vocab_size), "real tokens"),
      IntKey("model.vocab_pad_multiple", LATTICE_CONFIG_FIELD(model.vocab_pad_multiple),
             "vocab padded up to a multiple of this; padding is masked from the loss"),
      IntKey("model.seq_len", LATTICE_CONFIG_FIELD(model.seq_len),
             "tokens per sample (also max positions for gpt2)"),
      FloatKey("model.norm_eps", LATTICE_CONFIG_FIELD(model.norm_eps), "LayerNorm/RMSNorm epsilon"),
      FloatKey("model.rope_theta", LATTICE_CONFIG_FIELD(model.rope_theta), "RoPE base (llama)"),
      TieKey(),
      FloatKey("model.init_std", LATTICE_CONFIG_FIELD(model.init_std),
               "init std; residual projections scaled by 1/sqrt(2*n_layer)"),

      IntKey("train.seed", LATTICE_CONFIG_FIELD(train.seed), "seed for init and data order"),
      IntKey("train.micro_batch_size", LATTICE_CONFIG_FIELD(train.micro_batch_size),
             "samples per micro-batch per data-parallel rank"),
      IntKey("train.global_batch_size", LATTICE_CONFIG_FIELD(train.global_batch_size),
             "samples per optimizer step; 0 = micro_batch_size * dp"),
      IntKey("train.steps", LATTICE_CONFIG_FIELD(train.steps), "optimizer steps (train-iters)"),
      FloatKey("train.lr", LATTICE_CONFIG_FIELD(train.lr), "peak learning rate"),
      FloatKey("train.min_lr", LATTICE_CONFIG_FIELD(train.min_lr), "learning rate after decay"),
      IntKey("train.warmup_steps", LATTICE_CONFIG_FIELD(train.warmup_steps),
             "linear warmup steps"),
      EnumKey("train.lr_decay", LATTICE_CONFIG_FIELD(train.lr_decay),
              EnumNames<LrDecay>{{"cosine", LrDecay::kCosine},
                                 {"linear", LrDecay::kLinear},
                                 {"constant", LrDecay::kConstant}},
              "decay from lr to min_lr after warmup"),
      FloatKey("train.weight_decay", LATTICE_CONFIG_FIELD(train.weight_decay),
               "AdamW decoupled weight decay (never on norms or biases)"),
      FloatKey("train.beta1", LATTICE_CONFIG_FIELD(train.beta1), "AdamW beta1"),
      FloatKey("train.beta2", LATTICE_CONFIG_FIELD(train.beta2), "AdamW beta2"),
      FloatKey("train.adam_eps", LATTICE_CONFIG_FIELD(train.adam_eps), "AdamW epsilon"),
      FloatKey("train.grad_clip", LATTICE_CONFIG_FIELD(train.grad_clip),
               "global grad-norm clip; <= 0 disables"),
      IntKey("train.log_interval", LATTICE_CONFIG_FIELD(train.log_interval),
             "steps between log lines"),
      IntKey("train.eval_interval", LATTICE_CONFIG_FIELD(train.eval_interval),
             "steps between evaluations; 0 = never"),
      IntKey("train.eval_iters", LATTICE_CONFIG_FIELD(train.eval_iters),
             "micro-batches per evaluation"),
      StringKey("train.metrics_file", LATTICE_CONFIG_FIELD(train.metrics_file),
                "JSONL metrics, one object per step"),
      StringKey("train.tensorboard_dir", LATTICE_CONFIG_FIELD(train.tensorboard_dir),
                "directory for TensorBoard event files (rank 0); empty = none"),
      FloatKey("train.peak_tflops", LATTICE_CONFIG_FIELD(train.peak_tflops),
               "dense peak TFLOP/s of one rank's device, for MFU; 0 = unknown (no MFU)"),
      StringKey("train.init_weights", LATTICE_CONFIG_FIELD(train.init_weights),
                "safetensors to start from"),
      StringKey("train.init_from", LATTICE_CONFIG_FIELD(train.init_from),
                "checkpoint dir or safetensors to fine-tune from (weights only, iteration 0)"),
      StringKey("train.save_weights", LATTICE_CONFIG_FIELD(train.save_weights),
                "safetensors written at the end"),
      BoolKey("train.overwrite_init_weights", LATTICE_CONFIG_FIELD(train.overwrite_init_weights),
              "let train.save_weights replace the train.init_weights file"),
      IntKey("train.threads", LATTICE_CONFIG_FIELD(train.threads), "CPU threads; 0 = all cores"),
      FloatKey("train.exit_after_minutes", LATTICE_CONFIG_FIELD(train.exit_after_minutes),
               "checkpoint and stop (exit 75) this many minutes after start; 0 = no limit"),
      EnumKey("train.recompute", LATTICE_CONFIG_FIELD(train.recompute),
              EnumNames<Recompute>{{"none", Recompute::kNone},
                                   {"selective", Recompute::kSelective},
                                   {"full", Recompute::kFull}},
              "activation recompute: selective (attention core, activations, norms) or full "
              "(each layer from its input); docs/memory.md"),
      IntKey("train.classifier_chunk", LATTICE_CONFIG_FIELD(train.classifier_chunk),
             "token rows per chunk of the fused lm head + cross-entropy (no whole logits)"),
      EnumKey("train.precision", LATTICE_CONFIG_FIELD(train.precision),
              EnumNames<DType>{{"fp32", DType::kF32}, {"bf16", DType::kBF16},
                               {"fp16", DType::kF16}},
              "compute dtype: fp32, or bf16/fp16 with fp32 masters (docs/precision.md)"),
      FloatKey("train.initial_loss_scale", LATTICE_CONFIG_FIELD(train.initial_loss_scale),
               "fp16: the first loss scale (Megatron --initial-loss-scale)"),
      FloatKey("train.min_loss_scale", LATTICE_CONFIG_FIELD(train.min_loss_scale),
               "fp16: the scale never backs off below this (--min-loss-scale)"),
      IntKey("train.loss_scale_window", LATTICE_CONFIG_FIELD(train.loss_scale_window),
             "fp16: clean steps before the scale doubles (--loss-scale-window)"),
      IntKey("train.hysteresis", LATTICE_CONFIG_FIELD(train.hysteresis),
             "fp16: overflows within a window before the scale halves (--hysteresis)"),
      IntKey("train.spike.window", LATTICE_CONFIG_FIELD(train.spike.window),
             "good losses a spike is measured against; 0 = no spike test (docs/recovery.md)"),
      FloatKey("train.spike.z_threshold", LATTICE_CONFIG_FIELD(train.spike.z_threshold),
               "a loss this many standard deviations above the window's mean is a spike"),
      IntKey("train.spike.max_nonfinite", LATTICE_CONFIG_FIELD(train.spike.max_nonfinite),
             "non-finite (skipped) steps in a row that roll back; 0 = never"),
      IntKey("train.spike.max_rollbacks", LATTICE_CONFIG_FIELD(train.spike.max_rollbacks),
             "rollbacks allowed; the next spike stops the run with an error"),

      StringKey("data.tokenizer", LATTICE_CONFIG_FIELD(data.tokenizer),
                "path to tokenizer.json, or \"byte\""),
      StringKey("data.train", LATTICE_CONFIG_FIELD(data.train), "training dataset prefix or file"),
      StringKey("data.val", LATTICE_CONFIG_FIELD(data.val), "validation dataset prefix or file"),
      BlendKey(),
      EnumKey("data.format", LATTICE_CONFIG_FIELD(data.format),
              EnumNames<DataFormat>{{"pretrain", DataFormat::kPretrain},
                                    {"sft", DataFormat::kSft}},
              "pretrain (token files) | sft (JSONL instruction data, docs/finetune.md)"),
      BoolKey("data.pack", LATTICE_CONFIG_FIELD(data.pack),
              "sft: pack several examples per row (document-masked attention)"),

      IntKey("parallel.tp", LATTICE_CONFIG_FIELD(parallel.tp), "tensor-parallel size"),
      IntKey("parallel.pp", LATTICE_CONFIG_FIELD(parallel.pp), "pipeline-parallel size"),
      IntKey("parallel.vpp", LATTICE_CONFIG_FIELD(parallel.vpp),
             "virtual pipeline stages per rank (interleaved schedule)"),
      IntKey("parallel.dp", LATTICE_CONFIG_FIELD(parallel.dp),
             "data-parallel size; 0 = world / (tp*pp)"),
      BoolKey("parallel.sequence_parallel", LATTICE_CONFIG_FIELD(parallel.sequence_parallel),
              "shard norms/dropout activations along the sequence over tp"),
      BoolKey("parallel.zero1", LATTICE_CONFIG_FIELD(parallel.zero1),
              "shard optimizer state over dp (distributed optimizer)"),
      EnumKey("parallel.schedule", LATTICE_CONFIG_FIELD(parallel.schedule),
              EnumNames<PipelineSchedule>{{"1f1b", PipelineSchedule::kOneFOneB},
                                          {"gpipe", PipelineSchedule::kGpipe},
                                          {"interleaved", PipelineSchedule::kInterleaved}},
              "pipeline schedule"),
      FloatKey("parallel.timeout_seconds", LATTICE_CONFIG_FIELD(parallel.timeout_seconds),
               "seconds one communicator operation waits for the other ranks before the job "
               "aborts naming the missing ranks (env LATTICE_COMM_TIMEOUT_S overrides)"),
      FloatKey("parallel.abort_watchdog_seconds",
               LATTICE_CONFIG_FIELD(parallel.abort_watchdog_seconds),
               "seconds an abort may take before the process exits by itself (code 125)"),

      StringKey("checkpoint.dir", LATTICE_CONFIG_FIELD(checkpoint.dir),
                "directory of sharded checkpoints (empty = none)"),
      IntKey("checkpoint.interval", LATTICE_CONFIG_FIELD(checkpoint.interval),
             "iterations between checkpoints; 0 = only at the end"),
      BoolKey("checkpoint.async", LATTICE_CONFIG_FIELD(checkpoint.async),
              "write checkpoints from a background thread"),
      BoolKey("checkpoint.direct_io", LATTICE_CONFIG_FIELD(checkpoint.direct_io),
              "write shards, and on resume read the boxes one rank alone reads, with "
              "O_DIRECT, past the page cache (buffered where the filesystem refuses it)"),
      IntKey("checkpoint.keep", LATTICE_CONFIG_FIELD(checkpoint.keep),
             "newest checkpoints kept; 0 = keep all"),
      IntKey("checkpoint.keep_every", LATTICE_CONFIG_FIELD(checkpoint.keep_every),
             "also keep checkpoints whose iteration is a multiple of this; 0 = none"),
      StringKey("checkpoint.resume", LATTICE_CONFIG_FIELD(checkpoint.resume),
                "auto (newest good one in checkpoint.dir) | none | <checkpoint path>"),
  };
  return *keys;
}

#undef LATTICE_CONFIG_FIELD

const KeySpec* FindKey(absl::string_view key) {
  for (const KeySpec& k : Keys()) {
    if (k.key == key) return &k;
  }
  return nullptr;
}

// "model", "train", ...: the prefixes of the keys, which the YAML file writes as mappings.
bool IsSection(absl::string_view path) {
  for (const KeySpec& k : Keys()) {
    if (k.key.size() > path.size() && absl::StartsWith(k.key, path) && k.key[path.size()] == '.') {
      return true;
    }
  }
  return false;
}

size_t EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t subst = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, subst});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

absl::string_view LastComponent(absl::string_view key) {
  const size_t dot = key.rfind('.');
  return dot == absl::string_view::npos ? key : key.substr(dot + 1);
}

// " (did you mean 'model.n_head'?)" or "".
std::string Suggestion(absl::string_view unknown) {
  // The right name in the wrong section ("train.n_layer") is the likeliest slip.
  for (const KeySpec& k : Keys()) {
    if (LastComponent(k.key) == LastComponent(unknown)) {
      return absl::StrCat(" (did you mean '", k.key, "'?)");
    }
  }
  std::vector<std::string> candidates = {"version"};
  for (const KeySpec& k : Keys()) {
    candidates.push_back(k.key);
    candidates.push_back(std::string(k.key.substr(0, k.key.rfind('.'))));
  }
  const std::string* best = nullptr;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const std::string& c : candidates) {
    const size_t d = EditDistance(unknown, c);
    if (d < best_distance) {
      best_distance = d;
      best = &c;
    }
  }
  if (best != nullptr && best_distance <= std::max<size_t>(2, unknown.size() / 4)) {
    return absl::StrCat(" (did you mean '", *best, "'?)");
  }
  return "";
}

std::string Where(absl::string_view source, const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return std::string(source);
  return absl::StrCat(source, ":", mark.line + 1);
}

absl::Status SetKey(const KeySpec& spec, const YAML::Node& value, Config& config,
                    absl::string_view where) {
  absl::Status s = spec.set(value, config);
  if (!s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(spec.key, ": ", s.message(), " (", where, ")"));
  }
  return absl::OkStatus();
}

absl::Status SetVersion(const YAML::Node& value, Config& config, absl::string_view where) {
  int64_t v = 0;
  if (!value.IsScalar() || !absl::SimpleAtoi(value.Scalar(), &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("version: ", TypeError("an integer", value).message(), " (", where, ")"));
  }
  if (v != kConfigVersion) {
    return absl::InvalidArgumentError(absl::StrCat("version: unsupported config version ", v,
                                                   " (this lattice reads version ",
                                                   kConfigVersion, ") (", where, ")"));
  }
  config.version = kConfigVersion;
  return absl::OkStatus();
}

// Applies one mapping of the file. Keys may be nested (`model: {n_layer: 2}`) or dotted
// (`model.n_layer: 2`); both name the same key, and giving a key twice is an error.
absl::Status ApplyMap(const YAML::Node& map, absl::string_view prefix, absl::string_view source,
                      std::set<std::string>& seen, Config& config) {
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node key_node = it->first;
    const YAML::Node value = it->second;
    if (!key_node.IsScalar()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "keys must be plain names, got ", Describe(key_node), " in ", Where(source, key_node)));
    }
    const std::string path =
        prefix.empty() ? key_node.Scalar() : absl::StrCat(prefix, ".", key_node.Scalar());
    const std::string where = Where(source, key_node);
    if (!seen.insert(path).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate key '", path, "' in ", where));
    }
    if (path == "version") {
      LATTICE_RETURN_IF_ERROR(SetVersion(value, config, where));
    } else if (const KeySpec* spec = FindKey(path)) {
      LATTICE_RETURN_IF_ERROR(SetKey(*spec, value, config, where));
    } else if (IsSection(path)) {
      if (value.IsNull()) continue;  // `model:` with nothing under it
      if (!value.IsMap()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": expected a mapping of keys (", path, ".<key>: value), got ",
                         Describe(value), " (", where, ")"));
      }
      LATTICE_RETURN_IF_ERROR(ApplyMap(value, path, source, seen, config));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown key '", path, "' in ", where, Suggestion(path)));
    }
  }
  return absl::OkStatus();
}

absl::Status ApplyOverride(const std::string& override, Config& config) {
  const std::string where = absl::StrCat("override '", override, "'");
  const size_t eq = override.find('=');
  if (eq == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("override '", override,
                     "' has no '=': write key=value, e.g. model.n_layer=4"));
  }
  const std::string key(absl::StripAsciiWhitespace(absl::string_view(override).substr(0, eq)));
  const std::string text = override.substr(eq + 1);
  const KeySpec* spec = FindKey(key);
  if (spec == nullptr && key != "version") {
    if (IsSection(key)) {
      return absl::InvalidArgumentError(absl::StrCat("'", key, "' in ", where,
                                                     " is a section; override its keys one at a "
                                                     "time (key.name=value)"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("unknown key '", key, "' in ", where, Suggestion(key)));
  }
  LATTICE_RETURN_IF_ERROR(Annotate(CheckYamlLimits(text), absl::StrCat(key, " (", where, ")")));
  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, ": value ", Quote(text), " is not valid YAML: ", e.msg, " (", where,
                     ")"));
  }
  if (key == "version") return SetVersion(value, config, where);
  return SetKey(*spec, value, config, where);
}

absl::Status ApplyYaml(absl::string_view yaml_text, absl::string_view source, Config& config) {
  // Bounded size and depth before yaml-cpp, whose recursion guard only says "bad file".
  LATTICE_RETURN_IF_ERROR(Annotate(CheckYamlLimits(yaml_text), source));
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    // e.mark is 0-based; e.msg is the message without yaml-cpp's own location prefix.
    const std::string where =
        e.mark.is_null() ? std::string(source)
                         : absl::StrCat(source, ":", e.mark.line + 1, ":", e.mark.column + 1);
    return absl::InvalidArgumentError(absl::StrCat(where, ": invalid YAML: ", e.msg));
  }
  if (docs.size() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": holds ", docs.size(), " YAML documents; a config is one"));
  }
  if (docs.empty() || docs[0].IsNull()) return absl::OkStatus();  // empty file: defaults
  if (!docs[0].IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": the top level must be a mapping of keys, got ", Describe(docs[0])));
  }
  std::set<std::string> seen;
  return ApplyMap(docs[0], "", source, seen, config);
}

// ---- Validation helpers -------------------------------------------------------------------

class Errors {
 public:
  void Add(std::string e) { errors_.push_back(std::move(e)); }
  bool empty() const { return errors_.empty(); }
  absl::Status ToStatus() const {
    if (errors_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrJoin(errors_, "; "));
  }

 private:
  std::vector<std::string> errors_;
};

// Every size is in range, but their products need not be: the parameter count and the largest
// activation tensor (in double, so the check itself cannot overflow) must stay addressable with
// room to spare, so no int64 element count or byte count computed from them overflows. This
// bound is far beyond any machine; whether a model fits THIS machine is the memory plan's
// question (parallel/engine.cc, before anything is allocated), which answers in GiB.
constexpr double kMaxElements = static_cast<double>(int64_t{1} << 50);

void CheckModelSize(Errors& e, const ModelConfig& m, const TrainConfig& t) {
  const double c = static_cast<double>(m.d_model), l = static_cast<double>(m.n_layer);
  const double h = static_cast<double>(m.n_head), d = c / h;
  const double kv = static_cast<double>(m.kv_heads());
  const double f = static_cast<double>(m.d_ff > 0 ? m.d_ff : 4 * m.d_model);
  const double v = static_cast<double>(m.vocab_size) + static_cast<double>(m.vocab_pad_multiple);
  const double seq = static_cast<double>(m.seq_len), b = static_cast<double>(t.micro_batch_size);
  // Per layer: qkv, projection, the (gated) MLP, norms and biases; then both vocabulary
  // matrices and the position table (an upper bound for either architecture).
  const double per_layer = (h + 2 * kv) * d * c + c * h * d + 3 * f * c + 8 * c + f;
  const double params = l * per_layer + 2 * v * c + seq * c;
  if (!(params <= kMaxElements)) {
    e.Add(absl::StrFormat(
        "the model would have %.3g parameters (model.n_layer=%d, model.d_model=%d, "
        "model.d_ff=%d, model.vocab_size=%d), beyond the %.3g elements lattice addresses",
        params, m.n_layer, m.d_model, static_cast<int64_t>(f), m.vocab_size, kMaxElements));
  }
  // The largest activations of one micro-batch: attention scores (b, h, T, T), logits (b*T, V),
  // the MLP input (b*T, 2F); every layer keeps such a set.
  const double act = l * (b * h * seq * seq + b * seq * (2 * f + 8 * c)) + b * seq * v;
  if (!(act <= kMaxElements)) {
    e.Add(absl::StrFormat(
        "one micro-batch would need %.3g activation elements (train.micro_batch_size=%d, "
        "model.seq_len=%d, model.n_layer=%d, model.n_head=%d), beyond the %.3g elements "
        "lattice addresses",
        act, t.micro_batch_size, m.seq_len, m.n_layer, m.n_head, kMaxElements));
  }
}

void CheckRange(Errors& e, absl::string_view key, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo) {
    e.Add(absl::StrCat(key, "=", v, " must be >= ", lo));
  } else if (v > hi) {
    e.Add(absl::StrCat(key, "=", v, " is too large (at most ", hi, ")"));
  }
}

}  // namespace

// ---- Config -------------------------------------------------------------------------------

absl::Status Config::Validate() const {
  Errors e;
  if (version != kConfigVersion) {
    e.Add(absl::StrCat("version=", version, " is unsupported (this lattice reads version ",
                       kConfigVersion, ")"));
  }
  const ModelConfig& m = model;
  const TrainConfig& t = train;
  const ParallelConfig& p = parallel;

  // Ranges first: the relations below multiply these, which is only safe once they are sane.
  // The deepest trained decoders have a few hundred layers; 2^20 keeps the per-layer
  // bookkeeping (names, views, schedules) of any accepted config small.
  CheckRange(e, "model.n_layer", m.n_layer, 1, int64_t{1} << 20);
  CheckRange(e, "model.d_model", m.d_model, 1, kMaxSize);
  CheckRange(e, "model.n_head", m.n_head, 1, kMaxSize);
  CheckRange(e, "model.n_kv_head", m.n_kv_head, 0, kMaxSize);
  CheckRange(e, "model.d_ff", m.d_ff, 0, kMaxSize);
  CheckRange(e, "model.vocab_size", m.vocab_size, 1, kMaxSize);
  CheckRange(e, "model.vocab_pad_multiple", m.vocab_pad_multiple, 1, kMaxSize);
  CheckRange(e, "model.seq_len", m.seq_len, 1, kMaxSize);
  CheckRange(e, "model.tie_embeddings", m.tie_embeddings, -1, 1);
  CheckRange(e, "train.micro_batch_size", t.micro_batch_size, 1, kMaxSize);
  CheckRange(e, "train.global_batch_size", t.global_batch_size, 0, kMaxSize);
  CheckRange(e, "train.steps", t.steps, 1, kMaxSize);
  CheckRange(e, "train.classifier_chunk", t.classifier_chunk, 1, kMaxSize);
  CheckRange(e, "train.warmup_steps", t.warmup_steps, 0, kMaxSize);
  CheckRange(e, "train.log_interval", t.log_interval, 1, kMaxSize);
  CheckRange(e, "train.eval_interval", t.eval_interval, 0, kMaxSize);
  CheckRange(e, "train.eval_iters", t.eval_iters, t.eval_interval > 0 ? 1 : 0, kMaxSize);
  if (e.empty()) CheckModelSize(e, m, t);
  CheckRange(e, "train.threads", t.threads, 0, kMaxParallel);
  CheckRange(e, "parallel.tp", p.tp, 1, kMaxParallel);
  CheckRange(e, "parallel.pp", p.pp, 1, kMaxParallel);
  CheckRange(e, "parallel.vpp", p.vpp, 1, kMaxParallel);
  if (!(p.timeout_seconds > 0) || !std::isfinite(p.timeout_seconds)) {
    e.Add(absl::StrCat("parallel.timeout_seconds=", p.timeout_seconds, " must be > 0"));
  }
  if (!(p.abort_watchdog_seconds > 0) || !std::isfinite(p.abort_watchdog_seconds)) {
    e.Add(absl::StrCat("parallel.abort_watchdog_seconds=", p.abort_watchdog_seconds,
                       " must be > 0"));
  }
  CheckRange(e, "parallel.dp", p.dp, 0, kMaxParallel);
  // A window of one loss has no standard deviation.
  if (t.spike.window == 1) {
    e.Add("train.spike.window=1: the spike test needs a window of >= 2 losses (0 = off)");
  }
  CheckRange(e, "train.spike.window", t.spike.window, 0, kMaxSize);
  CheckRange(e, "train.spike.max_nonfinite", t.spike.max_nonfinite, 0, kMaxSize);
  CheckRange(e, "train.spike.max_rollbacks", t.spike.max_rollbacks, 0, kMaxSize);
  CheckRange(e, "checkpoint.interval", checkpoint.interval, 0, kMaxSize);
  CheckRange(e, "checkpoint.keep", checkpoint.keep, 0, kMaxSize);
  CheckRange(e, "checkpoint.keep_every", checkpoint.keep_every, 0, kMaxSize);
  if (checkpoint.resume.empty()) {
    e.Add("checkpoint.resume is empty; give auto, none or a checkpoint path");
  }
  if (checkpoint.keep_every > 0 && checkpoint.keep == 0) {
    e.Add(absl::StrCat("checkpoint.keep_every=", checkpoint.keep_every,
                       " needs checkpoint.keep > 0 (keep=0 keeps every checkpoint already)"));
  }
  if (!e.empty()) return e.ToStatus();

  // Floats (the parser rejects NaN and inf, but a Config can also be built in code).
  if (!(m.norm_eps > 0) || !std::isfinite(m.norm_eps)) {
    e.Add(absl::StrCat("model.norm_eps=", m.norm_eps, " must be > 0"));
  }
  if (m.arch == Arch::kLlama && (!(m.rope_theta > 0) || !std::isfinite(m.rope_theta))) {
    e.Add(absl::StrCat("model.rope_theta=", m.rope_theta, " must be > 0"));
  }
  if (!(m.init_std > 0) || !std::isfinite(m.init_std)) {
    e.Add(absl::StrCat("model.init_std=", m.init_std, " must be > 0"));
  }
  if (!(t.min_lr >= 0) || !std::isfinite(t.min_lr)) {
    e.Add(absl::StrCat("train.min_lr=", t.min_lr, " must be >= 0"));
  } else if (!(t.lr >= t.min_lr) || !std::isfinite(t.lr)) {
    e.Add(absl::StrCat("train.lr=", t.lr, " must be >= train.min_lr=", t.min_lr));
  }
  if (!(t.weight_decay >= 0) || !std::isfinite(t.weight_decay)) {
    e.Add(absl::StrCat("train.weight_decay=", t.weight_decay, " must be >= 0"));
  }
  if (!(t.beta1 >= 0 && t.beta1 < 1)) {
    e.Add(absl::StrCat("train.beta1=", t.beta1, " must be in [0, 1)"));
  }
  if (!(t.beta2 >= 0 && t.beta2 < 1)) {
    e.Add(absl::StrCat("train.beta2=", t.beta2, " must be in [0, 1)"));
  }
  if (!(t.adam_eps > 0) || !std::isfinite(t.adam_eps)) {
    e.Add(absl::StrCat("train.adam_eps=", t.adam_eps, " must be > 0"));
  }
  if (std::isnan(t.grad_clip)) e.Add("train.grad_clip=nan must be a number (<= 0 disables)");
  if (!(t.exit_after_minutes >= 0) || !std::isfinite(t.exit_after_minutes)) {
    e.Add(absl::StrCat("train.exit_after_minutes=", t.exit_after_minutes,
                       " must be >= 0 (0 = no limit)"));
  }
  if (!(t.spike.z_threshold > 0) || !std::isfinite(t.spike.z_threshold)) {
    e.Add(absl::StrCat("train.spike.z_threshold=", t.spike.z_threshold, " must be > 0"));
  }
  // The loss scaler's own rules (parallel/loss_scaler.h, LossScalerConfig::Validate), named by
  // their keys; they matter only for fp16 but are checked always, so a typo never waits.
  if (!(t.initial_loss_scale > 0) || !(t.initial_loss_scale <= 3.4028234663852886e38)) {
    e.Add(absl::StrCat("train.initial_loss_scale=", t.initial_loss_scale,
                       " must be > 0 and fit fp32 (Megatron's default is 4294967296 = 2^32)"));
  } else if (!(t.min_loss_scale > 0) || !(t.min_loss_scale <= t.initial_loss_scale)) {
    e.Add(absl::StrCat("train.min_loss_scale=", t.min_loss_scale,
                       " must be > 0 and <= train.initial_loss_scale=", t.initial_loss_scale));
  }
  if (t.loss_scale_window < 1) {
    e.Add(absl::StrCat("train.loss_scale_window=", t.loss_scale_window, " must be >= 1"));
  }
  if (t.hysteresis < 1) {
    e.Add(absl::StrCat("train.hysteresis=", t.hysteresis, " must be >= 1"));
  }
  if (t.spike.enabled() && t.spike.max_rollbacks > 0 && checkpoint.dir.empty()) {
    e.Add(absl::StrCat("train.spike (window=", t.spike.window, ", max_nonfinite=",
                       t.spike.max_nonfinite,
                       ") rolls back to the newest checkpoint, but checkpoint.dir is empty; set "
                       "it, or train.spike.max_rollbacks=0 to stop on the first spike instead"));
  }
  if (!(t.peak_tflops >= 0) || !std::isfinite(t.peak_tflops)) {
    e.Add(absl::StrCat("train.peak_tflops=", t.peak_tflops, " must be >= 0 (0 = unknown)"));
  }

  // Model shape.
  if (m.d_model % m.n_head != 0) {
    e.Add(absl::StrCat("model.d_model=", m.d_model, " is not divisible by model.n_head=",
                       m.n_head));
  }
  if (m.n_kv_head > 0) {
    if (m.arch == Arch::kGpt2 && m.n_kv_head != m.n_head) {
      e.Add(absl::StrCat("model.n_kv_head=", m.n_kv_head, " differs from model.n_head=",
                         m.n_head,
                         ": grouped-query attention needs model.arch=llama (gpt2 takes 0 or "
                         "n_head)"));
    } else if (m.n_head % m.n_kv_head != 0) {
      e.Add(absl::StrCat("model.n_head=", m.n_head, " is not divisible by model.n_kv_head=",
                         m.n_kv_head));
    }
  }
  if (m.arch == Arch::kLlama) {
    if (m.d_model % m.n_head == 0 && m.head_dim() % 2 != 0) {
      e.Add(absl::StrCat("head dim model.d_model/model.n_head = ", m.d_model, "/", m.n_head,
                         " = ", m.head_dim(), " is odd; llama's RoPE rotates pairs"));
    }
    if (m.d_ff == 0) {
      e.Add("model.d_ff must be set (> 0) for model.arch=llama (e.g. 8/3*d_model rounded)");
    }
  }

  // Schedule.
  if (t.warmup_steps > t.steps) {
    e.Add(absl::StrCat("train.warmup_steps=", t.warmup_steps, " exceeds train.steps=", t.steps));
  }
  if (t.global_batch_size > 0 && t.global_batch_size % t.micro_batch_size != 0) {
    e.Add(absl::StrCat("train.global_batch_size=", t.global_batch_size,
                       " is not divisible by train.micro_batch_size=", t.micro_batch_size));
  }

  // Data.
  if (!data.train.empty() && !data.blend.empty()) {
    e.Add(absl::StrCat("data.train='", data.train,
                       "' and data.blend are both set; give one of them"));
  }
  for (size_t i = 0; i < data.blend.size(); ++i) {
    const auto& [w, prefix] = data.blend[i];
    if (!(w > 0) || !std::isfinite(w)) {
      e.Add(absl::StrCat("data.blend entry ", i, " ('", prefix, "') has weight ", w,
                         "; weights must be > 0"));
    }
    if (prefix.empty()) e.Add(absl::StrCat("data.blend entry ", i, " has an empty prefix"));
  }
  if (data.format == DataFormat::kSft) {
    if (!data.blend.empty()) {
      e.Add("data.blend is not supported with data.format=sft; give one JSONL file in data.train");
    }
    if (data.tokenizer.empty()) {
      e.Add("data.format=sft needs data.tokenizer (the JSONL text is tokenized with it)");
    }
  } else if (data.pack) {
    e.Add("data.pack=true needs data.format=sft (pretraining windows are not packed examples)");
  }
  if (!t.init_from.empty() && !t.init_weights.empty()) {
    e.Add(absl::StrCat("train.init_from='", t.init_from, "' and train.init_weights='",
                       t.init_weights, "' are both set; give one of them"));
  }

  // Parallel layout (the parts that do not need the world size).
  if (p.vpp > 1 && (p.schedule != PipelineSchedule::kInterleaved || p.pp == 1)) {
    e.Add(absl::StrCat("parallel.vpp=", p.vpp,
                       " needs parallel.schedule=interleaved and parallel.pp > 1 (pp=", p.pp,
                       ")"));
  }
  if (m.n_layer % (p.pp * p.vpp) != 0) {
    e.Add(absl::StrCat("model.n_layer=", m.n_layer,
                       " is not divisible by parallel.pp*parallel.vpp = ", p.pp, "*", p.vpp, " = ",
                       p.pp * p.vpp));
  }
  if (p.tp > 1) {
    if (m.n_head % p.tp != 0) {
      e.Add(absl::StrCat("model.n_head=", m.n_head, " is not divisible by parallel.tp=", p.tp));
    }
    // Fewer kv heads than tp ranks: each kv head is replicated on tp/kv ranks.
    const int64_t kv = m.kv_heads();
    if (kv % p.tp != 0 && p.tp % kv != 0) {
      e.Add(absl::StrCat("kv heads (model.n_kv_head) = ", kv, " and parallel.tp=", p.tp,
                         ": one must divide the other"));
    }
    if (m.ff_dim() % p.tp != 0) {
      e.Add(absl::StrCat("MLP size model.d_ff = ", m.ff_dim(), " is not divisible by parallel.tp=",
                         p.tp));
    }
    if (m.padded_vocab() % p.tp != 0) {
      e.Add(absl::StrCat("padded vocab ", m.padded_vocab(), " (model.vocab_size=", m.vocab_size,
                         " rounded up to model.vocab_pad_multiple=", m.vocab_pad_multiple,
                         ") is not divisible by parallel.tp=", p.tp,
                         "; make vocab_pad_multiple a multiple of tp"));
    }
    if (p.sequence_parallel && m.seq_len % p.tp != 0) {
      e.Add(absl::StrCat("model.seq_len=", m.seq_len,
                         " is not divisible by parallel.tp=", p.tp,
                         " (parallel.sequence_parallel shards the sequence)"));
    }
  }
  return e.ToStatus();
}

absl::Status Config::ValidateLayout(int64_t world_size) {
  LATTICE_RETURN_IF_ERROR(Validate());
  const ParallelConfig& p = parallel;
  if (world_size < 1 || world_size > kMaxParallel) {
    return absl::InvalidArgumentError(absl::StrCat("world size ", world_size, " is out of range"));
  }
  // Derived values are computed first and stored only when everything holds, so a failed call
  // leaves the config as it was.
  int64_t dp = p.dp;
  if (dp == 0) {
    if (world_size % (p.tp * p.pp) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "world size ", world_size, " is not divisible by parallel.tp*parallel.pp = ", p.tp, "*",
          p.pp, " = ", p.tp * p.pp));
    }
    dp = world_size / (p.tp * p.pp);
  }
  if (p.tp * dp * p.pp != world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("world size ", world_size, " != parallel.tp*parallel.dp*parallel.pp = ", p.tp,
                     "*", dp, "*", p.pp, " = ", p.tp * dp * p.pp));
  }
  const TrainConfig& t = train;
  const int64_t per_step = t.micro_batch_size * dp;
  const int64_t global_batch = t.global_batch_size == 0 ? per_step : t.global_batch_size;
  if (global_batch % per_step != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train.global_batch_size=", global_batch,
        " is not divisible by train.micro_batch_size*dp = ", t.micro_batch_size, "*", dp, " = ",
        per_step));
  }
  parallel.dp = dp;
  train.global_batch_size = global_batch;
  return absl::OkStatus();
}

std::string Config::ToYaml() const {
  std::vector<std::pair<std::string, std::string>> lines;  // (text, doc)
  lines.emplace_back(absl::StrCat("version: ", version), "config format version");
  // Sections nest (train.spike.window is `window` under `spike:` under `train:`); `open` is
  // the path of mappings written so far, so a section is opened once even when a nested one
  // comes between its keys.
  std::vector<std::string> open;
  for (const KeySpec& k : Keys()) {
    std::vector<std::string> path = absl::StrSplit(k.key, '.');
    const std::string leaf = path.back();
    path.pop_back();
    size_t common = 0;
    while (common < open.size() && common < path.size() && open[common] == path[common]) {
      ++common;
    }
    open.resize(common);
    for (size_t i = common; i < path.size(); ++i) {
      lines.emplace_back(absl::StrCat(std::string(2 * i, ' '), path[i], ":"), "");
      open.push_back(path[i]);
    }
    lines.emplace_back(
        absl::StrCat(std::string(2 * path.size(), ' '), leaf, ": ", k.get(*this)), k.doc);
  }
  size_t width = 0;
  for (const auto& [text, doc] : lines) {
    if (!doc.empty()) width = std::max(width, std::min<size_t>(text.size(), 40));
  }
  std::string out;
  for (const auto& [text, doc] : lines) {
    out += text;
    if (!doc.empty()) {
      out.append(text.size() < width ? width - text.size() : 0, ' ');
      absl::StrAppend(&out, "  # ", doc);
    }
    out += '\n';
  }
  return out;
}

absl::StatusOr<Config> ParseConfig(absl::string_view yaml_text,
                                   const std::vector<std::string>& overrides,
                                   absl::string_view source_name) {
  Config config;
  try {
    LATTICE_RETURN_IF_ERROR(ApplyYaml(yaml_text, source_name, config));
    for (const std::string& o : overrides) LATTICE_RETURN_IF_ERROR(ApplyOverride(o, config));
  } catch (const YAML::Exception& e) {
    // Node access can throw on shapes the walk above did not foresee; never let it escape.
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": invalid config: ", e.msg));
  }
  absl::Status s = config.Validate();
  if (!s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid config ", source_name,
        overrides.empty() ? "" : absl::StrCat(" (with ", overrides.size(), " overrides)"), ": ",
        s.message()));
  }
  return config;
}

absl::StatusOr<Config> LoadConfig(const std::string& path,
                                  const std::vector<std::string>& overrides) {
  if (path.empty()) return ParseConfig("", overrides, "<defaults>");
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory, not a config file"));
  }
  std::string text;
  {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) {
      const int err = errno;
      if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such config file"));
      return absl::PermissionDeniedError(absl::StrCat(path, ": ", std::strerror(err)));
    }
    char buf[1 << 16];
    size_t n;
    // Stop reading just past the size CheckYamlLimits accepts: `--config /dev/zero` (or any
    // endless file) is refused instead of filling memory.
    while (text.size() <= kMaxYamlBytes && (n = std::fread(buf, 1, sizeof(buf), f)) > 0) {
      text.append(buf, n);
    }
    const bool failed = std::ferror(f) != 0;
    std::fclose(f);
    if (failed) return absl::DataLossError(absl::StrCat(path, ": read error"));
  }
  return ParseConfig(text, overrides, path);
}

}  // namespace lattice
