#include "launcher/commands.h"

namespace lattice {

absl::Status RunTrainCommand(const CommandArgs& args) {
  return absl::UnimplementedError("lattice train: not implemented yet");
}

}  // namespace lattice
