#include "parallel/communicator.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "runtime/status.h"

namespace lattice {

// ---- Types ---------------------------------------------------------------------------------

CommType CommTypeOf(DType t) {
  switch (t) {
    case DType::kF32: return CommType::kF32;
    case DType::kBF16: return CommType::kBF16;
    case DType::kF16: return CommType::kF16;
    case DType::kI32: return CommType::kI32;
    case DType::kU16: return CommType::kU16;
    case DType::kU32: return CommType::kU32;
  }
  LATTICE_CHECK_MSG(false, "a DType without a CommType");
  return CommType::kU8;
}

size_t CommTypeSize(CommType t) {
  switch (t) {
    case CommType::kF32: return 4;
    case CommType::kBF16: return 2;
    case CommType::kF16: return 2;
    case CommType::kI32: return 4;
    case CommType::kU16: return 2;
    case CommType::kU32: return 4;
    case CommType::kU8: return 1;
  }
  return 0;
}

absl::string_view CommTypeName(CommType t) {
  switch (t) {
    case CommType::kF32: return "f32";
    case CommType::kBF16: return "bf16";
    case CommType::kF16: return "f16";
    case CommType::kI32: return "i32";
    case CommType::kU16: return "u16";
    case CommType::kU32: return "u32";
    case CommType::kU8: return "u8";
  }
  return "?";
}

absl::string_view ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
    case ReduceOp::kAvg: return "avg";
  }
  return "?";
}

bool SupportsReduction(CommType t) {
  return t == CommType::kF32 || t == CommType::kI32 || t == CommType::kU32 || t == CommType::kU8;
}

bool SupportsReduction(CommType t, ReduceOp op) {
  return SupportsReduction(t) && (op != ReduceOp::kAvg || IsFloatingPoint(t));
}

bool IsFloatingPoint(CommType t) {
  return t == CommType::kF32 || t == CommType::kBF16 || t == CommType::kF16;
}

// ---- Accounting ----------------------------------------------------------------------------

int64_t AllReduceWireBytes(int64_t n, int p) { return p <= 1 ? 0 : 2 * (p - 1) * n / p; }
int64_t ReduceScatterWireBytes(int64_t n, int p) { return p <= 1 ? 0 : (p - 1) * n / p; }
int64_t AllGatherWireBytes(int64_t n, int p) { return p <= 1 ? 0 : (p - 1) * n / p; }
int64_t BroadcastWireBytes(int64_t n, int p) { return p <= 1 ? 0 : n; }

std::string CommVolume::ToString() const {
  auto op = [](const char* name, const OpCounter& c) {
    return absl::StrCat(name, " ", c.calls, "x", c.bytes, " B");
  };
  return absl::StrCat(bytes(), " B: ", op("all_reduce", all_reduce), ", ",
                      op("reduce_scatter", reduce_scatter), ", ", op("all_gather", all_gather),
                      ", ", op("other", other));
}

CommVolume& CommVolume::operator+=(const CommVolume& o) {
  auto add = [](OpCounter& a, const OpCounter& b) {
    a.calls += b.calls;
    a.bytes += b.bytes;
  };
  add(all_reduce, o.all_reduce);
  add(reduce_scatter, o.reduce_scatter);
  add(all_gather, o.all_gather);
  add(other, o.other);
  return *this;
}

CommVolume CommVolume::Between(const CommCounters& before, const CommCounters& after) {
  auto diff = [](const OpCounter& a, const OpCounter& b) {
    return OpCounter{b.calls - a.calls, b.bytes - a.bytes};
  };
  CommVolume v;
  v.all_reduce = diff(before.all_reduce, after.all_reduce);
  v.reduce_scatter = diff(before.reduce_scatter, after.reduce_scatter);
  v.all_gather = diff(before.all_gather, after.all_gather);
  const OpCounter bc = diff(before.broadcast, after.broadcast);
  const OpCounter send = diff(before.send, after.send);
  v.other = OpCounter{bc.calls + send.calls, bc.bytes + send.bytes};
  return v;
}

int64_t CommCounters::BytesSent() const {
  return all_reduce.bytes + reduce_scatter.bytes + all_gather.bytes + broadcast.bytes + send.bytes;
}

