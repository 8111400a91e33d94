#include "model/hf_convert.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/decoder.h"
#include "nlohmann/json.hpp"
#include "runtime/io/json_limits.h"
#include "runtime/io/mapped_file.h"
#include "runtime/io/output_file.h"
#include "runtime/io/safetensors.h"
#include "runtime/status.h"

namespace lattice {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kGpt2Arch[] = "GPT2LMHeadModel";
constexpr char kLlamaArch[] = "LlamaForCausalLM";
constexpr char kIndexFile[] = "model.safetensors.index.json";
constexpr char kSingleFile[] = "model.safetensors";

// config.json and generation_config.json are a few KB; the index of a 405B model's ~190 shards
// lists ~1,100 tensors in under 200 KB. 64 MiB is far above both and still keeps a mistaken
// multi-GB file from being read whole.
constexpr size_t kMaxJsonFileBytes = 64u << 20;
// Sizes in config.json beyond 2^31 are no model that exists (the largest vocabularies are
// ~256K, hidden sizes ~16K); the bound keeps products of them far from int64 overflow.
constexpr int64_t kMaxConfigInt = int64_t{1} << 31;

std::string Join(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

absl::StatusOr<json> ReadJsonFile(const std::string& path) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  if (file->size() > kMaxJsonFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", file->size(),
                                                   " bytes is too large for a JSON file (limit ",
                                                   kMaxJsonFileBytes, ")"));
  }
  const absl::string_view text(reinterpret_cast<const char*>(file->data()), file->size());
  absl::StatusOr<json> j = ParseJson(text);
  if (!j.ok()) return Annotate(j.status(), path);
  if (!j->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": the top level is not a JSON object"));
  }
  return j;
}

// Typed reads of config.json keys; `fallback` is transformers' default for a missing key
// (nullopt: the key is required). A JSON null counts as missing.
class ConfigReader {
 public:
  ConfigReader(const json& j, std::string path) : j_(j), path_(std::move(path)) {}
  const std::string& path() const { return path_; }

  bool Has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  absl::StatusOr<int64_t> Int(const char* key, std::optional<int64_t> fallback = std::nullopt,
                              int64_t min = 1) const {
    if (!Has(key)) {
      if (fallback) return *fallback;
      return absl::InvalidArgumentError(absl::StrCat(path_, ": missing key \"", key, "\""));
    }
    const json& v = j_.at(key);
    if (!v.is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": \"", key, "\" is ",
                                                     JsonSnippet(v), ", not an integer"));
    }
    const int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(kMaxConfigInt)
                          ? kMaxConfigInt + 1
                          : v.get<int64_t>();
    if (x < min || x > kMaxConfigInt) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": \"", key, "\" = ", JsonSnippet(v),
                                                     " is out of range [", min, ", ",
                                                     kMaxConfigInt, "]"));
    }
    return x;
  }

  absl::StatusOr<double> Float(const char* key, double fallback) const {
    if (!Has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": \"", key, "\" is ",
                                                     JsonSnippet(v),
                                                     ", not a positive number"));
    }
    return v.get<double>();
  }

  absl::StatusOr<bool> Bool(const char* key, bool fallback) const {
    if (!Has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_boolean()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": \"", key, "\" is ", JsonSnippet(v), ", not true or false"));
    }
    return v.get<bool>();
  }

  absl::StatusOr<std::string> String(const char* key, const std::string& fallback) const {
    if (!Has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": \"", key, "\" is ", JsonSnippet(v), ", not a string"));
    }
    return v.get<std::string>();
  }

  // An option lattice does not implement: refused unless it has the value that means "off".
  absl::Status RequireBool(const char* key, bool supported, bool fallback,
                           const char* why) const {
    LATTICE_ASSIGN_OR_RETURN(bool v, Bool(key, fallback));
    if (v == supported) return absl::OkStatus();
    return absl::UnimplementedError(absl::StrCat(path_, ": \"", key, "\": ", v ? "true" : "false",
                                                 " is not supported (", why, ")"));
  }

 private:
  const json& j_;
  std::string path_;
};

// The architecture config.json names: "architectures" (what save_pretrained writes), else
// "model_type".
absl::StatusOr<Arch> ArchOf(const json& j, const std::string& path) {
  std::vector<std::string> names;
  if (j.contains("architectures") && !j.at("architectures").is_null()) {
    const json& a = j.at("architectures");
    if (!a.is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": \"architectures\" is ", JsonSnippet(a), ", not a list"));
    }
    for (const json& n : a) {
      if (!n.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": \"architectures\" holds ", JsonSnippet(n), ", not a class name"));
      }
      names.push_back(n.get<std::string>());
    }
    if (names.size() == 1 && names[0] == kGpt2Arch) return Arch::kGpt2;
    if (names.size() == 1 && names[0] == kLlamaArch) return Arch::kLlama;
    return absl::UnimplementedError(absl::StrCat(
        path, ": unsupported architecture ", JsonSnippet(a), " (\"architectures\"); lattice converts ",
        kGpt2Arch, " and ", kLlamaArch));
  }
  if (j.contains("model_type") && j.at("model_type").is_string()) {
    const std::string t = j.at("model_type").get<std::string>();
    if (t == "gpt2") return Arch::kGpt2;
    if (t == "llama") return Arch::kLlama;
    return absl::UnimplementedError(absl::StrCat(path, ": unsupported model_type \"", t,
                                                 "\"; lattice converts gpt2 and llama"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": names no architecture (no \"architectures\" or \"model_type\")"));
}

