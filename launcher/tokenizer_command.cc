// `lattice tokenizer train|encode|decode`: train a byte-level BPE tokenizer.json, or run one.
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "launcher/commands.h"
#include "launcher/options.h"
#include "launcher/preflight.h"
#include "runtime/text/bpe_trainer.h"
#include "runtime/io/mapped_file.h"
#include "runtime/io/output_file.h"
#include "runtime/status.h"
#include "runtime/text/tokenizer.h"

namespace lattice {
namespace {

namespace po = boost::program_options;

constexpr char kUsage[] =
    "usage: lattice tokenizer <subcommand> [options]\n\n"
    "subcommands:\n"
    "  train    train a byte-level BPE (GPT-2 pre-tokenizer) and write a tokenizer.json\n"
    "  encode   print the token ids of a text (space-separated)\n"
    "  decode   print the text of space-separated token ids\n\n"
    "`lattice tokenizer <subcommand> --help` describes its options. A tokenizer is a\n"
    "Hugging Face tokenizer.json path, or \"byte\" for the 257-symbol byte tokenizer.\n";

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> f, MappedFile::Open(path));
  return std::string(reinterpret_cast<const char*>(f->data()), f->size());
}

absl::Status WriteOutput(const std::string& path, const std::string& bytes) {
  if (path.empty() || path == "-") {
    if (std::fwrite(bytes.data(), 1, bytes.size(), stdout) != bytes.size() ||
        std::fflush(stdout) != 0) {
      return absl::UnavailableError("could not write to stdout");
    }
    return absl::OkStatus();
  }
  return WriteOutputFile(path, bytes);
}

// --out can be written and is none of the inputs; checked before the work, not after it.
absl::Status CheckOut(const std::string& out, const std::vector<NamedPath>& inputs) {
  if (out.empty() || out == "-") return absl::OkStatus();
  return CheckOutputs({{"--out", out}}, inputs);
}

void AppendIds(const std::vector<int32_t>& ids, std::string* out) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out->push_back(' ');
    absl::StrAppend(out, ids[i]);
  }
  out->push_back('\n');
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

absl::Status RunTrain(const std::vector<std::string>& args) {
  std::vector<std::string> inputs, specials;
  int64_t vocab_size = 0, min_frequency = 2;
  int threads = 0;
  std::string out;
  po::options_description desc("options");
  // clang-format off
  desc.add_options()
      ("input", po::value(&inputs)->required()->composing(), "training text file (repeatable)")
      ("vocab-size", po::value(&vocab_size)->required(),
       "total vocabulary: 256 bytes + merges + special tokens")
      ("out", po::value(&out)->required(), "tokenizer.json to write")
      ("special-token", po::value(&specials)->composing(),
       "special token (repeatable; default <|endoftext|>)")
      ("min-frequency", po::value(&min_frequency)->default_value(2),
       "never merge pairs seen fewer times")
      ("threads", po::value(&threads)->default_value(0), "counting threads (0: all cores)");
  // clang-format on
  po::variables_map vm;
  bool help = false;
  LATTICE_RETURN_IF_ERROR(ParseOptions("tokenizer train", args, desc, vm, &help));
  if (help) return absl::OkStatus();
  const int64_t num_special = specials.empty() ? 1 : static_cast<int64_t>(specials.size());
  // 256 byte tokens + the special tokens at least; 2^30 is the BPE trainer's own ceiling.
  LATTICE_RETURN_IF_ERROR(
      CheckIntOption("vocab-size", vocab_size, 256 + num_special, int64_t{1} << 30));
  LATTICE_RETURN_IF_ERROR(CheckIntOption("min-frequency", min_frequency, 1,
                                         std::numeric_limits<int64_t>::max()));
  LATTICE_RETURN_IF_ERROR(CheckThreadsOption(threads));
  std::vector<NamedPath> input_paths;
  for (const std::string& path : inputs) input_paths.push_back({"--input", path});
  LATTICE_RETURN_IF_ERROR(CheckOut(out, input_paths));

  BpeTrainerOptions options;
  options.vocab_size = vocab_size;
  options.min_frequency = min_frequency;
  options.num_threads = threads;
  if (!specials.empty()) options.special_tokens = specials;
  const auto start = std::chrono::steady_clock::now();
  LATTICE_ASSIGN_OR_RETURN(BpeTrainerResult result, TrainBpeFromFiles(inputs, options));
  LATTICE_RETURN_IF_ERROR(WriteOutput(out, result.tokenizer_json));
  std::fprintf(stderr,
               "lattice tokenizer train: %lld bytes, %lld distinct words, %lld merges, vocab %lld "
               "in %.2f s -> %s\n",
               static_cast<long long>(result.num_bytes), static_cast<long long>(result.num_words),
               static_cast<long long>(result.num_merges), static_cast<long long>(result.vocab_size),
               SecondsSince(start), out.c_str());
  if (result.vocab_size < vocab_size) {
    std::fprintf(stderr,
                 "lattice tokenizer train: stopped below --vocab-size %lld: no pair is seen %lld "
                 "times or more\n",
                 static_cast<long long>(vocab_size), static_cast<long long>(min_frequency));
  }
  return absl::OkStatus();
}

