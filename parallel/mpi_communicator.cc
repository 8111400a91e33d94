#include "parallel/mpi_communicator.h"

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/launch_env.h"
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
  }
  return MPI_OP_NULL;
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

// One MPI request, plus what to do once it has completed (check a received count, copy out of
// a scratch buffer the operation needed).
class MpiWork final : public Work {
 public:
  using Finish = std::function<absl::Status(const MPI_Status&)>;

  MpiWork(MPI_Request request, Finish finish, std::vector<uint8_t> scratch)
      : request_(request), finish_(std::move(finish)), scratch_(std::move(scratch)) {}
  ~MpiWork() override {
    // Never free buffers under a running operation; after MPI_Finalize nothing is running.
    if (!done_ && MpiRuntime::MpiIsActive()) (void)Wait();
  }

  absl::Status Wait() override {
    if (done_) return status_;
    done_ = true;
    MPI_Status st;
    const int rc = MPI_Wait(&request_, &st);
    if (rc != MPI_SUCCESS) {
      status_ = MpiError(rc, "MPI_Wait");
    } else if (finish_) {
      status_ = finish_(st);
    }
    finish_ = nullptr;
    scratch_.clear();
    scratch_.shrink_to_fit();
    return status_;
  }

  uint8_t* scratch() { return scratch_.data(); }

