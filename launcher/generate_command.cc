#include <cstdio>
#include <vector>

#include "absl/strings/str_cat.h"
#include "launcher/commands.h"
#include "launcher/options.h"
#include "launcher/trainer.h"
#include "model/sampler.h"
#include "runtime/text/tokenizer.h"

namespace lattice {

namespace po = boost::program_options;

absl::Status RunGenerateCommand(const CommandArgs& args) {
  po::options_description desc("lattice generate");
  std::string config, weights, prompt, tokenizer_spec;
  std::vector<std::string> sets;
  int64_t max_new = 100;
  SamplerOptions so;
  bool greedy = false, stop_at_eot = true;
  desc.add_options()("config", po::value(&config)->required(), "YAML config file")(
      "weights", po::value(&weights)->required(), "model.safetensors")(
      "prompt", po::value(&prompt)->default_value(""), "text to continue")(
      "tokenizer", po::value(&tokenizer_spec), "tokenizer.json or 'byte' (default: data.tokenizer)")(
      "max-new-tokens", po::value(&max_new)->default_value(100), "tokens to generate")(
      "temperature", po::value(&so.temperature)->default_value(1.0f), "softmax temperature")(
      "top-k", po::value(&so.top_k)->default_value(0), "keep the k most likely tokens (0 = all)")(
      "top-p", po::value(&so.top_p)->default_value(1.0f), "nucleus sampling mass")(
      "seed", po::value(&so.seed)->default_value(0), "sampling seed")(
      "greedy", po::bool_switch(&greedy), "argmax decoding (same as --temperature 0)")(
      "stop-at-eot", po::value(&stop_at_eot)->default_value(true), "stop at the end-of-text token")(
      "set", po::value(&sets)->composing(), "override a config key");
  po::variables_map vm;
  bool help;
  LATTICE_RETURN_IF_ERROR(ParseOptions("generate", args, desc, vm, &help));
  if (help) return absl::OkStatus();
  if (greedy) so.temperature = 0;
  LATTICE_RETURN_IF_ERROR(ValidateSamplerOptions(so));
  if (max_new < 0) return absl::InvalidArgumentError("--max-new-tokens must be >= 0");
  LATTICE_ASSIGN_OR_RETURN(Config cfg, LoadConfig(config, sets));
  if (tokenizer_spec.empty()) tokenizer_spec = cfg.data.tokenizer.empty() ? "byte" : cfg.data.tokenizer;
  LATTICE_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::Load(tokenizer_spec));
  if (tokenizer->vocab_size() > cfg.model.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer ", tokenizer_spec, " has ", tokenizer->vocab_size(),
        " tokens but model.vocab_size=", cfg.model.vocab_size));
  }
  LATTICE_ASSIGN_OR_RETURN(auto model, Decoder::Create(cfg.model, 1));
  LATTICE_RETURN_IF_ERROR(LoadWeights(*model, weights));

  std::vector<int32_t> ids = tokenizer->Encode(prompt);
  if (ids.empty()) {
    auto eot = tokenizer->eot_id();
    if (!eot) return absl::InvalidArgumentError("empty --prompt and the tokenizer has no end-of-text token to start from");
    ids.push_back(*eot);
  }
  const int64_t max_len = cfg.model.arch == Arch::kGpt2 ? cfg.model.seq_len
                                                        : static_cast<int64_t>(ids.size()) + max_new;
  if (static_cast<int64_t>(ids.size()) >= max_len) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt has ", ids.size(),
                                                   " tokens; model.seq_len=", cfg.model.seq_len,
                                                   " leaves no room to generate"));
  }
  KvCache cache = model->NewKvCache(max_len);
  std::vector<float> logits(cfg.model.padded_vocab());
  for (int32_t id : ids) model->DecodeStep(id, cache, logits.data());
  std::vector<int32_t> out;
  for (int64_t i = 0; i < max_new && cache.len < max_len; ++i) {
    const int32_t next = SampleToken(logits.data(), cfg.model.vocab_size, so, i);
    if (stop_at_eot && tokenizer->eot_id() && next == *tokenizer->eot_id()) break;
    out.push_back(next);
    if (cache.len < max_len) model->DecodeStep(next, cache, logits.data());
  }
  LATTICE_ASSIGN_OR_RETURN(std::string prompt_text, tokenizer->Decode(ids));
  LATTICE_ASSIGN_OR_RETURN(std::string text, tokenizer->Decode(out));
  std::printf("%s%s\n", prompt.empty() ? "" : prompt_text.c_str(), text.c_str());
  return absl::OkStatus();
}

}  // namespace lattice