absl::StatusOr<ModelConfig> Gpt2Config(const ConfigReader& r) {
  ModelConfig m;
  m.arch = Arch::kGpt2;
  LATTICE_ASSIGN_OR_RETURN(m.vocab_size, r.Int("vocab_size"));
  LATTICE_ASSIGN_OR_RETURN(m.seq_len, r.Int("n_positions", 1024));
  LATTICE_ASSIGN_OR_RETURN(m.d_model, r.Int("n_embd", 768));
  LATTICE_ASSIGN_OR_RETURN(m.n_layer, r.Int("n_layer", 12));
  LATTICE_ASSIGN_OR_RETURN(m.n_head, r.Int("n_head", 12));
  LATTICE_ASSIGN_OR_RETURN(m.d_ff, r.Int("n_inner", 4 * m.d_model));
  LATTICE_ASSIGN_OR_RETURN(double eps, r.Float("layer_norm_epsilon", 1e-5));
  m.norm_eps = static_cast<float>(eps);
  LATTICE_ASSIGN_OR_RETURN(bool tied, r.Bool("tie_word_embeddings", true));
  m.tie_embeddings = tied ? 1 : 0;
  LATTICE_ASSIGN_OR_RETURN(std::string act, r.String("activation_function", "gelu_new"));
  // Both name GELU's tanh approximation, lattice's kernels/gelu.h.
  if (act != "gelu_new" && act != "gelu_pytorch_tanh") {
    return absl::UnimplementedError(absl::StrCat(
        r.path(), ": \"activation_function\": \"", act,
        "\" is not supported (lattice's GPT-2 uses gelu_new, the tanh approximation)"));
  }
  LATTICE_RETURN_IF_ERROR(r.RequireBool("scale_attn_weights", true, true,
                                        "lattice always scales attention by 1/sqrt(head_dim)"));
  LATTICE_RETURN_IF_ERROR(r.RequireBool("scale_attn_by_inverse_layer_idx", false, false,
                                        "lattice does not scale attention per layer"));
  LATTICE_RETURN_IF_ERROR(
      r.RequireBool("add_cross_attention", false, false, "lattice is decoder-only"));
  if (m.d_model % m.n_head != 0) {
    return absl::InvalidArgumentError(absl::StrCat(r.path(), ": n_embd=", m.d_model,
                                                   " is not a multiple of n_head=", m.n_head));
  }
  return m;
}

absl::StatusOr<ModelConfig> LlamaConfig(const json& j, const ConfigReader& r) {
  ModelConfig m;
  m.arch = Arch::kLlama;
  LATTICE_ASSIGN_OR_RETURN(m.vocab_size, r.Int("vocab_size"));
  LATTICE_ASSIGN_OR_RETURN(m.d_model, r.Int("hidden_size"));
  LATTICE_ASSIGN_OR_RETURN(m.d_ff, r.Int("intermediate_size"));
  LATTICE_ASSIGN_OR_RETURN(m.n_layer, r.Int("num_hidden_layers"));
  LATTICE_ASSIGN_OR_RETURN(m.n_head, r.Int("num_attention_heads"));
  LATTICE_ASSIGN_OR_RETURN(m.n_kv_head, r.Int("num_key_value_heads", m.n_head));
  LATTICE_ASSIGN_OR_RETURN(m.seq_len, r.Int("max_position_embeddings", 2048));
  LATTICE_ASSIGN_OR_RETURN(double eps, r.Float("rms_norm_eps", 1e-6));
  m.norm_eps = static_cast<float>(eps);
  LATTICE_ASSIGN_OR_RETURN(bool tied, r.Bool("tie_word_embeddings", false));
  m.tie_embeddings = tied ? 1 : 0;
  double theta = 10000.0;
  LATTICE_ASSIGN_OR_RETURN(theta, r.Float("rope_theta", theta));
  // Newer transformers write the RoPE settings as rope_parameters; only the default
  // (unscaled) rotation is lattice's.
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!r.Has(key)) continue;
    const json& v = j.at(key);
    const bool plain = v.is_object() && v.contains("rope_type") && v.at("rope_type") == "default";
    if (!plain) {
      return absl::UnimplementedError(absl::StrCat(
          r.path(), ": \"", key, "\": ", JsonSnippet(v),
          " is not supported (lattice implements unscaled RoPE: rope_theta only)"));
    }
    if (v.contains("rope_theta")) {
      LATTICE_ASSIGN_OR_RETURN(theta, ConfigReader(v, r.path() + " " + key).Float("rope_theta", theta));
    }
  }
  m.rope_theta = static_cast<float>(theta);
  LATTICE_ASSIGN_OR_RETURN(std::string act, r.String("hidden_act", "silu"));
  if (act != "silu") {
    return absl::UnimplementedError(absl::StrCat(
        r.path(), ": \"hidden_act\": \"", act, "\" is not supported (lattice's Llama MLP is SwiGLU: silu)"));
  }
  LATTICE_RETURN_IF_ERROR(
      r.RequireBool("attention_bias", false, false, "lattice's Llama has no attention biases"));
  LATTICE_RETURN_IF_ERROR(r.RequireBool("mlp_bias", false, false, "lattice's Llama has no MLP biases"));
  if (m.d_model % m.n_head != 0) {
    return absl::InvalidArgumentError(absl::StrCat(r.path(), ": hidden_size=", m.d_model,
                                                   " is not a multiple of num_attention_heads=",
                                                   m.n_head));
  }
  LATTICE_ASSIGN_OR_RETURN(int64_t head_dim, r.Int("head_dim", m.d_model / m.n_head));
  if (head_dim != m.d_model / m.n_head) {
    return absl::UnimplementedError(absl::StrCat(
        r.path(), ": \"head_dim\": ", head_dim, " is not supported (lattice's head size is ",
        "hidden_size / num_attention_heads = ", m.d_model / m.n_head, ")"));
  }
  if (m.n_head % m.n_kv_head != 0) {
    return absl::InvalidArgumentError(absl::StrCat(r.path(), ": num_attention_heads=", m.n_head,
                                                   " is not a multiple of num_key_value_heads=",
                                                   m.n_kv_head));
  }
  return m;
}

