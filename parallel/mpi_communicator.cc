#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "parallel/launch_env.h"
#include "parallel/watchdog.h"
#include "runtime/io/fault_injection.h"
#include "runtime/status.h"

#ifdef LATTICE_HAVE_MPI
// Only the C API: CMake links MPI::MPI_C, and the deprecated C++ bindings that mpi.h would
// otherwise declare need libmpi_cxx.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace lattice {

#ifdef LATTICE_HAVE_MPI

bool MpiCompiledIn() { return true; }

bool MpiRuntime::MpiIsActive() {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized != 0 && finalized == 0;
}

namespace {

absl::Status MpiError(int code, absl::string_view call) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) {
    std::snprintf(text, sizeof(text), "MPI error code %d", code);
  }
  return absl::UnavailableError(absl::StrCat(call, " failed: ", text));
}

#define LATTICE_MPI_CALL_(call)                                      \
  do {                                                               \
    const int lattice_mpi_rc_ = (call);                              \
    if (lattice_mpi_rc_ != MPI_SUCCESS) return MpiError(lattice_mpi_rc_, #call); \
  } while (0)

MPI_Datatype MpiType(CommType t) {
  switch (t) {
    case CommType::kF32: return MPI_FLOAT;
    case CommType::kI32: return MPI_INT32_T;
    case CommType::kU32: return MPI_UINT32_T;
    case CommType::kU8: return MPI_UINT8_T;
    // 16-bit types are only moved, never reduced, so their bits travel as u16.
    case CommType::kBF16:
    case CommType::kF16:
    case CommType::kU16: return MPI_UINT16_T;
  }
  return MPI_BYTE;
}

MPI_Op MpiOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
    case ReduceOp::kAvg: return MPI_SUM;  // MPI has no average: sum, then AverageOfSum
  }
  return MPI_OP_NULL;
}

// The average from the sum of `p` ranks' values. Communicator::CanReduce lets kAvg through only
// for f32 here; dividing (rather than multiplying by 1/p) rounds once, exactly for powers of two.
void AverageOfSum(void* buf, size_t count, CommType type, int p) {
  if (type != CommType::kF32 || p <= 1) return;
  float* v = static_cast<float*>(buf);
  const float d = static_cast<float>(p);
  for (size_t i = 0; i < count; ++i) v[i] /= d;
}

// MPI counts are int. Bigger buffers would need derived datatypes; gradient buckets and
// activations are far below 2^31 elements, so they are refused rather than silently split.
absl::StatusOr<int> MpiCount(size_t count) {
  if (count > static_cast<size_t>(INT_MAX)) {
    return absl::OutOfRangeError(absl::StrCat(
        count, " elements is more than MPI's int count allows (", INT_MAX,
        "): split the buffer"));
  }
  return static_cast<int>(count);
}

absl::Status CheckReceivedCount(const MPI_Status& st, CommType type, size_t expected) {
  int got = 0;
  MPI_Get_count(&st, MpiType(type), &got);
  if (got != static_cast<int>(expected)) {
    return absl::InvalidArgumentError(absl::StrCat("received a message of ", got,
                                                   " elements but expected ", expected));
  }
  return absl::OkStatus();
}

// ---- Waiting with a deadline (docs/hangs.md) --------------------------------------------------
//
// Every operation is issued in its non-blocking form and completed by WaitFor, which polls
// MPI_Test until the request completes or CommTimeout::seconds pass. When they do, the ranks that
// did not arrive are named by asking each peer, on a duplicate of the communicator that nothing
// else uses (the "side" communicator), how many operations it has issued there: a peer that is
// inside any lattice wait answers within one poll; a dead or stopped one never does.

// The first kSpinSeconds of a wait poll MPI_Test back to back, as MPI_Wait itself does (Open MPI
// busy-polls), so an operation that completes in that time costs what it cost before. Beyond it
// the wait is a peer that has not arrived (an all-reduce of a 100 MB gradient bucket takes about
// 10 ms over a 100 Gb/s link, and the tiny run's steps take 6 ms), and the poll sleeps between
// tests, from kMinSleepSeconds doubling up to kMaxSleepSeconds: at most 1 ms of added latency on a
// wait of more than 50 ms (2%), while a wait for a straggler stops burning a core.
constexpr double kSpinSeconds = 0.05;
constexpr double kMinSleepSeconds = 50e-6;
constexpr double kMaxSleepSeconds = 1e-3;
// After a timeout, how long the peers have to answer "how far did you get?". One that is inside
// a lattice wait answers within one poll sleep (1 ms) plus scheduling on an oversubscribed node
// (communicator_timeout_mpi_test with 4 ranks on 2 cores has all its answers 55 ms after the
// deadline, with 2 ranks 2 ms); one that is computing answers when it enters its
// next operation, which for lattice's steps is well under a second. Capped at the timeout.
constexpr double kAnswerGraceSeconds = 2;
// After printing its report, a rank waits this long before MPI_Abort: the other survivors of the
// same operation time out within milliseconds of it (they entered it within one step), and this
// lets each of them print its own report before the abort tears the job down.
constexpr double kReportSettleSeconds = 1;

