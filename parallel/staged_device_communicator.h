// Device buffers over a host communicator (MPI, or Self for a world of one), staged through
// pinned host memory: every operation copies its device input to a pinned buffer on the
// communicator's stream, runs the host communicator's operation on the pinned buffers, and
// copies the result back. For tests and small runs where several ranks share one GPU, which
// NCCL refuses (two ranks of one NCCL communicator on one device); issue 11's (dp=2, tp=2) run of
// 4 ranks on one GPU goes through it. It moves every byte twice over PCIe and through the host
// transport, so it is not what a training run on one GPU per rank uses (nccl_communicator.h).
//
// Semantics are the host communicator's: its reductions (CanReduce: f32, i32, u32, u8; no bf16
// or f16), its tags and its message-size check on receive, its timeouts and reports. Like the
// NCCL communicator it keeps a private split of the host it is given (so the caller's counters
// see none of its traffic), counts on itself by communicator.h's convention, and orders its
// copies on stream() (device_communicator.h). A non-blocking call copies its input and issues
// the host operation before it returns; Wait() completes the host operation and copies the
// result to the device. Pinned buffers are pooled: a steady-state step allocates none
// (pinned_allocations()).
//
// Compiled in every build; without CUDA the factory says so.
#ifndef LATTICE_PARALLEL_STAGED_DEVICE_COMMUNICATOR_H_
#define LATTICE_PARALLEL_STAGED_DEVICE_COMMUNICATOR_H_

#include <memory>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "parallel/device_communicator.h"

namespace lattice {

// A staged communicator over the ranks of `host`, in the same order: a collective over `host`
// (a split; `host` may be destroyed afterwards). It takes `host`'s name and timeout.
// kFailedPrecondition without a GPU or without CUDA in this build.
absl::StatusOr<std::unique_ptr<DeviceCommunicator>> CreateStagedDeviceCommunicator(
    Communicator& host, const DeviceCommOptions& options = {});

}  // namespace lattice

#endif  // LATTICE_PARALLEL_STAGED_DEVICE_COMMUNICATOR_H_
