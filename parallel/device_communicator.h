// What the communicators on device buffers share: the NCCL communicator (nccl_communicator.h)
// and the staged one that carries device buffers over a host communicator
// (staged_device_communicator.h).
//
// Operations are stream-ordered: each communicator enqueues its work on one CUDA stream
// (stream()), after everything enqueued there before. A buffer written on another stream (the
// compute stream) is ordered before the communication by WaitForStream(compute), and a result is
// ordered before later compute by Work::WaitOnStream(compute): neither blocks the host. The
// blocking calls return when their operation has finished on the device.
//
// This header needs no CUDA include, and compiles in every build: without CUDA the factories
// say so in their Status.
#ifndef LATTICE_PARALLEL_DEVICE_COMMUNICATOR_H_
#define LATTICE_PARALLEL_DEVICE_COMMUNICATOR_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "parallel/communicator.h"

namespace lattice {

struct DeviceCommOptions {
  // The CUDA device of this rank (parallel/launch_env.h AssignDevice picks it); -1: the calling
  // thread's current device.
  int device = -1;
  // The stream every operation is enqueued on (borrowed; it must outlive the communicator and
  // its Works). Null: a stream the communicator creates and destroys, non-blocking with respect
  // to the legacy default stream. Communicators split from this one inherit a given stream and
  // otherwise create their own, so that (say) tp and dp traffic run concurrently.
  CUstream_st* stream = nullptr;
};

class DeviceCommunicator : public Communicator {
 public:
  DeviceType buffer_device() const final { return DeviceType::kCuda; }
  virtual int device() const = 0;
  virtual CUstream_st* stream() const = 0;
  // Orders this communicator's later operations after the work enqueued so far on `producer`
  // (the stream that wrote the buffers), without blocking the host: an event recorded on
  // `producer` that stream() waits for.
  virtual absl::Status WaitForStream(CUstream_st* producer) = 0;
  // Pinned host buffers this communicator allocated so far (the staged communicator reuses its
  // staging buffers; NCCL needs none): a steady-state step adds none.
  virtual int64_t pinned_allocations() const { return 0; }
};

// `c` as a device communicator, or null (a host communicator, or null).
inline DeviceCommunicator* AsDeviceCommunicator(Communicator* c) {
  return dynamic_cast<DeviceCommunicator*>(c);
}

// ---- Helpers of the device communicators' implementations ----

// A CUDA runtime error (`cuda_error`, a cudaError_t) as a Status naming `what`: kInternal with
// CUDA's name and text of the error; OK for cudaSuccess.
absl::Status CudaStatus(int cuda_error, absl::string_view what);

// Makes `device` the calling thread's current CUDA device for the scope, and restores the one
// that was current before. status() says whether the switch worked.
class ScopedDevice {
 public:
  explicit ScopedDevice(int device);
  ~ScopedDevice();
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  const absl::Status& status() const { return status_; }

 private:
  int previous_ = -1;
  absl::Status status_;
};

// `device` itself, or the current device for -1; kInvalidArgument for a device the CUDA runtime
// does not see, kFailedPrecondition when there is no GPU (or no CUDA in this build).
absl::StatusOr<int> ResolveDevice(int device);

// A device communicator's private copy of `host` for its control traffic (bootstrap,
// barriers): a split (not counted), with the host's name and timeout, so that this traffic stays
// off the caller's counters and the caller may drop `host`.
absl::StatusOr<std::unique_ptr<Communicator>> PrivateHostCopy(Communicator& host);
// `c`, named and timed like `host` (the communicator a device communicator was created over).
std::unique_ptr<DeviceCommunicator> NamedLike(const Communicator& host,
                                              std::unique_ptr<DeviceCommunicator> c);

// `waiter` waits, on the device, for the work enqueued so far on `producer` (through an event
// recorded on `producer`). `what` names the caller in the error.
absl::Status StreamWaitsForStream(CUstream_st* waiter, CUstream_st* producer,
                                  absl::string_view what);

}  // namespace lattice

#endif  // LATTICE_PARALLEL_DEVICE_COMMUNICATOR_H_
