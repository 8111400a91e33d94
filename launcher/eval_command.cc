#include <cmath>
#include <filesystem>
#include <cstdio>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "launcher/commands.h"
#include "launcher/options.h"
#include "launcher/preflight.h"
#include "launcher/trainer.h"
#include "parallel/checkpoint.h"
#include "nlohmann/json.hpp"
#include "runtime/io/safetensors.h"
#include "runtime/data/token_file.h"

namespace lattice {

namespace po = boost::program_options;

// Mean loss of `weights` over every full stride-T window of `data`, in file order. With
// --grads-out, also the gradient of that mean loss with respect to every parameter (used by the
// PyTorch oracle test and for debugging).
absl::Status RunEvalCommand(const CommandArgs& args) {
  po::options_description desc("lattice eval");
  std::string config, weights, data, grads_out, dump_logits;
  std::vector<std::string> sets;
  int64_t max_samples = 0;
  desc.add_options()("config", po::value(&config)->required(), "YAML config file")(
      "weights", po::value(&weights)->required(),
      "model.safetensors, or a checkpoint directory (lattice train checkpoint.dir or one step_* in it)")(
      "data", po::value(&data)->required(), "token file or Megatron prefix")(
      "max-samples", po::value(&max_samples)->default_value(0), "evaluate at most this many samples (0 = all)")(
      "grads-out", po::value(&grads_out), "also write d(mean loss)/d(parameter) as safetensors")(
      "dump-logits", po::value(&dump_logits),
      "also write the logits (samples, seq_len, vocab_size) as safetensors 'logits'")(
      "set", po::value(&sets)->composing(), "override a config key");
  po::variables_map vm;
  bool help;
  LATTICE_RETURN_IF_ERROR(ParseOptions("eval", args, desc, vm, &help));
  if (help) return absl::OkStatus();
  LATTICE_RETURN_IF_ERROR(CheckIntOption("max-samples", max_samples, 0,
                                         std::numeric_limits<int64_t>::max()));
  // The gradients and logits are written after the whole pass: check the paths first, and
  // never over the weights or the data being evaluated.
  std::vector<NamedPath> outputs;
  if (!grads_out.empty()) outputs.push_back({"--grads-out", grads_out});
  if (!dump_logits.empty()) outputs.push_back({"--dump-logits", dump_logits});
  if (!outputs.empty()) {
    LATTICE_RETURN_IF_ERROR(CheckOutputs(outputs,
                                         {{"--weights", weights},
                                          {"--config", config},
                                          {"--data", data},
                                          {"--data", data + ".bin"},
                                          {"--data", data + ".idx"}}));
  }
  LATTICE_ASSIGN_OR_RETURN(Config cfg, LoadConfig(config, sets));
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<TokenSource> source, OpenTokenSource(data));
  LATTICE_RETURN_IF_ERROR(source->Validate(cfg.model.vocab_size));
  const int64_t t = cfg.model.seq_len;
  int64_t samples = source->num_tokens() > 0 ? (source->num_tokens() - 1) / t : 0;
  if (max_samples > 0) samples = std::min(samples, max_samples);
  if (samples == 0) {
    return absl::InvalidArgumentError(absl::StrCat(data, ": ", source->num_tokens(),
                                                   " tokens is less than one sample of model.seq_len+1=",
                                                   t + 1));
  }
  const int64_t mbs = cfg.train.micro_batch_size;
  // train.precision bf16/fp16: the forward (and --grads-out's backward) stores activations
  // in the compute dtype and reads the weights rounded to it, as training does
  // (docs/precision.md); the loss then equals the training run's validation loss.
  std::unique_ptr<kernels::Backend> storage;
  DecoderOptions options;
  if (cfg.train.precision != DType::kF32) {
    storage = kernels::MakeStorageRoundingBackend(kernels::DefaultBackend(), cfg.train.precision);
    options.backend = storage.get();
  }
  LATTICE_ASSIGN_OR_RETURN(auto model,
                           Decoder::Create(cfg.model, mbs, ModelShard(), nullptr, options));
  // A safetensors file, or a checkpoint (a step directory, or checkpoint.dir: its newest).
  LATTICE_RETURN_IF_ERROR(std::filesystem::is_directory(weights)
                              ? LoadCheckpointWeights(weights, *model)
                              : LoadWeights(*model, weights));
  if (storage != nullptr) {
    model->backend().RoundThrough(kernels::ViewOf(model->params().flat_values()),
                                  cfg.train.precision);
  }
  const bool grads = !grads_out.empty();
  model->params().ZeroGrads();
  const float dloss = 1.0f / static_cast<float>(samples * t);
  double sum = 0;
  int64_t count = 0;
  std::vector<int32_t> window(t + 1), inputs(mbs * t), targets(mbs * t);
  // The real vocabulary's logits of every sample (padded rows dropped), for the parity tests.
  const int64_t v = cfg.model.vocab_size, vp = cfg.model.padded_vocab();
  Tensor logits = dump_logits.empty() ? Tensor() : Tensor::Zeros({samples, t, v}, DType::kF32);
  for (int64_t first = 0; first < samples; first += mbs) {
    const int64_t b = std::min(mbs, samples - first);
    for (int64_t i = 0; i < b; ++i) {
      LATTICE_RETURN_IF_ERROR(source->Read((first + i) * t, t + 1, window.data()));
      std::copy(window.begin(), window.begin() + t, inputs.begin() + i * t);
      std::copy(window.begin() + 1, window.end(), targets.begin() + i * t);
    }
    ForwardResult r = model->Forward(inputs.data(), targets.data(), nullptr, b, t);
    sum += r.loss_sum;
    count += r.num_tokens;
    if (grads) model->Backward(dloss);
    if (!dump_logits.empty()) {
      model->Forward(inputs.data(), nullptr, nullptr, b, t);
      for (int64_t row = 0; row < b * t; ++row) {
        std::copy_n(model->logits() + row * vp, v, logits.f32() + (first * t + row) * v);
      }
    }
  }
  const double loss = sum / static_cast<double>(count);
  if (grads) {
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const Parameter& p : model->params().params()) tensors.emplace_back(p.name, p.grad);
    LATTICE_RETURN_IF_ERROR(WriteSafetensors(grads_out, tensors, {{"format", "pt"}}));
  }
  if (!dump_logits.empty()) {
    LATTICE_RETURN_IF_ERROR(WriteSafetensors(dump_logits, {{"logits", logits}}, {{"format", "pt"}}));
  }
  nlohmann::json j = {{"loss", loss}, {"ppl", std::exp(loss)}, {"tokens", count},
                      {"samples", samples}, {"data", data}, {"weights", weights},
                      {"precision", cfg.train.precision == DType::kF32    ? "fp32"
                                    : cfg.train.precision == DType::kBF16 ? "bf16"
                                                                          : "fp16"}};
  std::printf("%s\n", j.dump().c_str());
  return absl::OkStatus();
}

}  // namespace lattice
