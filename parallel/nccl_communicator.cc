#include "parallel/nccl_communicator.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/watchdog.h"
#include "runtime/status.h"

#ifdef LATTICE_HAVE_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

namespace lattice {

bool NcclSupportsReduction(CommType type, ReduceOp op) {
  if (type == CommType::kU16) return false;  // NCCL has no 16-bit integer type
  return op != ReduceOp::kAvg || IsFloatingPoint(type);
}

#ifdef LATTICE_HAVE_NCCL

bool NcclCompiledIn() { return true; }

std::string NcclRuntimeVersion() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "unknown (ncclGetVersion failed)";
  // NCCL_VERSION(X, Y, Z): X*10000 + Y*100 + Z since 2.9, X*1000 + Y*100 + Z before.
  if (v >= 10000) return absl::StrCat(v / 10000, ".", (v / 100) % 100, ".", v % 100);
  return absl::StrCat(v / 1000, ".", (v / 100) % 10, ".", v % 100);
}

NcclWireType NcclWireTypeOf(CommType type) {
  switch (type) {
    case CommType::kF32: return {ncclFloat32, 1};
    case CommType::kBF16: return {ncclBfloat16, 1};
    case CommType::kF16: return {ncclFloat16, 1};
    case CommType::kI32: return {ncclInt32, 1};
    case CommType::kU32: return {ncclUint32, 1};
    case CommType::kU8: return {ncclUint8, 1};
    case CommType::kU16: return {ncclUint8, 2};  // moved only (NcclSupportsReduction)
  }
  return {ncclUint8, CommTypeSize(type)};
}

int NcclRedOpOf(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
    case ReduceOp::kAvg: return ncclAvg;
  }
  return ncclSum;
}

absl::Status NcclResultStatus(int result, absl::string_view what, absl::string_view detail) {
  const auto r = static_cast<ncclResult_t>(result);
  if (r == ncclSuccess) return absl::OkStatus();
  std::string msg = absl::StrCat(what, " failed: ", ncclGetErrorString(r));
  if (!detail.empty()) absl::StrAppend(&msg, " (", detail, ")");
  switch (r) {
    case ncclInvalidArgument: return absl::InvalidArgumentError(msg);
    case ncclInvalidUsage: return absl::FailedPreconditionError(msg);
    case ncclSystemError:
    case ncclRemoteError: return absl::UnavailableError(msg);
    case ncclUnhandledCudaError:
    case ncclInternalError: return absl::InternalError(msg);
    default: return absl::UnknownError(msg);
  }
}

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// The polling of mpi_communicator.cc's WaitFor, for the same reasons: back to back for the
// first kSpinSeconds (what a completing operation costs stays what cudaEventSynchronize's spin
// costs), then sleeps doubling up to kMaxSleepSeconds (at most 1 ms added to a wait of more
// than 50 ms, while a wait for a straggler stops burning a core).
constexpr double kSpinSeconds = 0.05;
constexpr double kMinSleepSeconds = 50e-6;
constexpr double kMaxSleepSeconds = 1e-3;

class Poll {
 public:
  Poll() : start_(Clock::now()) {}
  double elapsed() const { return SecondsSince(start_); }
  void Pause() {
    if (elapsed() < kSpinSeconds) return;
    std::this_thread::sleep_for(std::chrono::duration<double>(sleep_));
    sleep_ = std::min(2 * sleep_, kMaxSleepSeconds);
  }

 private:
  Clock::time_point start_;
  double sleep_ = kMinSleepSeconds;
};

// What an operation is, for reports.
struct OpInfo {
  const char* op = "";
  bool collective = true;
  CommType type = CommType::kU8;
  size_t count = 0;
  bool has_reduce = false;
  ReduceOp reduce = ReduceOp::kSum;
  int peer = -1;       // root of a broadcast, the peer of a single send or receive
  int batch_ops = -1;  // the messages of a batch
  int64_t seq = 0;     // per communicator: collectives and point-to-point counted apart

