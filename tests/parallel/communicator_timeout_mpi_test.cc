// LATTICE_MPI_NP: 2 4
//
// The timeout path of the MPI communicator (docs/hangs.md), with CommTimeout::abort off so that
// the report comes back as a Status instead of ending the job: a rank that never joins a
// collective (it waits elsewhere, alive) is named by every rank that did, and a receive whose
// sender never sends names the sender. Each case then lets the missing rank join late, so the
// operation that timed out completes in the background and the run ends cleanly. The abort
// path, with real SIGKILL / SIGSTOP, is tests/cluster/hang_test.py.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/communicator.h"
#include "tests/parallel/mpi_harness.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

using lattice::testing::FreshWorld;
using lattice::testing::World;

// Short enough for a quick test, long enough that a rank of an oversubscribed 4-rank job (2
// cores) reaches the operation in time: the harness's ranks start a test within milliseconds.
constexpr double kTimeoutSeconds = 1.5;

CommTimeout ReturningTimeout() {
  CommTimeout t;
  t.seconds = kTimeoutSeconds;
  t.abort = false;
  return t;
}

TEST(CommTimeout, CollectiveNamesTheRankThatNeverJoined) {
  const int p = World().size(), r = World().rank();
  std::unique_ptr<Communicator> comm = FreshWorld();
  comm->set_name("dp");
  comm->set_timeout(ReturningTimeout());
  // The operation that times out keeps its buffer in MPI's hands until rank 1 joins: static.
  static float buf[8];
  for (float& x : buf) x = 1;
  if (r != 1) {
    const absl::Status s = comm->AllReduce(buf, 8, CommType::kF32, ReduceOp::kSum);
    EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
    EXPECT_THAT(s.message(), HasSubstr("communicator timeout: AllReduce(sum, f32 x 8) "
                                       "collective #0 on dp"));
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("world rank ", r, ") did not complete within 1.5 s")));
    // Rank 1 is alive, waiting in the world barrier below: it answers, and says where it is.
    EXPECT_THAT(s.message(), HasSubstr("not arrived: world rank 1 (dp rank 1) has issued only 0 "
                                       "collectives on dp, now waiting for"));
    EXPECT_THAT(s.message(), HasSubstr("in Barrier() collective #"));
    EXPECT_THAT(s.message(), HasSubstr("on world"));
    // Every other rank arrived.
    std::vector<std::string> others;
    for (int q = 0; q < p; ++q) {
      if (q != r && q != 1) others.push_back(absl::StrCat(q));
    }
    if (!others.empty()) {
      EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("arrived: world ranks ",
                                                      absl::StrJoin(others, ", "))));
    } else {
      EXPECT_THAT(s.message(), Not(HasSubstr("arrived: world ranks")));
    }
    // The communicator refuses further work instead of mixing up sequence numbers.
    const absl::Status again = comm->Barrier();
    EXPECT_TRUE(absl::IsFailedPrecondition(again)) << again;
    EXPECT_THAT(again.message(), HasSubstr("unusable after an earlier timeout"));
  }
  ASSERT_TRUE(World().Barrier().ok());
  // Rank 1 joins late; the others' abandoned all-reduce completes while they wait below.
  if (r == 1) {
    const absl::Status s = comm->AllReduce(buf, 8, CommType::kF32, ReduceOp::kSum);
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_EQ(buf[0], static_cast<float>(p));
  }
  ASSERT_TRUE(World().Barrier().ok());
}

TEST(CommTimeout, ReceiveNamesTheSenderThatNeverSent) {
  const int r = World().rank();
  std::unique_ptr<Communicator> comm = FreshWorld();
  comm->set_timeout(ReturningTimeout());
  static int32_t msg[4];
  if (r == 0) {
    const absl::Status s = comm->Recv(msg, 4, CommType::kI32, 1, 5);
    EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
    EXPECT_THAT(s.message(), HasSubstr("communicator timeout: Recv(i32 x 4) from 1 tag 5 "
                                       "point-to-point #0 on world/split"));
    EXPECT_THAT(s.message(), HasSubstr("not arrived: world rank 1 (world/split rank 1) (the "
                                       "peer) has issued 0 point-to-point operations"));
  }
  ASSERT_TRUE(World().Barrier().ok());
  if (r == 1) {
    const int32_t out[4] = {7, 7, 7, 7};
    EXPECT_TRUE(comm->Send(out, 4, CommType::kI32, 0, 5).ok());
  }
  ASSERT_TRUE(World().Barrier().ok());
}

// Within the deadline nothing changes: every rank arrives, many operations complete, and the
// sequence numbers stay aligned (a later timeout would otherwise misreport).
TEST(CommTimeout, OperationsWithinTheDeadlineSucceed) {
  std::unique_ptr<Communicator> comm = FreshWorld();
  comm->set_timeout(ReturningTimeout());
  for (int i = 0; i < 200; ++i) {
    int32_t x = 1;
    ASSERT_TRUE(comm->AllReduce(&x, 1, CommType::kI32, ReduceOp::kSum).ok());
    ASSERT_EQ(x, World().size());
  }
  absl::StatusOr<std::unique_ptr<Communicator>> child = comm->Split(0, World().rank());
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ((*child)->timeout(), ReturningTimeout());
  EXPECT_EQ((*child)->name(), "world/split/split");
  EXPECT_TRUE((*child)->Barrier().ok());
}

}  // namespace
}  // namespace lattice

LATTICE_MPI_TEST_MAIN(parallel_communicator_timeout_mpi_test)