std::string CommCounters::ToString() const {
  auto op = [](const char* name, const OpCounter& c) {
    return absl::StrCat(name, " ", c.calls, "x", c.bytes, " B");
  };
  return absl::StrCat("sent ", BytesSent(), " B: ", op("all_reduce", all_reduce), ", ",
                      op("reduce_scatter", reduce_scatter), ", ", op("all_gather", all_gather),
                      ", ", op("broadcast", broadcast), ", ", op("send", send), ", ",
                      op("recv", recv), ", barrier ", barrier_calls, "x");
}

// ---- Work ----------------------------------------------------------------------------------

namespace {

class DoneWork final : public Work {
 public:
  explicit DoneWork(absl::Status status) : status_(std::move(status)) {}
  absl::Status Wait() override { return status_; }

 private:
  absl::Status status_;
};

// Runs `fn` at the first Wait (or at destruction).
class DeferredWork final : public Work {
 public:
  explicit DeferredWork(std::function<absl::Status()> fn) : fn_(std::move(fn)) {}
  ~DeferredWork() override { (void)Wait(); }
  absl::Status Wait() override {
    if (fn_) {
      status_ = fn_();
      fn_ = nullptr;
    }
    return status_;
  }

 private:
  std::function<absl::Status()> fn_;
  absl::Status status_;
};

// Prefixes the status of an inner Work with the call that issued it.
class ContextWork final : public Work {
 public:
  ContextWork(std::unique_ptr<Work> inner, std::string context)
      : inner_(std::move(inner)), context_(std::move(context)) {}
  absl::Status Wait() override { return Annotate(inner_->Wait(), context_); }
  absl::Status WaitOnStream(CUstream_st* stream) override {
    return Annotate(inner_->WaitOnStream(stream), context_);
  }

 private:
  std::unique_ptr<Work> inner_;
  std::string context_;
};

// The Works of a batch the default DoIBatchSendRecv issued one by one: waited for in order,
// the first error kept. Its destructor waits through theirs.
class BatchWork final : public Work {
 public:
  explicit BatchWork(std::vector<std::unique_ptr<Work>> works) : works_(std::move(works)) {}
  absl::Status Wait() override {
    if (!done_) {
      status_ = WaitAll(works_);
      done_ = true;
    }
    return status_;
  }
  absl::Status WaitOnStream(CUstream_st* stream) override {
    absl::Status first;
    for (const auto& w : works_) {
      absl::Status s = w->WaitOnStream(stream);
      if (first.ok() && !s.ok()) first = s;
    }
    return first;
  }

 private:
  std::vector<std::unique_ptr<Work>> works_;
  bool done_ = false;
  absl::Status status_;
};

bool Overlaps(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  auto pa = reinterpret_cast<uintptr_t>(a);
  auto pb = reinterpret_cast<uintptr_t>(b);
  return a_bytes > 0 && b_bytes > 0 && pa < pb + b_bytes && pb < pa + a_bytes;
}

std::string CallName(absl::string_view op, CommType type, size_t count) {
  return absl::StrCat(op, "(", CommTypeName(type), " x ", count, ")");
}
std::string CallName(absl::string_view op, ReduceOp rop, CommType type, size_t count) {
  return absl::StrCat(op, "(", ReduceOpName(rop), ", ", CommTypeName(type), " x ", count, ")");
}

}  // namespace

std::unique_ptr<Work> CompletedWork(absl::Status status) {
  return std::make_unique<DoneWork>(std::move(status));
}

absl::Status WaitAll(absl::Span<const std::unique_ptr<Work>> works) {
  absl::Status first;
  for (const auto& w : works) {
    if (w == nullptr) continue;
    absl::Status s = w->Wait();
    if (first.ok() && !s.ok()) first = s;
  }
  return first;
}

// ---- Communicator: validation and accounting -------------------------------------------------

absl::Status Communicator::Context(absl::Status s, absl::string_view what) const {
  if (s.ok()) return s;
  return Annotate(s, absl::StrCat(what, " on rank ", rank(), " of ", size(), " (", kind(), ")"));
}

absl::Status Communicator::GatherSizeError(size_t chunk, size_t full) const {
  return Context(absl::InvalidArgumentError(absl::StrCat(
                     "the full buffer has ", full, " elements but the group of ", size(),
                     " needs ", size(), " x ", chunk, " = ", static_cast<size_t>(size()) * chunk)),
                 "AllGather/ReduceScatter");
}

static absl::Status CheckBuffer(const void* buf, size_t count, const char* name) {
  if (count > 0 && buf == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("the ", name, " buffer is null but the count is ", count));
  }
  return absl::OkStatus();
}