// Where each tensor of the directory is, and the opened files.
class TensorSource {
 public:
  static absl::StatusOr<TensorSource> Open(const std::string& dir) {
    TensorSource s;
    const std::string index_path = Join(dir, kIndexFile);
    const std::string single = Join(dir, kSingleFile);
    std::error_code ec;
    if (fs::exists(index_path, ec)) {
      LATTICE_ASSIGN_OR_RETURN(json index, ReadJsonFile(index_path));
      if (!index.contains("weight_map") || !index.at("weight_map").is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": no \"weight_map\" object"));
      }
      for (const auto& [name, file] : index.at("weight_map").items()) {
        if (!file.is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(
              index_path, ": weight_map[\"", name, "\"] is ", JsonSnippet(file), ", not a file name"));
        }
        const std::string f = file.get<std::string>();
        // Shards live in the directory itself: a name that leaves it is refused.
        if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..") {
          return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map[\"", name,
                                                         "\"] = \"", f,
                                                         "\" is not a file in the directory"));
        }
        s.where_[name] = Join(dir, f);
      }
      for (const auto& [name, path] : s.where_) {
        if (s.files_.count(path) != 0) continue;
        absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
        if (absl::IsNotFound(file.status())) {
          return absl::NotFoundError(absl::StrCat(path, ": missing shard (", index_path,
                                                  " lists it for tensor '", name, "')"));
        }
        if (!file.ok()) return file.status();
        s.files_[path] = std::move(*file);
      }
      for (const auto& [name, path] : s.where_) {
        if (!s.files_.at(path)->Contains(name)) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ": has no tensor '", name, "' (", index_path, " says it is there)"));
        }
      }
      for (const auto& [path, file] : s.files_) {
        for (const std::string& name : file->names()) {
          auto it = s.where_.find(name);
          if (it == s.where_.end() || it->second != path) {
            return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name,
                                                           "' is not listed for this file in ",
                                                           index_path));
          }
        }
      }
      return s;
    }
    if (!fs::exists(single, ec)) {
      std::string hint;
      if (fs::exists(Join(dir, "pytorch_model.bin"), ec)) {
        hint = " (pytorch_model.bin is not read: re-save with safe_serialization=True)";
      }
      return absl::NotFoundError(absl::StrCat(dir, ": has neither ", kSingleFile, " nor ",
                                              kIndexFile, hint));
    }
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single));
    for (const std::string& name : file->names()) s.where_[name] = single;
    s.files_[single] = std::move(file);
    return s;
  }

  const std::map<std::string, std::string>& where() const { return where_; }
  const SafetensorsFile& file_of(const std::string& name) const {
    return *files_.at(where_.at(name));
  }

 private:
  std::map<std::string, std::string> where_;  // tensor -> file path
  std::map<std::string, std::unique_ptr<SafetensorsFile>> files_;
};

// Reads HF tensors by their names in the file, checking what config.json implies.
class HfReader {
 public:
  HfReader(const TensorSource& src, std::string config_path, std::string prefix)
      : src_(src), config_path_(std::move(config_path)), prefix_(std::move(prefix)) {}

  // The file's name of HF tensor `name` (prefix added when the file uses it).
  std::string FileName(const std::string& name) const {
    if (!prefix_.empty() && src_.where().count(prefix_ + name) != 0) return prefix_ + name;
    return name;
  }
  bool Has(const std::string& name) const { return src_.where().count(FileName(name)) != 0; }

