// The communicator interface: collectives and point-to-point messages within one group of
// ranks, with a byte counter that follows the standard algorithm-independent convention.
//
// Implementations: SelfCommunicator (here; a world of one, no MPI needed), MpiCommunicator
// (mpi_communicator.h), and on device buffers the NCCL communicator (nccl_communicator.h) and the
// staged one that carries device buffers over a host communicator (staged_device_communicator.h);
// each implementation says which memory its buffers must live in (buffer_device()).
//
// Rules every implementation keeps:
// - Every call returns absl::Status; nothing here exits or aborts except Abort(), which only
//   main() calls (through AbortWorld), and an operation that runs past timeout() (CommTimeout):
//   by default that one ends the job itself, because the caller cannot recover (the buffers are
//   still in MPI's hands, and unwinding would run destructors that wait on more operations with
//   the same dead peer). docs/hangs.md.
// - Collectives are called by every rank of the group, in the same order, with matching
//   counts and types. A mismatch is a caller bug that MPI may or may not detect.
// - One thread at a time per communicator (MPI is initialised THREAD_FUNNELED).
// - Non-blocking calls return a Work; buffers must stay alive and untouched until Wait().
//   Destroying a Work that was never waited on waits for it (and drops its status), so a
//   buffer is never freed under an in-flight operation.
//
// Byte accounting (counters()): bytes a rank sends over the wire by the algorithm-independent
// ("bus bytes") convention of nccl-tests, so that a step's communication volume can be
// compared with an analytic count. n = bytes of the full buffer, p = group size:
//   AllReduce      2 (p-1)/p * n       (n = the buffer; reduce-scatter then all-gather)
//   ReduceScatter    (p-1)/p * n       (n = the full input, p chunks)
//   AllGather        (p-1)/p * n       (n = the full output, p chunks)
//   Broadcast        n if p > 1, else 0 (every rank counts n: nccl-tests' factor 1)
//   Send             n                 (Recv counts received bytes separately, never as sent)
//   Barrier          0
// Integer division rounds the fractions down (AllReduceWireBytes etc. below compute them).
// Ops are counted when issued (non-blocking ones too), whether or not they later fail.
// Operations a communicator runs for itself (Split, SplitByNode) are not counted; helpers
// built on the public calls (AgreeOnStatus) are.
#ifndef LATTICE_PARALLEL_COMMUNICATOR_H_
#define LATTICE_PARALLEL_COMMUNICATOR_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "runtime/dtype.h"
#include "runtime/tensor.h"

// CUDA's stream (cudaStream_t is a `CUstream_st*`), declared here so that this header needs no
// CUDA include: a Work can order a device stream after itself (Work::WaitOnStream).
struct CUstream_st;

