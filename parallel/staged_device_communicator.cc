#include "parallel/staged_device_communicator.h"

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/status.h"

#ifdef LATTICE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lattice {

#ifdef LATTICE_HAVE_CUDA

namespace {

// Pinned blocks are powers of two from 4 KiB, so that the buffers of a step's operations (the
// same sizes every step) are found again in the pool.
constexpr size_t kMinPinnedBytes = 4096;

size_t PinnedCapacity(size_t bytes) {
  size_t c = kMinPinnedBytes;
  while (c < bytes) c *= 2;
  return c;
}

// What a communicator shares with its Works (which may outlive it): the stream, the device and
// the pool of pinned host blocks.
struct StagedState {
  int device = 0;
  cudaStream_t stream = nullptr;
  bool owns_stream = false;
  CUstream_st* given_stream = nullptr;  // DeviceCommOptions::stream, inherited by splits
  std::string name = "world";
  int rank = 0;
  int size = 1;
  std::multimap<size_t, void*> free_blocks;  // by capacity
  std::vector<void*> blocks;
  int64_t allocations = 0;

  StagedState() = default;
  StagedState(const StagedState&) = delete;
  StagedState& operator=(const StagedState&) = delete;
  ~StagedState() {
    ScopedDevice dev(device);
    // The Works that used the blocks are gone (they hold this state), so no copy runs on them.
    if (stream != nullptr) cudaStreamSynchronize(stream);
    for (void* b : blocks) cudaFreeHost(b);
    if (owns_stream && stream != nullptr) cudaStreamDestroy(stream);
  }

  // "dp rank 1 of 2, device 0"
  std::string Where() const {
    return absl::StrCat(name, " rank ", rank, " of ", size, ", device ", device);
  }

  absl::StatusOr<std::pair<void*, size_t>> Take(size_t bytes) {
    if (bytes == 0) return std::pair<void*, size_t>(nullptr, 0);
    const size_t capacity = PinnedCapacity(bytes);
    auto it = free_blocks.lower_bound(capacity);
    if (it != free_blocks.end()) {
      std::pair<void*, size_t> b(it->second, it->first);
      free_blocks.erase(it);
      return b;
    }
    void* p = nullptr;
    LATTICE_RETURN_IF_ERROR(CudaStatus(cudaMallocHost(&p, capacity),
                                       absl::StrCat("cudaMallocHost(", capacity, ") on ", Where())));
    blocks.push_back(p);
    allocations++;
    return std::pair<void*, size_t>(p, capacity);
  }
  void Give(void* p, size_t capacity) {
    if (p != nullptr) free_blocks.emplace(capacity, p);
  }

  absl::Status ToHost(void* host, const void* dev, size_t bytes) {
    if (bytes == 0) return absl::OkStatus();
    return CudaStatus(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, stream),
                      absl::StrCat("cudaMemcpyAsync to the pinned staging buffer on ", Where()));
  }
  absl::Status ToDevice(void* dev, const void* host, size_t bytes) {
    if (bytes == 0) return absl::OkStatus();
    return CudaStatus(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, stream),
                      absl::StrCat("cudaMemcpyAsync from the pinned staging buffer on ", Where()));
  }
  // Local device work only (the copies, and what was ordered before them): no peer is waited
  // for, so no deadline.
  absl::Status Sync() {
    return CudaStatus(cudaStreamSynchronize(stream),
                      absl::StrCat("cudaStreamSynchronize on ", Where()));
  }
};

// The pinned buffers of one operation, back to the pool when it is destroyed.
class Staging {
 public:
  explicit Staging(std::shared_ptr<StagedState> state) : state_(std::move(state)) {}
  ~Staging() {
    for (auto& [p, c] : blocks_) state_->Give(p, c);
  }
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  // The blocks stay out of the pool; the state frees them when it goes.
  void Abandon() { blocks_.clear(); }

  absl::StatusOr<void*> Buffer(size_t bytes) {
    LATTICE_ASSIGN_OR_RETURN(auto b, state_->Take(bytes));
    blocks_.push_back(b);
    return b.first;
  }

 private:
  std::shared_ptr<StagedState> state_;
  std::vector<std::pair<void*, size_t>> blocks_;
};

// The host operation's Work, then the copy of the result to the device.
class StagedWork final : public Work {
 public:
  using Finish = std::function<absl::Status()>;
  StagedWork(std::shared_ptr<StagedState> state, std::unique_ptr<Work> inner,
             std::unique_ptr<Staging> staging, Finish finish)
      : state_(std::move(state)),
        inner_(std::move(inner)),
        staging_(std::move(staging)),
        finish_(std::move(finish)) {}
  ~StagedWork() override {
    // The host operation still owns the pinned buffers until it completes.
    if (!done_) (void)Wait();
  }

