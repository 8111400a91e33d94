#include "launcher/commands.h"

namespace lattice {

absl::Status RunGenerateCommand(const CommandArgs& args) {
  return absl::UnimplementedError("lattice generate: not implemented yet");
}

}  // namespace lattice