  // The tensor as fp32, of shape `shape`. `why` says which config.json keys give the shape.
  absl::StatusOr<Tensor> Take(const std::string& name, const Shape& shape, const std::string& why) {
    const std::string n = FileName(name);
    auto it = src_.where().find(n);
    if (it == src_.where().end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          ListedIn(), ": missing tensor '", name,
          "' (", config_path_, " describes a model that has it)"));
    }
    const SafetensorsFile& file = src_.file_of(n);
    LATTICE_ASSIGN_OR_RETURN(SafetensorsTensorInfo info, file.Info(n));
    if (info.dtype_name != "F32" && info.dtype_name != "BF16" && info.dtype_name != "F16") {
      return absl::UnimplementedError(absl::StrCat(file.path(), ": tensor '", n, "' has dtype ",
                                                   info.dtype_name,
                                                   "; lattice converts F32, BF16 and F16 weights"));
    }
    if (info.shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path(), ": tensor '", n, "' has shape ", ShapeToString(info.shape), " but ",
          config_path_, " (", why, ") needs ", ShapeToString(shape)));
    }
    Tensor t = Tensor::Zeros(shape, DType::kF32);
    LATTICE_RETURN_IF_ERROR(file.ReadInto(n, t));
    const int64_t bad = FirstNonFinite(t);
    if (bad >= 0) {
      return absl::DataLossError(absl::StrCat(file.path(), ": tensor '", n,
                                              "' holds NaN or Inf at element ", bad));
    }
    taken_.insert(n);
    dtypes_.insert(info.dtype_name);
    return t;
  }

  // Names of the file no mapping consumed (buffers aside).
  absl::Status CheckAllTaken(const std::string& model_desc) const {
    for (const auto& [name, path] : src_.where()) {
      if (taken_.count(name) != 0 || skipped(name)) continue;
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor '", name.substr(0, 120), "' is not part of ", model_desc, " (",
          config_path_, "); lattice does not know where to put it"));
    }
    return absl::OkStatus();
  }
  void Skip(std::function<bool(const std::string&)> pred) { skip_ = std::move(pred); }
  std::vector<std::string> dtypes() const { return {dtypes_.begin(), dtypes_.end()}; }

 private:
  bool skipped(const std::string& name) const { return skip_ && skip_(name); }
  std::string ListedIn() const {
    std::set<std::string> files;
    for (const auto& [n, p] : src_.where()) files.insert(p);
    return files.size() == 1 ? *files.begin() : absl::StrJoin(files, ", ");
  }

  const TensorSource& src_;
  std::string config_path_;
  std::string prefix_;
  std::set<std::string> taken_;
  std::set<std::string> dtypes_;
  std::function<bool(const std::string&)> skip_;
};

// (r, c) -> (c, r).
Tensor Transposed(const Tensor& t) {
  const int64_t r = t.dim(0), c = t.dim(1);
  Tensor out = Tensor::Zeros({c, r}, DType::kF32);
  const float* s = t.f32();
  float* d = out.f32();
  for (int64_t i = 0; i < r; ++i) {
    for (int64_t j = 0; j < c; ++j) d[j * r + i] = s[i * c + j];
  }
  return out;
}

// The rows of `parts` one after the other, in a tensor of `rows` rows (zero beyond them: the
// padded vocabulary).
Tensor Stacked(const std::vector<Tensor>& parts, int64_t rows) {
  Shape shape = parts[0].shape();
  shape[0] = rows;
  Tensor out = Tensor::Zeros(shape, DType::kF32);
  char* d = static_cast<char*>(out.raw());
  for (const Tensor& p : parts) {
    d = std::copy_n(static_cast<const char*>(p.raw()), p.nbytes(), d);  // host to host
  }
  return out;
}

