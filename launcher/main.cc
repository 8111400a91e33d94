// The lattice binary: `lattice <command> [args]`.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "launcher/commands.h"
#include "launcher/preemption.h"

namespace {

struct Command {
  const char* name;
  absl::Status (*run)(const lattice::CommandArgs&);
  const char* help;
};

constexpr Command kCommands[] = {
    {"train", lattice::RunTrainCommand, "train a model from a config"},
    {"eval", lattice::RunEvalCommand, "mean loss of weights over a dataset, as JSON"},
    {"generate", lattice::RunGenerateCommand, "sample text from trained weights"},
    {"tokenizer", lattice::RunTokenizerCommand, "train / encode / decode a BPE tokenizer"},
    {"prepare", lattice::RunPrepareCommand, "tokenize text or JSONL into .bin/.idx"},
    {"bench", lattice::RunBenchCommand, "benchmarks"},
    {"ckpt", lattice::RunCkptCommand, "inspect / verify / reshard / export a checkpoint"},
    {"convert", lattice::RunConvertCommand, "Hugging Face model directory to checkpoint and back"},
    {"plan", lattice::RunPlanCommand, "predicted memory and step time of every layout, ranked"},
};

void PrintUsage() {
  std::fprintf(stderr, "usage: lattice <command> [options]\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(stderr, "  %-10s %s\n", c.name, c.help);
  std::fprintf(stderr, "\n`lattice <command> --help` describes each command's options.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    PrintUsage();
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  const lattice::CommandArgs args(argv + 2, argv + argc);
  for (const Command& c : kCommands) {
    if (name != c.name) continue;
    absl::Status status;
    try {
      status = c.run(args);
    } catch (const std::exception& e) {
      status = absl::InternalError(std::string("unexpected exception: ") + e.what());
    }
    if (lattice::IsStopped(status)) {
      // Stopped early with a checkpoint (a signal or train.exit_after_minutes): not an error,
      // and its own exit status, so a batch script can requeue the job.
      std::fprintf(stderr, "lattice %s: %s\n", c.name, std::string(status.message()).c_str());
      return lattice::kStoppedExitCode;
    }
    if (!status.ok()) {
      std::fprintf(stderr, "lattice %s: error: %s\n", c.name, std::string(status.message()).c_str());
      return 1;
    }
    return 0;
  }
  std::fprintf(stderr, "lattice: unknown command '%s'\n\n", name.c_str());
  PrintUsage();
  return 2;
}
