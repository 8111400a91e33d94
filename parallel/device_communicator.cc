#include "parallel/device_communicator.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/status.h"

#ifdef LATTICE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lattice {

absl::StatusOr<std::unique_ptr<Communicator>> PrivateHostCopy(Communicator& host) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> own, host.Split(0, host.rank()));
  own->set_name(host.name());
  own->set_timeout(host.timeout());
  return own;
}

std::unique_ptr<DeviceCommunicator> NamedLike(const Communicator& host,
                                              std::unique_ptr<DeviceCommunicator> c) {
  c->set_name(host.name());
  c->set_timeout(host.timeout());
  return c;
}

#ifdef LATTICE_HAVE_CUDA

absl::Status CudaStatus(int cuda_error, absl::string_view what) {
  const auto e = static_cast<cudaError_t>(cuda_error);
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, " failed: ", cudaGetErrorName(e), ": ",
                                          cudaGetErrorString(e)));
}

ScopedDevice::ScopedDevice(int device) {
  int current = -1;
  status_ = CudaStatus(cudaGetDevice(&current), "cudaGetDevice");
  if (!status_.ok() || current == device) return;
  status_ = CudaStatus(cudaSetDevice(device), absl::StrCat("cudaSetDevice(", device, ")"));
  if (status_.ok()) previous_ = current;
}

ScopedDevice::~ScopedDevice() {
  if (previous_ >= 0) cudaSetDevice(previous_);
}

absl::StatusOr<int> ResolveDevice(int device) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    cudaGetLastError();  // a missing driver is not an error of the next CUDA call
    return absl::FailedPreconditionError(absl::StrCat(
        "no GPU: ", e != cudaSuccess ? cudaGetErrorString(e) : "the CUDA runtime sees none"));
  }
  if (device == -1) {
    int current = 0;
    LATTICE_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&current), "cudaGetDevice"));
    return current;
  }
  if (device < 0 || device >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPU ", device, " does not exist: the CUDA runtime sees ", n));
  }
  return device;
}

absl::Status StreamWaitsForStream(CUstream_st* waiter, CUstream_st* producer,
                                  absl::string_view what) {
  if (waiter == producer) return absl::OkStatus();  // one stream is ordered already
  cudaEvent_t ev = nullptr;
  absl::Status s = CudaStatus(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming),
                              absl::StrCat(what, ": cudaEventCreate"));
  if (!s.ok()) return s;
  s = CudaStatus(cudaEventRecord(ev, producer), absl::StrCat(what, ": cudaEventRecord"));
  if (s.ok()) {
    s = CudaStatus(cudaStreamWaitEvent(waiter, ev, 0), absl::StrCat(what, ": cudaStreamWaitEvent"));
  }
  // Destroying an event a stream still waits on is allowed: the wait keeps what it recorded.
  cudaEventDestroy(ev);
  return s;
}

#else  // !LATTICE_HAVE_CUDA

absl::Status CudaStatus(int cuda_error, absl::string_view what) {
  if (cuda_error == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, " failed: CUDA error ", cuda_error));
}

ScopedDevice::ScopedDevice(int) {
  status_ = absl::FailedPreconditionError("this lattice was built without CUDA");
}
ScopedDevice::~ScopedDevice() = default;

absl::StatusOr<int> ResolveDevice(int) {
  return absl::FailedPreconditionError(
      "no GPU: this lattice was built without CUDA (CMake found no nvcc; LATTICE_CUDA)");
}

absl::Status StreamWaitsForStream(CUstream_st*, CUstream_st*, absl::string_view what) {
  return absl::FailedPreconditionError(
      absl::StrCat(what, ": this lattice was built without CUDA"));
}

#endif  // LATTICE_HAVE_CUDA

}  // namespace lattice
