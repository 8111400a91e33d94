// `lattice generate`: continues a prompt with a trained model, streaming the text to stdout as it
// is generated and saying on stderr why it stopped; or, with --prompts-file, generates for every
// prompt of a file and writes one JSON line per prompt. docs/generate.md is the user's guide.
//
// Only ids the tokenizer can decode are ever sampled (model/sampler.h): a model may have more
// vocabulary rows than its tokenizer has tokens. The text printed so far is always a prefix of
// the tokenizer's decoding of every id generated so far (TextStreamer): an id that ends inside a
// multi-byte UTF-8 character is printed once the character is complete, and text that may be the
// start of a stop string is held until it is known not to be one.
//
// --chat renders the prompt as a user message (after a --system message) with the chat template
// (runtime/text/chat_template.h) and its generation prompt, and adds the template's end-of-turn
// marker to the stop strings. The rendered string is encoded as a whole, so `--chat --prompt P`
// feeds the model exactly the ids of `--prompt <rendered P>`.
//
// A batch is generated one prompt after another: the decoder's KV cache (model/decoder.h) holds
// one sequence. Each prompt starts a fresh cache and the sampler's draw counter at 0, so a
// prompt's result in a batch is the result of a single run with the same options and seed.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "launcher/commands.h"
#include "launcher/options.h"
#include "launcher/trainer.h"
#include "model/sampler.h"
#include "parallel/checkpoint.h"
#include "runtime/io/json_limits.h"
#include "runtime/io/mapped_file.h"
#include "runtime/io/output_file.h"
#include "runtime/text/chat_template.h"
#include "runtime/text/tokenizer.h"

namespace lattice {

namespace po = boost::program_options;

namespace {

void Print(absl::string_view text) {
  if (text.empty()) return;
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

// One prompt to generate for.
struct PromptItem {
  std::string where;  // "FILE:LINE" for a prompts file, empty for --prompt
  int64_t line = 0;   // line in the prompts file (0 for --prompt)
  std::string text;   // the text to encode: the prompt, or the rendered conversation
  bool chat = false;  // rendered with the chat template: its end-of-turn marker stops
};

// A prompt rendered as a conversation: [system,] user, then the generation prompt.
absl::StatusOr<std::string> RenderUserPrompt(const std::string& prompt,
                                             const std::optional<std::string>& system) {
  std::vector<text::ChatMessage> messages;
  if (system) messages.push_back({"system", *system});
  messages.push_back({"user", prompt});
  return text::RenderChat(messages, /*add_generation_prompt=*/true);
}

bool IsBlankLine(absl::string_view line) {
  return std::all_of(line.begin(), line.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\r'; });
}

// One JSONL line of a prompts file: {"prompt": "..."} or {"messages": [...]}; other keys are
// ignored (ids, metadata). Errors name FILE:LINE.
absl::StatusOr<PromptItem> ParsePromptLine(absl::string_view line, const std::string& where,
                                           bool chat,
                                           const std::optional<std::string>& system) {
  PromptItem item;
  item.where = where;
  absl::StatusOr<nlohmann::json> parsed = ParseJson(line);
  if (!parsed.ok()) return Annotate(parsed.status(), where);
  const nlohmann::json& j = *parsed;
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": expected a JSON object with \"prompt\" or \"messages\", got a JSON ",
        j.type_name()));
  }
  const auto prompt = j.find("prompt");
  const auto messages = j.find("messages");
  if ((prompt == j.end()) == (messages == j.end())) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": expected exactly one of \"prompt\" (a string) and \"messages\" (a list), got ",
        prompt == j.end() ? "neither" : "both"));
  }
  if (prompt != j.end()) {
    if (!prompt->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": \"prompt\" is a JSON ",
                                                     prompt->type_name(), ", not a string"));
    }
    item.chat = chat;
    if (!chat) {
      item.text = prompt->get<std::string>();
      return item;
    }
    absl::StatusOr<std::string> rendered = RenderUserPrompt(prompt->get<std::string>(), system);
    if (!rendered.ok()) return Annotate(rendered.status(), where);
    item.text = *std::move(rendered);
    return item;
  }
  // A conversation is always rendered with the template, --chat or not: it has no other form.
  absl::StatusOr<std::vector<text::ChatMessage>> list = text::ChatMessagesFromJson(*messages);
  if (!list.ok()) return Annotate(list.status(), where);
  absl::StatusOr<std::string> rendered = text::RenderChat(*list, /*add_generation_prompt=*/true);
  if (!rendered.ok()) return Annotate(rendered.status(), where);
  item.text = *std::move(rendered);
  item.chat = true;
  return item;
}