absl::Status Communicator::CheckReducible(CommType type, ReduceOp op) const {
  if (CanReduce(type, op)) return absl::OkStatus();
  if (op == ReduceOp::kAvg && !IsFloatingPoint(type)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the average of ", CommTypeName(type), " is not defined: an integer mean would round "
        "(sum, then divide with the rounding the caller wants)"));
  }
  return absl::UnimplementedError(absl::StrCat("reduction ", ReduceOpName(op), " of ",
                                               CommTypeName(type),
                                               " is not supported by this communicator (", kind(),
                                               "; reduce in f32)"));
}

absl::Status Communicator::CheckAllReduce(void* buf, size_t count, CommType type, ReduceOp op) {
  LATTICE_RETURN_IF_ERROR(CheckBuffer(buf, count, "in-place"));
  LATTICE_RETURN_IF_ERROR(CheckReducible(type, op));
  const int64_t n = static_cast<int64_t>(count * CommTypeSize(type));
  counters_.all_reduce.calls++;
  counters_.all_reduce.bytes += AllReduceWireBytes(n, size());
  return absl::OkStatus();
}

absl::Status Communicator::CheckReduceScatter(const void* send, void* recv, size_t recv_count,
                                              CommType type, ReduceOp op) {
  const size_t es = CommTypeSize(type);
  const size_t full = recv_count * static_cast<size_t>(size());
  LATTICE_RETURN_IF_ERROR(CheckBuffer(send, full, "send"));
  LATTICE_RETURN_IF_ERROR(CheckBuffer(recv, recv_count, "receive"));
  LATTICE_RETURN_IF_ERROR(CheckReducible(type, op));
  const auto* own_chunk = static_cast<const uint8_t*>(send) + static_cast<size_t>(rank()) * recv_count * es;
  if (recv != own_chunk && Overlaps(send, full * es, recv, recv_count * es)) {
    return absl::InvalidArgumentError(
        "the receive buffer overlaps the send buffer other than as this rank's own chunk");
  }
  counters_.reduce_scatter.calls++;
  counters_.reduce_scatter.bytes += ReduceScatterWireBytes(static_cast<int64_t>(full * es), size());
  return absl::OkStatus();
}

absl::Status Communicator::CheckAllGather(const void* send, void* recv, size_t send_count,
                                          CommType type) {
  const size_t es = CommTypeSize(type);
  const size_t full = send_count * static_cast<size_t>(size());
  LATTICE_RETURN_IF_ERROR(CheckBuffer(send, send_count, "send"));
  LATTICE_RETURN_IF_ERROR(CheckBuffer(recv, full, "receive"));
  const auto* own_chunk = static_cast<const uint8_t*>(recv) + static_cast<size_t>(rank()) * send_count * es;
  if (send != own_chunk && Overlaps(send, send_count * es, recv, full * es)) {
    return absl::InvalidArgumentError(
        "the send buffer overlaps the receive buffer other than as this rank's own chunk");
  }
  counters_.all_gather.calls++;
  counters_.all_gather.bytes += AllGatherWireBytes(static_cast<int64_t>(full * es), size());
  return absl::OkStatus();
}

absl::Status Communicator::CheckBroadcast(void* buf, size_t count, CommType type, int root) {
  LATTICE_RETURN_IF_ERROR(CheckBuffer(buf, count, "broadcast"));
  if (root < 0 || root >= size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("root ", root, " is not a rank of this group of ", size()));
  }
  counters_.broadcast.calls++;
  counters_.broadcast.bytes += BroadcastWireBytes(static_cast<int64_t>(count * CommTypeSize(type)), size());
  return absl::OkStatus();
}

absl::Status Communicator::CheckPeer(const char* op, const void* buf, size_t count, CommType type,
                                     int peer, int tag) const {
  LATTICE_RETURN_IF_ERROR(CheckBuffer(buf, count, op));
  if (peer < 0 || peer >= size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer rank ", peer, " is not a rank of this group of ", size()));
  }
  if (tag < 0 || tag > kMaxTag) {
    return absl::InvalidArgumentError(absl::StrCat("tag ", tag, " is outside [0, ", kMaxTag, "]"));
  }
  return absl::OkStatus();
}

// ---- Communicator: public calls ------------------------------------------------------------