  absl::Status Wait() override {
    if (done_) return status_;
    done_ = true;
    status_ = inner_->Wait();
    if (status_.ok() && finish_) status_ = finish_();
    finish_ = nullptr;
    if (absl::IsDeadlineExceeded(status_)) {
      // A host operation that timed out (and returned) may still write its buffers: they stay
      // out of the pool (the state frees them with the communicator, which refuses every later
      // operation: communicator.h).
      staging_->Abandon();
    }
    staging_.reset();
    return status_;
  }

 private:
  std::shared_ptr<StagedState> state_;
  std::unique_ptr<Work> inner_;
  std::unique_ptr<Staging> staging_;
  Finish finish_;
  bool done_ = false;
  absl::Status status_;
};

class StagedDeviceCommunicator final : public DeviceCommunicator {
 public:
  static absl::StatusOr<std::unique_ptr<StagedDeviceCommunicator>> Create(
      std::unique_ptr<Communicator> host, int device, CUstream_st* given_stream) {
    absl::StatusOr<int> dev = ResolveDevice(device);
    absl::Status local = dev.status();
    auto st = std::make_shared<StagedState>();
    st->rank = host->rank();
    st->size = host->size();
    st->name = host->name();
    st->given_stream = given_stream;
    if (local.ok()) {
      st->device = *dev;
      ScopedDevice scoped(st->device);
      local = scoped.status();
      if (local.ok() && given_stream != nullptr) {
        st->stream = given_stream;
      } else if (local.ok()) {
        local = CudaStatus(cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking),
                           absl::StrCat("cudaStreamCreate on ", st->Where()));
        st->owns_stream = local.ok();
      }
    }
    // The ranks agree, so a rank without a GPU fails every rank's creation, not a later
    // collective.
    LATTICE_RETURN_IF_ERROR(AgreeOnStatus(*host, local));
    return std::unique_ptr<StagedDeviceCommunicator>(
        new StagedDeviceCommunicator(std::move(st), std::move(host)));
  }

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  absl::string_view kind() const override { return kind_; }
  int device() const override { return state_->device; }
  CUstream_st* stream() const override { return state_->stream; }
  bool CanReduce(CommType type, ReduceOp op) const override {
    return host_->CanReduce(type, op);
  }
  int64_t pinned_allocations() const override { return state_->allocations; }
  void NameChanged() override {
    state_->name = name();
    host_->set_name(name());
  }
  absl::Status WaitForStream(CUstream_st* producer) override {
    ScopedDevice scoped(state_->device);
    LATTICE_RETURN_IF_ERROR(scoped.status());
    return StreamWaitsForStream(state_->stream, producer,
                                absl::StrCat("WaitForStream on ", state_->Where()));
  }
  [[noreturn]] void Abort(int exit_code) override {
    host_->Abort(exit_code);
    std::_Exit(exit_code);  // unreachable: Abort is [[noreturn]], which GCC does not see through virtual calls
  }

 protected:
  absl::Status DoAllReduce(void* buf, size_t count, CommType type, ReduceOp op) override {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> w, DoIAllReduce(buf, count, type, op));
    return w->Wait();
  }
  absl::Status DoReduceScatter(const void* send, void* recv, size_t recv_count, CommType type,
                               ReduceOp op) override {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> w,
                             DoIReduceScatter(send, recv, recv_count, type, op));
    return w->Wait();
  }
  absl::Status DoAllGather(const void* send, void* recv, size_t send_count,
                           CommType type) override {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> w, DoIAllGather(send, recv, send_count, type));
    return w->Wait();
  }
  absl::Status DoBroadcast(void* buf, size_t count, CommType type, int root) override {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> w, DoIBroadcast(buf, count, type, root));
    return w->Wait();
  }
  absl::Status DoBarrier() override {
    ScopedDevice scoped(state_->device);
    LATTICE_RETURN_IF_ERROR(scoped.status());
    LATTICE_RETURN_IF_ERROR(state_->Sync());
    return Host().Barrier();
  }
  absl::Status DoSend(const void* buf, size_t count, CommType type, int dst, int tag) override {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> w, DoISend(buf, count, type, dst, tag));
    return w->Wait();
  }
  absl::Status DoRecv(void* buf, size_t count, CommType type, int src, int tag) override {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> w, DoIRecv(buf, count, type, src, tag));
    return w->Wait();
  }

  absl::StatusOr<std::unique_ptr<Work>> DoIAllReduce(void* buf, size_t count, CommType type,
                                                     ReduceOp op) override {
    const size_t bytes = count * CommTypeSize(type);
    ScopedDevice scoped(state_->device);
    LATTICE_RETURN_IF_ERROR(scoped.status());
    auto staging = std::make_unique<Staging>(state_);
    LATTICE_ASSIGN_OR_RETURN(void* h, staging->Buffer(bytes));
    LATTICE_RETURN_IF_ERROR(state_->ToHost(h, buf, bytes));
    LATTICE_RETURN_IF_ERROR(state_->Sync());
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> inner,
                             Host().IAllReduce(h, count, type, op));
    return Staged(std::move(inner), std::move(staging), CopyBack(buf, h, bytes));
  }

  // The device aliasing communicator.h allows (recv is this rank's chunk of send) needs nothing
  // here: the host buffers are separate.
  absl::StatusOr<std::unique_ptr<Work>> DoIReduceScatter(const void* send, void* recv,
                                                         size_t recv_count, CommType type,
                                                         ReduceOp op) override {
    const size_t chunk = recv_count * CommTypeSize(type);
    const size_t full = chunk * static_cast<size_t>(size());
    ScopedDevice scoped(state_->device);
    LATTICE_RETURN_IF_ERROR(scoped.status());
    auto staging = std::make_unique<Staging>(state_);
    LATTICE_ASSIGN_OR_RETURN(void* hs, staging->Buffer(full));
    LATTICE_ASSIGN_OR_RETURN(void* hr, staging->Buffer(chunk));
    LATTICE_RETURN_IF_ERROR(state_->ToHost(hs, send, full));
    LATTICE_RETURN_IF_ERROR(state_->Sync());
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> inner,
                             Host().IReduceScatter(hs, hr, recv_count, type, op));
    return Staged(std::move(inner), std::move(staging), CopyBack(recv, hr, chunk));
  }

  absl::StatusOr<std::unique_ptr<Work>> DoIAllGather(const void* send, void* recv,
                                                     size_t send_count, CommType type) override {
    const size_t chunk = send_count * CommTypeSize(type);
    const size_t full = chunk * static_cast<size_t>(size());
    ScopedDevice scoped(state_->device);
    LATTICE_RETURN_IF_ERROR(scoped.status());
    auto staging = std::make_unique<Staging>(state_);
    LATTICE_ASSIGN_OR_RETURN(void* hs, staging->Buffer(chunk));
    LATTICE_ASSIGN_OR_RETURN(void* hr, staging->Buffer(full));
    LATTICE_RETURN_IF_ERROR(state_->ToHost(hs, send, chunk));
    LATTICE_RETURN_IF_ERROR(state_->Sync());
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> inner,
                             Host().IAllGather(hs, hr, send_count, type));
    return Staged(std::move(inner), std::move(staging), CopyBack(recv, hr, full));
  }

  absl::StatusOr<std::unique_ptr<Work>> DoIBroadcast(void* buf, size_t count, CommType type,
                                                     int root) override {
    const size_t bytes = count * CommTypeSize(type);
    const bool is_root = rank() == root;
    ScopedDevice scoped(state_->device);
    LATTICE_RETURN_IF_ERROR(scoped.status());
    auto staging = std::make_unique<Staging>(state_);
    LATTICE_ASSIGN_OR_RETURN(void* h, staging->Buffer(bytes));
    if (is_root) {
      LATTICE_RETURN_IF_ERROR(state_->ToHost(h, buf, bytes));
      LATTICE_RETURN_IF_ERROR(state_->Sync());
    }
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> inner, Host().IBroadcast(h, count, type, root));
    return Staged(std::move(inner), std::move(staging),
                  is_root ? StagedWork::Finish() : CopyBack(buf, h, bytes));
  }

  absl::StatusOr<std::unique_ptr<Work>> DoISend(const void* buf, size_t count, CommType type,
                                                int dst, int tag) override {
    const PeerOp op = PeerOp::Send(buf, count, type, dst, tag);
    return Batch(absl::MakeConstSpan(&op, 1), /*single=*/true);
  }
  absl::StatusOr<std::unique_ptr<Work>> DoIRecv(void* buf, size_t count, CommType type, int src,
                                                int tag) override {
    const PeerOp op = PeerOp::Recv(buf, count, type, src, tag);
    return Batch(absl::MakeConstSpan(&op, 1), /*single=*/true);
  }
  absl::StatusOr<std::unique_ptr<Work>> DoIBatchSendRecv(absl::Span<const PeerOp> ops) override {
    return Batch(ops, /*single=*/false);
  }

  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(int color, int key) override {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> child, Host().Split(color, key));
    if (child == nullptr) return std::unique_ptr<Communicator>();
    return Wrap(std::move(child));
  }
  absl::StatusOr<std::unique_ptr<Communicator>> DoSplitByNode() override {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> child, Host().SplitByNode());
    return Wrap(std::move(child));
  }

 private:
  StagedDeviceCommunicator(std::shared_ptr<StagedState> state, std::unique_ptr<Communicator> host)
      : state_(std::move(state)),
        host_(std::move(host)),
        kind_(absl::StrCat("staged-", host_->kind())) {}

  // The host communicator, with this communicator's deadline (set_timeout is not virtual, so
  // it is handed on at each use).
  Communicator& Host() {
    host_->set_timeout(timeout());
    return *host_;
  }

  StagedWork::Finish CopyBack(void* dev, const void* host, size_t bytes) {
    std::shared_ptr<StagedState> st = state_;
    return [st, dev, host, bytes]() -> absl::Status {
      ScopedDevice scoped(st->device);
      LATTICE_RETURN_IF_ERROR(scoped.status());
      LATTICE_RETURN_IF_ERROR(st->ToDevice(dev, host, bytes));
      return st->Sync();
    };
  }

  std::unique_ptr<Work> Staged(std::unique_ptr<Work> inner, std::unique_ptr<Staging> staging,
                               StagedWork::Finish finish) {
    return std::make_unique<StagedWork>(state_, std::move(inner), std::move(staging),
                                        std::move(finish));
  }

  // Sends staged to the host first (one synchronisation for all of them), then the host's
  // batch (or single message, which keeps the host's own call names in its reports); receives
  // are copied to the device at Wait.
  absl::StatusOr<std::unique_ptr<Work>> Batch(absl::Span<const PeerOp> ops, bool single) {
    ScopedDevice scoped(state_->device);
    LATTICE_RETURN_IF_ERROR(scoped.status());
    auto staging = std::make_unique<Staging>(state_);
    std::vector<PeerOp> host_ops(ops.begin(), ops.end());
    struct Back {
      void* dev;
      const void* host;
      size_t bytes;
    };
    std::vector<Back> backs;
    bool any_send = false;
    for (PeerOp& op : host_ops) {
      const size_t bytes = op.count * CommTypeSize(op.type);
      LATTICE_ASSIGN_OR_RETURN(void* h, staging->Buffer(bytes));
      if (op.kind == PeerOp::Kind::kSend) {
        LATTICE_RETURN_IF_ERROR(state_->ToHost(h, op.buf, bytes));
        any_send = true;
      } else {
        backs.push_back(Back{op.buf, h, bytes});
      }
      op.buf = h;
    }
    if (any_send) LATTICE_RETURN_IF_ERROR(state_->Sync());
    std::unique_ptr<Work> inner;
    if (single) {
      const PeerOp& op = host_ops[0];
      LATTICE_ASSIGN_OR_RETURN(
          inner, op.kind == PeerOp::Kind::kSend
                     ? Host().ISend(op.buf, op.count, op.type, op.peer, op.tag)
                     : Host().IRecv(op.buf, op.count, op.type, op.peer, op.tag));
    } else {
      LATTICE_ASSIGN_OR_RETURN(inner, Host().IBatchSendRecv(host_ops));
    }
    StagedWork::Finish finish;
    if (!backs.empty()) {
      std::shared_ptr<StagedState> st = state_;
      finish = [st, backs = std::move(backs)]() -> absl::Status {
        ScopedDevice scoped(st->device);
        LATTICE_RETURN_IF_ERROR(scoped.status());
        for (const Back& b : backs) LATTICE_RETURN_IF_ERROR(st->ToDevice(b.dev, b.host, b.bytes));
        return st->Sync();
      };
    }
    return Staged(std::move(inner), std::move(staging), std::move(finish));
  }

  absl::StatusOr<std::unique_ptr<Communicator>> Wrap(std::unique_ptr<Communicator> child) {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<StagedDeviceCommunicator> c,
                             Create(std::move(child), state_->device, state_->given_stream));
    return std::unique_ptr<Communicator>(std::move(c));
  }

  std::shared_ptr<StagedState> state_;
  std::unique_ptr<Communicator> host_;  // the private split of the host given at creation
  std::string kind_;                     // "staged-mpi"
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceCommunicator>> CreateStagedDeviceCommunicator(
    Communicator& host, const DeviceCommOptions& options) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> own, PrivateHostCopy(host));
  LATTICE_ASSIGN_OR_RETURN(
      std::unique_ptr<StagedDeviceCommunicator> c,
      StagedDeviceCommunicator::Create(std::move(own), options.device, options.stream));
  return NamedLike(host, std::move(c));
}

#else  // !LATTICE_HAVE_CUDA

absl::StatusOr<std::unique_ptr<DeviceCommunicator>> CreateStagedDeviceCommunicator(
    Communicator&, const DeviceCommOptions&) {
  return absl::FailedPreconditionError(
      "no GPU: this lattice was built without CUDA (CMake found no nvcc; LATTICE_CUDA)");
}

#endif  // LATTICE_HAVE_CUDA

}  // namespace lattice