  std::string ToString() const {
    std::string s = absl::StrCat(op, "(");
    if (has_reduce) absl::StrAppend(&s, ReduceOpName(reduce), ", ");
    if (batch_ops >= 0) {
      absl::StrAppend(&s, batch_ops, " messages");
    } else {
      absl::StrAppend(&s, CommTypeName(type), " x ", count);
    }
    absl::StrAppend(&s, ")");
    if (peer >= 0) absl::StrAppend(&s, collective ? " from root " : " with ", peer);
    absl::StrAppend(&s, collective ? " collective #" : " point-to-point #", seq);
    return s;
  }
};

std::string LastError(ncclComm_t comm) {
  const char* e = ncclGetLastError(comm);
  return e != nullptr ? std::string(e) : std::string();
}

// Polls `comm` until no call on it is in progress (a non-blocking communicator's init, split,
// group end or lazily connected peer). kDeadlineExceeded after `seconds`; NCCL's asynchronous
// error as a Status. Aborts nothing: the caller decides.
absl::Status SettleComm(ncclComm_t comm, absl::string_view what, double seconds,
                        absl::string_view where) {
  Poll poll;
  for (;;) {
    ncclResult_t async = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm, &async);
    if (r != ncclSuccess) return NcclResultStatus(r, "ncclCommGetAsyncError", where);
    if (async == ncclSuccess) return absl::OkStatus();
    if (async != ncclInProgress) {
      return NcclResultStatus(async, what, absl::StrCat(where, ": ", LastError(comm)));
    }
    if (poll.elapsed() >= seconds) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, " on ", where, " still in progress after ", seconds, " s"));
    }
    poll.Pause();
  }
}

// What a communicator shares with its Works (which may outlive it).
struct NcclState {
  ncclComm_t comm = nullptr;  // null after an abort, and once the communicator is destroyed
  int device = 0;
  cudaStream_t stream = nullptr;
  bool owns_stream = false;
  CUstream_st* given_stream = nullptr;  // DeviceCommOptions::stream, inherited by splits
  int rank = 0;
  int size = 1;
  std::string name = "world";
  int64_t collectives = 0;
  int64_t point_to_point = 0;
  // After an error that aborted the NCCL communicator, or a timeout: why every later operation
  // is refused.
  std::string poisoned;
  // The host communicator, to end the job on a timeout; null once the communicator is gone.
  Communicator* host = nullptr;
  std::vector<cudaEvent_t> free_events;

  NcclState() = default;
  NcclState(const NcclState&) = delete;
  NcclState& operator=(const NcclState&) = delete;
  ~NcclState() {
    ScopedDevice dev(device);
    if (comm != nullptr) ncclCommAbort(comm);
    for (cudaEvent_t e : free_events) cudaEventDestroy(e);
    if (owns_stream && stream != nullptr) cudaStreamDestroy(stream);
  }

  // "dp rank 1 of 2, device 0"
  std::string Where() const {
    return absl::StrCat(name, " rank ", rank, " of ", size, ", device ", device);
  }

  absl::Status Unusable() const {
    return absl::FailedPreconditionError(absl::StrCat(
        "NCCL communicator ", name, " is unusable after an earlier failure: ", poisoned));
  }

  // ncclCommAbort, once: NCCL's operations on this communicator end and its resources go.
  void AbortComm(const std::string& why) {
    if (comm != nullptr) {
      ScopedDevice dev(device);
      ncclCommAbort(comm);
      comm = nullptr;
    }
    if (poisoned.empty()) poisoned = why;
  }

  // A fatal error: the communicator is aborted and `s` returned.
  absl::Status Fail(absl::Status s) {
    AbortComm(std::string(s.message()));
    return s;
  }

  // A timeout: aborted; then, as CommTimeout says, the job ends or kDeadlineExceeded returns.
  absl::Status TimedOut(const std::string& report, const CommTimeout& timeout) {
    if (timeout.abort) {
      std::fflush(stdout);
      std::fprintf(stderr, "lattice: rank %d: %s; aborting the job (exit code %d)\n", rank,
                   report.c_str(), kCommTimeoutExitCode);
      std::fflush(stderr);
      // ncclCommAbort and the host's abort can both hang on a wedged device or transport.
      ArmAbortWatchdog(timeout.abort_watchdog_seconds,
                       absl::StrCat(Where(), ": abort after an NCCL communicator timeout"));
      AbortComm(report);
      if (host != nullptr) host->Abort(kCommTimeoutExitCode);
      std::_Exit(kCommTimeoutExitCode);
    }
    AbortComm(report);
    return absl::DeadlineExceededError(report);
  }

