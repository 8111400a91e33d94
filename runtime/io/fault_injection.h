// Crash points for the crash-safety tests of checkpoints (tests/launcher/checkpoint_test.py):
// a process that reaches a named point sends itself SIGKILL, the same signal `kill -9` sends,
// so a test can kill a rank exactly in the middle of a shard write or between the last shard
// and the index, which no timing-based kill from outside hits reliably.
//
//   LATTICE_FAULT_INJECT="<point>:<rank>:<step>[:<value>][,<point>:<rank>:<step>...]"
//
// <rank> is the world rank and <step> the iteration (or '*' for any). Points:
//   train_step    before iteration <step> runs (the trainer)
//   shard_write   half-way through writing this rank's shard of the checkpoint of <step>
//   before_index  after every rank reported its shard written, before rank 0 writes the index
//   after_index   after the index is written, before the directory is renamed into place
//   collective_stop  (SIGSTOP, not SIGKILL: a hung rank, not a dead one) inside the first
//                 collective of iteration <step>, after issuing it and before waiting for it
//                 (parallel/mpi_communicator.cc; the trainer says which iteration runs through
//                 SetFaultInjectionStep). tests/cluster/hang_test.py.
//   abort_hang    where a communicator timeout would call MPI_Abort, hang instead (so that the
//                 abort watchdog, parallel/watchdog.h, has to end the process)
//   scale_loss    (takes a 4th field, the factor: "scale_loss:*:37:1000") multiplies the loss
//                 the trainer reports for iteration <step>, and so what its loss-spike detector
//                 sees (launcher/spike.h), once per process: a rolled-back iteration that runs
//                 again is not scaled again. tests/launcher/spike_test.py.
// Unset (always, outside tests) every call is a lookup of an empty list.
#ifndef LATTICE_RUNTIME_IO_FAULT_INJECTION_H_
#define LATTICE_RUNTIME_IO_FAULT_INJECTION_H_

#include <cstdint>
#include <optional>

#include "absl/strings/string_view.h"

namespace lattice {

// SIGKILLs this process when LATTICE_FAULT_INJECT names (point, rank, step).
void MaybeInjectFault(absl::string_view point, int rank, int64_t step);

// Whether LATTICE_FAULT_INJECT names `point` for `rank` and `step` (without acting on it).
bool FaultInjected(absl::string_view point, int rank, int64_t step);

// Whether LATTICE_FAULT_INJECT names anything at all (one load: the check on hot paths).
bool AnyFaultInjected();

// The 4th field of the first entry naming (point, rank, step) with one that was not taken
// before in this process; marks it taken.
std::optional<double> TakeFaultValue(absl::string_view point, int rank, int64_t step);

// SIGSTOPs this process when LATTICE_FAULT_INJECT names (point, rank, step), the first time
// only; it stays stopped until someone sends SIGCONT (or kills it).
void MaybeInjectStop(absl::string_view point, int rank, int64_t step);

// The iteration the trainer is running, for points checked by code that has no step of its own
// (the communicator); -1 before the first.
void SetFaultInjectionStep(int64_t step);
int64_t FaultInjectionStep();

}  // namespace lattice

#endif  // LATTICE_RUNTIME_IO_FAULT_INJECTION_H_
