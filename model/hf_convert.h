// Hugging Face model directories in and out (docs/hf.md has the name mapping and the user's
// view; the file formats are ../shared/REFERENCE.md section 3).
//
// Import reads config.json and model.safetensors (or the shards model.safetensors.index.json
// lists) of a GPT2LMHeadModel or LlamaForCausalLM into lattice's parameter names and layouts
// (model/decoder.h): GPT-2's Conv1D weights are stored (in, out) and are transposed, Llama's
// q/k/v projections are stacked into the packed qkv rows and gate/up into the fc rows. Both
// use rotate-half RoPE (kernels/rope.h is HF's convention), so no row is permuted. Values are
// converted to fp32 (bf16 and f16 exactly). Export is the inverse, with the padded vocabulary
// rows dropped.
//
// Every refusal names the file and the key or tensor: an unsupported architecture or option
// (rope_scaling, attention_bias, mlp_bias, an activation other than the model's), a missing or
// unexpected tensor, a shape that disagrees with config.json, a missing shard.
#ifndef LATTICE_MODEL_HF_CONVERT_H_
#define LATTICE_MODEL_HF_CONVERT_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/config.h"
#include "runtime/dtype.h"
#include "runtime/tensor.h"

namespace lattice {

// A Hugging Face model directory read into lattice's terms.
struct HfImport {
  // Defaults with model.* from config.json, data.tokenizer empty, then the caller's overrides
  // (validated; overrides may not change the model's shape).
  Config config;
  // Lattice names, fp32, the shapes of Decoder::ParameterShapes(config.model) (padded
  // vocabulary rows zero).
  std::map<std::string, Tensor> weights;
  // The directory's tokenizer.json and generation_config.json, "" when absent.
  std::string tokenizer_path;
  std::string generation_config_path;
  // The safetensors dtypes the weights had ("F32", "BF16"), for the log.
  std::vector<std::string> source_dtypes;
};

absl::StatusOr<HfImport> ImportHfModel(const std::string& dir,
                                       const std::vector<std::string>& overrides);

struct HfExportOptions {
  DType dtype = DType::kF32;  // kF32 or kBF16 (round to nearest even)
  // A model.safetensors larger than this is split into model-0000i-of-0000n.safetensors with
  // model.safetensors.index.json; transformers' save_pretrained default (5 GB) by default.
  uint64_t max_shard_bytes = 5'000'000'000ull;
  std::optional<int64_t> bos_token_id;  // written to config.json / generation_config.json
  std::optional<int64_t> eos_token_id;
};

// The Hugging Face tensors of a lattice model: names, shapes, fp32 values (padded vocabulary
// rows dropped), in the order they are written.
absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> HfTensorsOf(
    const ModelConfig& c, const std::map<std::string, Tensor>& weights);

// Writes config.json, generation_config.json and the weights (model.safetensors, or shards and
// their index) into `dir` (which must exist), every file through runtime/io/output_file.h.
// Returns the names of the files written.
absl::StatusOr<std::vector<std::string>> ExportHfModel(const ModelConfig& c,
                                                       const std::map<std::string, Tensor>& weights,
                                                       const std::string& dir,
                                                       const HfExportOptions& options);

// "5GB", "200MB", "1.5GiB", "4096" (bytes) -> bytes. InvalidArgument naming the value.
absl::StatusOr<uint64_t> ParseByteSize(const std::string& text);

}  // namespace lattice

#endif  // LATTICE_MODEL_HF_CONVERT_H_
