// NCCL behind the Communicator interface, on device buffers (issue 11).
//
// Status: compiled in every build that finds CUDA and NCCL (LATTICE_HAVE_NCCL; CMake option
// LATTICE_NCCL); verified only on a GPU by tests/parallel/nccl_communicator_mpi_test.cc (ctest
// label `gpu`, run by tests/gpu/run.sh). Nothing here has run on a GPU yet.
//
// Every NCCL communicator is paired with a host communicator for its control traffic: the
// factory splits a private copy of the host communicator it is given (so the caller's counters
// see none of it), bootstraps NCCL over it (group rank 0 calls ncclGetUniqueId and broadcasts
// the id, every rank joins with ncclCommInitRankConfig on its device), and keeps it for Split,
// Barrier and ending the job. A Split is the host split plus ncclCommSplit (same ordering by key
// then rank); SplitByNode bootstraps a fresh NCCL communicator over the host's node split.
//
// How it keeps the rules of communicator.h:
// - Stream-ordered: every operation is enqueued on stream() (device_communicator.h). A
//   non-blocking call returns a Work holding a CUDA event recorded after the operation; Wait()
//   polls it, WaitOnStream(s) makes `s` wait for it without blocking the host.
// - The communicator is NCCL's non-blocking kind (ncclConfig_t::blocking = 0), so no NCCL call
//   can hold the host past the deadline: every call that answers ncclInProgress (init, split,
//   group ends, lazily connected peers) is settled by polling ncclCommGetAsyncError, and every
//   wait polls it too. An error or a timeout (CommTimeout) calls ncclCommAbort; afterwards the
//   communicator refuses every operation (kFailedPrecondition naming the cause). With
//   CommTimeout::abort (the default) a timeout prints its report and ends the job through the
//   host communicator (exit code kCommTimeoutExitCode), as the MPI communicator does.
// - Every NCCL or CUDA error is a Status naming the NCCL call, the group (name()), the rank and
//   the device; the public calls add the operation, as for every communicator.
// - Byte accounting is the base class's, so the counters are those of the MPI communicator for
//   the same calls.
// - Reductions: f32, bf16, f16 (sum, max, min, avg: ncclAvg), i32, u32 and u8 (sum, max, min).
//   16-bit integers are moved as bytes and never reduced.
// - Point to point: NCCL has no tags (messages between a pair match in issue order) and no
//   message-size check on receive (a Recv of another count than the matching Send is undefined,
//   not an error). A blocking Send or Recv completes only when the peer's matching call runs, and
//   separately issued sends and receives on one stream run in issue order: a ring or a pipeline
//   step exchanges with IBatchSendRecv (one ncclGroupStart/End), which cannot deadlock.
// - Barrier: this rank's issued operations complete, then the host communicator's barrier.
// - NCCL refuses two ranks on one device in one communicator; several ranks sharing a GPU in
//   tests use the staged communicator instead (staged_device_communicator.h).
#ifndef LATTICE_PARALLEL_NCCL_COMMUNICATOR_H_
#define LATTICE_PARALLEL_NCCL_COMMUNICATOR_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "parallel/communicator.h"
#include "parallel/device_communicator.h"

namespace lattice {

// Whether this build has NCCL (CMake found nccl.h and libnccl with CUDA on).
bool NcclCompiledIn();
// The NCCL library loaded at run time as "2.28.9" (ncclGetVersion), or why there is none.
std::string NcclRuntimeVersion();

// An NCCL communicator over the ranks of `host`, in the same order: a collective over `host`
// (it splits a private copy of it, which the NCCL communicator keeps; `host` may be destroyed
// afterwards). The result takes `host`'s name and timeout. kFailedPrecondition without a GPU,
// kUnimplemented in a build without NCCL; when one rank fails, every rank returns an error (the
// others' NCCL init times out against the missing rank, or they agree over `host` first).
absl::StatusOr<std::unique_ptr<DeviceCommunicator>> CreateNcclCommunicator(
    Communicator& host, const DeviceCommOptions& options = {});

// The reductions NCCL performs: every type but u16, with kAvg on the floating-point ones.
bool NcclSupportsReduction(CommType type, ReduceOp op);

#ifdef LATTICE_HAVE_NCCL
// ---- The host-side mappings, exposed for tests that run without a GPU ----

// The NCCL type (an ncclDataType_t) a CommType travels as, and how many of it make one element:
// 16-bit integers, which NCCL has no type for, travel as two ncclUint8.
struct NcclWireType {
  int type = 0;
  size_t per_element = 1;
};
NcclWireType NcclWireTypeOf(CommType type);
int NcclRedOpOf(ReduceOp op);  // an ncclRedOp_t
// An NCCL result (an ncclResult_t) as a Status: OK for ncclSuccess; kInvalidArgument for
// ncclInvalidArgument, kFailedPrecondition for ncclInvalidUsage, kUnavailable for a system or
// remote error (a peer or the network went away), kInternal for CUDA and NCCL-internal errors.
// The message is "<what> failed: <NCCL's text for the result>" plus `detail` when not empty.
absl::Status NcclResultStatus(int result, absl::string_view what, absl::string_view detail = "");
#endif  // LATTICE_HAVE_NCCL

}  // namespace lattice

#endif  // LATTICE_PARALLEL_NCCL_COMMUNICATOR_H_
