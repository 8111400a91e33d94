#include "launcher/commands.h"

namespace lattice {

absl::Status RunEvalCommand(const CommandArgs& args) {
  return absl::UnimplementedError("lattice eval: not implemented yet");
}

}  // namespace lattice
