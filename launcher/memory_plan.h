// The memory per rank of a configuration, planned without allocating it (`lattice train
// --memory-only`): parameters, gradients, optimizer state, communication buffers, scratch and
// activations by category, for each pipeline stage of the configured layout and recompute
// mode. docs/memory.md derives the same numbers by formula.
#ifndef LATTICE_LAUNCHER_MEMORY_PLAN_H_
#define LATTICE_LAUNCHER_MEMORY_PLAN_H_

#include <string>

#include "absl/status/statusor.h"
#include "runtime/config.h"

namespace lattice {

// The plan of every pipeline stage (its tensor- and data-parallel rank 0: the others hold the
// same sizes), one block of "  key  bytes  (GiB)" lines per stage. InvalidArgument for a
// layout that does not fit the configuration (world = tp x pp x dp, dp = 0 taken as 1).
absl::StatusOr<std::string> FormatMemoryPlan(const Config& cfg);

}  // namespace lattice

#endif  // LATTICE_LAUNCHER_MEMORY_PLAN_H_
