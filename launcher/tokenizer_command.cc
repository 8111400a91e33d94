#include "launcher/commands.h"

namespace lattice {

absl::Status RunTokenizerCommand(const CommandArgs& args) {
  return absl::UnimplementedError("lattice tokenizer: not implemented yet");
}

}  // namespace lattice
