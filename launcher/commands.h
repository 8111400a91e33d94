// The `lattice` subcommands. Each takes the arguments after its name and returns a Status;
// only main() turns a Status into an exit code.
#ifndef LATTICE_LAUNCHER_COMMANDS_H_
#define LATTICE_LAUNCHER_COMMANDS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace lattice {

using CommandArgs = std::vector<std::string>;

absl::Status RunTrainCommand(const CommandArgs& args);      // train_command.cc
absl::Status RunEvalCommand(const CommandArgs& args);       // eval_command.cc
absl::Status RunGenerateCommand(const CommandArgs& args);   // generate_command.cc
absl::Status RunTokenizerCommand(const CommandArgs& args);  // tokenizer_command.cc
absl::Status RunPrepareCommand(const CommandArgs& args);    // prepare_command.cc
absl::Status RunBenchCommand(const CommandArgs& args);      // bench_command.cc
absl::Status RunCkptCommand(const CommandArgs& args);       // ckpt_command.cc
absl::Status RunConvertCommand(const CommandArgs& args);    // convert_command.cc
absl::Status RunPlanCommand(const CommandArgs& args);       // plan_command.cc

}  // namespace lattice

#endif  // LATTICE_LAUNCHER_COMMANDS_H_
