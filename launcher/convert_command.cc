// `lattice convert`: Hugging Face model directories to lattice checkpoints and back
// (docs/hf.md; the mapping itself is model/hf_convert.h's).
//
//   lattice convert --from hf DIR --to CKPT [--set parallel.tp=2 ...]
//       CKPT (a new checkpoint root) gets step_00000000 (weights only, counters 0) saved as the
//       ranks of the --set layout would have saved it, `latest`, tokenizer.json and
//       generation_config.json copied from DIR, and config.yaml: the lattice config of the
//       model (data.tokenizer pointing at the copied tokenizer.json).
//   lattice convert --from CKPT --to hf DIR [--dtype fp32|bf16] [--max-shard-size 5GB]
//       DIR (new or empty) gets config.json, generation_config.json, model.safetensors (or
//       shards with model.safetensors.index.json) and tokenizer.json.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "launcher/commands.h"
#include "launcher/options.h"
#include "model/decoder.h"
#include "model/hf_convert.h"
#include "model/weights_file.h"
#include "nlohmann/json.hpp"
#include "parallel/checkpoint.h"
#include "parallel/communicator.h"
#include "runtime/io/checkpoint_format.h"
#include "runtime/io/json_limits.h"
#include "runtime/io/mapped_file.h"
#include "runtime/io/output_file.h"
#include "runtime/status.h"
#include "runtime/text/tokenizer.h"

namespace lattice {
namespace {

namespace fs = std::filesystem;
namespace po = boost::program_options;

// generation_config.json is a few hundred bytes; a MB bounds a mistaken file.
constexpr size_t kMaxGenerationConfigBytes = 1u << 20;

// A directory that may receive the output: missing (created) or empty. Writing into a
// directory that holds files would mix the new files with stale ones (an old shard the new
// index does not list, a checkpoint of another model).
absl::Status PrepareEmptyDirectory(const std::string& dir, const char* option, bool* created) {
  std::error_code ec;
  *created = false;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) {
      return absl::InvalidArgumentError(absl::StrCat(option, " ", dir, ": exists and is not a directory"));
    }
    if (!fs::is_empty(dir, ec)) {
      return absl::InvalidArgumentError(absl::StrCat(
          option, " ", dir, ": exists and is not empty; give a new directory (nothing in it is replaced)"));
    }
    return absl::OkStatus();
  }
  fs::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(option, " ", dir, ": ", ec.message()));
  *created = true;
  return absl::OkStatus();
}

// After a failed conversion: what it wrote into the directory PrepareEmptyDirectory gave it
// (which held nothing of the user's), so that no half-written output looks usable.
absl::Status RemoveOutput(const std::string& dir, bool created, absl::Status failure) {
  std::error_code ec;
  if (created) {
    fs::remove_all(dir, ec);
  } else {
    for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) fs::remove_all(e.path(), ec);
  }
  return failure;
}

absl::Status CopyFile(const std::string& from, const std::string& to) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> in, MappedFile::Open(from));
  return WriteOutputFile(
      to, absl::string_view(reinterpret_cast<const char*>(in->data()), in->size()));
}

// The tokenizer, when lattice's tokenizer reads it; otherwise null and a note (the file still
// goes along: transformers reads more tokenizer kinds than lattice does). Ids the model has
// no rows for are an error.
absl::StatusOr<std::unique_ptr<Tokenizer>> OpenTokenizer(const std::string& path,
                                                         const ModelConfig& m) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromFile(path);
  if (!tok.ok()) {
    std::fprintf(stderr,
                 "lattice convert: note: lattice does not read %s (%s); it is copied as it is, "
                 "and lattice generate needs another data.tokenizer\n",
                 path.c_str(), std::string(tok.status().message()).c_str());
    return std::unique_ptr<Tokenizer>();
  }
  if ((*tok)->vocab_size() > m.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": the tokenizer has ",
                                                   (*tok)->vocab_size(),
                                                   " tokens, more than the model's vocab_size ",
                                                   m.vocab_size));
  }
  return std::move(*tok);
}

absl::Status WriteCheckpoint(HfImport& imp, Config& cfg, const std::string& hf_dir,
                             const std::string& root, bool tokenizer_readable);

