// `lattice ckpt inspect | verify | reshard | export`: sharded checkpoints (parallel/checkpoint.h,
// docs/checkpoints.md) without a training run. Each takes a checkpoint directory (step_*) or a
// checkpoint root (checkpoint.dir: its newest committed checkpoint; verify checks all of them).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "launcher/commands.h"
#include "launcher/options.h"
#include "launcher/preflight.h"
#include "nlohmann/json.hpp"
#include "parallel/checkpoint.h"
#include "runtime/config.h"
#include "runtime/data/dataset.h"
#include "runtime/io/checkpoint_format.h"
#include "runtime/status.h"

namespace lattice {

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

constexpr char kUsage[] =
    "usage: lattice ckpt <command> CHECKPOINT [options]\n\n"
    "CHECKPOINT is a checkpoint directory (step_*) or a checkpoint.dir (its newest one).\n\n"
    "commands:\n"
    "  inspect   what the checkpoint holds: counters, layout, files, tensors (--json)\n"
    "  verify    reads every box of every file and checks its CRC-32C (all checkpoints of a\n"
    "            checkpoint.dir); --config/--set also check the model against a config\n"
    "  reshard   rewrite it as another layout saves it: --out DIR --set parallel.tp=2 ...\n"
    "  export    the weights as one safetensors file: --out model.safetensors\n";

absl::Status Inspect(const std::string& path, bool json) {
  LATTICE_ASSIGN_OR_RETURN(std::string dir, ResolveCheckpoint(path));
  LATTICE_ASSIGN_OR_RETURN(CheckpointIndex idx, ReadCheckpointIndex(dir));
  std::map<std::string, int> groups;  // "model", "optimizer/exp_avg", ...
  size_t boxes = 0;
  for (const auto& [key, t] : idx.tensors) {
    groups[key.substr(0, key.rfind('/'))]++;
    boxes += t.boxes.size();
  }
  uint64_t file_bytes = 0;
  for (const CheckpointFile& f : idx.files) file_bytes += f.bytes;
  if (json) {
    nlohmann::ordered_json j;
    j["path"] = dir;
    j["iteration"] = idx.iteration;
    j["optimizer_step"] = idx.optimizer_step;
    j["skipped_iterations"] = idx.skipped_iterations;
    j["nan_iterations"] = idx.nan_iterations;
    j["seed"] = idx.seed;
    j["layout"] = idx.layout.ToString();
    j["world"] = idx.layout.world;
    j["files"] = idx.files.size();
    j["file_bytes"] = file_bytes;
    j["payload_bytes"] = idx.payload_bytes();
    j["boxes"] = boxes;
    j["data_state"] = idx.data_state.empty() ? nlohmann::ordered_json()
                                             : nlohmann::ordered_json::parse(idx.data_state);
    nlohmann::ordered_json tensors = nlohmann::ordered_json::object();
    for (const auto& [key, t] : idx.tensors) {
      tensors[key] = {{"shape", t.shape}, {"dtype", t.dtype}, {"boxes", t.boxes.size()}};
    }
    j["tensors"] = std::move(tensors);
    std::printf("%s\n", j.dump(1).c_str());
    return absl::OkStatus();
  }
  std::printf("checkpoint %s\n", dir.c_str());
  std::printf("  iteration %lld, optimizer step %lld, skipped iterations %lld (NaN %lld), seed %llu\n",
              static_cast<long long>(idx.iteration), static_cast<long long>(idx.optimizer_step),
              static_cast<long long>(idx.skipped_iterations),
              static_cast<long long>(idx.nan_iterations),
              static_cast<unsigned long long>(idx.seed));
  std::printf("  saved from layout %s\n", idx.layout.ToString().c_str());
  if (!idx.data_state.empty()) {
    absl::StatusOr<DataLoaderState> d = DataLoaderState::FromJson(idx.data_state);
    if (d.ok()) {
      std::vector<std::string> sources;
      for (const auto& s : d->sources) {
        sources.push_back(absl::StrCat(s.path, " (", s.num_tokens, " tokens, weight ", s.weight, ")"));
      }
      std::printf("  data: %lld samples consumed, seq_len %lld, %s\n",
                  static_cast<long long>(d->consumed_samples), static_cast<long long>(d->seq_len),
                  absl::StrJoin(sources, ", ").c_str());
    }
  }
  std::vector<std::string> g;
  for (const auto& [name, n] : groups) g.push_back(absl::StrCat(name, " ", n));
  std::printf("  %zu tensors (%s) in %zu boxes, %zu files, %.2f MiB\n", idx.tensors.size(),
              absl::StrJoin(g, ", ").c_str(), boxes, idx.files.size(), file_bytes / 1048576.0);
  for (const CheckpointFile& f : idx.files) {
    std::printf("    %s  %.2f MiB  (rank %d)\n", f.name.c_str(), f.bytes / 1048576.0, f.rank);
  }
  for (const auto& [key, t] : idx.tensors) {
    std::printf("    %-48s %s %-14s %zu box(es)\n", key.c_str(), t.dtype.c_str(),
                ShapeToString(t.shape).c_str(), t.boxes.size());
  }
  return absl::OkStatus();
}

absl::Status VerifyOne(const std::string& dir, const std::optional<Config>& cfg) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, CheckpointReader::Open(dir));
  // The index's own config must describe its tensors; a given config must match too.
  const std::string index_path = (fs::path(dir) / kCheckpointIndexFile).string();
  LATTICE_ASSIGN_OR_RETURN(Config own, ParseConfig(reader->index().config_yaml, {},
                                                   absl::StrCat(index_path, " config")));
  const bool optimizer = !reader->index().tensors.empty() &&
                         std::any_of(reader->index().tensors.begin(), reader->index().tensors.end(),
                                     [](const auto& kv) {
                                       return absl::StartsWith(kv.first, "optimizer/");
                                     });
  LATTICE_RETURN_IF_ERROR(CheckCompatible(*reader, own.model, optimizer));
  if (cfg.has_value()) LATTICE_RETURN_IF_ERROR(CheckCompatible(*reader, cfg->model, optimizer));
  LATTICE_RETURN_IF_ERROR(reader->VerifyAll());
  size_t boxes = 0;
  for (const auto& [key, t] : reader->index().tensors) boxes += t.boxes.size();
  std::printf("ok %s: iteration %lld, %zu files, %zu tensors, %zu boxes, %.2f MiB checked\n",
              dir.c_str(), static_cast<long long>(reader->index().iteration),
              reader->index().files.size(), reader->index().tensors.size(), boxes,
              reader->bytes_read() / 1048576.0);
  return absl::OkStatus();
}