absl::Status Communicator::AllReduce(void* buf, size_t count, CommType type, ReduceOp op) {
  const auto what = [&] { return CallName("AllReduce", op, type, count); };
  LATTICE_RETURN_IF_ERROR(Context(CheckAllReduce(buf, count, type, op), what()));
  return Context(DoAllReduce(buf, count, type, op), what());
}

absl::Status Communicator::ReduceScatter(const void* send, void* recv, size_t recv_count,
                                         CommType type, ReduceOp op) {
  const auto what = [&] { return CallName("ReduceScatter", op, type, recv_count); };
  LATTICE_RETURN_IF_ERROR(Context(CheckReduceScatter(send, recv, recv_count, type, op), what()));
  return Context(DoReduceScatter(send, recv, recv_count, type, op), what());
}

absl::Status Communicator::AllGather(const void* send, void* recv, size_t send_count,
                                     CommType type) {
  const auto what = [&] { return CallName("AllGather", type, send_count); };
  LATTICE_RETURN_IF_ERROR(Context(CheckAllGather(send, recv, send_count, type), what()));
  return Context(DoAllGather(send, recv, send_count, type), what());
}

absl::Status Communicator::Broadcast(void* buf, size_t count, CommType type, int root) {
  const auto what = [&] { return absl::StrCat(CallName("Broadcast", type, count), " from ", root); };
  LATTICE_RETURN_IF_ERROR(Context(CheckBroadcast(buf, count, type, root), what()));
  return Context(DoBroadcast(buf, count, type, root), what());
}

absl::Status Communicator::Barrier() {
  counters_.barrier_calls++;
  return Context(DoBarrier(), "Barrier");
}

absl::Status Communicator::Send(const void* buf, size_t count, CommType type, int dst, int tag) {
  const auto what = [&] {
    return absl::StrCat(CallName("Send", type, count), " to ", dst, " tag ", tag);
  };
  LATTICE_RETURN_IF_ERROR(Context(CheckPeer("send", buf, count, type, dst, tag), what()));
  counters_.send.calls++;
  counters_.send.bytes += static_cast<int64_t>(count * CommTypeSize(type));
  return Context(DoSend(buf, count, type, dst, tag), what());
}

absl::Status Communicator::Recv(void* buf, size_t count, CommType type, int src, int tag) {
  const auto what = [&] {
    return absl::StrCat(CallName("Recv", type, count), " from ", src, " tag ", tag);
  };
  LATTICE_RETURN_IF_ERROR(Context(CheckPeer("receive", buf, count, type, src, tag), what()));
  counters_.recv.calls++;
  counters_.recv.bytes += static_cast<int64_t>(count * CommTypeSize(type));
  return Context(DoRecv(buf, count, type, src, tag), what());
}

// Non-blocking calls: the same checks, then the implementation's Work wrapped so that its
// status names the call.
#define LATTICE_COMM_ISSUE_(what, check, call)                                  \
  do {                                                                          \
    const std::string what_ = (what);                                           \
    LATTICE_RETURN_IF_ERROR(Context((check), what_));                           \
    absl::StatusOr<std::unique_ptr<Work>> work_ = (call);                       \
    if (!work_.ok()) return Context(work_.status(), what_);                     \
    return std::unique_ptr<Work>(std::make_unique<ContextWork>(                 \
        std::move(work_).value(),                                               \
        absl::StrCat(what_, " on rank ", rank(), " of ", size(), " (", kind(), ")"))); \
  } while (0)

absl::StatusOr<std::unique_ptr<Work>> Communicator::IAllReduce(void* buf, size_t count,
                                                               CommType type, ReduceOp op) {
  LATTICE_COMM_ISSUE_(CallName("IAllReduce", op, type, count),
                      CheckAllReduce(buf, count, type, op), DoIAllReduce(buf, count, type, op));
}

absl::StatusOr<std::unique_ptr<Work>> Communicator::IReduceScatter(const void* send, void* recv,
                                                                   size_t recv_count,
                                                                   CommType type, ReduceOp op) {
  LATTICE_COMM_ISSUE_(CallName("IReduceScatter", op, type, recv_count),
                      CheckReduceScatter(send, recv, recv_count, type, op),
                      DoIReduceScatter(send, recv, recv_count, type, op));
}

