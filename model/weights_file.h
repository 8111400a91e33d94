// Model weights in and out as safetensors, with lattice's parameter names and layouts
// (model/decoder.h). `__metadata__` carries format "pt", lattice_format_version, the arch and
// the vocabulary sizes.
#ifndef LATTICE_MODEL_WEIGHTS_FILE_H_
#define LATTICE_MODEL_WEIGHTS_FILE_H_

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/decoder.h"
#include "runtime/config.h"
#include "runtime/io/safetensors.h"
#include "runtime/tensor.h"

namespace lattice {

// Weights in and out as safetensors, with lattice's parameter names (model/decoder.h).
absl::Status SaveWeights(const Decoder& model, const std::string& path);
absl::Status SaveWeights(const ModelConfig& c,
                         const std::vector<std::pair<std::string, Tensor>>& tensors,
                         const std::string& path);
// Reads every parameter of the configuration (unsharded shapes) from a safetensors file;
// tensors that are not parameters of this model are an error naming them.
absl::StatusOr<std::map<std::string, Tensor>> ReadWeights(const ModelConfig& c,
                                                           const std::string& path);
// Loads every parameter of `model` (CPU parameters) from a safetensors file. Errors leave the
// model unchanged. Both readers refuse: tensors that are not parameters, other shapes, NaN or
// Inf values (DataLoss naming the tensor and the first bad element), and a __metadata__ whose
// arch / vocab_size / padded_vocab (written by SaveWeights) differ from the config, or whose
// lattice_format_version is not this build's. Files without those keys are judged by shapes.
absl::Status LoadWeights(Decoder& model, const std::string& path);
// The __metadata__ check of both readers (arch, vocab sizes, format version against `c`), for
// readers that copy only part of each tensor (parallel/checkpoint.h, LoadWeightsFile).
absl::Status CheckWeightsMetadata(const SafetensorsFile& file, const ModelConfig& c);

}  // namespace lattice

#endif  // LATTICE_MODEL_WEIGHTS_FILE_H_