bool SameBytes(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

std::string LayerName(int64_t l, const char* suffix) { return absl::StrCat("h.", l, ".", suffix); }

absl::Status MapGpt2(const ModelConfig& m, HfReader& r, std::map<std::string, Tensor>& w) {
  const int64_t c = m.d_model, f = m.ff_dim(), v = m.vocab_size, vp = m.padded_vocab();
  const std::string sizes = absl::StrCat("n_embd=", c);
  r.Skip([](const std::string& n) {
    // Causal-mask buffers older transformers saved with the weights.
    return absl::EndsWith(n, ".attn.bias") || absl::EndsWith(n, ".attn.masked_bias");
  });
  LATTICE_ASSIGN_OR_RETURN(Tensor wte, r.Take("wte.weight", {v, c}, "vocab_size, n_embd"));
  w["wte"] = Stacked({wte}, vp);
  LATTICE_ASSIGN_OR_RETURN(w["wpe"], r.Take("wpe.weight", {m.seq_len, c}, "n_positions, n_embd"));
  for (int64_t l = 0; l < m.n_layer; ++l) {
    const std::string h = absl::StrCat("h.", l, ".");
    auto take = [&](const std::string& n, const Shape& s, const std::string& why) {
      return r.Take(h + n, s, why);
    };
    LATTICE_ASSIGN_OR_RETURN(w[LayerName(l, "norm1.weight")], take("ln_1.weight", {c}, sizes));
    LATTICE_ASSIGN_OR_RETURN(w[LayerName(l, "norm1.bias")], take("ln_1.bias", {c}, sizes));
    // Conv1D weights are (in, out); lattice's linear weights are (out, in).
    LATTICE_ASSIGN_OR_RETURN(Tensor qkv, take("attn.c_attn.weight", {c, 3 * c}, sizes));
    w[LayerName(l, "attn.qkv.weight")] = Transposed(qkv);
    LATTICE_ASSIGN_OR_RETURN(w[LayerName(l, "attn.qkv.bias")], take("attn.c_attn.bias", {3 * c}, sizes));
    LATTICE_ASSIGN_OR_RETURN(Tensor proj, take("attn.c_proj.weight", {c, c}, sizes));
    w[LayerName(l, "attn.proj.weight")] = Transposed(proj);
    LATTICE_ASSIGN_OR_RETURN(w[LayerName(l, "attn.proj.bias")], take("attn.c_proj.bias", {c}, sizes));
    LATTICE_ASSIGN_OR_RETURN(w[LayerName(l, "norm2.weight")], take("ln_2.weight", {c}, sizes));
    LATTICE_ASSIGN_OR_RETURN(w[LayerName(l, "norm2.bias")], take("ln_2.bias", {c}, sizes));
    const std::string ff = absl::StrCat("n_embd=", c, ", n_inner=", f);
    LATTICE_ASSIGN_OR_RETURN(Tensor fc, take("mlp.c_fc.weight", {c, f}, ff));
    w[LayerName(l, "mlp.fc.weight")] = Transposed(fc);
    LATTICE_ASSIGN_OR_RETURN(w[LayerName(l, "mlp.fc.bias")], take("mlp.c_fc.bias", {f}, ff));
    LATTICE_ASSIGN_OR_RETURN(Tensor mp, take("mlp.c_proj.weight", {f, c}, ff));
    w[LayerName(l, "mlp.proj.weight")] = Transposed(mp);
    LATTICE_ASSIGN_OR_RETURN(w[LayerName(l, "mlp.proj.bias")], take("mlp.c_proj.bias", {c}, ff));
  }
  LATTICE_ASSIGN_OR_RETURN(w["norm_f.weight"], r.Take("ln_f.weight", {c}, sizes));
  LATTICE_ASSIGN_OR_RETURN(w["norm_f.bias"], r.Take("ln_f.bias", {c}, sizes));
  return absl::OkStatus();
}

absl::Status MapLlama(const ModelConfig& m, HfReader& r, std::map<std::string, Tensor>& w) {
  const int64_t c = m.d_model, f = m.ff_dim(), v = m.vocab_size, vp = m.padded_vocab();
  const int64_t d = m.head_dim(), h = m.n_head, k = m.kv_heads();
  r.Skip([](const std::string& n) {
    // The rotary inverse frequencies older transformers saved: recomputed from rope_theta.
    return absl::EndsWith(n, ".self_attn.rotary_emb.inv_freq");
  });
  const std::string sizes = absl::StrCat("hidden_size=", c);
  LATTICE_ASSIGN_OR_RETURN(Tensor wte, r.Take("model.embed_tokens.weight", {v, c},
                                              "vocab_size, hidden_size"));
  w["wte"] = Stacked({wte}, vp);
  for (int64_t l = 0; l < m.n_layer; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    const std::string heads = absl::StrCat("hidden_size=", c, ", num_attention_heads=", h,
                                           ", num_key_value_heads=", k);
    const std::string ff = absl::StrCat("hidden_size=", c, ", intermediate_size=", f);
    LATTICE_ASSIGN_OR_RETURN(w[LayerName(l, "norm1.weight")],
                             r.Take(p + "input_layernorm.weight", {c}, sizes));
    // Both sides rotate halves of each head (kernels/rope.h), so q and k rows keep their order:
    // the packed qkv rows are q heads | k heads | v heads.
    LATTICE_ASSIGN_OR_RETURN(Tensor q, r.Take(p + "self_attn.q_proj.weight", {h * d, c}, heads));
    LATTICE_ASSIGN_OR_RETURN(Tensor kk, r.Take(p + "self_attn.k_proj.weight", {k * d, c}, heads));
    LATTICE_ASSIGN_OR_RETURN(Tensor vv, r.Take(p + "self_attn.v_proj.weight", {k * d, c}, heads));
    w[LayerName(l, "attn.qkv.weight")] = Stacked({q, kk, vv}, (h + 2 * k) * d);
    LATTICE_ASSIGN_OR_RETURN(w[LayerName(l, "attn.proj.weight")],
                             r.Take(p + "self_attn.o_proj.weight", {c, h * d}, heads));
    LATTICE_ASSIGN_OR_RETURN(w[LayerName(l, "norm2.weight")],
                             r.Take(p + "post_attention_layernorm.weight", {c}, sizes));
    LATTICE_ASSIGN_OR_RETURN(Tensor gate, r.Take(p + "mlp.gate_proj.weight", {f, c}, ff));
    LATTICE_ASSIGN_OR_RETURN(Tensor up, r.Take(p + "mlp.up_proj.weight", {f, c}, ff));
    w[LayerName(l, "mlp.fc.weight")] = Stacked({gate, up}, 2 * f);
    LATTICE_ASSIGN_OR_RETURN(w[LayerName(l, "mlp.proj.weight")],
                             r.Take(p + "mlp.down_proj.weight", {c, f}, ff));
  }
  LATTICE_ASSIGN_OR_RETURN(w["norm_f.weight"], r.Take("model.norm.weight", {c}, sizes));
  return absl::OkStatus();
}

// The shortest decimal that reads back as `f` (so 1e-5f is written 1e-05, not 9.99999974e-06).
double ShortestDouble(float f) {
  char buf[32];
  for (int p = 6; p <= 9; ++p) {
    std::snprintf(buf, sizeof(buf), "%.*g", p, static_cast<double>(f));
    if (std::strtof(buf, nullptr) == f) break;
  }
  return std::strtod(buf, nullptr);
}

}  // namespace

