// Crash points for the crash-safety tests of checkpoints (tests/launcher/checkpoint_test.py):
// a process that reaches a named point sends itself SIGKILL, the same signal `kill -9` sends,
// so a test can kill a rank exactly in the middle of a shard write or between the last shard
// and the index, which no timing-based kill from outside hits reliably.
//
//   LATTICE_FAULT_INJECT="<point>:<rank>:<step>[,<point>:<rank>:<step>...]"
//
// <rank> is the world rank and <step> the iteration (or '*' for any). Points:
//   train_step    before iteration <step> runs (the trainer)
//   shard_write   half-way through writing this rank's shard of the checkpoint of <step>
//   before_index  after every rank reported its shard written, before rank 0 writes the index
//   after_index   after the index is written, before the directory is renamed into place
// Unset (always, outside tests) every call is a lookup of an empty list.
#ifndef LATTICE_RUNTIME_IO_FAULT_INJECTION_H_
#define LATTICE_RUNTIME_IO_FAULT_INJECTION_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace lattice {

// SIGKILLs this process when LATTICE_FAULT_INJECT names (point, rank, step).
void MaybeInjectFault(absl::string_view point, int rank, int64_t step);

// Whether LATTICE_FAULT_INJECT names `point` for `rank` and `step` (without acting on it).
bool FaultInjected(absl::string_view point, int rank, int64_t step);

}  // namespace lattice

#endif  // LATTICE_RUNTIME_IO_FAULT_INJECTION_H_