// Tags on the side communicator.
constexpr int kQueryTag = 1;
constexpr int kAnswerTag = 2;

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// What an operation is, for the report; formatted only when one times out.
struct OpInfo {
  const char* op = "";  // "AllReduce", ...
  bool collective = true;
  CommType type = CommType::kU8;
  size_t count = 0;
  bool has_reduce = false;
  ReduceOp reduce = ReduceOp::kSum;
  int peer = -1;  // root of a broadcast, destination / source of point-to-point
  int tag = -1;
  int64_t seq = 0;  // per communicator: collectives and point-to-point counted apart
  bool no_buffer = false;  // a barrier

  std::string ToString() const {
    std::string s = absl::StrCat(op, "(");
    if (has_reduce) absl::StrAppend(&s, ReduceOpName(reduce), ", ");
    if (!no_buffer) absl::StrAppend(&s, CommTypeName(type), " x ", count);
    absl::StrAppend(&s, ")");
    if (peer >= 0) {
      absl::StrAppend(&s, collective ? " from root " : (std::string(op) == "Recv" ? " from " : " to "),
                      peer);
    }
    if (tag >= 0) absl::StrAppend(&s, " tag ", tag);
    absl::StrAppend(&s, collective ? " collective #" : " point-to-point #", seq);
    return s;
  }
};

// What a communicator shares with its Works (which may outlive it).
struct CommState {
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Comm side = MPI_COMM_NULL;  // queries and answers about this communicator's progress
  int rank = 0;
  int size = 1;
  int world_rank = 0;
  std::vector<int> world_ranks;  // world rank of each rank of this group
  std::string name = "world";
  int64_t collectives = 0;       // collectives issued here
  int64_t point_to_point = 0;    // sends and receives issued here
  // After a timeout that returned (CommTimeout::abort false): the reason, and the requests that
  // never completed (a collective's request cannot be freed; MPI completes it if the peers ever
  // join, and MPI_Comm_free defers the release until then).
  std::string poisoned;
  std::vector<MPI_Request> abandoned;
  std::vector<std::vector<uint8_t>> abandoned_scratch;
};

// The answer to a query: fixed size, sent as bytes between copies of the same binary.
struct Answer {
  int64_t collectives = 0;
  int64_t point_to_point = 0;
  int32_t world_rank = -1;
  int32_t waiting = 0;  // 1: inside a wait of some communicator
  double waiting_seconds = 0;
  char waiting_in[200] = {};  // "AllReduce(sum, f32 x 10) collective #4 on dp"
};

// The communicators of this process that can be asked about (their side communicators), and what
// the waiting thread is waiting for. Only the thread that drives MPI (THREAD_FUNNELED) touches
// them; the mutex only keeps a stray second thread from corrupting the list.
struct Registry {
  std::mutex mu;
  std::vector<CommState*> states;
  const CommState* waiting_state = nullptr;
  const OpInfo* waiting_op = nullptr;
  Clock::time_point waiting_since;
  // Payloads of timeout queries: a query to a dead peer is never received, so its buffer is
  // never released (kept reachable here rather than leaked anonymously).
  std::vector<std::unique_ptr<int64_t[]>> query_buffers;
};

Registry& Reg() {
  static Registry* const r = new Registry();  // leaked: Works may wait during static destruction
  return *r;
}

void Register(CommState* st) {
  std::lock_guard<std::mutex> lock(Reg().mu);
  Reg().states.push_back(st);
}

void Unregister(CommState* st) {
  std::lock_guard<std::mutex> lock(Reg().mu);
  auto& v = Reg().states;
  v.erase(std::remove(v.begin(), v.end(), st), v.end());
}

// Marks the thread as waiting in `op` of `st` for as long as it lives.
class WaitingScope {
 public:
  WaitingScope(const CommState* st, const OpInfo* op, Clock::time_point since) {
    Registry& r = Reg();
    prev_state_ = r.waiting_state;
    prev_op_ = r.waiting_op;
    prev_since_ = r.waiting_since;
    r.waiting_state = st;
    r.waiting_op = op;
    r.waiting_since = since;
  }
  ~WaitingScope() {
    Registry& r = Reg();
    r.waiting_state = prev_state_;
    r.waiting_op = prev_op_;
    r.waiting_since = prev_since_;
  }

 private:
  const CommState* prev_state_;
  const OpInfo* prev_op_;
  Clock::time_point prev_since_;
};

