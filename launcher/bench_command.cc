#include "launcher/commands.h"

namespace lattice {

absl::Status RunBenchCommand(const CommandArgs& args) {
  return absl::UnimplementedError("lattice bench: not implemented yet");
}

}  // namespace lattice