 private:
  MPI_Request request_;
  Finish finish_;
  std::vector<uint8_t> scratch_;
  bool done_ = false;
  absl::Status status_;
};

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm`.
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm) {
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    if (MpiRuntime::MpiIsActive()) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::string_view kind() const override { return "mpi"; }
  DeviceType buffer_device() const override { return DeviceType::kCpu; }

  [[noreturn]] void Abort(int exit_code) override {
    std::fflush(stdout);
    std::fflush(stderr);
    // MPI_COMM_WORLD, not comm_: a failing rank must take down the whole job, not one group.
    if (MpiRuntime::MpiIsActive()) MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);
  }

 protected:
  absl::Status DoAllReduce(void* buf, size_t count, CommType type, ReduceOp op) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    LATTICE_MPI_CALL_(MPI_Allreduce(MPI_IN_PLACE, buf, n, MpiType(type), MpiOp(op), comm_));
    return absl::OkStatus();
  }

  absl::Status DoReduceScatter(const void* send, void* recv, size_t recv_count, CommType type,
                               ReduceOp op) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(recv_count));
    if (!AliasesOwnChunk(send, recv, recv_count, type)) {
      LATTICE_MPI_CALL_(
          MPI_Reduce_scatter_block(send, recv, n, MpiType(type), MpiOp(op), comm_));
      return absl::OkStatus();
    }
    // MPI has no in-place form that leaves the result at this rank's own chunk (MPI_IN_PLACE
    // puts it at the start of the buffer and clobbers chunk 0), so reduce into scratch.
    std::vector<uint8_t> scratch(recv_count * CommTypeSize(type));
    LATTICE_MPI_CALL_(
        MPI_Reduce_scatter_block(send, scratch.data(), n, MpiType(type), MpiOp(op), comm_));
    if (!scratch.empty()) std::memcpy(recv, scratch.data(), scratch.size());
    return absl::OkStatus();
  }

  absl::Status DoAllGather(const void* send, void* recv, size_t send_count,
                           CommType type) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(send_count));
    LATTICE_ASSIGN_OR_RETURN(int total, MpiCount(send_count * static_cast<size_t>(size_)));
    (void)total;
    const void* src = IsOwnGatherChunk(send, recv, send_count, type) ? MPI_IN_PLACE : send;
    LATTICE_MPI_CALL_(MPI_Allgather(src, n, MpiType(type), recv, n, MpiType(type), comm_));
    return absl::OkStatus();
  }

  absl::Status DoBroadcast(void* buf, size_t count, CommType type, int root) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    LATTICE_MPI_CALL_(MPI_Bcast(buf, n, MpiType(type), root, comm_));
    return absl::OkStatus();
  }

  absl::Status DoBarrier() override {
    LATTICE_MPI_CALL_(MPI_Barrier(comm_));
    return absl::OkStatus();
  }

  absl::Status DoSend(const void* buf, size_t count, CommType type, int dst, int tag) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    LATTICE_MPI_CALL_(MPI_Send(buf, n, MpiType(type), dst, tag, comm_));
    return absl::OkStatus();
  }

  absl::Status DoRecv(void* buf, size_t count, CommType type, int src, int tag) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    MPI_Status st;
    LATTICE_MPI_CALL_(MPI_Recv(buf, n, MpiType(type), src, tag, comm_, &st));
    return CheckReceivedCount(st, type, count);
  }

  absl::StatusOr<std::unique_ptr<Work>> DoIAllReduce(void* buf, size_t count, CommType type,
                                                     ReduceOp op) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    MPI_Request req;
    LATTICE_MPI_CALL_(
        MPI_Iallreduce(MPI_IN_PLACE, buf, n, MpiType(type), MpiOp(op), comm_, &req));
    return MakeWork(req);
  }

  absl::StatusOr<std::unique_ptr<Work>> DoIReduceScatter(const void* send, void* recv,
                                                         size_t recv_count, CommType type,
                                                         ReduceOp op) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(recv_count));
    MPI_Request req;
    if (!AliasesOwnChunk(send, recv, recv_count, type)) {
      LATTICE_MPI_CALL_(
          MPI_Ireduce_scatter_block(send, recv, n, MpiType(type), MpiOp(op), comm_, &req));
      return MakeWork(req);
    }
    // As in DoReduceScatter, through scratch owned by the Work and copied out at Wait.
    const size_t bytes = recv_count * CommTypeSize(type);
    std::vector<uint8_t> scratch(bytes);
    uint8_t* tmp = scratch.data();
    LATTICE_MPI_CALL_(
        MPI_Ireduce_scatter_block(send, tmp, n, MpiType(type), MpiOp(op), comm_, &req));
    // The vector's heap block moves with it into the Work, so `tmp` stays valid.
    return std::unique_ptr<Work>(std::make_unique<MpiWork>(
        req,
        [recv, tmp, bytes](const MPI_Status&) {
          if (bytes > 0) std::memcpy(recv, tmp, bytes);
          return absl::OkStatus();
        },
        std::move(scratch)));
  }

  absl::StatusOr<std::unique_ptr<Work>> DoIAllGather(const void* send, void* recv,
                                                     size_t send_count, CommType type) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(send_count));
    LATTICE_ASSIGN_OR_RETURN(int total, MpiCount(send_count * static_cast<size_t>(size_)));
    (void)total;
    const void* src = IsOwnGatherChunk(send, recv, send_count, type) ? MPI_IN_PLACE : send;
    MPI_Request req;
    LATTICE_MPI_CALL_(
        MPI_Iallgather(src, n, MpiType(type), recv, n, MpiType(type), comm_, &req));
    return MakeWork(req);
  }

  absl::StatusOr<std::unique_ptr<Work>> DoIBroadcast(void* buf, size_t count, CommType type,
                                                     int root) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    MPI_Request req;
    LATTICE_MPI_CALL_(MPI_Ibcast(buf, n, MpiType(type), root, comm_, &req));
    return MakeWork(req);
  }

  absl::StatusOr<std::unique_ptr<Work>> DoISend(const void* buf, size_t count, CommType type,
                                                int dst, int tag) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    MPI_Request req;
    LATTICE_MPI_CALL_(MPI_Isend(buf, n, MpiType(type), dst, tag, comm_, &req));
    return MakeWork(req);
  }

  absl::StatusOr<std::unique_ptr<Work>> DoIRecv(void* buf, size_t count, CommType type, int src,
                                                int tag) override {
    LATTICE_ASSIGN_OR_RETURN(int n, MpiCount(count));
    MPI_Request req;
    LATTICE_MPI_CALL_(MPI_Irecv(buf, n, MpiType(type), src, tag, comm_, &req));
    return std::unique_ptr<Work>(std::make_unique<MpiWork>(
        req, [type, count](const MPI_Status& st) { return CheckReceivedCount(st, type, count); },
        std::vector<uint8_t>()));
  }

  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(int color, int key) override {
    MPI_Comm out = MPI_COMM_NULL;
    LATTICE_MPI_CALL_(
        MPI_Comm_split(comm_, color == kNoColor ? MPI_UNDEFINED : color, key, &out));
    if (out == MPI_COMM_NULL) return std::unique_ptr<Communicator>();
    return std::unique_ptr<Communicator>(std::make_unique<MpiCommunicator>(out));
  }

  absl::StatusOr<std::unique_ptr<Communicator>> DoSplitByNode() override {
    MPI_Comm out = MPI_COMM_NULL;
    LATTICE_MPI_CALL_(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &out));
    if (out == MPI_COMM_NULL) {
      return absl::InternalError("MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) returned no group");
    }
    return std::unique_ptr<Communicator>(std::make_unique<MpiCommunicator>(out));
  }

 private:
  static std::unique_ptr<Work> MakeWork(MPI_Request req) {
    return std::make_unique<MpiWork>(req, nullptr, std::vector<uint8_t>());
  }
  bool AliasesOwnChunk(const void* send, const void* recv, size_t recv_count,
                       CommType type) const {
    return recv == static_cast<const uint8_t*>(send) +
                       static_cast<size_t>(rank_) * recv_count * CommTypeSize(type);
  }
  bool IsOwnGatherChunk(const void* send, const void* recv, size_t send_count,
                        CommType type) const {
    return send == static_cast<const uint8_t*>(recv) +
                       static_cast<size_t>(rank_) * send_count * CommTypeSize(type);
  }

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
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
  MPI_Comm dup = MPI_COMM_NULL;
  const int rc = MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Comm_dup(MPI_COMM_WORLD)");
  return std::unique_ptr<Communicator>(std::make_unique<MpiCommunicator>(dup));
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