// Answers every query pending on any registered communicator. The answer is small enough for
// every MPI's eager protocol (Open MPI's shared-memory and TCP eager limits are 4 KB and 64 KB),
// so MPI_Send returns at once even if the asker has gone.
void AnswerQueries() {
  Registry& r = Reg();
  std::vector<CommState*> states;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    states = r.states;
  }
  for (CommState* st : states) {
    for (;;) {
      int flag = 0;
      MPI_Status status;
      if (MPI_Iprobe(MPI_ANY_SOURCE, kQueryTag, st->side, &flag, &status) != MPI_SUCCESS ||
          flag == 0) {
        break;
      }
      int64_t query[2] = {0, 0};
      if (MPI_Recv(query, 2, MPI_INT64_T, status.MPI_SOURCE, kQueryTag, st->side,
                   MPI_STATUS_IGNORE) != MPI_SUCCESS) {
        break;
      }
      Answer a;
      a.collectives = st->collectives;
      a.point_to_point = st->point_to_point;
      a.world_rank = st->world_rank;
      if (r.waiting_state != nullptr && r.waiting_op != nullptr) {
        a.waiting = 1;
        a.waiting_seconds = SecondsSince(r.waiting_since);
        const std::string what =
            absl::StrCat(r.waiting_op->ToString(), " on ", r.waiting_state->name);
        std::snprintf(a.waiting_in, sizeof(a.waiting_in), "%s", what.c_str());
      }
      (void)MPI_Send(&a, sizeof(a), MPI_BYTE, status.MPI_SOURCE, kAnswerTag, st->side);
    }
  }
}

