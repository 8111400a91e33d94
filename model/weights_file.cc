#include "model/weights_file.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "runtime/io/safetensors.h"
#include "runtime/status.h"

namespace lattice {
namespace {

// The lattice format version SaveWeights writes; a file from a newer lattice may lay tensors
// out differently, so it is refused rather than misread.
constexpr absl::string_view kWeightsFormatVersion = "1";

const char* ArchName(Arch a) { return a == Arch::kGpt2 ? "gpt2" : "llama"; }

// A tensor name or metadata value from the file, cut for messages.
std::string ShortName(const std::string& s) {
  return s.size() <= 120 ? s : absl::StrCat(s.substr(0, 117), "...");
}

}  // namespace

// The keys SaveWeights writes into __metadata__ must agree with the config. A file without
// them (safetensors.torch.save_file, another tool) is judged by its tensor shapes alone.
absl::Status CheckWeightsMetadata(const SafetensorsFile& file, const ModelConfig& c) {
  const std::map<std::string, std::string>& meta = file.metadata();
  auto mismatch = [&](const char* key, const std::string& config_key,
                      const std::string& expected) -> absl::Status {
    auto it = meta.find(key);
    if (it == meta.end() || it->second == expected) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        file.path(), ": the weights were saved for ", key, " = ", ShortName(it->second),
        " (__metadata__) but ",
        config_key, " is ", expected, "; load them with the config they were trained with"));
  };
  if (auto it = meta.find("lattice_format_version");
      it != meta.end() && it->second != kWeightsFormatVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.path(), ": lattice_format_version ", ShortName(it->second),
        " in __metadata__; this build reads "
        "version ", kWeightsFormatVersion));
  }
  LATTICE_RETURN_IF_ERROR(mismatch("arch", "model.arch", ArchName(c.arch)));
  LATTICE_RETURN_IF_ERROR(mismatch("vocab_size", "model.vocab_size", std::to_string(c.vocab_size)));
  LATTICE_RETURN_IF_ERROR(
      mismatch("padded_vocab", "the padded vocabulary of the config", std::to_string(c.padded_vocab())));
  return absl::OkStatus();
}

namespace {

// Weights with a NaN or Inf would train or evaluate to NaN silently ("loss": null); name the
// first bad element so the file can be inspected.
absl::Status CheckFinite(const std::string& path, const std::string& name, const Tensor& t) {
  const int64_t bad = FirstNonFinite(t);
  if (bad < 0) return absl::OkStatus();
  // The index in each dim, last dim fastest (row-major).
  std::vector<int64_t> at(t.shape().size());
  int64_t rest = bad;
  for (size_t d = at.size(); d-- > 0;) {
    at[d] = t.shape()[d] == 0 ? 0 : rest % t.shape()[d];
    rest = t.shape()[d] == 0 ? 0 : rest / t.shape()[d];
  }
  Tensor value = Tensor::Zeros({1}, DType::kF32);
  LATTICE_RETURN_IF_ERROR(ConvertInto(t.View({t.numel()}).Slice(bad, bad + 1), value));
  const float v = value.f32()[0];
  const char* what = std::isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf";
  return absl::DataLossError(absl::StrCat(
      path, ": tensor '", name, "' holds ", what, " at element ", bad, " (index ",
      ShapeToString(at), " of shape ", ShapeToString(t.shape()),
      "); the file is corrupt or was saved after training diverged"));
}

}  // namespace

absl::Status SaveWeights(const Decoder& model, const std::string& path) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const Parameter& p : model.params().params()) tensors.emplace_back(p.name, p.value);
  return SaveWeights(model.config(), tensors, path);
}

absl::StatusOr<std::map<std::string, Tensor>> ReadWeights(const ModelConfig& c,
                                                           const std::string& path) {
  LATTICE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  LATTICE_RETURN_IF_ERROR(CheckWeightsMetadata(*file, c));
  std::map<std::string, Tensor> out;
  const auto shapes = Decoder::ParameterShapes(c);
  for (const auto& [name, shape] : shapes) {
    Tensor t = Tensor::Zeros(shape, DType::kF32);
    LATTICE_RETURN_IF_ERROR(file->ReadInto(name, t));
    LATTICE_RETURN_IF_ERROR(CheckFinite(path, name, t));
    out.emplace(name, std::move(t));
  }
  for (const std::string& name : file->names()) {
    if (out.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor '", ShortName(name),
          "' is not a parameter of this model (check model.* config)"));
    }
  }
  return out;
}

absl::Status SaveWeights(const ModelConfig& c,
                         const std::vector<std::pair<std::string, Tensor>>& tensors,
                         const std::string& path) {
  std::map<std::string, std::string> meta = {
      {"format", "pt"},
      {"lattice_format_version", std::string(kWeightsFormatVersion)},
      {"arch", ArchName(c.arch)},
      {"vocab_size", std::to_string(c.vocab_size)},
      {"padded_vocab", std::to_string(c.padded_vocab())}};
  return WriteSafetensors(path, tensors, meta);
}

absl::Status LoadWeights(Decoder& model, const std::string& path) {
  LATTICE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  LATTICE_RETURN_IF_ERROR(CheckWeightsMetadata(*file, model.config()));
  if (file->names().size() != model.params().params().size()) {
    for (const std::string& name : file->names()) {
      if (model.params().Find(name) == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": tensor '", ShortName(name),
          "' is not a parameter of this model (check model.* config)"));
      }
    }
  }
  // Every tensor is read and checked once before the first parameter changes, so a bad file
  // leaves the model as it was; one tensor at a time, so the extra memory is the largest one.
  for (const Parameter& p : model.params().params()) {
    Tensor scratch = Tensor::Zeros(p.value.shape(), p.value.dtype());
    LATTICE_RETURN_IF_ERROR(file->ReadInto(p.name, scratch));
    LATTICE_RETURN_IF_ERROR(CheckFinite(path, p.name, scratch));
  }
  for (const Parameter& p : model.params().params()) {
    LATTICE_RETURN_IF_ERROR(file->ReadInto(p.name, p.value));
  }
  return absl::OkStatus();
}

}  // namespace lattice
