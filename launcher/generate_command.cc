// `lattice generate`: continues a prompt with a trained model, streaming the text to stdout as it
// is generated and saying on stderr why it stopped.
//
// Only ids the tokenizer can decode are ever sampled (model/sampler.h): a model may have more
// vocabulary rows than its tokenizer has tokens. The text printed so far is always a prefix of
// the tokenizer's decoding of every id generated so far (TextStreamer): an id that ends inside a
// multi-byte UTF-8 character is printed once the character is complete.
#include <algorithm>
#include <filesystem>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "launcher/commands.h"
#include "launcher/options.h"
#include "launcher/trainer.h"
#include "parallel/checkpoint.h"
#include "model/sampler.h"
#include "runtime/text/tokenizer.h"

namespace lattice {

namespace po = boost::program_options;

namespace {

void Print(absl::string_view text) {
  if (text.empty()) return;
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

}  // namespace

absl::Status RunGenerateCommand(const CommandArgs& args) {
  po::options_description desc("lattice generate");
  std::string config, weights, prompt, tokenizer_spec;
  std::vector<std::string> sets, stops;
  int64_t max_new = 100, top_k = 0, seed = 0;
  float temperature = 1.0f, top_p = 1.0f;
  bool greedy = false, stop_at_eot = true;
  desc.add_options()("config", po::value(&config)->required(), "YAML config file")(
      "weights", po::value(&weights)->required(),
      "model.safetensors, or a checkpoint directory (lattice train checkpoint.dir or one step_* in it)")(
      "prompt", po::value(&prompt)->default_value(""), "text to continue")(
      "tokenizer", po::value(&tokenizer_spec), "tokenizer.json or 'byte' (default: data.tokenizer)")(
      "max-new-tokens", po::value(&max_new)->default_value(100), "tokens to generate (>= 0)")(
      "temperature", po::value(&temperature)->default_value(1.0f),
      "softmax temperature (>= 0; 0 = greedy)")(
      "top-k", po::value(&top_k)->default_value(0), "keep the k most likely tokens (0 = all)")(
      "top-p", po::value(&top_p)->default_value(1.0f), "nucleus sampling mass, in (0, 1]")(
      "seed", po::value(&seed)->default_value(0), "sampling seed (>= 0)")(
      "greedy", po::bool_switch(&greedy), "argmax decoding (same as --temperature 0)")(
      "stop-at-eot", po::value(&stop_at_eot)->default_value(true),
      "stop at the tokenizer's end-of-text token")(
      "stop", po::value(&stops)->composing(),
      "stop when the generated text contains this string, which is not printed (repeatable)")(
      "set", po::value(&sets)->composing(), "override a config key");
  po::variables_map vm;
  bool help;
  LATTICE_RETURN_IF_ERROR(ParseOptions("generate", args, desc, vm, &help));
  if (help) return absl::OkStatus();
  LATTICE_RETURN_IF_ERROR(
      CheckIntOption("max-new-tokens", max_new, 0, std::numeric_limits<int64_t>::max()));
  LATTICE_RETURN_IF_ERROR(
      CheckFloatOption("temperature", temperature, 0, std::numeric_limits<double>::infinity()));
  LATTICE_RETURN_IF_ERROR(CheckIntOption("top-k", top_k, 0, std::numeric_limits<int64_t>::max()));
  LATTICE_RETURN_IF_ERROR(CheckFloatOption("top-p", top_p, 0, 1, /*min_exclusive=*/true));
  LATTICE_RETURN_IF_ERROR(CheckIntOption("seed", seed, 0, std::numeric_limits<int64_t>::max()));
  for (const std::string& s : stops) {
    if (s.empty()) return absl::InvalidArgumentError("--stop must not be an empty string");
  }
  SamplerOptions so;
  so.temperature = greedy ? 0.0f : temperature;
  so.top_k = top_k;
  so.top_p = top_p;
  so.seed = static_cast<uint64_t>(seed);
  LATTICE_RETURN_IF_ERROR(ValidateSamplerOptions(so));

  LATTICE_ASSIGN_OR_RETURN(Config cfg, LoadConfig(config, sets));
  if (tokenizer_spec.empty()) tokenizer_spec = cfg.data.tokenizer.empty() ? "byte" : cfg.data.tokenizer;
  LATTICE_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::Load(tokenizer_spec));
  if (tokenizer->vocab_size() > cfg.model.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer ", tokenizer_spec, " has ", tokenizer->vocab_size(),
        " tokens but model.vocab_size=", cfg.model.vocab_size));
  }
  const std::vector<uint8_t> allowed = DecodableTokenMask(*tokenizer, cfg.model.vocab_size);
  LATTICE_ASSIGN_OR_RETURN(auto model, Decoder::Create(cfg.model, 1));
  // A safetensors file, or a checkpoint (a step directory, or checkpoint.dir: its newest).
  LATTICE_RETURN_IF_ERROR(std::filesystem::is_directory(weights)
                              ? LoadCheckpointWeights(weights, *model)
                              : LoadWeights(*model, weights));

  std::vector<int32_t> ids = tokenizer->Encode(prompt);
  const std::optional<int32_t> eot = tokenizer->eot_id();
  if (ids.empty()) {
    if (!eot) return absl::InvalidArgumentError("empty --prompt and the tokenizer has no end-of-text token to start from");
    ids.push_back(*eot);
  }
  const int64_t max_len = cfg.model.arch == Arch::kGpt2 ? cfg.model.seq_len
                                                        : static_cast<int64_t>(ids.size()) + max_new;
  if (static_cast<int64_t>(ids.size()) >= max_len && max_new > 0) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt has ", ids.size(),
                                                   " tokens; model.seq_len=", cfg.model.seq_len,
                                                   " leaves no room to generate"));
  }
  if (!prompt.empty()) {
    LATTICE_ASSIGN_OR_RETURN(std::string prompt_text, tokenizer->Decode(ids));
    Print(prompt_text);
  }
  TextStreamer stream(*tokenizer, stops);
  std::string reason = absl::StrCat("--max-new-tokens=", max_new, " reached");
  if (max_new > 0) {
    KvCache cache = model->NewKvCache(max_len);
    std::vector<float> logits(cfg.model.padded_vocab());
    for (int32_t id : ids) model->DecodeStep(id, cache, logits.data());
    for (;;) {
      LATTICE_ASSIGN_OR_RETURN(const int32_t next, SampleToken(logits, allowed, so, stream.num_ids()));
      if (stop_at_eot && eot && next == *eot) {
        reason = absl::StrCat("end-of-text token ", next);
        break;
      }
      LATTICE_ASSIGN_OR_RETURN(const TextStreamer::Piece piece, stream.Add(next));
      Print(piece.text);  // flushed per id, so a reader sees the text as it is generated
      if (piece.stopped) {
        reason = "a --stop string";
        break;
      }
      if (stream.num_ids() == max_new) break;
      if (cache.len == max_len) {
        // Every position of a learned-position model is used: the next id has no place.
        reason = absl::StrCat("model.seq_len=", cfg.model.seq_len, " reached");
        break;
      }
      model->DecodeStep(next, cache, logits.data());
    }
  }
  Print(stream.Finish());
  std::fputs("\n", stdout);
  std::fflush(stdout);
  std::fprintf(stderr, "lattice generate: %lld tokens, stopped: %s\n",
               static_cast<long long>(stream.num_ids()), reason.c_str());
  return absl::OkStatus();
}

}  // namespace lattice