absl::Status ImportCommand(const std::string& hf_dir, const std::string& root,
                           const std::vector<std::string>& sets) {
  LATTICE_ASSIGN_OR_RETURN(HfImport imp, ImportHfModel(hf_dir, sets));
  Config cfg = imp.config;
  const ParallelConfig& pc = cfg.parallel;
  const int64_t world = pc.tp * pc.pp * (pc.dp > 0 ? pc.dp : 1);
  LATTICE_RETURN_IF_ERROR(Annotate(cfg.ValidateLayout(world), "--set"));
  bool tokenizer_readable = false;
  if (!imp.tokenizer_path.empty()) {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok,
                             OpenTokenizer(imp.tokenizer_path, cfg.model));
    tokenizer_readable = tok != nullptr;
  }
  bool created = false;
  LATTICE_RETURN_IF_ERROR(PrepareEmptyDirectory(root, "--to", &created));
  absl::Status written = WriteCheckpoint(imp, cfg, hf_dir, root, tokenizer_readable);
  return written.ok() ? written : RemoveOutput(root, created, written);
}

absl::Status WriteCheckpoint(HfImport& imp, Config& cfg, const std::string& hf_dir,
                             const std::string& root, bool tokenizer_readable) {
  const int64_t world = cfg.parallel.tp * cfg.parallel.pp * cfg.parallel.dp;
  const fs::path abs_root = fs::absolute(root);
  if (tokenizer_readable) cfg.data.tokenizer = (abs_root / "tokenizer.json").string();

  // The whole model on one rank, filled with the converted weights.
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Decoder> model, Decoder::Create(cfg.model, 1));
  for (const Parameter& p : model->params().params()) {
    LATTICE_RETURN_IF_ERROR(ConvertInto(imp.weights.at(p.name), p.value));
  }
  imp.weights.clear();
  Config one_rank = cfg;
  one_rank.parallel = ParallelConfig{};
  LATTICE_RETURN_IF_ERROR(one_rank.ValidateLayout(1));
  CheckpointContents contents;
  contents.seed = cfg.train.seed;
  contents.config_yaml = one_rank.ToYaml();
  contents.layout = LayoutOf(one_rank);
  SelfCommunicator self;
  std::string step_dir;
  // One rank saves the whole model; another layout is that checkpoint resharded (each rank's
  // boxes as that layout's own save writes them), then the one-rank copy is removed.
  const std::string one_rank_root =
      world == 1 ? root : (abs_root / absl::StrCat(kCheckpointTempPrefix, "convert")).string();
  {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointSaver> saver,
                             CheckpointSaver::Create(self, CheckpointOptions{one_rank_root}));
    LATTICE_ASSIGN_OR_RETURN(std::optional<SaveStats> stats,
                             saver->Save(TrainStateRegistry::ForModel(*model), contents));
    LATTICE_ASSIGN_OR_RETURN(std::optional<SaveStats> last, saver->Finish());
    step_dir = stats ? stats->path : last ? last->path : "";
  }
  if (world > 1) {
    LATTICE_ASSIGN_OR_RETURN(step_dir, ReshardCheckpoint(one_rank_root, cfg, root));
    std::error_code ec;
    fs::remove_all(one_rank_root, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat(one_rank_root, ": cannot remove: ", ec.message()));
    }
  }
  LATTICE_RETURN_IF_ERROR(WriteOutputFile((abs_root / "config.yaml").string(), cfg.ToYaml()));
  if (!imp.tokenizer_path.empty()) {
    LATTICE_RETURN_IF_ERROR(CopyFile(imp.tokenizer_path, (abs_root / "tokenizer.json").string()));
  }
  if (!imp.generation_config_path.empty()) {
    LATTICE_RETURN_IF_ERROR(
        CopyFile(imp.generation_config_path, (abs_root / "generation_config.json").string()));
  }
  if (imp.tokenizer_path.empty()) {
    std::fprintf(stderr,
                 "lattice convert: note: %s has no tokenizer.json; set data.tokenizer in %s "
                 "before generating text\n",
                 hf_dir.c_str(), (abs_root / "config.yaml").string().c_str());
  }
  nlohmann::json j = {{"checkpoint", step_dir},
                      {"config", (abs_root / "config.yaml").string()},
                      {"tokenizer", cfg.data.tokenizer},
                      {"arch", cfg.model.arch == Arch::kGpt2 ? "gpt2" : "llama"},
                      {"parameters", Decoder::CountParameters(cfg.model)},
                      {"source_dtypes", imp.source_dtypes},
                      {"layout", LayoutOf(cfg).ToString()}};
  std::printf("%s\n", j.dump().c_str());
  return absl::OkStatus();
}