namespace lattice {

// Element type of a communication buffer: the tensor dtypes plus raw bytes (kU8), which
// runtime/dtype.h does not have because no tensor holds bytes (messages, ids, flags do).
enum class CommType : uint8_t { kF32, kBF16, kF16, kI32, kU16, kU32, kU8 };

CommType CommTypeOf(DType t);
size_t CommTypeSize(CommType t);
absl::string_view CommTypeName(CommType t);  // "f32", ..., "u8"

template <typename T>
struct CommTypeFor;
template <>
struct CommTypeFor<float> {
  static constexpr CommType value = CommType::kF32;
};
template <>
struct CommTypeFor<int32_t> {
  static constexpr CommType value = CommType::kI32;
};
template <>
struct CommTypeFor<uint32_t> {
  static constexpr CommType value = CommType::kU32;
};
template <>
struct CommTypeFor<uint8_t> {
  static constexpr CommType value = CommType::kU8;
};
template <>
struct CommTypeFor<char> {
  static constexpr CommType value = CommType::kU8;
};

// Reductions. kAvg is the sum divided by the group size (NCCL's ncclAvg; the host
// communicators sum, then divide), for floating-point types only: an integer mean would round,
// and where it rounds is the caller's choice (sum, then divide), so integer types refuse it
// (kInvalidArgument). The host communicators (Self, MPI) reduce f32, i32, u32 and u8 and move
// the 16-bit types without reducing them (kUnimplemented: sum them in f32); the NCCL
// communicator also reduces bf16 and f16. Communicator::CanReduce says what one communicator
// reduces.
enum class ReduceOp : uint8_t { kSum, kMax, kMin, kAvg };
absl::string_view ReduceOpName(ReduceOp op);  // "sum", "max", "min", "avg"
// The host communicators' types (any op but kAvg).
bool SupportsReduction(CommType t);
// The host communicators' rule for `op` on `t`: SupportsReduction(t), and kAvg only on f32.
bool SupportsReduction(CommType t, ReduceOp op);
bool IsFloatingPoint(CommType t);  // f32, bf16, f16

// Wire bytes of one rank by the convention above. n = bytes of the full buffer, p = group size.
int64_t AllReduceWireBytes(int64_t n, int p);
int64_t ReduceScatterWireBytes(int64_t n, int p);
int64_t AllGatherWireBytes(int64_t n, int p);
int64_t BroadcastWireBytes(int64_t n, int p);

struct OpCounter {
  int64_t calls = 0;
  int64_t bytes = 0;
  bool operator==(const OpCounter&) const = default;
};

// Per-communicator counters. `recv.bytes` are bytes received; everything else is bytes sent.
struct CommCounters {
  OpCounter all_reduce;
  OpCounter reduce_scatter;
  OpCounter all_gather;
  OpCounter broadcast;
  OpCounter send;
  OpCounter recv;
  int64_t barrier_calls = 0;

  int64_t BytesSent() const;  // sum of every op's bytes except recv
  // "sent 1234 B: all_reduce 2x1000 B, ..., recv 0x0 B, barrier 1x"
  std::string ToString() const;
  bool operator==(const CommCounters&) const = default;
};

// Communication of one rank over an interval (e.g. a training step), by operation: what the
// engine measures from its communicators' counters and compares with its analytic count.
struct CommVolume {
  OpCounter all_reduce;
  OpCounter reduce_scatter;
  OpCounter all_gather;
  OpCounter other;  // broadcast and point-to-point sends (pipeline transfers)

  int64_t bytes() const {
    return all_reduce.bytes + reduce_scatter.bytes + all_gather.bytes + other.bytes;
  }
  std::string ToString() const;
  bool operator==(const CommVolume&) const = default;
  CommVolume& operator+=(const CommVolume& o);

  // What `after` counted beyond `before` (the counters of one communicator).
  static CommVolume Between(const CommCounters& before, const CommCounters& after);
};

// ---- Timeouts (docs/hangs.md) ----

// Exit status of a job ended by a communicator timeout: 124, as timeout(1) exits when the
// command it runs ran out of time.
inline constexpr int kCommTimeoutExitCode = 124;
// How long one operation waits for the other ranks by default: 5 minutes. Megatron's
// --distributed-timeout-minutes and PyTorch's NCCL process groups default to 10; lattice's
// longest legitimate wait is a rank writing a synchronous checkpoint shard, and a job stuck on a
// dead peer should not burn a whole 10 minutes of a cluster allocation before saying so.
inline constexpr double kDefaultCommTimeoutSeconds = 300;
// How long MPI_Abort may take before the watchdog ends the process (parallel/watchdog.h): Open
// MPI tears a job down in about a second here (tests/parallel/world_abort_test.cc); 30 s also
// covers mpirun's SIGTERM-then-SIGKILL sequence on a loaded node.
inline constexpr double kDefaultAbortWatchdogSeconds = 30;

// How long a communicator waits for one operation and what it does when the time runs out.
// Every communicator split from this one inherits it.
struct CommTimeout {
  double seconds = kDefaultCommTimeoutSeconds;  // parallel.timeout_seconds
  // true (what lattice's binaries use): print the report on this rank and end the job with
  // MPI_Abort and kCommTimeoutExitCode. false: return kDeadlineExceeded with the report (for
  // tests of the report; the communicator refuses every later operation, and the buffers of the
  // operation that timed out must stay alive until the communicator is destroyed).
  bool abort = true;
  double abort_watchdog_seconds = kDefaultAbortWatchdogSeconds;  // parallel.abort_watchdog_seconds
  bool operator==(const CommTimeout&) const = default;
};

// `configured` with its seconds replaced by the environment variable LATTICE_COMM_TIMEOUT_S when
// that is set (it overrides parallel.timeout_seconds). `value` is the variable's value (null:
// unset); the one-argument form reads the process environment. A value that is not a number > 0
// is kInvalidArgument naming the variable and the value.
absl::StatusOr<CommTimeout> ApplyCommTimeoutEnv(CommTimeout configured, const char* value);
absl::StatusOr<CommTimeout> ApplyCommTimeoutEnv(CommTimeout configured);

// Handle of a non-blocking operation.
class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the operation is complete and returns its status. Calling it again returns the
  // same status without blocking.
  virtual absl::Status Wait() = 0;
  // Orders the work enqueued later on the CUDA stream `stream` after this operation. A device
  // communicator's Work (NCCL) makes the stream wait for the event recorded after the operation
  // and returns without blocking the host, so that compute overlaps communication: a status
  // that comes later (an asynchronous NCCL error, a timeout) is Wait()'s, or the communicator's
  // next operation's; a Work handed to a stream this way is not waited for by its destructor
  // (the stream holds the dependency). The default blocks the host in Wait(): the operation is
  // then complete for every stream.
  virtual absl::Status WaitOnStream(CUstream_st* /*stream*/) { return Wait(); }
};