void SleepSeconds(double s) {
  std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

std::string RankName(const CommState& st, int r) {
  const int world = st.world_ranks.empty() ? r : st.world_ranks[static_cast<size_t>(r)];
  if (st.name == "world") return absl::StrCat("world rank ", world);
  return absl::StrCat("world rank ", world, " (", st.name, " rank ", r, ")");
}

// Asks the peers of a timed-out operation how far they got and says which did not arrive.
std::string DiagnoseTimeout(CommState& st, const OpInfo& op, double timeout_seconds) {
  std::vector<int> peers;
  if (op.collective) {
    for (int r = 0; r < st.size; ++r) {
      if (r != st.rank) peers.push_back(r);
    }
  } else {
    peers.push_back(op.peer);
  }
  if (st.side == MPI_COMM_NULL) return "the communicator was freed while a Work waited on it";
  // The query payload must outlive sends to peers that never receive them (a timeout happens
  // once per process, or once per test case).
  int64_t* query = nullptr;
  {
    std::lock_guard<std::mutex> lock(Reg().mu);
    Reg().query_buffers.push_back(
        std::unique_ptr<int64_t[]>(new int64_t[2]{op.seq, op.collective ? 1 : 0}));
    query = Reg().query_buffers.back().get();
  }
  std::vector<MPI_Request> sends(peers.size(), MPI_REQUEST_NULL);
  std::vector<MPI_Request> recvs(peers.size(), MPI_REQUEST_NULL);
  std::vector<Answer> answers(peers.size());
  std::vector<bool> answered(peers.size(), false);
  for (size_t i = 0; i < peers.size(); ++i) {
    (void)MPI_Isend(query, 2, MPI_INT64_T, peers[i], kQueryTag, st.side, &sends[i]);
    (void)MPI_Irecv(&answers[i], sizeof(Answer), MPI_BYTE, peers[i], kAnswerTag, st.side,
                    &recvs[i]);
  }
  const double grace = std::min(kAnswerGraceSeconds, timeout_seconds);
  const Clock::time_point start = Clock::now();
  size_t pending = peers.size();
  while (pending > 0 && SecondsSince(start) < grace) {
    AnswerQueries();  // the other survivors are asking us the same thing
    for (size_t i = 0; i < peers.size(); ++i) {
      if (answered[i]) continue;
      int done = 0;
      if (MPI_Test(&recvs[i], &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done != 0) {
        answered[i] = true;
        --pending;
      }
    }
    if (pending > 0) SleepSeconds(kMaxSleepSeconds);
  }
  for (size_t i = 0; i < peers.size(); ++i) {
    if (!answered[i]) {
      // Receives can be cancelled; the sends are let go (their buffer is leaked above).
      (void)MPI_Cancel(&recvs[i]);
      (void)MPI_Wait(&recvs[i], MPI_STATUS_IGNORE);
    }
    if (sends[i] != MPI_REQUEST_NULL) (void)MPI_Request_free(&sends[i]);
  }

  std::vector<std::string> missing, arrived;
  for (size_t i = 0; i < peers.size(); ++i) {
    const std::string who = RankName(st, peers[i]);
    if (!answered[i]) {
      missing.push_back(absl::StrCat(who, " did not answer within ", grace,
                                     " s (dead, stopped, or busy outside any communication)"));
      continue;
    }
    const Answer& a = answers[i];
    const std::string where =
        a.waiting != 0 ? absl::StrCat("waiting for ", absl::SixDigits(a.waiting_seconds),
                                      " s in ", std::string(a.waiting_in,
                                                            strnlen(a.waiting_in, sizeof(a.waiting_in))))
                       : std::string("not waiting in any communication");
    if (op.collective && a.collectives <= op.seq) {
      missing.push_back(absl::StrCat(who, " has issued only ", a.collectives,
                                     " collectives on ", st.name, ", now ", where));
    } else if (!op.collective) {
      missing.push_back(absl::StrCat(who, " (the peer) has issued ", a.point_to_point,
                                     " point-to-point operations on ", st.name, ", now ", where));
    } else {
      arrived.push_back(absl::StrCat(st.world_ranks.empty() ? peers[i]
                                                            : st.world_ranks[static_cast<size_t>(peers[i])]));
    }
  }
  std::string text = absl::StrCat(
      "communicator timeout: ", op.ToString(), " on ", st.name, " (rank ", st.rank, " of ",
      st.size, ", world rank ", st.world_rank, ") did not complete within ", timeout_seconds,
      " s (parallel.timeout_seconds / LATTICE_COMM_TIMEOUT_S); ");
  if (missing.empty()) {
    absl::StrAppend(&text, "every peer answered that it arrived (an MPI transport failure?)");
  } else {
    absl::StrAppend(&text, "not arrived: ", absl::StrJoin(missing, "; "));
  }
  if (!arrived.empty()) {
    absl::StrAppend(&text, "; arrived: world ranks ", absl::StrJoin(arrived, ", "));
  }
  return text;
}

// Completes `*req` within the deadline. On time out: kDeadlineExceeded with the report when
// CommTimeout::abort is false, else the report is printed and the job aborted.
absl::Status WaitFor(CommState& st, MPI_Request* req, MPI_Status* status, const OpInfo& op,
                     const CommTimeout& timeout) {
  int done = 0;
  const Clock::time_point start = Clock::now();
  // Fast path: as MPI_Wait would.
  for (;;) {
    const int rc = MPI_Test(req, &done, status);
    if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Test");
    if (done != 0) return absl::OkStatus();
    if (SecondsSince(start) >= kSpinSeconds) break;
  }
  WaitingScope waiting(&st, &op, start);
  double sleep = kMinSleepSeconds;
  for (;;) {
    AnswerQueries();
    SleepSeconds(sleep);
    sleep = std::min(2 * sleep, kMaxSleepSeconds);
    const int rc = MPI_Test(req, &done, status);
    if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Test");
    if (done != 0) return absl::OkStatus();
    if (SecondsSince(start) >= timeout.seconds) break;
  }
  const std::string report = DiagnoseTimeout(st, op, timeout.seconds);
  if (timeout.abort) {
    std::fflush(stdout);
    std::fprintf(stderr, "lattice: rank %d: %s; aborting the job (exit code %d)\n",
                 st.world_rank, report.c_str(), kCommTimeoutExitCode);
    std::fflush(stderr);
    ArmAbortWatchdog(timeout.abort_watchdog_seconds + kReportSettleSeconds,
                     absl::StrCat("rank ", st.world_rank, ": MPI_Abort after a communicator timeout"));
    // Still answering: a survivor that timed out a little later asks us too, and must hear that
    // we arrived rather than take our silence for death.
    const Clock::time_point settle = Clock::now();
    while (SecondsSince(settle) < kReportSettleSeconds) {
      AnswerQueries();
      SleepSeconds(kMaxSleepSeconds);
    }
    if (AnyFaultInjected() && FaultInjected("abort_hang", st.world_rank, FaultInjectionStep())) {
      // The test hook of tests/cluster/hang_test.py: an abort that never ends, for the watchdog.
      std::fprintf(stderr, "lattice: LATTICE_FAULT_INJECT: rank %d hangs instead of MPI_Abort\n",
                   st.world_rank);
      std::fflush(stderr);
      for (;;) SleepSeconds(1);
    }
    MPI_Abort(MPI_COMM_WORLD, kCommTimeoutExitCode);
    std::_Exit(kCommTimeoutExitCode);
  }
  st.poisoned = report;
  st.abandoned.push_back(*req);
  *req = MPI_REQUEST_NULL;
  return absl::DeadlineExceededError(report);
}

// One MPI request, plus what to do once it has completed (check a received count, copy out of
// a scratch buffer the operation needed).
class MpiWork final : public Work {
 public:
  using Finish = std::function<absl::Status(const MPI_Status&)>;

  MpiWork(std::shared_ptr<CommState> state, const OpInfo& op, const CommTimeout& timeout,
          MPI_Request request, Finish finish, std::vector<uint8_t> scratch)
      : state_(std::move(state)),
        op_(op),
        timeout_(timeout),
        request_(request),
        finish_(std::move(finish)),
        scratch_(std::move(scratch)) {}
  ~MpiWork() override {
    // Never free buffers under a running operation; after MPI_Finalize nothing is running.
    if (!done_ && MpiRuntime::MpiIsActive()) (void)Wait();
  }

  absl::Status Wait() override {
    if (done_) return status_;
    done_ = true;
    MPI_Status st;
    status_ = WaitFor(*state_, &request_, &st, op_, timeout_);
    if (status_.ok() && finish_) status_ = finish_(st);
    finish_ = nullptr;
    if (absl::IsDeadlineExceeded(status_)) {
      // Timed out (and returned): the scratch buffer stays MPI's as long as the state lives.
      state_->abandoned_scratch.push_back(std::move(scratch_));
    }
    scratch_.clear();
    scratch_.shrink_to_fit();
    return status_;
  }

 private:
  std::shared_ptr<CommState> state_;
  OpInfo op_;
  CommTimeout timeout_;
  MPI_Request request_;
  Finish finish_;
  std::vector<uint8_t> scratch_;
  bool done_ = false;
  absl::Status status_;
};

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm`. A collective over it (the side communicator is a duplicate).
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> Create(MPI_Comm comm) {
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    auto st = std::make_shared<CommState>();
    st->comm = comm;
    MPI_Comm_rank(comm, &st->rank);
    MPI_Comm_size(comm, &st->size);
    MPI_Comm_rank(MPI_COMM_WORLD, &st->world_rank);
    MPI_Group group = MPI_GROUP_NULL, world_group = MPI_GROUP_NULL;
    std::vector<int> ranks(static_cast<size_t>(st->size));
    std::iota(ranks.begin(), ranks.end(), 0);
    st->world_ranks.assign(ranks.size(), -1);
    if (MPI_Comm_group(comm, &group) == MPI_SUCCESS &&
        MPI_Comm_group(MPI_COMM_WORLD, &world_group) == MPI_SUCCESS) {
      MPI_Group_translate_ranks(group, st->size, ranks.data(), world_group,
                                st->world_ranks.data());
    }
    if (group != MPI_GROUP_NULL) MPI_Group_free(&group);
    if (world_group != MPI_GROUP_NULL) MPI_Group_free(&world_group);
    const int rc = MPI_Comm_dup(comm, &st->side);
    if (rc != MPI_SUCCESS) {
      MPI_Comm_free(&st->comm);
      return MpiError(rc, "MPI_Comm_dup (the side communicator of timeout reports)");
    }
    MPI_Comm_set_errhandler(st->side, MPI_ERRORS_RETURN);
    Register(st.get());
    return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(std::move(st)));
  }

  ~MpiCommunicator() override {
    Unregister(state_.get());
    if (MpiRuntime::MpiIsActive()) {
      MPI_Comm_free(&state_->side);
      MPI_Comm_free(&state_->comm);
    }
  }

  void NameChanged() override { state_->name = name(); }

  int rank() const override { return state_->rank; }
  int size() const override { return state_->size; }
  absl::string_view kind() const override { return "mpi"; }
  DeviceType buffer_device() const override { return DeviceType::kCpu; }

  [[noreturn]] void Abort(int exit_code) override {
    std::fflush(stdout);
    std::fflush(stderr);
    ArmAbortWatchdog(timeout().abort_watchdog_seconds,
                     absl::StrCat("rank ", state_->world_rank, ": MPI_Abort"));
    // MPI_COMM_WORLD, not comm_: a failing rank must take down the whole job, not one group.
    if (MpiRuntime::MpiIsActive()) MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);
  }

 protected:
  absl::Status DoAllReduce(void* buf, size_t count, CommType type, ReduceOp op) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    OpInfo info = Collective("AllReduce", type, count);
    info.has_reduce = true;
    info.reduce = op;
    LATTICE_RETURN_IF_ERROR(Usable());
    MPI_Request req;
    LATTICE_MPI_CALL_(
        MPI_Iallreduce(MPI_IN_PLACE, buf, n, MpiType(type), MpiOp(op), comm(), &req));
    LATTICE_RETURN_IF_ERROR(Complete(&req, info));
    if (op == ReduceOp::kAvg) AverageOfSum(buf, count, type, size());
    return absl::OkStatus();
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
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    OpInfo info = Collective("Broadcast", type, count);
    info.peer = root;
    LATTICE_RETURN_IF_ERROR(Usable());
    MPI_Request req;
    LATTICE_MPI_CALL_(MPI_Ibcast(buf, n, MpiType(type), root, comm(), &req));
    return Complete(&req, info);
  }

  absl::Status DoBarrier() override { return TimedBarrier("Barrier"); }

  absl::Status DoSend(const void* buf, size_t count, CommType type, int dst, int tag) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    OpInfo info = PointToPoint("Send", type, count, dst, tag);
    LATTICE_RETURN_IF_ERROR(Usable());
    MPI_Request req;
    LATTICE_MPI_CALL_(MPI_Isend(buf, n, MpiType(type), dst, tag, comm(), &req));
    return Complete(&req, info);
  }

  absl::Status DoRecv(void* buf, size_t count, CommType type, int src, int tag) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    OpInfo info = PointToPoint("Recv", type, count, src, tag);
    LATTICE_RETURN_IF_ERROR(Usable());
    MPI_Request req;
    LATTICE_MPI_CALL_(MPI_Irecv(buf, n, MpiType(type), src, tag, comm(), &req));
    MPI_Status st;
    LATTICE_RETURN_IF_ERROR(Complete(&req, info, &st));
    return CheckReceivedCount(st, type, count);
  }

  absl::StatusOr<std::unique_ptr<Work>> DoIAllReduce(void* buf, size_t count, CommType type,
                                                     ReduceOp op) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    OpInfo info = Collective("IAllReduce", type, count);
    info.has_reduce = true;
    info.reduce = op;
    LATTICE_RETURN_IF_ERROR(Usable());
    MPI_Request req;
    LATTICE_MPI_CALL_(
        MPI_Iallreduce(MPI_IN_PLACE, buf, n, MpiType(type), MpiOp(op), comm(), &req));
    if (op != ReduceOp::kAvg) return MakeWork(req, info);
    MaybeStopInside(info);
    const int p = size();
    return std::unique_ptr<Work>(std::make_unique<MpiWork>(
        state_, info, timeout(), req,
        [buf, count, type, p](const MPI_Status&) {
          AverageOfSum(buf, count, type, p);
          return absl::OkStatus();
        },
        std::vector<uint8_t>()));
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
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    OpInfo info = Collective("IBroadcast", type, count);
    info.peer = root;
    LATTICE_RETURN_IF_ERROR(Usable());
    MPI_Request req;
    LATTICE_MPI_CALL_(MPI_Ibcast(buf, n, MpiType(type), root, comm(), &req));
    return MakeWork(req, info);
  }

  absl::StatusOr<std::unique_ptr<Work>> DoISend(const void* buf, size_t count, CommType type,
                                                int dst, int tag) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    OpInfo info = PointToPoint("ISend", type, count, dst, tag);
    LATTICE_RETURN_IF_ERROR(Usable());
    MPI_Request req;
    LATTICE_MPI_CALL_(MPI_Isend(buf, n, MpiType(type), dst, tag, comm(), &req));
    return MakeWork(req, info);
  }

  absl::StatusOr<std::unique_ptr<Work>> DoIRecv(void* buf, size_t count, CommType type, int src,
                                                int tag) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    OpInfo info = PointToPoint("IRecv", type, count, src, tag);
    LATTICE_RETURN_IF_ERROR(Usable());
    MPI_Request req;
    LATTICE_MPI_CALL_(MPI_Irecv(buf, n, MpiType(type), src, tag, comm(), &req));
    return std::unique_ptr<Work>(std::make_unique<MpiWork>(
        state_, info, timeout(), req,
        [type, count](const MPI_Status& st) { return CheckReceivedCount(st, type, count); },
        std::vector<uint8_t>()));
  }

  // MPI_Comm_split has no non-blocking form: a timed barrier first names a rank that never
  // arrives, so only a rank that dies between the two can hang the split.
  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(int color, int key) override {
    LATTICE_RETURN_IF_ERROR(TimedBarrier("Split"));
    MPI_Comm out = MPI_COMM_NULL;
    LATTICE_MPI_CALL_(
        MPI_Comm_split(comm(), color == kNoColor ? MPI_UNDEFINED : color, key, &out));
    if (out == MPI_COMM_NULL) return std::unique_ptr<Communicator>();
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<MpiCommunicator> c, Create(out));
    return std::unique_ptr<Communicator>(std::move(c));
  }

  absl::StatusOr<std::unique_ptr<Communicator>> DoSplitByNode() override {
    LATTICE_RETURN_IF_ERROR(TimedBarrier("SplitByNode"));
    MPI_Comm out = MPI_COMM_NULL;
    LATTICE_MPI_CALL_(
        MPI_Comm_split_type(comm(), MPI_COMM_TYPE_SHARED, rank(), MPI_INFO_NULL, &out));
    if (out == MPI_COMM_NULL) {
      return absl::InternalError("MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) returned no group");
    }
    LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<MpiCommunicator> c, Create(out));
    return std::unique_ptr<Communicator>(std::move(c));
  }

 private:
  explicit MpiCommunicator(std::shared_ptr<CommState> state) : state_(std::move(state)) {}

  MPI_Comm comm() const { return state_->comm; }

  OpInfo Collective(const char* name, CommType type, size_t count) {
    OpInfo info;
    info.op = name;
    info.type = type;
    info.count = count;
    info.seq = state_->collectives++;
    return info;
  }
  OpInfo PointToPoint(const char* name, CommType type, size_t count, int peer, int tag) {
    OpInfo info;
    info.op = name;
    info.collective = false;
    info.type = type;
    info.count = count;
    info.peer = peer;
    info.tag = tag;
    info.seq = state_->point_to_point++;
    return info;
  }

  // A communicator whose operation timed out (and returned) refuses every later one.
  absl::Status Usable() const {
    if (state_->poisoned.empty()) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "communicator ", state_->name, " is unusable after an earlier timeout: ",
        state_->poisoned));
  }

  // The test hook of tests/cluster/hang_test.py: this rank stops inside a collective it issued.
  void MaybeStopInside(const OpInfo& info) const {
    if (!AnyFaultInjected() || !info.collective) return;
    MaybeInjectStop("collective_stop", state_->world_rank, FaultInjectionStep());
  }

  absl::Status Complete(MPI_Request* req, const OpInfo& info, MPI_Status* st = nullptr) {
    MaybeStopInside(info);
    MPI_Status ignored;
    return WaitFor(*state_, req, st != nullptr ? st : &ignored, info, timeout());
  }

  std::unique_ptr<Work> MakeWork(MPI_Request req, const OpInfo& info) {
    MaybeStopInside(info);
    return std::make_unique<MpiWork>(state_, info, timeout(), req, nullptr,
                                     std::vector<uint8_t>());
  }

  absl::Status TimedBarrier(const char* name) {
    OpInfo info;
    info.op = name;
    info.no_buffer = true;
    info.seq = state_->collectives++;
    LATTICE_RETURN_IF_ERROR(Usable());
    MPI_Request req;
    LATTICE_MPI_CALL_(MPI_Ibarrier(comm(), &req));
    return Complete(&req, info);
  }

  absl::StatusOr<std::unique_ptr<Work>> IssueReduceScatter(const char* name, const void* send,
                                                           void* recv, size_t recv_count,
                                                           CommType type, ReduceOp op) {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(recv_count));
    OpInfo info = Collective(name, type, recv_count);
    info.has_reduce = true;
    info.reduce = op;
    LATTICE_RETURN_IF_ERROR(Usable());
    MPI_Request req;
    const int p = size();
    if (!AliasesOwnChunk(send, recv, recv_count, type)) {
      LATTICE_MPI_CALL_(
          MPI_Ireduce_scatter_block(send, recv, n, MpiType(type), MpiOp(op), comm(), &req));
      if (op != ReduceOp::kAvg) return MakeWork(req, info);
      MaybeStopInside(info);
      return std::unique_ptr<Work>(std::make_unique<MpiWork>(
          state_, info, timeout(), req,
          [recv, recv_count, type, p](const MPI_Status&) {
            AverageOfSum(recv, recv_count, type, p);
            return absl::OkStatus();
          },
          std::vector<uint8_t>()));
    }
    // MPI has no in-place form that leaves the result at this rank's own chunk (MPI_IN_PLACE
    // puts it at the start of the buffer and clobbers chunk 0), so reduce into scratch owned by
    // the Work and copied out at Wait.
    const size_t bytes = recv_count * CommTypeSize(type);
    std::vector<uint8_t> scratch(bytes);
    uint8_t* tmp = scratch.data();
    LATTICE_MPI_CALL_(
        MPI_Ireduce_scatter_block(send, tmp, n, MpiType(type), MpiOp(op), comm(), &req));
    MaybeStopInside(info);
    // The vector's heap block moves with it into the Work, so `tmp` stays valid.
    return std::unique_ptr<Work>(std::make_unique<MpiWork>(
        state_, info, timeout(), req,
        [recv, tmp, bytes, recv_count, type, p, avg = op == ReduceOp::kAvg](const MPI_Status&) {
          if (bytes > 0) std::memcpy(recv, tmp, bytes);
          if (avg) AverageOfSum(recv, recv_count, type, p);
          return absl::OkStatus();
        },
        std::move(scratch)));
  }

  absl::StatusOr<std::unique_ptr<Work>> IssueAllGather(const char* name, const void* send,
                                                       void* recv, size_t send_count,
                                                       CommType type) {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(send_count));
    LATTICE_ASSIGN_OR_RETURN(int total, MpiCount(send_count * static_cast<size_t>(size())));
    (void)total;
    OpInfo info = Collective(name, type, send_count);
    LATTICE_RETURN_IF_ERROR(Usable());
    const void* src = IsOwnGatherChunk(send, recv, send_count, type) ? MPI_IN_PLACE : send;
    MPI_Request req;
    LATTICE_MPI_CALL_(
        MPI_Iallgather(src, n, MpiType(type), recv, n, MpiType(type), comm(), &req));
    return MakeWork(req, info);
  }

  bool AliasesOwnChunk(const void* send, const void* recv, size_t recv_count,
                       CommType type) const {
    return recv == static_cast<const uint8_t*>(send) +
                       static_cast<size_t>(rank()) * recv_count * CommTypeSize(type);
  }
  bool IsOwnGatherChunk(const void* send, const void* recv, size_t send_count,
                        CommType type) const {
    return send == static_cast<const uint8_t*>(recv) +
                       static_cast<size_t>(rank()) * send_count * CommTypeSize(type);
  }

  std::shared_ptr<CommState> state_;
};

#undef LATTICE_MPI_CALL_

}  // namespace

absl::StatusOr<std::unique_ptr<MpiRuntime>> MpiRuntime::Initialize(int* argc, char*** argv,
                                                                   Mode mode) {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized != 0) {
    return absl::FailedPreconditionError("MpiRuntime: MPI was already finalised in this process");
  }
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized != 0) {
    int provided = MPI_THREAD_SINGLE;
    MPI_Query_thread(&provided);
    if (provided < MPI_THREAD_FUNNELED) {
      return absl::FailedPreconditionError(absl::StrCat(
          "MpiRuntime: MPI was initialised elsewhere with thread level ", provided,
          ", below MPI_THREAD_FUNNELED"));
    }
    return std::unique_ptr<MpiRuntime>(new MpiRuntime(/*owns=*/false));
  }
  if (mode == Mode::kIfLaunched) {
    LATTICE_ASSIGN_OR_RETURN(LaunchEnv env, ReadLaunchEnv());
    if (!env.launched()) return std::unique_ptr<MpiRuntime>(new MpiRuntime(/*owns=*/false));
  }
  int provided = MPI_THREAD_SINGLE;
  const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Init_thread");
  auto runtime = std::unique_ptr<MpiRuntime>(new MpiRuntime(/*owns=*/true));
  if (provided < MPI_THREAD_FUNNELED) {
    return absl::FailedPreconditionError(absl::StrCat(
        "MpiRuntime: MPI provides thread level ", provided, ", below MPI_THREAD_FUNNELED"));
  }
  return runtime;
}

MpiRuntime::~MpiRuntime() {
  if (owns_ && MpiIsActive()) MPI_Finalize();
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateMpiWorldCommunicator() {
  if (!MpiRuntime::MpiIsActive()) {
    return absl::FailedPreconditionError(
        "MPI is not initialised (or already finalised): create an MpiRuntime in main() first");
  }
  // The timeout first, so that a bad LATTICE_COMM_TIMEOUT_S is refused before any collective.
  LATTICE_ASSIGN_OR_RETURN(CommTimeout timeout, ApplyCommTimeoutEnv(CommTimeout()));
  MPI_Comm dup = MPI_COMM_NULL;
  const int rc = MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Comm_dup(MPI_COMM_WORLD)");
  LATTICE_ASSIGN_OR_RETURN(std::unique_ptr<MpiCommunicator> world, MpiCommunicator::Create(dup));
  world->set_name("world");
  world->set_timeout(timeout);
  return std::unique_ptr<Communicator>(std::move(world));
}

#else  // !LATTICE_HAVE_MPI

bool MpiCompiledIn() { return false; }

bool MpiRuntime::MpiIsActive() { return false; }

absl::StatusOr<std::unique_ptr<MpiRuntime>> MpiRuntime::Initialize(int*, char***, Mode mode) {
  if (mode == Mode::kAlways) {
    return absl::FailedPreconditionError(
        "MpiRuntime: lattice was built without MPI (CMake found none); install an MPI "
        "(libopenmpi-dev) and reconfigure");
  }
  LATTICE_ASSIGN_OR_RETURN(LaunchEnv env, ReadLaunchEnv());
  if (env.launched() && env.size != 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "MpiRuntime: launched by ", LauncherName(env.launcher), " (", env.ToString(),
        ") but lattice was built without MPI; install an MPI (libopenmpi-dev) and reconfigure"));
  }
  return std::unique_ptr<MpiRuntime>(new MpiRuntime(/*owns=*/false));
}

MpiRuntime::~MpiRuntime() = default;

absl::StatusOr<std::unique_ptr<Communicator>> CreateMpiWorldCommunicator() {
  return absl::UnimplementedError("lattice was built without MPI");
}

#endif  // LATTICE_HAVE_MPI

bool MpiRuntime::active() const { return MpiIsActive(); }

absl::StatusOr<std::unique_ptr<Communicator>> CreateWorldCommunicator() {
  if (MpiRuntime::MpiIsActive()) return CreateMpiWorldCommunicator();
  LATTICE_ASSIGN_OR_RETURN(LaunchEnv env, ReadLaunchEnv());
  if (env.launched() && (MpiCompiledIn() || env.size != 1)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "launched by ", LauncherName(env.launcher), " (", env.ToString(),
        ") but MPI is not initialised: main() must create an MpiRuntime before the world "
        "communicator"));
  }
  return std::unique_ptr<Communicator>(std::make_unique<SelfCommunicator>());
}

}  // namespace lattice
