#include "model/weights_file.h"

#include "absl/strings/str_cat.h"
#include "runtime/io/safetensors.h"
#include "runtime/status.h"

namespace lattice {

absl::Status SaveWeights(const Decoder& model, const std::string& path) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const Parameter& p : model.params().params()) tensors.emplace_back(p.name, p.value);
  return SaveWeights(model.config(), tensors, path);
}

absl::StatusOr<std::map<std::string, Tensor>> ReadWeights(const ModelConfig& c,
                                                           const std::string& path) {
  LATTICE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  std::map<std::string, Tensor> out;
  const auto shapes = Decoder::ParameterShapes(c);
  for (const auto& [name, shape] : shapes) {
    Tensor t = Tensor::Zeros(shape, DType::kF32);
    LATTICE_RETURN_IF_ERROR(file->ReadInto(name, t));
    out.emplace(name, std::move(t));
  }
  for (const std::string& name : file->names()) {
    if (out.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor '", name, "' is not a parameter of this model (check model.* config)"));
    }
  }
  return out;
}

absl::Status SaveWeights(const ModelConfig& c,
                         const std::vector<std::pair<std::string, Tensor>>& tensors,
                         const std::string& path) {
  std::map<std::string, std::string> meta = {
      {"format", "pt"},
      {"lattice_format_version", "1"},
      {"arch", c.arch == Arch::kGpt2 ? "gpt2" : "llama"},
      {"vocab_size", std::to_string(c.vocab_size)},
      {"padded_vocab", std::to_string(c.padded_vocab())}};
  return WriteSafetensors(path, tensors, meta);
}

absl::Status LoadWeights(Decoder& model, const std::string& path) {
  LATTICE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  for (const Parameter& p : model.params().params()) {
    LATTICE_RETURN_IF_ERROR(file->ReadInto(p.name, p.value));
  }
  if (file->names().size() != model.params().params().size()) {
    for (const std::string& name : file->names()) {
      if (model.params().Find(name) == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": tensor '", name, "' is not a parameter of this model (check model.* config)"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace lattice