absl::StatusOr<std::unique_ptr<Work>> Communicator::IAllGather(const void* send, void* recv,
                                                               size_t send_count, CommType type) {
  LATTICE_COMM_ISSUE_(CallName("IAllGather", type, send_count),
                      CheckAllGather(send, recv, send_count, type),
                      DoIAllGather(send, recv, send_count, type));
}

absl::StatusOr<std::unique_ptr<Work>> Communicator::IBroadcast(void* buf, size_t count,
                                                               CommType type, int root) {
  LATTICE_COMM_ISSUE_(absl::StrCat(CallName("IBroadcast", type, count), " from ", root),
                      CheckBroadcast(buf, count, type, root),
                      DoIBroadcast(buf, count, type, root));
}

absl::StatusOr<std::unique_ptr<Work>> Communicator::ISend(const void* buf, size_t count,
                                                          CommType type, int dst, int tag) {
  absl::Status check = CheckPeer("send", buf, count, type, dst, tag);
  if (check.ok()) {
    counters_.send.calls++;
    counters_.send.bytes += static_cast<int64_t>(count * CommTypeSize(type));
  }
  LATTICE_COMM_ISSUE_(absl::StrCat(CallName("ISend", type, count), " to ", dst, " tag ", tag),
                      check, DoISend(buf, count, type, dst, tag));
}

absl::StatusOr<std::unique_ptr<Work>> Communicator::IRecv(void* buf, size_t count, CommType type,
                                                          int src, int tag) {
  absl::Status check = CheckPeer("receive", buf, count, type, src, tag);
  if (check.ok()) {
    counters_.recv.calls++;
    counters_.recv.bytes += static_cast<int64_t>(count * CommTypeSize(type));
  }
  LATTICE_COMM_ISSUE_(absl::StrCat(CallName("IRecv", type, count), " from ", src, " tag ", tag),
                      check, DoIRecv(buf, count, type, src, tag));
}

absl::StatusOr<std::unique_ptr<Work>> Communicator::IBatchSendRecv(absl::Span<const PeerOp> ops) {
  int sends = 0;
  for (const PeerOp& op : ops) sends += op.kind == PeerOp::Kind::kSend ? 1 : 0;
  const std::string what = absl::StrCat("IBatchSendRecv(", sends, " sends, ",
                                        static_cast<int>(ops.size()) - sends, " receives)");
  // Every op is checked before any is counted or issued: a bad one issues nothing.
  for (size_t i = 0; i < ops.size(); ++i) {
    const PeerOp& op = ops[i];
    const bool send = op.kind == PeerOp::Kind::kSend;
    absl::Status check =
        CheckPeer(send ? "send" : "receive", op.buf, op.count, op.type, op.peer, op.tag);
    if (!check.ok()) {
      return Context(check, absl::StrCat(what, " op ", i, " (",
                                         CallName(send ? "send" : "recv", op.type, op.count),
                                         send ? " to " : " from ", op.peer, " tag ", op.tag, ")"));
    }
  }
  for (const PeerOp& op : ops) {
    OpCounter& c = op.kind == PeerOp::Kind::kSend ? counters_.send : counters_.recv;
    c.calls++;
    c.bytes += static_cast<int64_t>(op.count * CommTypeSize(op.type));
  }
  LATTICE_COMM_ISSUE_(what, absl::OkStatus(), DoIBatchSendRecv(ops));
}

absl::Status Communicator::BatchSendRecv(absl::Span<const PeerOp> ops) {
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<Work> w, IBatchSendRecv(ops));
  return w->Wait();
}

#undef LATTICE_COMM_ISSUE_

absl::StatusOr<std::unique_ptr<Communicator>> Communicator::Split(int color, int key) {
  const std::string what = absl::StrCat("Split(color ", color, ", key ", key, ")");
  if (color < 0 && color != kNoColor) {
    return Context(absl::InvalidArgumentError(absl::StrCat(
                       "colors are >= 0, or Communicator::kNoColor (", kNoColor, ") for none")),
                   what);
  }
  absl::StatusOr<std::unique_ptr<Communicator>> c = DoSplit(color, key);
  if (!c.ok()) return Context(c.status(), what);
  if (*c != nullptr) {
    (*c)->set_name(absl::StrCat(name_, "/split"));
    (*c)->set_timeout(timeout_);
  }
  return c;
}