// A Work that is already complete (blocking implementations return these).
std::unique_ptr<Work> CompletedWork(absl::Status status);

// Waits for all of `works` (in order) and returns the first error. Null entries are skipped.
absl::Status WaitAll(absl::Span<const std::unique_ptr<Work>> works);

// One message of a batch (Communicator::IBatchSendRecv): a send of `buf` to `peer`, or a receive
// into it from `peer`, of `count` elements of `type`.
struct PeerOp {
  enum class Kind : uint8_t { kSend, kRecv };
  Kind kind = Kind::kSend;
  void* buf = nullptr;  // only read by a send
  size_t count = 0;
  CommType type = CommType::kU8;
  int peer = 0;
  int tag = 0;

  static PeerOp Send(const void* buf, size_t count, CommType type, int dst, int tag) {
    return PeerOp{Kind::kSend, const_cast<void*>(buf), count, type, dst, tag};
  }
  static PeerOp Recv(void* buf, size_t count, CommType type, int src, int tag) {
    return PeerOp{Kind::kRecv, buf, count, type, src, tag};
  }
  template <typename T>
  static PeerOp Send(absl::Span<const T> buf, int dst, int tag) {
    return Send(buf.data(), buf.size(), CommTypeFor<T>::value, dst, tag);
  }
  template <typename T>
  static PeerOp Recv(absl::Span<T> buf, int src, int tag) {
    return Recv(buf.data(), buf.size(), CommTypeFor<T>::value, src, tag);
  }
};

class Communicator {
 public:
  // Split color of a rank that joins no group: Split returns a null communicator to it.
  static constexpr int kNoColor = -1;
  // Tags of Send/Recv are in [0, kMaxTag] (the smallest MPI_TAG_UB the MPI standard allows).
  static constexpr int kMaxTag = 32767;

  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "self", "mpi", ...
  virtual absl::string_view kind() const = 0;
  // What the group is, for messages: "world", "tp", "dp", "pp", ... (SplitGrid names the grid's
  // groups; other splits are "<parent>/split").
  const std::string& name() const { return name_; }
  void set_name(std::string name) {
    name_ = std::move(name);
    NameChanged();
  }
  // The deadline of every operation (MpiCommunicator, the NCCL communicator; a world of one
  // never waits).
  const CommTimeout& timeout() const { return timeout_; }
  void set_timeout(const CommTimeout& t) { timeout_ = t; }
  // Where the buffers of every call must live. Raw pointers are not checked; the Tensor
  // overloads are.
  virtual DeviceType buffer_device() const = 0;
  // Whether this communicator reduces `type` with `op`: the host rule SupportsReduction(type, op)
  // unless the implementation reduces more (NCCL: bf16 and f16 too).
  virtual bool CanReduce(CommType type, ReduceOp op) const { return SupportsReduction(type, op); }