absl::StatusOr<HfImport> ImportHfModel(const std::string& dir,
                                       const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a directory (expected a Hugging Face model ",
                                            "directory with config.json)"));
  }
  const std::string config_path = Join(dir, "config.json");
  LATTICE_ASSIGN_OR_RETURN(json j, ReadJsonFile(config_path));
  LATTICE_ASSIGN_OR_RETURN(Arch arch, ArchOf(j, config_path));
  ConfigReader cr(j, config_path);
  ModelConfig model;
  if (arch == Arch::kGpt2) {
    LATTICE_ASSIGN_OR_RETURN(model, Gpt2Config(cr));
  } else {
    LATTICE_ASSIGN_OR_RETURN(model, LlamaConfig(j, cr));
  }
  Config base;
  base.model = model;
  base.data.tokenizer = "";
  LATTICE_ASSIGN_OR_RETURN(
      Config cfg, ParseConfig(base.ToYaml(), overrides, absl::StrCat(config_path, " (converted)")));
  // The tensors fix the model's shape; only what leaves the weights as they are may change:
  // the padding of the vocabulary, the init scale, and Llama's sequence length (RoPE has no
  // position table).
  ModelConfig fixed = cfg.model;
  fixed.vocab_pad_multiple = model.vocab_pad_multiple;
  fixed.init_std = model.init_std;
  if (arch == Arch::kLlama) fixed.seq_len = model.seq_len;
  if (!(fixed == model)) {
    return absl::InvalidArgumentError(absl::StrCat(
        config_path, ": the --set overrides change the model it describes (only ",
        "model.vocab_pad_multiple, model.init_std and, for llama, model.seq_len may be set)"));
  }
  LATTICE_ASSIGN_OR_RETURN(TensorSource src, TensorSource::Open(dir));
  HfReader reader(src, config_path, arch == Arch::kGpt2 ? "transformer." : "");
  HfImport out;
  const char* arch_name = arch == Arch::kGpt2 ? kGpt2Arch : kLlamaArch;
  if (arch == Arch::kGpt2) {
    LATTICE_RETURN_IF_ERROR(MapGpt2(cfg.model, reader, out.weights));
  } else {
    LATTICE_RETURN_IF_ERROR(MapLlama(cfg.model, reader, out.weights));
  }
  const int64_t c = cfg.model.d_model, v = cfg.model.vocab_size;
  const std::string head_why = arch == Arch::kGpt2 ? "vocab_size, n_embd" : "vocab_size, hidden_size";
  if (cfg.model.tied()) {
    // save_pretrained drops the tied head; a file that keeps it must hold the embedding.
    if (reader.Has("lm_head.weight")) {
      LATTICE_ASSIGN_OR_RETURN(Tensor head, reader.Take("lm_head.weight", {v, c}, head_why));
      if (!SameBytes(head, out.weights["wte"].Slice(0, v))) {
        return absl::InvalidArgumentError(absl::StrCat(
            src.where().at(reader.FileName("lm_head.weight")),
            ": tensor 'lm_head.weight' differs from the token embedding, but ", config_path,
            " ties them (tie_word_embeddings)"));
      }
    }
  } else {
    LATTICE_ASSIGN_OR_RETURN(Tensor head, reader.Take("lm_head.weight", {v, c},
                                                      absl::StrCat(head_why, ", tie_word_embeddings=false")));
    out.weights["lm_head"] = Stacked({head}, cfg.model.padded_vocab());
  }
  LATTICE_RETURN_IF_ERROR(reader.CheckAllTaken(
      absl::StrCat("a ", arch_name, " with ", cfg.model.n_layer, " layers")));
  // The mapping and the decoder agree on every name and shape (a lattice bug otherwise).
  const auto shapes = Decoder::ParameterShapes(cfg.model);
  LATTICE_CHECK(shapes.size() == out.weights.size());
  for (const auto& [name, shape] : shapes) {
    LATTICE_CHECK_MSG(out.weights.count(name) == 1 && out.weights.at(name).shape() == shape, name);
  }
  out.config = std::move(cfg);
  out.source_dtypes = reader.dtypes();
  for (auto [name, field] : {std::pair{"tokenizer.json", &out.tokenizer_path},
                             std::pair{"generation_config.json", &out.generation_config_path}}) {
    const std::string p = Join(dir, name);
    if (fs::is_regular_file(p, ec)) *field = p;
  }
  return out;
}

absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> HfTensorsOf(
    const ModelConfig& m, const std::map<std::string, Tensor>& w) {
  for (const auto& [name, shape] : Decoder::ParameterShapes(m)) {
    auto it = w.find(name);
    if (it == w.end() || it->second.shape() != shape || it->second.dtype() != DType::kF32) {
      return absl::InvalidArgumentError(absl::StrCat("the weights have no fp32 tensor '", name,
                                                     "' of shape ", ShapeToString(shape)));
    }
  }
  std::vector<std::pair<std::string, Tensor>> out;
  const int64_t v = m.vocab_size, f = m.ff_dim();
  const int64_t d = m.head_dim(), h = m.n_head, k = m.kv_heads();
  auto at = [&](const std::string& n) { return w.at(n); };
  if (m.arch == Arch::kGpt2) {
    // save_pretrained's names (with the "transformer." prefix), so that a round trip keeps them.
    const std::string t = "transformer.";
    out.emplace_back(t + "wte.weight", at("wte").Slice(0, v));
    out.emplace_back(t + "wpe.weight", at("wpe"));
    for (int64_t l = 0; l < m.n_layer; ++l) {
      const std::string p = absl::StrCat(t, "h.", l, ".");
      out.emplace_back(p + "ln_1.weight", at(LayerName(l, "norm1.weight")));
      out.emplace_back(p + "ln_1.bias", at(LayerName(l, "norm1.bias")));
      out.emplace_back(p + "attn.c_attn.weight", Transposed(at(LayerName(l, "attn.qkv.weight"))));
      out.emplace_back(p + "attn.c_attn.bias", at(LayerName(l, "attn.qkv.bias")));
      out.emplace_back(p + "attn.c_proj.weight", Transposed(at(LayerName(l, "attn.proj.weight"))));
      out.emplace_back(p + "attn.c_proj.bias", at(LayerName(l, "attn.proj.bias")));
      out.emplace_back(p + "ln_2.weight", at(LayerName(l, "norm2.weight")));
      out.emplace_back(p + "ln_2.bias", at(LayerName(l, "norm2.bias")));
      out.emplace_back(p + "mlp.c_fc.weight", Transposed(at(LayerName(l, "mlp.fc.weight"))));
      out.emplace_back(p + "mlp.c_fc.bias", at(LayerName(l, "mlp.fc.bias")));
      out.emplace_back(p + "mlp.c_proj.weight", Transposed(at(LayerName(l, "mlp.proj.weight"))));
      out.emplace_back(p + "mlp.c_proj.bias", at(LayerName(l, "mlp.proj.bias")));
    }
    out.emplace_back(t + "ln_f.weight", at("norm_f.weight"));
    out.emplace_back(t + "ln_f.bias", at("norm_f.bias"));
  } else {
    out.emplace_back("model.embed_tokens.weight", at("wte").Slice(0, v));
    for (int64_t l = 0; l < m.n_layer; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      const Tensor qkv = at(LayerName(l, "attn.qkv.weight"));
      const Tensor fc = at(LayerName(l, "mlp.fc.weight"));
      out.emplace_back(p + "input_layernorm.weight", at(LayerName(l, "norm1.weight")));
      out.emplace_back(p + "self_attn.q_proj.weight", qkv.Slice(0, h * d));
      out.emplace_back(p + "self_attn.k_proj.weight", qkv.Slice(h * d, (h + k) * d));
      out.emplace_back(p + "self_attn.v_proj.weight", qkv.Slice((h + k) * d, (h + 2 * k) * d));
      out.emplace_back(p + "self_attn.o_proj.weight", at(LayerName(l, "attn.proj.weight")));
      out.emplace_back(p + "post_attention_layernorm.weight", at(LayerName(l, "norm2.weight")));
      out.emplace_back(p + "mlp.gate_proj.weight", fc.Slice(0, f));
      out.emplace_back(p + "mlp.up_proj.weight", fc.Slice(f, 2 * f));
      out.emplace_back(p + "mlp.down_proj.weight", at(LayerName(l, "mlp.proj.weight")));
    }
    out.emplace_back("model.norm.weight", at("norm_f.weight"));
  }
  // A tied head is the embedding itself: transformers re-ties it on load.
  if (!m.tied()) out.emplace_back("lm_head.weight", at("lm_head").Slice(0, v));
  return out;
}