absl::StatusOr<std::unique_ptr<Communicator>> Communicator::SplitByNode() {
  absl::StatusOr<std::unique_ptr<Communicator>> c = DoSplitByNode();
  if (!c.ok()) return Context(c.status(), "SplitByNode");
  (*c)->set_name(absl::StrCat(name_, "/node"));
  (*c)->set_timeout(timeout_);
  return c;
}

// ---- Timeouts --------------------------------------------------------------------------------

absl::StatusOr<CommTimeout> ApplyCommTimeoutEnv(CommTimeout configured, const char* value) {
  if (value == nullptr) return configured;
  double seconds = 0;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(value), &seconds) || !(seconds > 0) ||
      !std::isfinite(seconds)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "environment variable LATTICE_COMM_TIMEOUT_S=\"", value,
        "\" is not a number of seconds > 0 (it overrides parallel.timeout_seconds)"));
  }
  configured.seconds = seconds;
  return configured;
}

absl::StatusOr<CommTimeout> ApplyCommTimeoutEnv(CommTimeout configured) {
  return ApplyCommTimeoutEnv(configured, std::getenv("LATTICE_COMM_TIMEOUT_S"));
}

// ---- Default non-blocking forms: run blocking ------------------------------------------------

absl::StatusOr<std::unique_ptr<Work>> Communicator::DoIAllReduce(void* buf, size_t count,
                                                                 CommType type, ReduceOp op) {
  return CompletedWork(DoAllReduce(buf, count, type, op));
}
absl::StatusOr<std::unique_ptr<Work>> Communicator::DoIReduceScatter(const void* send, void* recv,
                                                                     size_t recv_count,
                                                                     CommType type, ReduceOp op) {
  return CompletedWork(DoReduceScatter(send, recv, recv_count, type, op));
}
absl::StatusOr<std::unique_ptr<Work>> Communicator::DoIAllGather(const void* send, void* recv,
                                                                 size_t send_count,
                                                                 CommType type) {
  return CompletedWork(DoAllGather(send, recv, send_count, type));
}
absl::StatusOr<std::unique_ptr<Work>> Communicator::DoIBroadcast(void* buf, size_t count,
                                                                 CommType type, int root) {
  return CompletedWork(DoBroadcast(buf, count, type, root));
}
absl::StatusOr<std::unique_ptr<Work>> Communicator::DoISend(const void* buf, size_t count,
                                                            CommType type, int dst, int tag) {
  return CompletedWork(DoSend(buf, count, type, dst, tag));
}
absl::StatusOr<std::unique_ptr<Work>> Communicator::DoIRecv(void* buf, size_t count,
                                                            CommType type, int src, int tag) {
  return CompletedWork(DoRecv(buf, count, type, src, tag));
}

absl::StatusOr<std::unique_ptr<Work>> Communicator::DoIBatchSendRecv(
    absl::Span<const PeerOp> ops) {
  std::vector<std::unique_ptr<Work>> works;
  works.reserve(ops.size());
  for (const PeerOp& op : ops) {
    // An op that fails to issue fails the batch; the ones already issued are waited for by
    // their destructors (they complete when the peers do their part, or time out).
    absl::StatusOr<std::unique_ptr<Work>> w =
        op.kind == PeerOp::Kind::kSend ? DoISend(op.buf, op.count, op.type, op.peer, op.tag)
                                       : DoIRecv(op.buf, op.count, op.type, op.peer, op.tag);
    if (!w.ok()) return w.status();
    works.push_back(std::move(w).value());
  }
  return std::unique_ptr<Work>(std::make_unique<BatchWork>(std::move(works)));
}

// ---- Tensor conveniences -------------------------------------------------------------------

absl::Status Communicator::CheckTensor(const char* op, const Tensor& t) const {
  if (!t.defined()) {
    return Context(absl::InvalidArgumentError("the tensor is undefined"), op);
  }
  if (t.device().type != buffer_device()) {
    return Context(absl::InvalidArgumentError(absl::StrCat(
                       "the tensor lives on ", t.device().ToString(), " but this communicator "
                       "moves ", buffer_device() == DeviceType::kCpu ? "host" : "device",
                       " memory")),
                   op);
  }
  return absl::OkStatus();
}

absl::Status Communicator::AllReduce(const Tensor& t, ReduceOp op) {
  LATTICE_RETURN_IF_ERROR(CheckTensor("AllReduce", t));
  return AllReduce(t.raw(), static_cast<size_t>(t.numel()), CommTypeOf(t.dtype()), op);
}

