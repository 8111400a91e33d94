#include "launcher/commands.h"

namespace lattice {

absl::Status RunPrepareCommand(const CommandArgs& args) {
  return absl::UnimplementedError("lattice prepare: not implemented yet");
}

}  // namespace lattice