  // ---- Blocking collectives. `count` is in elements of `type`. ----

  // In place: every rank ends with the reduction of all ranks' `buf`.
  absl::Status AllReduce(void* buf, size_t count, CommType type, ReduceOp op);
  // `send` holds size() chunks of `recv_count` elements; rank r receives the reduction of chunk
  // r. `recv` may alias chunk r of `send` (recv == send + r * recv_count: the distributed
  // optimizer's own shard); any other overlap is kInvalidArgument.
  absl::Status ReduceScatter(const void* send, void* recv, size_t recv_count, CommType type,
                             ReduceOp op);
  // Rank r's `send` (send_count elements) lands in chunk r of `recv` (size() * send_count).
  // `send` may alias chunk r of `recv`; any other overlap is kInvalidArgument.
  absl::Status AllGather(const void* send, void* recv, size_t send_count, CommType type);
  // `root`'s buf is copied to every rank's buf.
  absl::Status Broadcast(void* buf, size_t count, CommType type, int root);
  absl::Status Barrier();

  // ---- Point to point. Recv requires a message of exactly `count` elements. ----
  absl::Status Send(const void* buf, size_t count, CommType type, int dst, int tag);
  absl::Status Recv(void* buf, size_t count, CommType type, int src, int tag);

  // ---- Batched point to point (Megatron's batch_isend_irecv). ----
  // Issues every send and receive of `ops` as one operation, completed by one Work: the NCCL
  // communicator runs them in one ncclGroupStart/ncclGroupEnd, so that a pipeline stage's send
  // to the next stage and its receive from the previous one cannot deadlock on NCCL's rendezvous
  // (separately issued NCCL sends and receives on one stream can); the host communicators post
  // them all non-blocking. Every op is checked before any is issued, and counted as ISend and
  // IRecv count it. NCCL has no tags: between one pair of ranks, messages match in the order
  // they were issued whatever their tags, so portable code issues them in matching order.
  absl::StatusOr<std::unique_ptr<Work>> IBatchSendRecv(absl::Span<const PeerOp> ops);
  absl::Status BatchSendRecv(absl::Span<const PeerOp> ops);  // IBatchSendRecv, then Wait

  // ---- Non-blocking variants (same arguments, same accounting). ----
  absl::StatusOr<std::unique_ptr<Work>> IAllReduce(void* buf, size_t count, CommType type,
                                                   ReduceOp op);
  absl::StatusOr<std::unique_ptr<Work>> IReduceScatter(const void* send, void* recv,
                                                       size_t recv_count, CommType type,
                                                       ReduceOp op);
  absl::StatusOr<std::unique_ptr<Work>> IAllGather(const void* send, void* recv,
                                                   size_t send_count, CommType type);
  absl::StatusOr<std::unique_ptr<Work>> IBroadcast(void* buf, size_t count, CommType type,
                                                   int root);
  absl::StatusOr<std::unique_ptr<Work>> ISend(const void* buf, size_t count, CommType type,
                                              int dst, int tag);
  absl::StatusOr<std::unique_ptr<Work>> IRecv(void* buf, size_t count, CommType type, int src,
                                              int tag);

  // ---- New communicators (collective over this one; not counted). They inherit timeout(). ----