absl::Status Verify(const std::string& path, const std::optional<Config>& cfg) {
  if (IsCheckpointDirectory(path)) return VerifyOne(path, cfg);
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such checkpoint directory"));
  }
  LATTICE_ASSIGN_OR_RETURN(std::vector<CheckpointEntry> all, ListCheckpoints(path));
  if (all.empty()) {
    // A step directory without its index (a save that never committed) lands here too.
    return absl::NotFoundError(absl::StrCat(
        path, ": no ", kCheckpointIndexFile, ", and no committed step_* checkpoint inside: not a "
        "committed checkpoint (a save that did not finish?)"));
  }
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (absl::StartsWith(name, kCheckpointTempPrefix)) {
      std::printf("ignored %s: a save that did not commit\n", it->path().c_str());
    }
  }
  std::vector<std::string> errors;
  for (const CheckpointEntry& e : all) {
    absl::Status s = VerifyOne(e.path, cfg);
    if (!s.ok()) {
      std::printf("FAILED %s: %s\n", e.path.c_str(), std::string(s.message()).c_str());
      errors.push_back(std::string(s.message()));
    }
  }
  if (!errors.empty()) {
    return absl::DataLossError(absl::StrCat(errors.size(), " of ", all.size(),
                                            " checkpoints are damaged: ",
                                            absl::StrJoin(errors, "; ")));
  }
  return absl::OkStatus();
}