  std::string TimeoutReport(const OpInfo& op, double seconds) const {
    return absl::StrCat("communicator timeout: ", op.ToString(), " on ", name, " (rank ", rank,
                        " of ", size, ", nccl on device ", device, ") did not complete within ",
                        seconds, " s (parallel.timeout_seconds / LATTICE_COMM_TIMEOUT_S); "
                        "ncclCommAbort ended this rank's NCCL operations (NCCL cannot say "
                        "which peer is missing)");
  }

  // Polls the asynchronous error; an error aborts. Cheap (no device round trip).
  absl::Status CheckAsync(absl::string_view what) {
    if (comm == nullptr) return poisoned.empty() ? absl::OkStatus() : Unusable();
    ncclResult_t async = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm, &async);
    if (r != ncclSuccess) return Fail(NcclResultStatus(r, "ncclCommGetAsyncError", Where()));
    if (async != ncclSuccess && async != ncclInProgress) {
      return Fail(NcclResultStatus(
          async, absl::StrCat("an NCCL operation before or during ", what),
          absl::StrCat(Where(), ": ", LastError(comm))));
    }
    return absl::OkStatus();
  }

  // Settles the calls in progress on this communicator within the deadline.
  absl::Status Settle(const char* call, const OpInfo& op, const CommTimeout& timeout) {
    absl::Status s = SettleComm(comm, call, timeout.seconds, Where());
    if (s.ok()) return s;
    if (absl::IsDeadlineExceeded(s)) return TimedOut(TimeoutReport(op, timeout.seconds), timeout);
    return Fail(s);
  }

  // Waits for `event` (recorded after `op`) within the deadline, polling NCCL's errors.
  absl::Status WaitEvent(cudaEvent_t event, const OpInfo& op, const CommTimeout& timeout) {
    Poll poll;
    for (;;) {
      if (!poisoned.empty()) return Unusable();
      const cudaError_t e = cudaEventQuery(event);
      if (e == cudaSuccess) return CheckAsync(op.op);
      if (e != cudaErrorNotReady) {
        return Fail(Annotate(CudaStatus(e, "cudaEventQuery"),
                             absl::StrCat(op.ToString(), " on ", Where())));
      }
      LATTICE_RETURN_IF_ERROR(CheckAsync(op.op));
      if (poll.elapsed() >= timeout.seconds) {
        return TimedOut(TimeoutReport(op, timeout.seconds), timeout);
      }
      poll.Pause();
    }
  }

  absl::StatusOr<cudaEvent_t> TakeEvent() {
    if (!free_events.empty()) {
      cudaEvent_t e = free_events.back();
      free_events.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    LATTICE_RETURN_IF_ERROR(CudaStatus(cudaEventCreateWithFlags(&e, cudaEventDisableTiming),
                                       absl::StrCat("cudaEventCreate on ", Where())));
    return e;
  }
  // A stream that waited on the event keeps what it waited for; a new record does not change it.
  void ReleaseEvent(cudaEvent_t e) { free_events.push_back(e); }
};

// One enqueued operation: the event recorded on the communicator's stream after it.
class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<NcclState> state, const OpInfo& op, const CommTimeout& timeout,
           cudaEvent_t event)
      : state_(std::move(state)), op_(op), timeout_(timeout), event_(event) {}
  ~NcclWork() override {
    // Never free buffers under a running operation, unless a stream holds the dependency.
    if (!done_ && !on_stream_) (void)Wait();
    state_->ReleaseEvent(event_);
  }

  absl::Status Wait() override {
    if (done_) return status_;
    status_ = state_->WaitEvent(event_, op_, timeout_);
    done_ = true;
    return status_;
  }

  absl::Status WaitOnStream(CUstream_st* stream) override {
    if (done_) return status_;
    if (!state_->poisoned.empty()) return state_->Unusable();
    LATTICE_RETURN_IF_ERROR(CudaStatus(cudaStreamWaitEvent(stream, event_, 0),
                                       absl::StrCat("cudaStreamWaitEvent after ", op_.ToString(),
                                                    " on ", state_->Where())));
    on_stream_ = true;
    return absl::OkStatus();
  }

 private:
  std::shared_ptr<NcclState> state_;
  OpInfo op_;
  CommTimeout timeout_;
  cudaEvent_t event_;
  bool done_ = false;
  bool on_stream_ = false;
  absl::Status status_;
};