  // Ranks passing the same color form one communicator, ordered by (key, old rank). A rank
  // passing kNoColor gets nullptr. Colors are otherwise >= 0.
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key);
  // The ranks that share memory with this one (one node), ordered by rank.
  absl::StatusOr<std::unique_ptr<Communicator>> SplitByNode();

  // ---- Typed and tensor conveniences over the calls above. ----
  template <typename T>
  absl::Status AllReduce(absl::Span<T> buf, ReduceOp op) {
    return AllReduce(buf.data(), buf.size(), CommTypeFor<T>::value, op);
  }
  template <typename T>
  absl::Status Broadcast(absl::Span<T> buf, int root) {
    return Broadcast(buf.data(), buf.size(), CommTypeFor<T>::value, root);
  }
  // `recv.size()` must be size() * send.size().
  template <typename T>
  absl::Status AllGather(absl::Span<const T> send, absl::Span<T> recv) {
    if (recv.size() != send.size() * static_cast<size_t>(size())) return GatherSizeError(send.size(), recv.size());
    return AllGather(send.data(), recv.data(), send.size(), CommTypeFor<T>::value);
  }
  // `send.size()` must be size() * recv.size().
  template <typename T>
  absl::Status ReduceScatter(absl::Span<const T> send, absl::Span<T> recv, ReduceOp op) {
    if (send.size() != recv.size() * static_cast<size_t>(size())) return GatherSizeError(recv.size(), send.size());
    return ReduceScatter(send.data(), recv.data(), recv.size(), CommTypeFor<T>::value, op);
  }
  template <typename T>
  absl::Status Send(absl::Span<const T> buf, int dst, int tag) {
    return Send(buf.data(), buf.size(), CommTypeFor<T>::value, dst, tag);
  }
  template <typename T>
  absl::Status Recv(absl::Span<T> buf, int src, int tag) {
    return Recv(buf.data(), buf.size(), CommTypeFor<T>::value, src, tag);
  }

  // Tensors must be contiguous (all lattice tensors are) and live on buffer_device().
  absl::Status AllReduce(const Tensor& t, ReduceOp op);
  absl::StatusOr<std::unique_ptr<Work>> IAllReduce(const Tensor& t, ReduceOp op);
  absl::Status Broadcast(const Tensor& t, int root);
  // out.numel() == size() * in.numel(), same dtype.
  absl::Status AllGather(const Tensor& in, const Tensor& out);
  // in.numel() == size() * out.numel(), same dtype.
  absl::Status ReduceScatter(const Tensor& in, const Tensor& out, ReduceOp op);

  // ---- Accounting. ----
  const CommCounters& counters() const { return counters_; }
  void ResetCounters() { counters_ = CommCounters(); }

  // Ends every process of the job that owns this communicator with `exit_code`, now. Only
  // main() calls it (through AbortWorld); library code returns a Status instead.
  [[noreturn]] virtual void Abort(int exit_code) = 0;

 protected:
  Communicator() = default;

  // Implementations get validated arguments (counts in elements, buffers non-null when
  // count > 0, ranks in range, supported reduction types, permitted aliasing only).
  virtual absl::Status DoAllReduce(void* buf, size_t count, CommType type, ReduceOp op) = 0;
  virtual absl::Status DoReduceScatter(const void* send, void* recv, size_t recv_count,
                                       CommType type, ReduceOp op) = 0;
  virtual absl::Status DoAllGather(const void* send, void* recv, size_t send_count,
                                   CommType type) = 0;
  virtual absl::Status DoBroadcast(void* buf, size_t count, CommType type, int root) = 0;
  virtual absl::Status DoBarrier() = 0;
  virtual absl::Status DoSend(const void* buf, size_t count, CommType type, int dst, int tag) = 0;
  virtual absl::Status DoRecv(void* buf, size_t count, CommType type, int src, int tag) = 0;
  // Non-blocking defaults run the blocking call and return a completed Work; implementations
  // with real asynchrony override them.
  virtual absl::StatusOr<std::unique_ptr<Work>> DoIAllReduce(void* buf, size_t count,
                                                             CommType type, ReduceOp op);
  virtual absl::StatusOr<std::unique_ptr<Work>> DoIReduceScatter(const void* send, void* recv,
                                                                 size_t recv_count, CommType type,
                                                                 ReduceOp op);
  virtual absl::StatusOr<std::unique_ptr<Work>> DoIAllGather(const void* send, void* recv,
                                                             size_t send_count, CommType type);
  virtual absl::StatusOr<std::unique_ptr<Work>> DoIBroadcast(void* buf, size_t count,
                                                             CommType type, int root);
  virtual absl::StatusOr<std::unique_ptr<Work>> DoISend(const void* buf, size_t count,
                                                        CommType type, int dst, int tag);
  virtual absl::StatusOr<std::unique_ptr<Work>> DoIRecv(void* buf, size_t count, CommType type,
                                                        int src, int tag);
  // The default issues DoISend / DoIRecv in order and waits for all of them.
  virtual absl::StatusOr<std::unique_ptr<Work>> DoIBatchSendRecv(absl::Span<const PeerOp> ops);
  virtual absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(int color, int key) = 0;
  virtual absl::StatusOr<std::unique_ptr<Communicator>> DoSplitByNode() = 0;
  // After set_name (implementations that keep a copy of the name for their reports).
  virtual void NameChanged() {}

 private:
  absl::Status GatherSizeError(size_t chunk, size_t full) const;
  absl::Status CheckReducible(CommType type, ReduceOp op) const;
  // Argument checks shared by the blocking and non-blocking forms; they also count the op.
  absl::Status CheckAllReduce(void* buf, size_t count, CommType type, ReduceOp op);
  absl::Status CheckReduceScatter(const void* send, void* recv, size_t recv_count, CommType type,
                                  ReduceOp op);
  absl::Status CheckAllGather(const void* send, void* recv, size_t send_count, CommType type);
  absl::Status CheckBroadcast(void* buf, size_t count, CommType type, int root);
  absl::Status CheckPeer(const char* op, const void* buf, size_t count, CommType type, int peer,
                         int tag) const;
  absl::Status CheckTensor(const char* op, const Tensor& t) const;
  // "AllReduce(sum, f32 x 10) on rank 1 of 4 (mpi): " + status message.
  absl::Status Context(absl::Status s, absl::string_view what) const;

  CommCounters counters_;
  std::string name_ = "world";
  CommTimeout timeout_;
};