// The prompts of --prompts-file: JSONL when the name ends in .jsonl or .json (as for `lattice
// prepare`), else one prompt per line. Blank lines (spaces, tabs, '\r' only) are skipped in
// both; a line's trailing "\r" is dropped (files written on Windows).
absl::StatusOr<std::vector<PromptItem>> ReadPromptsFile(const std::string& path, bool chat,
                                                        const std::optional<std::string>& system) {
  absl::StatusOr<std::unique_ptr<MappedFile>> file = MappedFile::Open(path);
  if (!file.ok()) return Annotate(file.status(), "--prompts-file");
  const char* data = reinterpret_cast<const char*>((*file)->data());
  const absl::string_view all(data == nullptr ? "" : data, (*file)->size());
  const bool jsonl = absl::EndsWith(path, ".jsonl") || absl::EndsWith(path, ".json");
  std::vector<PromptItem> items;
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < all.size()) {
    const size_t nl = all.find('\n', pos);
    const size_t next = nl == absl::string_view::npos ? all.size() : nl + 1;
    absl::string_view line = all.substr(pos, next - pos);
    pos = next;
    ++line_no;
    if (absl::EndsWith(line, "\n")) line.remove_suffix(1);
    if (absl::EndsWith(line, "\r")) line.remove_suffix(1);
    if (IsBlankLine(line)) continue;
    const std::string where = absl::StrCat(path, ":", line_no);
    PromptItem item;
    if (jsonl) {
      LATTICE_ASSIGN_OR_RETURN(item, ParsePromptLine(line, where, chat, system));
    } else {
      item.where = where;
      item.chat = chat;
      if (chat) {
        absl::StatusOr<std::string> rendered = RenderUserPrompt(std::string(line), system);
        if (!rendered.ok()) return Annotate(rendered.status(), where);
        item.text = *std::move(rendered);
      } else {
        item.text = std::string(line);
      }
    }
    item.line = line_no;
    items.push_back(std::move(item));
  }
  if (items.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--prompts-file ", path, ": no prompts (every line is blank)"));
  }
  return items;
}

struct Generation {
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> ids;  // generated ids, the stopping end-of-text token excluded
  std::string text;          // their text, cut before a stop string
  std::string reason;        // why generation stopped
};

// Positions the cache needs: GPT-2's learned positions end at seq_len; rotary positions
// (Llama) have no table, so the prompt and every new token fit.
int64_t MaxLen(const ModelConfig& cfg, size_t prompt_len, int64_t max_new) {
  return cfg.arch == Arch::kGpt2 ? cfg.seq_len : static_cast<int64_t>(prompt_len) + max_new;
}

// The ids the model is fed for `item` (the end-of-text token for an empty prompt), checked
// against the room the model has. Errors name the prompt's FILE:LINE when it has one.
absl::StatusOr<std::vector<int32_t>> PromptIds(const Tokenizer& tokenizer, const ModelConfig& cfg,
                                               int64_t max_new, const PromptItem& item) {
  std::vector<int32_t> ids = tokenizer.Encode(item.text);
  const std::string prefix = item.where.empty() ? "" : absl::StrCat(item.where, ": ");
  if (ids.empty()) {
    const std::optional<int32_t> eot = tokenizer.eot_id();
    if (!eot) {
      return absl::InvalidArgumentError(absl::StrCat(
          prefix, "empty prompt and the tokenizer has no end-of-text token to start from"));
    }
    ids.push_back(*eot);
  }
  if (static_cast<int64_t>(ids.size()) >= MaxLen(cfg, ids.size(), max_new) && max_new > 0) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "the prompt has ", ids.size(),
                                                   " tokens; model.seq_len=", cfg.seq_len,
                                                   " leaves no room to generate"));
  }
  return ids;
}

// Generates for one prompt at a time, with the options every prompt of a run shares.
class Generator {
 public:
  Generator(Decoder& model, const Tokenizer& tokenizer, const ModelConfig& model_cfg,
            SamplerOptions sampler, int64_t max_new, bool stop_at_eot,
            std::vector<std::string> stops)
      : model_(model),
        tokenizer_(tokenizer),
        cfg_(model_cfg),
        sampler_(sampler),
        max_new_(max_new),
        stop_at_eot_(stop_at_eot),
        stops_(std::move(stops)),
        eot_(tokenizer.eot_id()),
        allowed_(DecodableTokenMask(tokenizer, model_cfg.vocab_size)) {}