absl::StatusOr<std::vector<std::string>> ExportHfModel(const ModelConfig& m,
                                                       const std::map<std::string, Tensor>& weights,
                                                       const std::string& dir,
                                                       const HfExportOptions& o) {
  if (o.dtype != DType::kF32 && o.dtype != DType::kBF16) {
    return absl::InvalidArgumentError("the Hugging Face export writes fp32 or bf16 weights");
  }
  LATTICE_ASSIGN_OR_RETURN(auto tensors, HfTensorsOf(m, weights));
  // Every tensor contiguous, in the output dtype.
  uint64_t total = 0;
  for (auto& [name, t] : tensors) {
    Tensor c = Tensor::Zeros(t.shape(), o.dtype);
    LATTICE_RETURN_IF_ERROR(ConvertInto(t, c));
    t = std::move(c);
    total += t.nbytes();
  }
  std::vector<std::string> written;
  const char* dtype_name = o.dtype == DType::kBF16 ? "bfloat16" : "float32";

  // config.json: the keys transformers' config classes read, with lattice's values.
  json cfg;
  if (m.arch == Arch::kGpt2) {
    cfg = {{"architectures", {kGpt2Arch}},
           {"model_type", "gpt2"},
           {"vocab_size", m.vocab_size},
           {"n_positions", m.seq_len},
           {"n_ctx", m.seq_len},
           {"n_embd", m.d_model},
           {"n_layer", m.n_layer},
           {"n_head", m.n_head},
           {"n_inner", m.ff_dim()},
           {"activation_function", "gelu_new"},
           {"layer_norm_epsilon", ShortestDouble(m.norm_eps)},
           // lattice trains without dropout.
           {"resid_pdrop", 0.0},
           {"embd_pdrop", 0.0},
           {"attn_pdrop", 0.0},
           {"scale_attn_weights", true},
           {"scale_attn_by_inverse_layer_idx", false},
           {"reorder_and_upcast_attn", false},
           {"initializer_range", ShortestDouble(m.init_std)},
           {"use_cache", true}};
  } else {
    cfg = {{"architectures", {kLlamaArch}},
           {"model_type", "llama"},
           {"vocab_size", m.vocab_size},
           {"hidden_size", m.d_model},
           {"intermediate_size", m.ff_dim()},
           {"num_hidden_layers", m.n_layer},
           {"num_attention_heads", m.n_head},
           {"num_key_value_heads", m.kv_heads()},
           {"head_dim", m.head_dim()},
           {"hidden_act", "silu"},
           {"max_position_embeddings", m.seq_len},
           {"rms_norm_eps", ShortestDouble(m.norm_eps)},
           {"rope_theta", ShortestDouble(m.rope_theta)},
           {"rope_scaling", nullptr},
           {"attention_bias", false},
           {"attention_dropout", 0.0},
           {"mlp_bias", false},
           {"pretraining_tp", 1},
           {"initializer_range", ShortestDouble(m.init_std)},
           {"use_cache", true}};
  }
  cfg["tie_word_embeddings"] = m.tied();
  cfg["torch_dtype"] = dtype_name;
  json gen = {{"_from_model_config", true}};
  for (auto [key, id] : {std::pair{"bos_token_id", o.bos_token_id},
                         std::pair{"eos_token_id", o.eos_token_id}}) {
    if (!id) continue;
    cfg[key] = *id;
    gen[key] = *id;
  }
  LATTICE_RETURN_IF_ERROR(WriteOutputFile(Join(dir, "config.json"), cfg.dump(2) + "\n"));
  written.push_back("config.json");
  LATTICE_RETURN_IF_ERROR(
      WriteOutputFile(Join(dir, "generation_config.json"), gen.dump(2) + "\n"));
  written.push_back("generation_config.json");

  // Shards: tensors in order, a new shard when the next one would pass the limit (a tensor
  // larger than the limit gets a shard of its own, as in save_pretrained).
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in_shard = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t n = tensors[i].second.nbytes();
    if (!shards.back().empty() && in_shard + n > o.max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += n;
  }
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  if (shards.size() == 1) {
    LATTICE_RETURN_IF_ERROR(WriteSafetensors(Join(dir, kSingleFile), tensors, meta));
    written.push_back(kSingleFile);
    return written;
  }
  json map = json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    std::vector<std::pair<std::string, Tensor>> part;
    for (size_t i : shards[s]) {
      part.push_back(tensors[i]);
      map[tensors[i].first] = name;
    }
    LATTICE_RETURN_IF_ERROR(WriteSafetensors(Join(dir, name), part, meta));
    written.push_back(name);
  }
  // The index last: a reader that finds it finds every shard it names.
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", map}};
  LATTICE_RETURN_IF_ERROR(WriteOutputFile(Join(dir, kIndexFile), index.dump(2) + "\n"));
  written.push_back(kIndexFile);
  return written;
}

absl::StatusOr<uint64_t> ParseByteSize(const std::string& text) {
  const std::string s = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(text));
  size_t unit_at = 0;
  while (unit_at < s.size() && (absl::ascii_isdigit(s[unit_at]) || s[unit_at] == '.')) ++unit_at;
  const std::string number = s.substr(0, unit_at), unit = s.substr(unit_at);
  // transformers' convention: KB/MB/GB are powers of 10, KIB/MIB/GIB powers of 2.
  static const std::map<std::string, double> kUnits = {
      {"", 1},      {"B", 1},          {"KB", 1e3},         {"MB", 1e6},
      {"GB", 1e9},  {"TB", 1e12},      {"KIB", 1024.0},     {"MIB", 1048576.0},
      {"GIB", 1073741824.0}, {"TIB", 1099511627776.0}};
  double value = 0;
  auto it = kUnits.find(unit);
  if (number.empty() || it == kUnits.end() || !absl::SimpleAtod(number, &value) ||
      value * it->second < 1 || value * it->second > 1e18) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-shard-size=", text,
        " is invalid: give bytes, or a number with KB, MB, GB, KiB, MiB or GiB (e.g. 5GB)"));
  }
  return static_cast<uint64_t>(value * it->second);
}

}  // namespace lattice