ncclConfig_t NonBlockingConfig() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // no NCCL call holds the host past the deadline (see the header)
  return config;
}

class NcclCommunicator final : public DeviceCommunicator {
 public:
  // A collective over `host` (kept for control traffic): rank 0's unique id, broadcast over
  // `host`, then ncclCommInitRankConfig on `device` (-1: the current one).
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Bootstrap(
      std::unique_ptr<Communicator> host, int device, CUstream_st* given_stream) {
    // Every rank learns whether every other can join before any waits inside NCCL's init.
    absl::StatusOr<int> dev = ResolveDevice(device);
    LATTICE_RETURN_IF_ERROR(AgreeOnStatus(*host, dev.status()));
    auto st = std::make_shared<NcclState>();
    st->device = *dev;
    st->rank = host->rank();
    st->size = host->size();
    st->name = host->name();
    st->given_stream = given_stream;

    ScopedDevice scoped(st->device);
    absl::Status local = scoped.status();
    if (local.ok()) local = CreateStream(*st);
    ncclUniqueId id{};  // rank 0's, broadcast to the others
    if (local.ok() && host->rank() == 0) {
      local = NcclResultStatus(ncclGetUniqueId(&id), "ncclGetUniqueId", st->Where());
    }
    LATTICE_RETURN_IF_ERROR(AgreeOnStatus(*host, local));
    LATTICE_RETURN_IF_ERROR(host->Broadcast(&id, sizeof(id), CommType::kU8, 0));

    ncclConfig_t config = NonBlockingConfig();
    ncclComm_t comm = nullptr;
    const ncclResult_t r = ncclCommInitRankConfig(&comm, st->size, id, st->rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) {
      local = NcclResultStatus(r, "ncclCommInitRankConfig",
                               absl::StrCat(st->Where(), ": ", LastError(comm)));
    } else {
      // A rank that never joins leaves the others here until the deadline.
      local = SettleComm(comm, "ncclCommInitRankConfig", host->timeout().seconds, st->Where());
    }
    if (!local.ok() && comm != nullptr) {
      ncclCommAbort(comm);
      comm = nullptr;
    }
    st->comm = comm;
    LATTICE_RETURN_IF_ERROR(AgreeOnStatus(*host, local));
    return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(st), std::move(host)));
  }

  ~NcclCommunicator() override {
    state_->host = nullptr;
    if (state_->comm == nullptr) return;
    ScopedDevice scoped(state_->device);
    // Finalize completes every operation issued (Works handed to streams included), then
    // Destroy frees; a peer that never completes its part is cut off by the deadline.
    const ncclResult_t r = ncclCommFinalize(state_->comm);
    absl::Status s = r == ncclSuccess || r == ncclInProgress
                         ? SettleComm(state_->comm, "ncclCommFinalize", timeout().seconds,
                                      state_->Where())
                         : NcclResultStatus(r, "ncclCommFinalize", state_->Where());
    if (s.ok()) {
      ncclCommDestroy(state_->comm);
    } else {
      std::fprintf(stderr, "lattice: %s; aborting the NCCL communicator\n",
                   std::string(s.message()).c_str());
      ncclCommAbort(state_->comm);
    }
    state_->comm = nullptr;
  }

  int rank() const override { return state_->rank; }
  int size() const override { return state_->size; }
  absl::string_view kind() const override { return "nccl"; }
  int device() const override { return state_->device; }
  CUstream_st* stream() const override { return state_->stream; }
  bool CanReduce(CommType type, ReduceOp op) const override {
    return NcclSupportsReduction(type, op);
  }
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
    std::fflush(stdout);
    std::fflush(stderr);
    ArmAbortWatchdog(timeout().abort_watchdog_seconds,
                     absl::StrCat(state_->Where(), ": ncclCommAbort and the job's abort"));
    state_->AbortComm(absl::StrCat("Abort(", exit_code, ")"));
    host_->Abort(exit_code);
    std::_Exit(exit_code);  // unreachable: Abort is [[noreturn]], which GCC does not see through virtual calls
  }

 protected:
  absl::Status DoAllReduce(void* buf, size_t count, CommType type, ReduceOp op) override {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> w,
                             IssueAllReduce("AllReduce", buf, count, type, op));
    return w->Wait();
  }
  absl::Status DoReduceScatter(const void* send, void* recv, size_t recv_count, CommType type,
                               ReduceOp op) override {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> w,
                             IssueReduceScatter("ReduceScatter", send, recv, recv_count, type, op));
    return w->Wait();
  }
  absl::Status DoAllGather(const void* send, void* recv, size_t send_count,
                           CommType type) override {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> w,
                             IssueAllGather("AllGather", send, recv, send_count, type));
    return w->Wait();
  }
  absl::Status DoBroadcast(void* buf, size_t count, CommType type, int root) override {
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> w,
                             IssueBroadcast("Broadcast", buf, count, type, root));
    return w->Wait();
  }
  absl::Status DoBarrier() override {
    // Everything this rank issued completes (within the deadline), then the ranks meet.
    OpInfo info;
    info.op = "Barrier";
    info.seq = state_->collectives++;
    LATTICE_RETURN_IF_ERROR(Usable());
    ScopedDevice scoped(state_->device);
    LATTICE_RETURN_IF_ERROR(scoped.status());
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> w, Record(info));
    LATTICE_RETURN_IF_ERROR(w->Wait());
    host_->set_timeout(timeout());
    return host_->Barrier();
  }
  absl::Status DoSend(const void* buf, size_t count, CommType type, int dst, int tag) override {
    const PeerOp op = PeerOp::Send(buf, count, type, dst, tag);
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> w, IssueGroup("Send", absl::MakeConstSpan(&op, 1)));
    return w->Wait();
  }
  absl::Status DoRecv(void* buf, size_t count, CommType type, int src, int tag) override {
    const PeerOp op = PeerOp::Recv(buf, count, type, src, tag);
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> w, IssueGroup("Recv", absl::MakeConstSpan(&op, 1)));
    return w->Wait();
  }

  absl::StatusOr<std::unique_ptr<Work>> DoIAllReduce(void* buf, size_t count, CommType type,
                                                     ReduceOp op) override {
    return IssueAllReduce("IAllReduce", buf, count, type, op);
  }
  absl::StatusOr<std::unique_ptr<Work>> DoIReduceScatter(const void* send, void* recv,
                                                         size_t recv_count, CommType type,
                                                         ReduceOp op) override {
    return IssueReduceScatter("IReduceScatter", send, recv, recv_count, type, op);
  }
  absl::StatusOr<std::unique_ptr<Work>> DoIAllGather(const void* send, void* recv,
                                                     size_t send_count, CommType type) override {
    return IssueAllGather("IAllGather", send, recv, send_count, type);
  }
  absl::StatusOr<std::unique_ptr<Work>> DoIBroadcast(void* buf, size_t count, CommType type,
                                                     int root) override {
    return IssueBroadcast("IBroadcast", buf, count, type, root);
  }
  absl::StatusOr<std::unique_ptr<Work>> DoISend(const void* buf, size_t count, CommType type,
                                                int dst, int tag) override {
    const PeerOp op = PeerOp::Send(buf, count, type, dst, tag);
    return IssueGroup("ISend", absl::MakeConstSpan(&op, 1));
  }
  absl::StatusOr<std::unique_ptr<Work>> DoIRecv(void* buf, size_t count, CommType type, int src,
                                                int tag) override {
    const PeerOp op = PeerOp::Recv(buf, count, type, src, tag);
    return IssueGroup("IRecv", absl::MakeConstSpan(&op, 1));
  }
  absl::StatusOr<std::unique_ptr<Work>> DoIBatchSendRecv(absl::Span<const PeerOp> ops) override {
    return IssueGroup("IBatchSendRecv", ops);
  }

  // The host split, then ncclCommSplit over the same colors and keys: both order a group by
  // (key, parent rank), so the child's NCCL ranks are its host ranks (checked).
  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(int color, int key) override {
    LATTICE_RETURN_IF_ERROR(Usable());
    host_->set_timeout(timeout());
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> child_host, host_->Split(color, key));
    ScopedDevice scoped(state_->device);
    LATTICE_RETURN_IF_ERROR(scoped.status());
    OpInfo info;
    info.op = "Split";
    info.seq = state_->collectives++;
    ncclConfig_t config = NonBlockingConfig();
    ncclComm_t child = nullptr;
    const ncclResult_t r =
        ncclCommSplit(state_->comm, color == kNoColor ? NCCL_SPLIT_NOCOLOR : color, key, &child,
                      &config);
    if (r != ncclSuccess && r != ncclInProgress) {
      // A collective the peers may be inside: this communicator cannot be trusted any more.
      return state_->Fail(NcclResultStatus(
          r, "ncclCommSplit", absl::StrCat(state_->Where(), ": ", LastError(state_->comm))));
    }
    LATTICE_RETURN_IF_ERROR(state_->Settle("ncclCommSplit", info, timeout()));
    if (child == nullptr) {
      if (child_host != nullptr) {
        return absl::InternalError(absl::StrCat(
            "ncclCommSplit gave no communicator on ", state_->Where(),
            " but the host split did (color ", color, ")"));
      }
      return std::unique_ptr<Communicator>();
    }
    absl::Status s = SettleComm(child, "ncclCommSplit (the new communicator)", timeout().seconds,
                                state_->Where());
    auto st = std::make_shared<NcclState>();
    st->comm = child;  // aborted by ~NcclState if anything below fails
    st->device = state_->device;
    st->given_stream = state_->given_stream;
    if (child_host == nullptr) {
      s.Update(absl::InternalError(absl::StrCat("the host split gave no communicator on ",
                                                state_->Where(), " but ncclCommSplit did")));
    }
    LATTICE_RETURN_IF_ERROR(s);
    int n = 0, me = -1;
    LATTICE_RETURN_IF_ERROR(NcclResultStatus(ncclCommCount(child, &n), "ncclCommCount"));
    LATTICE_RETURN_IF_ERROR(NcclResultStatus(ncclCommUserRank(child, &me), "ncclCommUserRank"));
    if (n != child_host->size() || me != child_host->rank()) {
      return absl::InternalError(absl::StrCat(
          "ncclCommSplit made rank ", me, " of ", n, " where the host split made rank ",
          child_host->rank(), " of ", child_host->size(), " (", state_->Where(), ")"));
    }
    st->rank = me;
    st->size = n;
    st->name = child_host->name();
    LATTICE_RETURN_IF_ERROR(CreateStream(*st));
    return std::unique_ptr<Communicator>(new NcclCommunicator(std::move(st), std::move(child_host)));
  }

  // A fresh bootstrap over the host's node split (one unique id per node).
  absl::StatusOr<std::unique_ptr<Communicator>> DoSplitByNode() override {
    LATTICE_RETURN_IF_ERROR(Usable());
    host_->set_timeout(timeout());
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> node_host, host_->SplitByNode());
    LATTICE_ASSIGN_OR_RETURN(
        std::unique_ptr<NcclCommunicator> c,
        Bootstrap(std::move(node_host), state_->device, state_->given_stream));
    return std::unique_ptr<Communicator>(std::move(c));
  }

 private:
  NcclCommunicator(std::shared_ptr<NcclState> state, std::unique_ptr<Communicator> host)
      : state_(std::move(state)), host_(std::move(host)) {
    state_->host = host_.get();
  }

  // The given stream, or one of the communicator's own on its device (current at the call).
  static absl::Status CreateStream(NcclState& st) {
    if (st.given_stream != nullptr) {
      st.stream = st.given_stream;
      return absl::OkStatus();
    }
    LATTICE_RETURN_IF_ERROR(
        CudaStatus(cudaStreamCreateWithFlags(&st.stream, cudaStreamNonBlocking),
                   absl::StrCat("cudaStreamCreate on ", st.Where())));
    st.owns_stream = true;
    return absl::OkStatus();
  }

  OpInfo Collective(const char* name, CommType type, size_t count) {
    OpInfo info;
    info.op = name;
    info.type = type;
    info.count = count;
    info.seq = state_->collectives++;
    return info;
  }

  // Refuses every operation after a failure, and reports an asynchronous error of an earlier
  // operation (a Work handed to a stream, say) before issuing another.
  absl::Status Usable() {
    if (!state_->poisoned.empty()) return state_->Unusable();
    return state_->CheckAsync("the next operation");
  }

  // After an enqueue that returned `r`: the error as a Status (ncclInvalidArgument and
  // ncclInvalidUsage had no effect and leave the communicator usable; anything else aborts it),
  // else the call settled and the Work's event recorded.
  absl::StatusOr<std::unique_ptr<Work>> Finish(ncclResult_t r, const char* call,
                                               const OpInfo& info) {
    if (r != ncclSuccess && r != ncclInProgress) {
      absl::Status s = NcclResultStatus(
          r, call, absl::StrCat(state_->Where(), ": ", LastError(state_->comm)));
      if (r == ncclInvalidArgument || r == ncclInvalidUsage) return s;
      return state_->Fail(s);
    }
    LATTICE_RETURN_IF_ERROR(state_->Settle(call, info, timeout()));
    return Record(info);
  }

  absl::StatusOr<std::unique_ptr<Work>> Record(const OpInfo& info) {
    LATTICE_ASSIGN_OR_RETURN(cudaEvent_t ev, state_->TakeEvent());
    absl::Status s = CudaStatus(cudaEventRecord(ev, state_->stream),
                                absl::StrCat("cudaEventRecord after ", info.ToString(), " on ",
                                             state_->Where()));
    if (!s.ok()) {
      state_->ReleaseEvent(ev);
      return s;
    }
    return std::unique_ptr<Work>(std::make_unique<NcclWork>(state_, info, timeout(), ev));
  }

  // The path every collective shares: refuse after a failure, switch to the device, issue
  // `call(nccl_count, nccl_type)` on the stream, settle it and record the Work's event. Counts
  // match on every rank (communicator.h), so an empty buffer is skipped everywhere.
  template <typename Call>
  absl::StatusOr<std::unique_ptr<Work>> Enqueue(const OpInfo& info, const char* nccl_call,
                                                Call call) {
    LATTICE_RETURN_IF_ERROR(Usable());
    ScopedDevice scoped(state_->device);
    LATTICE_RETURN_IF_ERROR(scoped.status());
    const NcclWireType w = NcclWireTypeOf(info.type);
    const ncclResult_t r =
        info.count == 0
            ? ncclSuccess
            : call(info.count * w.per_element, static_cast<ncclDataType_t>(w.type));
    return Finish(r, nccl_call, info);
  }

  absl::StatusOr<std::unique_ptr<Work>> IssueAllReduce(const char* name, void* buf, size_t count,
                                                       CommType type, ReduceOp op) {
    OpInfo info = Collective(name, type, count);
    info.has_reduce = true;
    info.reduce = op;
    return Enqueue(info, "ncclAllReduce", [&](size_t n, ncclDataType_t t) {
      return ncclAllReduce(buf, buf, n, t, static_cast<ncclRedOp_t>(NcclRedOpOf(op)),
                           state_->comm, state_->stream);
    });
  }

  // NCCL's in-place reduce-scatter is exactly recv == send + rank * recv_count (the own-chunk
  // alias communicator.h allows), so no scratch is needed.
  absl::StatusOr<std::unique_ptr<Work>> IssueReduceScatter(const char* name, const void* send,
                                                           void* recv, size_t recv_count,
                                                           CommType type, ReduceOp op) {
    OpInfo info = Collective(name, type, recv_count);
    info.has_reduce = true;
    info.reduce = op;
    return Enqueue(info, "ncclReduceScatter", [&](size_t n, ncclDataType_t t) {
      return ncclReduceScatter(send, recv, n, t, static_cast<ncclRedOp_t>(NcclRedOpOf(op)),
                               state_->comm, state_->stream);
    });
  }

  // Likewise NCCL's in-place all-gather is send == recv + rank * send_count.
  absl::StatusOr<std::unique_ptr<Work>> IssueAllGather(const char* name, const void* send,
                                                       void* recv, size_t send_count,
                                                       CommType type) {
    OpInfo info = Collective(name, type, send_count);
    return Enqueue(info, "ncclAllGather", [&](size_t n, ncclDataType_t t) {
      return ncclAllGather(send, recv, n, t, state_->comm, state_->stream);
    });
  }

  absl::StatusOr<std::unique_ptr<Work>> IssueBroadcast(const char* name, void* buf, size_t count,
                                                       CommType type, int root) {
    OpInfo info = Collective(name, type, count);
    info.peer = root;
    return Enqueue(info, "ncclBroadcast", [&](size_t n, ncclDataType_t t) {
      return ncclBroadcast(buf, buf, n, t, root, state_->comm, state_->stream);
    });
  }

  // Sends and receives in one group: NCCL starts them together, so a pair that exchanges (a
  // ring, neighbouring pipeline stages) never waits on a peer that waits on it. Empty messages
  // are skipped (the matching one is empty too: counts match).
  absl::StatusOr<std::unique_ptr<Work>> IssueGroup(const char* name, absl::Span<const PeerOp> ops) {
    OpInfo info;
    info.op = name;
    info.collective = false;
    info.seq = state_->point_to_point++;
    if (ops.size() == 1) {
      info.type = ops[0].type;
      info.count = ops[0].count;
      info.peer = ops[0].peer;
    } else {
      info.batch_ops = static_cast<int>(ops.size());
    }
    LATTICE_RETURN_IF_ERROR(Usable());
    ScopedDevice scoped(state_->device);
    LATTICE_RETURN_IF_ERROR(scoped.status());
    ncclResult_t r = ncclGroupStart();
    if (r != ncclSuccess) return Finish(r, "ncclGroupStart", info);
    ncclResult_t first = ncclSuccess;
    const char* failed_call = "ncclGroupEnd";
    for (const PeerOp& op : ops) {
      if (op.count == 0) continue;
      const NcclWireType w = NcclWireTypeOf(op.type);
      const size_t n = op.count * w.per_element;
      const auto t = static_cast<ncclDataType_t>(w.type);
      const ncclResult_t rr =
          op.kind == PeerOp::Kind::kSend
              ? ncclSend(op.buf, n, t, op.peer, state_->comm, state_->stream)
              : ncclRecv(op.buf, n, t, op.peer, state_->comm, state_->stream);
      if (rr != ncclSuccess && rr != ncclInProgress) {
        first = rr;
        failed_call = op.kind == PeerOp::Kind::kSend ? "ncclSend" : "ncclRecv";
        break;
      }
    }
    // The group is closed in every case; an error inside it is the one reported.
    r = ncclGroupEnd();
    if (first != ncclSuccess) return Finish(first, failed_call, info);
    return Finish(r, "ncclGroupEnd", info);
  }

  std::shared_ptr<NcclState> state_;
  std::unique_ptr<Communicator> host_;  // the private split of the host given at creation
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceCommunicator>> CreateNcclCommunicator(
    Communicator& host, const DeviceCommOptions& options) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> own, PrivateHostCopy(host));
  LATTICE_ASSIGN_OR_RETURN(
      std::unique_ptr<NcclCommunicator> c,
      NcclCommunicator::Bootstrap(std::move(own), options.device, options.stream));
  return NamedLike(host, std::move(c));
}

#else  // !LATTICE_HAVE_NCCL

bool NcclCompiledIn() { return false; }

std::string NcclRuntimeVersion() { return "none (this lattice was built without NCCL)"; }

absl::StatusOr<std::unique_ptr<DeviceCommunicator>> CreateNcclCommunicator(
    Communicator&, const DeviceCommOptions&) {
  return absl::UnimplementedError(
      "this lattice was built without NCCL: configure with CUDA and NCCL (nccl.h and libnccl "
      "under the CUDA toolkit, or NCCL_ROOT; CMake option LATTICE_NCCL)");
}

#endif  // LATTICE_HAVE_NCCL

}  // namespace lattice