  // Generates after `prompt_ids`, passing each piece of final text to `on_text` as it comes.
  absl::StatusOr<Generation> Run(const PromptItem& item, std::vector<int32_t> prompt_ids,
                                 const std::function<void(absl::string_view)>& on_text) {
    std::vector<std::string> stops = stops_;
    if (item.chat) {
      for (std::string& s : text::ChatStopStrings()) stops.push_back(std::move(s));
    }
    TextStreamer stream(tokenizer_, std::move(stops));
    Generation g;
    g.reason = absl::StrCat("--max-new-tokens=", max_new_, " reached");
    auto emit = [&](std::string piece) {
      if (on_text) on_text(piece);
      g.text += piece;
    };
    if (max_new_ > 0) {
      const int64_t max_len = MaxLen(cfg_, prompt_ids.size(), max_new_);
      KvCache cache = model_.NewKvCache(max_len);
      std::vector<float> logits(cfg_.padded_vocab());
      for (int32_t id : prompt_ids) model_.DecodeStep(id, cache, logits.data());
      for (;;) {
        LATTICE_ASSIGN_OR_RETURN(const int32_t next,
                                 SampleToken(logits, allowed_, sampler_, stream.num_ids()));
        if (stop_at_eot_ && eot_ && next == *eot_) {
          g.reason = absl::StrCat("end-of-text token ", next);
          break;
        }
        g.ids.push_back(next);
        LATTICE_ASSIGN_OR_RETURN(TextStreamer::Piece piece, stream.Add(next));
        if (piece.stopped) {
          g.reason = "a --stop string";
          if (item.chat) {
            // Which string stopped it: the decoding of every id continues with it after the text.
            LATTICE_ASSIGN_OR_RETURN(const std::string all, tokenizer_.Decode(g.ids));
            const std::string text_so_far = g.text + piece.text;
            if (absl::StartsWith(absl::string_view(all).substr(text_so_far.size()),
                                 text::kChatEndOfTurn)) {
              g.reason = absl::StrCat("the chat end-of-turn marker ", text::kChatEndOfTurn);
            }
          }
          emit(std::move(piece.text));
          break;
        }
        emit(std::move(piece.text));
        if (stream.num_ids() == max_new_) break;
        if (cache.len == max_len) {
          // Every position of a learned-position model is used: the next id has no place.
          g.reason = absl::StrCat("model.seq_len=", cfg_.seq_len, " reached");
          break;
        }
        model_.DecodeStep(next, cache, logits.data());
      }
    }
    emit(stream.Finish());
    g.prompt_ids = std::move(prompt_ids);
    return g;
  }

 private:
  Decoder& model_;
  const Tokenizer& tokenizer_;
  const ModelConfig& cfg_;
  const SamplerOptions sampler_;
  const int64_t max_new_;
  const bool stop_at_eot_;
  const std::vector<std::string> stops_;
  const std::optional<int32_t> eot_;
  const std::vector<uint8_t> allowed_;
};

