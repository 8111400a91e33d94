// LATTICE_MPI_NP: 1 2 4
// LATTICE_TEST_LABELS: gpu
//
// The staged device communicator (parallel/staged_device_communicator.h): device buffers over
// the MPI communicator through pinned host memory, for several ranks sharing one GPU. The shared
// checks of every device communicator (device_comm_testing.h), plus its own: the host
// communicator's semantics (no bf16 reductions, the message-size check on receive, its
// timeouts) and a steady state that allocates no pinned memory.
//
// Runs under `mpirun -np N` with any number of ranks on one GPU, or by hand as a world of one
// (tests/gpu/run.sh). Without a GPU every test skips with the reason ("skipped: no CUDA device
// ..."). Nothing here has run on a GPU yet.
#include <gtest/gtest.h>

#include "parallel/staged_device_communicator.h"
#include "tests/parallel/device_comm_testing.h"
#include "tests/parallel/mpi_harness.h"

#ifdef LATTICE_HAVE_CUDA

namespace lattice::testing {
namespace {

TEST_F(DeviceCommTest, StagedHasTheHostsSemantics) {
  EXPECT_EQ(comm().kind(), absl::StrCat("staged-", World().kind()));
  DeviceBuffer d(64);
  absl::Status s = comm().AllReduce(d.get(), 8, CommType::kBF16, ReduceOp::kSum);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), HasSubstr("sum of bf16 is not supported by this communicator (staged-"));
  EXPECT_FALSE(comm().CanReduce(CommType::kF16, ReduceOp::kMax));
  EXPECT_TRUE(comm().CanReduce(CommType::kF32, ReduceOp::kAvg));

  // A receive longer than the message is the host's error, named by the device call.
  const int p = size(), r = rank();
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  DeviceBuffer out = ToDevice(std::vector<int32_t>{1, 2, 3}), in(5 * 4);
  absl::StatusOr<std::unique_ptr<Work>> w = comm().ISend(out.get(), 3, CommType::kI32, next, 9);
  EXPECT_TRUE(w.ok()) << w.status();
  s = comm().Recv(in.get(), 5, CommType::kI32, prev, 9);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("received a message of 3 elements but expected 5"));
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("Recv(i32 x 5) from ", prev, " tag 9 on rank ", r)));
  if (w.ok()) {
    EXPECT_TRUE((*w)->Wait().ok());
  }
}

// Issue 11's one-GPU runs repeat the same operations every step: after the first, the pinned
// pool serves them all.
TEST_F(DeviceCommTest, StagedSteadyStateAllocatesNoPinnedMemory) {
  const int p = size(), r = rank();
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  DeviceBuffer grads(4 * 10000), full(static_cast<size_t>(4 * 1000 * p)), act(4 * 512), act_in(4 * 512);
  auto step = [&] {
    std::vector<std::unique_ptr<Work>> works;
    absl::StatusOr<std::unique_ptr<Work>> a =
        comm().IAllReduce(grads.get(), 10000, CommType::kF32, ReduceOp::kAvg);
    EXPECT_TRUE(a.ok());
    if (a.ok()) works.push_back(std::move(a).value());
    EXPECT_TRUE(comm().ReduceScatter(full.get(), full.as<float>(static_cast<size_t>(r) * 1000), 1000,
                                     CommType::kF32, ReduceOp::kSum).ok());
    EXPECT_TRUE(comm().AllGather(full.as<float>(static_cast<size_t>(r) * 1000), full.get(), 1000,
                                 CommType::kF32).ok());
    EXPECT_TRUE(comm().BatchSendRecv({PeerOp::Send(act.get(), 512, CommType::kF32, next, 0),
                                      PeerOp::Recv(act_in.get(), 512, CommType::kF32, prev, 0)}).ok());
    EXPECT_TRUE(WaitAll(works).ok());
  };
  step();
  step();
  const int64_t warm = comm().pinned_allocations();
  EXPECT_GT(warm, 0);
  for (int i = 0; i < 10; ++i) step();
  EXPECT_EQ(comm().pinned_allocations(), warm);
}

// With a short deadline and the abort off, a receive nobody sends to fails: the host
// communicator's error (MPI: kDeadlineExceeded with its report; a world of one refuses at once).
TEST_F(DeviceCommTest, StagedUnmatchedReceiveFails) {
  CommTimeout t;
  t.seconds = 1;
  t.abort = false;
  comm().set_timeout(t);
  DeviceBuffer d(64);
  absl::StatusOr<std::unique_ptr<Work>> w = comm().IRecv(d.get(), 16, CommType::kF32, rank(), 77);
  absl::Status s = w.ok() ? (*w)->Wait() : w.status();
  EXPECT_FALSE(s.ok());
  if (World().kind() == "mpi") {
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  } else {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  }
}

}  // namespace
}  // namespace lattice::testing

int main(int argc, char** argv) {
  lattice::testing::Env().create = [](lattice::Communicator& host,
                                      const lattice::DeviceCommOptions& options) {
    return lattice::CreateStagedDeviceCommunicator(host, options);
  };
  return lattice::testing::RunMpiTests(argc, argv, "staged_device_communicator_mpi_test");
}

#else  // !LATTICE_HAVE_CUDA

TEST(StagedDeviceCommunicator, NeedsCuda) {
  GTEST_SKIP() << "skipped: no CUDA device (this lattice was built without CUDA)";
}

LATTICE_MPI_TEST_MAIN(staged_device_communicator_mpi_test)

#endif  // LATTICE_HAVE_CUDA