absl::StatusOr<std::unique_ptr<Work>> Communicator::IAllReduce(const Tensor& t, ReduceOp op) {
  LATTICE_RETURN_IF_ERROR(CheckTensor("IAllReduce", t));
  return IAllReduce(t.raw(), static_cast<size_t>(t.numel()), CommTypeOf(t.dtype()), op);
}

absl::Status Communicator::Broadcast(const Tensor& t, int root) {
  LATTICE_RETURN_IF_ERROR(CheckTensor("Broadcast", t));
  return Broadcast(t.raw(), static_cast<size_t>(t.numel()), CommTypeOf(t.dtype()), root);
}

absl::Status Communicator::AllGather(const Tensor& in, const Tensor& out) {
  LATTICE_RETURN_IF_ERROR(CheckTensor("AllGather", in));
  LATTICE_RETURN_IF_ERROR(CheckTensor("AllGather", out));
  if (in.dtype() != out.dtype()) {
    return Context(absl::InvalidArgumentError(absl::StrCat("input is ", DTypeName(in.dtype()),
                                                           " but output is ",
                                                           DTypeName(out.dtype()))),
                   "AllGather");
  }
  if (out.numel() != in.numel() * size()) {
    return GatherSizeError(static_cast<size_t>(in.numel()), static_cast<size_t>(out.numel()));
  }
  return AllGather(in.raw(), out.raw(), static_cast<size_t>(in.numel()), CommTypeOf(in.dtype()));
}

absl::Status Communicator::ReduceScatter(const Tensor& in, const Tensor& out, ReduceOp op) {
  LATTICE_RETURN_IF_ERROR(CheckTensor("ReduceScatter", in));
  LATTICE_RETURN_IF_ERROR(CheckTensor("ReduceScatter", out));
  if (in.dtype() != out.dtype()) {
    return Context(absl::InvalidArgumentError(absl::StrCat("input is ", DTypeName(in.dtype()),
                                                           " but output is ",
                                                           DTypeName(out.dtype()))),
                   "ReduceScatter");
  }
  if (in.numel() != out.numel() * size()) {
    return GatherSizeError(static_cast<size_t>(out.numel()), static_cast<size_t>(in.numel()));
  }
  return ReduceScatter(in.raw(), out.raw(), static_cast<size_t>(out.numel()),
                       CommTypeOf(in.dtype()), op);
}

// ---- SelfCommunicator ----------------------------------------------------------------------

void SelfCommunicator::Abort(int exit_code) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(exit_code);
}

absl::Status SelfCommunicator::DoAllReduce(void*, size_t, CommType, ReduceOp) {
  return absl::OkStatus();
}

absl::Status SelfCommunicator::DoReduceScatter(const void* send, void* recv, size_t recv_count,
                                               CommType type, ReduceOp) {
  if (recv != send && recv_count > 0) std::memmove(recv, send, recv_count * CommTypeSize(type));
  return absl::OkStatus();
}

absl::Status SelfCommunicator::DoAllGather(const void* send, void* recv, size_t send_count,
                                           CommType type) {
  if (recv != send && send_count > 0) std::memmove(recv, send, send_count * CommTypeSize(type));
  return absl::OkStatus();
}

absl::Status SelfCommunicator::DoBroadcast(void*, size_t, CommType, int) {
  return absl::OkStatus();
}

absl::Status SelfCommunicator::DoBarrier() { return absl::OkStatus(); }

absl::Status SelfCommunicator::DoSend(const void* buf, size_t count, CommType type, int,
                                      int tag) {
  const auto* p = static_cast<const uint8_t*>(buf);
  queues_[tag].emplace_back(p, p + count * CommTypeSize(type));
  return absl::OkStatus();
}

absl::Status SelfCommunicator::DoRecv(void* buf, size_t count, CommType type, int, int tag) {
  auto it = queues_.find(tag);
  if (it == queues_.end() || it->second.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no message with tag ", tag, " is pending, and in a world of one nobody can send one "
        "later (Send, or ISend, to self before receiving)"));
  }
  std::vector<uint8_t> msg = std::move(it->second.front());
  it->second.pop_front();
  const size_t bytes = count * CommTypeSize(type);
  if (msg.size() != bytes) {
    // Worded as MpiCommunicator words it, so callers see one message whichever world runs.
    return absl::InvalidArgumentError(
        absl::StrCat("received a message of ", msg.size() / CommTypeSize(type), " elements",
                     msg.size() % CommTypeSize(type) != 0 ? " and a fraction" : "",
                     " but expected ", count));
  }
  if (bytes > 0) std::memcpy(buf, msg.data(), bytes);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Work>> SelfCommunicator::DoIRecv(void* buf, size_t count,
                                                                CommType type, int src, int tag) {
  // Deferred to Wait so that IRecv may be posted before the matching ISend, as with MPI.
  return std::unique_ptr<Work>(std::make_unique<DeferredWork>(
      [this, buf, count, type, src, tag] { return DoRecv(buf, count, type, src, tag); }));
}