// bos/eos ids from a generation_config.json (single integers only; a list of eos ids keeps
// its first).
void ReadSpecialIds(const std::string& path, HfExportOptions& o) {
  absl::StatusOr<std::unique_ptr<MappedFile>> f = MappedFile::Open(path);
  if (!f.ok() || (*f)->size() > kMaxGenerationConfigBytes) return;
  absl::StatusOr<nlohmann::json> j =
      ParseJson(absl::string_view(reinterpret_cast<const char*>((*f)->data()), (*f)->size()));
  if (!j.ok() || !j->is_object()) return;
  for (auto [key, field] : {std::pair{"bos_token_id", &o.bos_token_id},
                            std::pair{"eos_token_id", &o.eos_token_id}}) {
    if (!j->contains(key)) continue;
    const nlohmann::json& v = j->at(key);
    const nlohmann::json& first = v.is_array() && !v.empty() ? v.at(0) : v;
    if (first.is_number_integer() && first.get<int64_t>() >= 0) *field = first.get<int64_t>();
  }
}

absl::Status ExportCommand(const std::string& from, const std::string& config_path,
                           const std::string& out_dir, const std::string& dtype,
                           const std::string& max_shard, std::string tokenizer) {
  HfExportOptions o;
  if (dtype == "bf16" || dtype == "bfloat16") {
    o.dtype = DType::kBF16;
  } else if (dtype != "fp32" && dtype != "float32") {
    return absl::InvalidArgumentError(absl::StrCat("--dtype=", dtype, " is invalid: fp32 or bf16"));
  }
  LATTICE_ASSIGN_OR_RETURN(o.max_shard_bytes, ParseByteSize(max_shard));
  std::error_code ec;
  Config cfg;
  std::unique_ptr<Decoder> model;
  std::string beside;  // the directory whose tokenizer.json / generation_config.json go along
  if (fs::is_regular_file(from, ec)) {
    // A whole-model weights file (model/weights_file.h) with the config it was trained with.
    if (config_path.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--from ", from, " is a weights file: give the model's --config too"));
    }
    LATTICE_ASSIGN_OR_RETURN(cfg, LoadConfig(config_path, {}));
    LATTICE_ASSIGN_OR_RETURN(model, Decoder::Create(cfg.model, 1));
    LATTICE_RETURN_IF_ERROR(LoadWeights(*model, from));
    beside = fs::path(from).parent_path().string();
  } else {
    LATTICE_ASSIGN_OR_RETURN(std::string dir, ResolveCheckpoint(from));
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, CheckpointReader::Open(dir));
    LATTICE_ASSIGN_OR_RETURN(
        cfg, ParseConfig(reader->index().config_yaml, {},
                         (fs::path(dir) / kCheckpointIndexFile).string() + " config"));
    LATTICE_ASSIGN_OR_RETURN(model, Decoder::Create(cfg.model, 1));
    LATTICE_RETURN_IF_ERROR(CheckCompatible(*reader, cfg.model, /*need_optimizer=*/false));
    LATTICE_RETURN_IF_ERROR(ReadState(*reader, TrainStateRegistry::ForModel(*model)));
    // `from` names a step directory or the root holding it (where convert and train put the
    // tokenizer and config).
    beside = IsCheckpointDirectory(from) ? fs::path(dir).parent_path().string() : from;
  }
  if (tokenizer.empty()) {
    const std::string near = (fs::path(beside) / "tokenizer.json").string();
    if (fs::is_regular_file(near, ec)) {
      tokenizer = near;
    } else if (!cfg.data.tokenizer.empty() && cfg.data.tokenizer != "byte" &&
               fs::is_regular_file(cfg.data.tokenizer, ec)) {
      tokenizer = cfg.data.tokenizer;
    }
  }
  const std::string gen = (fs::path(beside) / "generation_config.json").string();
  if (fs::is_regular_file(gen, ec)) ReadSpecialIds(gen, o);
  if (!tokenizer.empty()) {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, OpenTokenizer(tokenizer, cfg.model));
    // GPT-2's configs use its end-of-text token as both bos and eos.
    if (tok && !o.eos_token_id && tok->eot_id()) o.eos_token_id = *tok->eot_id();
    if (tok && !o.bos_token_id && cfg.model.arch == Arch::kGpt2 && tok->eot_id()) {
      o.bos_token_id = *tok->eot_id();
    }
  }
  bool created = false;
  LATTICE_RETURN_IF_ERROR(PrepareEmptyDirectory(out_dir, "--to hf", &created));
  std::map<std::string, Tensor> weights;
  for (const Parameter& p : model->params().params()) weights.emplace(p.name, p.value);
  absl::StatusOr<std::vector<std::string>> exported = ExportHfModel(cfg.model, weights, out_dir, o);
  if (!exported.ok()) return RemoveOutput(out_dir, created, exported.status());
  std::vector<std::string> files = std::move(*exported);
  if (!tokenizer.empty()) {
    absl::Status copied = CopyFile(tokenizer, (fs::path(out_dir) / "tokenizer.json").string());
    if (!copied.ok()) return RemoveOutput(out_dir, created, copied);
    files.push_back("tokenizer.json");
  } else {
    std::fprintf(stderr,
                 "lattice convert: note: no tokenizer.json beside %s (or data.tokenizer, or "
                 "--tokenizer): %s has the weights and configs only\n",
                 from.c_str(), out_dir.c_str());
  }
  nlohmann::json j = {{"dir", out_dir}, {"files", files}, {"dtype", o.dtype == DType::kBF16 ? "bf16" : "fp32"},
                      {"arch", cfg.model.arch == Arch::kGpt2 ? "GPT2LMHeadModel" : "LlamaForCausalLM"}};
  std::printf("%s\n", j.dump().c_str());
  return absl::OkStatus();
}

}  // namespace