// One result line of a batch: {"index", "line", "prompt_tokens", "text", "ids", "num_tokens",
// "stopped"}.
std::string ResultLine(int64_t index, const PromptItem& item, const Generation& g) {
  nlohmann::json j;
  j["index"] = index;
  j["line"] = item.line;
  j["prompt_tokens"] = g.prompt_ids.size();
  j["text"] = g.text;
  j["ids"] = g.ids;
  j["num_tokens"] = g.ids.size();
  j["stopped"] = g.reason;
  // Decode yields valid UTF-8 (U+FFFD for broken sequences); replace guards the dump anyway.
  return j.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace

absl::Status RunGenerateCommand(const CommandArgs& args) {
  po::options_description desc("lattice generate");
  std::string config, weights, prompt, tokenizer_spec, prompts_file, output, system;
  std::vector<std::string> sets, stops;
  int64_t max_new = 100, top_k = 0, seed = 0;
  float temperature = 1.0f, top_p = 1.0f;
  bool greedy = false, stop_at_eot = true, chat = false;
  desc.add_options()("config", po::value(&config)->required(), "YAML config file")(
      "weights", po::value(&weights)->required(),
      "model.safetensors, or a checkpoint directory (lattice train checkpoint.dir or one step_* in it)")(
      "prompt", po::value(&prompt)->default_value(""), "text to continue")(
      "chat", po::bool_switch(&chat),
      "the prompt is a user message, rendered with the chat template (docs/generate.md); "
      "prints only the reply, which ends at the template's end-of-turn marker")(
      "system", po::value(&system), "a system message before the prompt (with --chat)")(
      "prompts-file", po::value(&prompts_file),
      "generate for every prompt of this file: one per line, or JSONL ({\"prompt\"} or "
      "{\"messages\"}) if it ends in .jsonl/.json; writes one JSON line per prompt")(
      "output", po::value(&output),
      "with --prompts-file: write the JSON lines to this file (default: stdout)")(
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
  const bool batch = vm.count("prompts-file") > 0;
  if (batch && !vm["prompt"].defaulted()) {
    return absl::InvalidArgumentError("--prompt and --prompts-file cannot be used together");
  }
  if (vm.count("output") && !batch) {
    return absl::InvalidArgumentError(
        "--output needs --prompts-file (a single --prompt streams to stdout)");
  }
  if (vm.count("system") && !chat) {
    return absl::InvalidArgumentError("--system needs --chat");
  }
  const std::optional<std::string> system_message =
      vm.count("system") ? std::optional<std::string>(system) : std::nullopt;
  SamplerOptions so;
  so.temperature = greedy ? 0.0f : temperature;
  so.top_k = top_k;
  so.top_p = top_p;
  so.seed = static_cast<uint64_t>(seed);
  LATTICE_RETURN_IF_ERROR(ValidateSamplerOptions(so));

  // The prompts are read and rendered before the model is loaded: a bad line fails fast.
  std::vector<PromptItem> items;
  if (batch) {
    LATTICE_ASSIGN_OR_RETURN(items, ReadPromptsFile(prompts_file, chat, system_message));
  } else {
    PromptItem item;
    item.chat = chat;
    if (chat) {
      LATTICE_ASSIGN_OR_RETURN(item.text, RenderUserPrompt(prompt, system_message));
    } else {
      item.text = prompt;
    }
    items.push_back(std::move(item));
  }

  LATTICE_ASSIGN_OR_RETURN(Config cfg, LoadConfig(config, sets));
  if (tokenizer_spec.empty()) tokenizer_spec = cfg.data.tokenizer.empty() ? "byte" : cfg.data.tokenizer;
  LATTICE_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::Load(tokenizer_spec));
  if (tokenizer->vocab_size() > cfg.model.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer ", tokenizer_spec, " has ", tokenizer->vocab_size(),
        " tokens but model.vocab_size=", cfg.model.vocab_size));
  }
  // Every prompt is encoded and checked before any is generated for.
  std::vector<std::vector<int32_t>> prompt_ids;
  prompt_ids.reserve(items.size());
  for (const PromptItem& item : items) {
    LATTICE_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                             PromptIds(*tokenizer, cfg.model, max_new, item));
    prompt_ids.push_back(std::move(ids));
  }
  // The output file is created before the model is loaded, so a bad path fails fast; nothing
  // is visible at it before Commit (runtime/io/output_file.h), so a failed run leaves no part.
  std::unique_ptr<OutputFile> out;
  if (!output.empty()) {
    LATTICE_ASSIGN_OR_RETURN(out, OutputFile::Create(output));
  }

  LATTICE_ASSIGN_OR_RETURN(auto model, Decoder::Create(cfg.model, 1));
  // A safetensors file, or a checkpoint (a step directory, or checkpoint.dir: its newest).
  LATTICE_RETURN_IF_ERROR(std::filesystem::is_directory(weights)
                              ? LoadCheckpointWeights(weights, *model)
                              : LoadWeights(*model, weights));
  Generator generator(*model, *tokenizer, cfg.model, so, max_new, stop_at_eot, stops);

  if (!batch) {
    const PromptItem& item = items[0];
    // A plain prompt is echoed (the output reads as one text); a chat reply is printed alone.
    if (!item.chat && !prompt.empty()) {
      LATTICE_ASSIGN_OR_RETURN(std::string prompt_text, tokenizer->Decode(prompt_ids[0]));
      Print(prompt_text);
    }
    // Print flushes per piece, so a reader sees the text as it is generated.
    LATTICE_ASSIGN_OR_RETURN(Generation g, generator.Run(item, std::move(prompt_ids[0]), Print));
    Print("\n");
    std::fprintf(stderr, "lattice generate: %zu tokens, stopped: %s\n", g.ids.size(),
                 g.reason.c_str());
    return absl::OkStatus();
  }

  int64_t total = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    LATTICE_ASSIGN_OR_RETURN(Generation g, generator.Run(items[i], std::move(prompt_ids[i]),
                                                         /*on_text=*/nullptr));
    const std::string line = ResultLine(static_cast<int64_t>(i), items[i], g);
    if (out) {
      LATTICE_RETURN_IF_ERROR(out->Write(line));
    } else {
      Print(line);  // one complete line per prompt, as each is done
    }
    total += static_cast<int64_t>(g.ids.size());
    std::fprintf(stderr, "lattice generate: prompt %zu (%s): %zu tokens, stopped: %s\n", i,
                 items[i].where.c_str(), g.ids.size(), g.reason.c_str());
  }
  if (out) LATTICE_RETURN_IF_ERROR(out->Commit());
  std::fprintf(stderr, "lattice generate: %zu prompts, %lld tokens%s%s\n", items.size(),
               static_cast<long long>(total), out ? ", written to " : "",
               out ? output.c_str() : "");
  return absl::OkStatus();
}

}  // namespace lattice