absl::StatusOr<std::unique_ptr<Communicator>> SelfCommunicator::DoSplit(int color, int) {
  if (color == kNoColor) return std::unique_ptr<Communicator>();
  return std::unique_ptr<Communicator>(std::make_unique<SelfCommunicator>());
}

absl::StatusOr<std::unique_ptr<Communicator>> SelfCommunicator::DoSplitByNode() {
  return std::unique_ptr<Communicator>(std::make_unique<SelfCommunicator>());
}

// ---- Agreement and abort -------------------------------------------------------------------

absl::Status AgreeOnStatus(Communicator& comm, const absl::Status& local) {
  const int p = comm.size();
  const int32_t my_flag = local.ok() ? 0 : 1;
  std::vector<int32_t> flags(static_cast<size_t>(p), 0);
  absl::Status s = comm.AllGather(&my_flag, flags.data(), 1, CommType::kI32);
  if (!s.ok()) {
    // Without the exchange this rank only knows its own status; report both.
    if (local.ok()) return Annotate(s, "AgreeOnStatus");
    return absl::Status(local.code(), absl::StrCat("rank ", comm.rank(), ": ", local.message(),
                                                   " (AgreeOnStatus then failed: ", s.message(),
                                                   ")"));
  }
  std::vector<int> failed;
  for (int r = 0; r < p; ++r) {
    if (flags[static_cast<size_t>(r)] != 0) failed.push_back(r);
  }
  if (failed.empty()) return absl::OkStatus();
  const int root = failed.front();

  // The lowest failing rank sends its code and message. Long messages are cut: they travel to
  // every rank and end up in one log line.
  constexpr size_t kMaxMessage = 64 * 1024;
  std::string message;
  int32_t header[2] = {0, 0};  // code, message bytes
  if (comm.rank() == root) {
    message = std::string(local.message().substr(0, kMaxMessage));
    header[0] = static_cast<int32_t>(local.code());
    header[1] = static_cast<int32_t>(message.size());
  }
  LATTICE_RETURN_IF_ERROR(Annotate(comm.Broadcast(header, 2, CommType::kI32, root), "AgreeOnStatus"));
  if (header[1] < 0 || static_cast<size_t>(header[1]) > kMaxMessage) {
    return absl::DataLossError(absl::StrCat("AgreeOnStatus: rank ", root,
                                            " sent a message length of ", header[1]));
  }
  message.resize(static_cast<size_t>(header[1]));
  LATTICE_RETURN_IF_ERROR(Annotate(
      comm.Broadcast(message.data(), message.size(), CommType::kU8, root), "AgreeOnStatus"));

  std::string text = absl::StrCat("rank ", root, ": ", message);
  if (failed.size() > 1) {
    constexpr size_t kMaxListed = 16;
    std::vector<int> listed(failed.begin(),
                            failed.begin() + static_cast<long>(std::min(failed.size(), kMaxListed)));
    absl::StrAppend(&text, " (", failed.size(), " ranks failed: ", absl::StrJoin(listed, ", "),
                    failed.size() > kMaxListed ? ", ..." : "", ")");
  }
  auto code = static_cast<absl::StatusCode>(header[0]);
  if (code == absl::StatusCode::kOk) code = absl::StatusCode::kUnknown;
  return absl::Status(code, text);
}

void AbortWorld(Communicator& comm, const absl::Status& status) {
  std::fflush(stdout);
  std::fprintf(stderr, "lattice: rank %d: %s\n", comm.rank(),
               status.ok() ? "aborted without an error" : std::string(status.message()).c_str());
  std::fflush(stderr);
  comm.Abort(1);
  std::_Exit(1);  // unreachable: Abort is [[noreturn]], which GCC does not see through virtual calls
}

}  // namespace lattice