absl::Status RunEncode(const std::vector<std::string>& args) {
  std::string tokenizer_spec, text, input, out;
  int threads = 1;
  po::options_description desc("options");
  // clang-format off
  desc.add_options()
      ("tokenizer", po::value(&tokenizer_spec)->required(), "tokenizer.json, or \"byte\"")
      ("text", po::value(&text), "text to encode")
      ("input", po::value(&input), "file to encode (instead of --text)")
      ("out", po::value(&out), "write the ids here instead of stdout")
      ("lines", "encode each line of the input as its own document (one output line each)")
      ("threads", po::value(&threads)->default_value(1), "threads for --lines (0: all cores)")
      ("time", "print the encoding throughput to stderr");
  // clang-format on
  po::variables_map vm;
  bool help = false;
  LATTICE_RETURN_IF_ERROR(ParseOptions("tokenizer encode", args, desc, vm, &help));
  if (help) return absl::OkStatus();
  if (vm.count("text") == vm.count("input")) {
    return absl::InvalidArgumentError("encode: give exactly one of --text and --input");
  }
  LATTICE_RETURN_IF_ERROR(CheckThreadsOption(threads));
  LATTICE_RETURN_IF_ERROR(CheckOut(out, {{"--input", input}, {"--tokenizer", tokenizer_spec}}));
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::Load(tokenizer_spec));
  if (vm.count("input")) {
    LATTICE_ASSIGN_OR_RETURN(text, ReadFile(input));
  }

  std::string result;
  int64_t num_tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  if (vm.count("lines")) {
    std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
    if (!lines.empty() && lines.back().empty()) lines.pop_back();
    const std::vector<std::vector<int32_t>> ids = tok->EncodeBatch(lines, threads);
    const double seconds = SecondsSince(start);
    for (const auto& v : ids) {
      num_tokens += static_cast<int64_t>(v.size());
      AppendIds(v, &result);
    }
    if (vm.count("time")) {
      std::fprintf(stderr,
                   "lattice tokenizer encode: %zu documents, %zu bytes -> %lld tokens in %.3f s "
                   "(%.2f MB/s, %d threads)\n",
                   lines.size(), text.size(), static_cast<long long>(num_tokens), seconds,
                   text.size() / seconds / 1e6, threads);
    }
  } else {
    const std::vector<int32_t> ids = tok->Encode(text);
    const double seconds = SecondsSince(start);
    num_tokens = static_cast<int64_t>(ids.size());
    AppendIds(ids, &result);
    if (vm.count("time")) {
      std::fprintf(
          stderr, "lattice tokenizer encode: %zu bytes -> %lld tokens in %.3f s (%.2f MB/s)\n",
          text.size(), static_cast<long long>(num_tokens), seconds, text.size() / seconds / 1e6);
    }
  }
  return WriteOutput(out, result);
}

absl::Status RunDecode(const std::vector<std::string>& args) {
  std::string tokenizer_spec, ids_text, input, out;
  po::options_description desc("options");
  // clang-format off
  desc.add_options()
      ("tokenizer", po::value(&tokenizer_spec)->required(), "tokenizer.json, or \"byte\"")
      ("ids", po::value(&ids_text), "space-separated ids")
      ("input", po::value(&input), "file of whitespace-separated ids (instead of --ids)")
      ("out", po::value(&out), "write the text here instead of stdout");
  // clang-format on
  po::variables_map vm;
  bool help = false;
  LATTICE_RETURN_IF_ERROR(ParseOptions("tokenizer decode", args, desc, vm, &help));
  if (help) return absl::OkStatus();
  if (vm.count("ids") == vm.count("input")) {
    return absl::InvalidArgumentError("decode: give exactly one of --ids and --input");
  }
  LATTICE_RETURN_IF_ERROR(CheckOut(out, {{"--input", input}, {"--tokenizer", tokenizer_spec}}));
  if (vm.count("input")) {
    LATTICE_ASSIGN_OR_RETURN(ids_text, ReadFile(input));
  }
  std::vector<int32_t> ids;
  for (absl::string_view field :
       absl::StrSplit(ids_text, absl::ByAnyChar(" \t\r\n"), absl::SkipEmpty())) {
    int32_t id;
    if (!absl::SimpleAtoi(field, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("decode: \"", field, "\" is not a token id (an int32)"));
    }
    ids.push_back(id);
  }
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::Load(tokenizer_spec));
  LATTICE_ASSIGN_OR_RETURN(std::string text, tok->Decode(ids));
  return WriteOutput(out, text);
}

}  // namespace

absl::Status RunTokenizerCommand(const CommandArgs& args) {
  if (args.empty()) {
    std::fputs(kUsage, stderr);
    return absl::InvalidArgumentError("missing subcommand (train, encode or decode)");
  }
  const std::string& sub = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (sub == "--help" || sub == "-h" || sub == "help") {
    std::fputs(kUsage, stdout);
    return absl::OkStatus();
  }
  if (sub == "train") return RunTrain(rest);
  if (sub == "encode") return RunEncode(rest);
  if (sub == "decode") return RunDecode(rest);
  std::fputs(kUsage, stderr);
  return absl::InvalidArgumentError(absl::StrCat("unknown subcommand \"", sub, "\""));
}

}  // namespace lattice