absl::Status Reshard(const std::string& path, const std::string& out,
                     const std::vector<std::string>& sets) {
  if (out.empty()) return absl::InvalidArgumentError("ckpt reshard needs --out DIR");
  for (const std::string& s : sets) {
    if (!absl::StartsWith(s, "parallel.")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--set ", s, ": ckpt reshard changes the layout only (parallel.* keys)"));
    }
  }
  LATTICE_ASSIGN_OR_RETURN(std::string dir, ResolveCheckpoint(path));
  LATTICE_ASSIGN_OR_RETURN(CheckpointIndex idx, ReadCheckpointIndex(dir));
  const std::string where = (fs::path(dir) / kCheckpointIndexFile).string() + " config";
  LATTICE_ASSIGN_OR_RETURN(Config target, ParseConfig(idx.config_yaml, sets, where));
  const int64_t world = target.parallel.tp * target.parallel.pp *
                        (target.parallel.dp > 0 ? target.parallel.dp : 1);
  LATTICE_RETURN_IF_ERROR(Annotate(target.ValidateLayout(world), "ckpt reshard"));
  LATTICE_ASSIGN_OR_RETURN(std::string written, ReshardCheckpoint(dir, target, out));
  std::printf("resharded %s (%s) into %s (%s)\n", dir.c_str(), idx.layout.ToString().c_str(),
              written.c_str(), LayoutOf(target).ToString().c_str());
  return absl::OkStatus();
}

}  // namespace

absl::Status RunCkptCommand(const CommandArgs& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? absl::InvalidArgumentError("ckpt needs a command") : absl::OkStatus();
  }
  const std::string command = args[0];
  if (command != "inspect" && command != "verify" && command != "reshard" && command != "export") {
    std::fputs(kUsage, stderr);
    return absl::InvalidArgumentError(absl::StrCat("unknown ckpt command '", command, "'"));
  }
  const CommandArgs rest(args.begin() + 1, args.end());
  po::options_description desc(absl::StrCat("lattice ckpt ", command));
  std::string checkpoint, out, config;
  std::vector<std::string> sets;
  bool json = false;
  desc.add_options()("checkpoint", po::value(&checkpoint)->required(),
                     "checkpoint directory or checkpoint.dir");
  if (command == "inspect") desc.add_options()("json", po::bool_switch(&json), "as JSON");
  if (command == "verify") {
    desc.add_options()("config", po::value(&config), "also check the model against a config")(
        "set", po::value(&sets)->composing(), "override a config key");
  }
  if (command == "reshard") {
    desc.add_options()("out", po::value(&out)->required(),
                       "checkpoint.dir to write the resharded checkpoint into")(
        "set", po::value(&sets)->composing(), "the new layout: parallel.tp=2, ...");
  }
  if (command == "export") {
    desc.add_options()("out", po::value(&out)->required(), "model.safetensors to write");
  }
  // The checkpoint is the first positional argument (`--checkpoint DIR` works as well).
  CommandArgs parsed = rest;
  if (!parsed.empty() && !absl::StartsWith(parsed[0], "-")) {
    parsed.insert(parsed.begin(), "--checkpoint");
  }
  po::variables_map vm;
  bool help;
  LATTICE_RETURN_IF_ERROR(ParseOptions(absl::StrCat("ckpt ", command), parsed, desc, vm, &help));
  if (help) return absl::OkStatus();
  if (command == "inspect") return Inspect(checkpoint, json);
  if (command == "verify") {
    std::optional<Config> cfg;
    if (!config.empty() || !sets.empty()) {
      LATTICE_ASSIGN_OR_RETURN(Config c, LoadConfig(config, sets));
      cfg = std::move(c);
    }
    return Verify(checkpoint, cfg);
  }
  if (command == "reshard") return Reshard(checkpoint, out, sets);
  LATTICE_RETURN_IF_ERROR(CheckOutputs({{"--out", out}}, {}));
  LATTICE_RETURN_IF_ERROR(ExportCheckpointWeights(checkpoint, out));
  std::printf("exported the weights of %s to %s\n", checkpoint.c_str(), out.c_str());
  return absl::OkStatus();
}

}  // namespace lattice
