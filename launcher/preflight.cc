#include "launcher/preflight.h"

#include <sys/stat.h>

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "runtime/io/output_file.h"
#include "runtime/status.h"

namespace lattice {

bool SameFile(const std::string& a, const std::string& b) {
  if (a.empty() || b.empty()) return false;
  struct stat sa, sb;
  const bool a_exists = ::stat(a.c_str(), &sa) == 0;
  const bool b_exists = ::stat(b.c_str(), &sb) == 0;
  if (a_exists && b_exists) {
    return S_ISREG(sa.st_mode) && S_ISREG(sb.st_mode) && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
  }
  if (a_exists || b_exists) return false;
  // Two spellings of one path that does not exist yet ("out/w", "./out/../out/w").
  std::error_code ea, eb;
  const std::filesystem::path ca = std::filesystem::weakly_canonical(a, ea);
  const std::filesystem::path cb = std::filesystem::weakly_canonical(b, eb);
  return !ea && !eb && ca == cb;
}

absl::Status CheckOutputs(const std::vector<NamedPath>& outputs,
                          const std::vector<NamedPath>& inputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    const NamedPath& out = outputs[i];
    if (out.path.empty()) continue;
    LATTICE_RETURN_IF_ERROR(Annotate(CheckOutputWritable(out.path), out.name));
    for (size_t j = 0; j < i; ++j) {
      if (SameFile(out.path, outputs[j].path)) {
        return absl::InvalidArgumentError(absl::StrCat(
            out.name, "='", out.path, "' and ", outputs[j].name, "='", outputs[j].path,
            "' are the same file; give each output its own path"));
      }
    }
    for (const NamedPath& in : inputs) {
      if (SameFile(out.path, in.path)) {
        return absl::InvalidArgumentError(absl::StrCat(
            out.name, "='", out.path, "' is the same file as ", in.name, "='", in.path,
            "'; writing it would destroy that input: give ", out.name, " another path"));
      }
    }
  }
  return absl::OkStatus();
}

namespace {

// The files a dataset spec may name: itself (a file), or PREFIX.bin / PREFIX.idx.
void AddDataInputs(const std::string& name, const std::string& spec,
                   std::vector<NamedPath>* inputs) {
  if (spec.empty()) return;
  inputs->push_back({name, spec});
  inputs->push_back({name, spec + ".bin"});
  inputs->push_back({name, spec + ".idx"});
}

}  // namespace

absl::Status CheckTrainOutputs(const Config& cfg) {
  const TrainConfig& t = cfg.train;
  if (!t.save_weights.empty() && SameFile(t.save_weights, t.init_weights) &&
      !t.overwrite_init_weights) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train.save_weights='", t.save_weights, "' is the same file as train.init_weights='",
        t.init_weights,
        "': the trained weights would replace the ones this run starts from. Give "
        "train.save_weights another path, or set train.overwrite_init_weights=true (in the "
        "config, or --set train.overwrite_init_weights=true) to replace them on purpose"));
  }
  std::vector<NamedPath> inputs;
  if (!t.overwrite_init_weights) inputs.push_back({"train.init_weights", t.init_weights});
  inputs.push_back({"train.init_from", t.init_from});
  if (cfg.data.tokenizer != "byte") inputs.push_back({"data.tokenizer", cfg.data.tokenizer});
  AddDataInputs("data.train", cfg.data.train, &inputs);
  AddDataInputs("data.val", cfg.data.val, &inputs);
  for (const auto& [weight, prefix] : cfg.data.blend) AddDataInputs("data.blend", prefix, &inputs);
  std::vector<NamedPath> outputs = {{"train.save_weights", t.save_weights},
                                    {"train.metrics_file", t.metrics_file}};
  LATTICE_RETURN_IF_ERROR(CheckOutputs(outputs, inputs));
  // With overwrite_init_weights only save_weights may be the init file; the metrics file never.
  if (t.overwrite_init_weights && SameFile(t.metrics_file, t.init_weights)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train.metrics_file='", t.metrics_file, "' is the same file as train.init_weights='",
        t.init_weights, "'; writing it would destroy that input: give train.metrics_file "
        "another path"));
  }
  return absl::OkStatus();
}

}  // namespace lattice