// A world of one: collectives are copies or no-ops, and Send/Recv to rank 0 (itself) go
// through a queue per tag, so code written for many ranks runs unchanged without MPI. A Recv
// with no queued message fails with kFailedPrecondition instead of hanging.
class SelfCommunicator final : public Communicator {
 public:
  SelfCommunicator() = default;
  int rank() const override { return 0; }
  int size() const override { return 1; }
  absl::string_view kind() const override { return "self"; }
  DeviceType buffer_device() const override { return DeviceType::kCpu; }
  [[noreturn]] void Abort(int exit_code) override;

 protected:
  absl::Status DoAllReduce(void* buf, size_t count, CommType type, ReduceOp op) override;
  absl::Status DoReduceScatter(const void* send, void* recv, size_t recv_count, CommType type,
                               ReduceOp op) override;
  absl::Status DoAllGather(const void* send, void* recv, size_t send_count,
                           CommType type) override;
  absl::Status DoBroadcast(void* buf, size_t count, CommType type, int root) override;
  absl::Status DoBarrier() override;
  absl::Status DoSend(const void* buf, size_t count, CommType type, int dst, int tag) override;
  absl::Status DoRecv(void* buf, size_t count, CommType type, int src, int tag) override;
  absl::StatusOr<std::unique_ptr<Work>> DoIRecv(void* buf, size_t count, CommType type, int src,
                                                int tag) override;
  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(int color, int key) override;
  absl::StatusOr<std::unique_ptr<Communicator>> DoSplitByNode() override;

 private:
  // Messages to self, FIFO per tag (as MPI orders messages between one pair on one tag).
  std::map<int, std::deque<std::vector<uint8_t>>> queues_;
};

// Agrees on success across the group: a collective every rank calls with its own status. If any
// rank's `local` is an error, every rank returns the same error, with the code and message of
// the lowest failing rank, prefixed "rank R: " and followed by the list of failing ranks when
// there are several. Communication failures are returned as themselves. Costs one AllGather of
// an i32 flag and, on failure, two Broadcasts (counted on `comm`).
absl::Status AgreeOnStatus(Communicator& comm, const absl::Status& local);

// For main() only: prints "lattice: rank R: <message>" to stderr (R = comm.rank(); pass the world
// communicator) and ends every process of the job with exit code 1 (MPI_Abort under MPI), so no
// rank is left waiting in a collective for one that has gone. Library code never calls this.
[[noreturn]] void AbortWorld(Communicator& comm, const absl::Status& status);

}  // namespace lattice

#endif  // LATTICE_PARALLEL_COMMUNICATOR_H_