absl::Status RunConvertCommand(const CommandArgs& raw) {
  // `--from hf DIR` / `--to hf DIR` name the Hugging Face side; every other value is a path.
  CommandArgs args;
  for (size_t i = 0; i < raw.size(); ++i) {
    if ((raw[i] == "--from" || raw[i] == "--to") && i + 1 < raw.size() && raw[i + 1] == "hf") {
      if (i + 2 >= raw.size()) {
        return absl::InvalidArgumentError(absl::StrCat(raw[i], " hf needs a directory: ", raw[i],
                                                       " hf DIR"));
      }
      args.push_back(raw[i] + "-hf");
      args.push_back(raw[i + 2]);
      i += 2;
      continue;
    }
    args.push_back(raw[i]);
  }
  po::options_description desc(
      "lattice convert --from hf DIR --to CKPT [--set k=v ...]\n"
      "lattice convert --from CKPT --to hf DIR [--dtype fp32|bf16] [--max-shard-size 5GB]");
  std::string from, to, from_hf, to_hf, dtype, max_shard, tokenizer, config;
  std::vector<std::string> sets;
  desc.add_options()("from", po::value(&from), "lattice checkpoint (directory or root) or weights file")(
      "to", po::value(&to), "new lattice checkpoint root")(
      "from-hf", po::value(&from_hf), "(written --from hf DIR) Hugging Face model directory")(
      "to-hf", po::value(&to_hf), "(written --to hf DIR) new Hugging Face model directory")(
      "set", po::value(&sets)->composing(),
      "import: override a config key (the layout: parallel.tp=2 ...)")(
      "config", po::value(&config), "export of a weights file: its lattice config")(
      "dtype", po::value(&dtype)->default_value("fp32"), "export: fp32 or bf16 weights")(
      "max-shard-size", po::value(&max_shard)->default_value("5GB"),
      "export: split model.safetensors above this size")(
      "tokenizer", po::value(&tokenizer), "export: the tokenizer.json to include");
  po::variables_map vm;
  bool help;
  LATTICE_RETURN_IF_ERROR(ParseOptions("convert", args, desc, vm, &help));
  if (help) return absl::OkStatus();
  if (!from_hf.empty() && !to.empty() && from.empty() && to_hf.empty()) {
    for (const char* o : {"config", "tokenizer"}) {
      if (vm.count(o) != 0) {
        return absl::InvalidArgumentError(absl::StrCat("--", o, " is for --to hf (export)"));
      }
    }
    if (!vm["dtype"].defaulted() || !vm["max-shard-size"].defaulted()) {
      return absl::InvalidArgumentError(
          "--dtype and --max-shard-size are for --to hf (export); an import keeps fp32");
    }
    return ImportCommand(from_hf, to, sets);
  }
  if (!from.empty() && !to_hf.empty() && from_hf.empty() && to.empty()) {
    if (!sets.empty()) {
      return absl::InvalidArgumentError("--set is for --from hf (import); an export takes the "
                                        "checkpoint's config");
    }
    return ExportCommand(from, config, to_hf, dtype, max_shard, tokenizer);
  }
  return absl::InvalidArgumentError(
      "give either --from hf DIR --to CKPT (import) or --from CKPT --to hf DIR (export)");
}

}  // namespace lattice
