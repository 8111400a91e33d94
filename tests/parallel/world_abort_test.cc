// LATTICE_TEST_LABELS: mpi
//
// End-to-end failure handling: a rank that errors makes every rank exit non-zero within a
// bounded time, with a message naming the rank, and no hang. Each case runs a small MPI job
// with `mpirun -np N` from inside the test and looks at its exit status, output and duration:
//
// - this binary itself, re-run as an MPI "helper" (LATTICE_ABORT_HELPER set: see main below),
//   whose rank 1 fails while the others wait in a collective;
// - parallel_communicator_mpi_test, whose harness must fail the whole run when one rank fails.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"

namespace lattice {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

#ifdef LATTICE_HAVE_MPI  // without MPI there is no job to start (communicator_test covers Self)

// A job may take this long at most (mpirun start-up is ~1 s here); a hang is killed at
// kKillSeconds and reported as such.
constexpr double kBoundSeconds = 60;
constexpr int kKillSeconds = 120;

std::string SelfPath() {
  char buf[4096] = {};
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

std::string Dirname(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

struct JobResult {
  int exit_code = -1;  // of mpirun; 137 = killed by the timeout, i.e. a hang
  std::string output;  // stdout and stderr of every rank
  double seconds = 0;
};

JobResult RunJob(int np, const std::string& env, const std::string& program_and_args) {
  const std::string cmd = absl::StrCat(
      "env OMPI_MCA_btl_vader_single_copy_mechanism=none OMP_NUM_THREADS=1 ", env,
      " timeout -s KILL ", kKillSeconds, " mpirun --oversubscribe --allow-run-as-root -np ", np,
      " ", program_and_args, " 2>&1");
  JobResult r;
  const auto start = std::chrono::steady_clock::now();
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) {
    r.output = "popen failed for: " + cmd;
    return r;
  }
  char buf[4096];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// An expected failure must be a clean one: no sanitizer report or crash in the ranks' output.
void ExpectNoSanitizerReport(const std::string& output) {
  for (const char* mark : {"Sanitizer", "runtime error:", "Segmentation fault"}) {
    EXPECT_THAT(output, Not(HasSubstr(mark)));
  }
}

// Rank 1 aborts at once while every other rank waits in a barrier that can never complete.
TEST(WorldAbortTest, FailingRankEndsEveryRankAndNamesItself) {
  for (int np : {2, 4}) {
    JobResult r = RunJob(np, "LATTICE_ABORT_HELPER=abrupt", SelfPath());
    SCOPED_TRACE(absl::StrCat("np ", np, ", ", r.seconds, " s, exit ", r.exit_code, ":\n", r.output));
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.exit_code, 137) << "the job hung and was killed";
    EXPECT_LT(r.seconds, kBoundSeconds);
    EXPECT_THAT(r.output, HasSubstr("lattice: rank 1: shard 7 of train.bin is corrupt"));
    EXPECT_THAT(r.output, Not(HasSubstr("barrier returned")));
    ExpectNoSanitizerReport(r.output);
  }
}

// The orderly path main() takes: AgreeOnStatus, so that every rank learns which rank failed and
// why, then AbortWorld.
TEST(WorldAbortTest, AgreedFailureReachesEveryRank) {
  const int np = 4;
  JobResult r = RunJob(np, "LATTICE_ABORT_HELPER=agreed", SelfPath());
  SCOPED_TRACE(absl::StrCat(r.seconds, " s, exit ", r.exit_code, ":\n", r.output));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.exit_code, 137) << "the job hung and was killed";
  EXPECT_LT(r.seconds, kBoundSeconds);
  for (int rank = 0; rank < np; ++rank) {
    EXPECT_THAT(r.output, HasSubstr(absl::StrCat("helper rank ", rank,
                                                 " agreed: DATA_LOSS: rank 1: shard 7 of "
                                                 "train.bin is corrupt")));
  }
  EXPECT_THAT(r.output, HasSubstr("lattice: rank "));
  ExpectNoSanitizerReport(r.output);
}

// Without a failure the helper job succeeds, so the exit codes above come from the failure.
TEST(WorldAbortTest, HelperSucceedsWithoutAFailure) {
  JobResult r = RunJob(2, "LATTICE_ABORT_HELPER=ok", SelfPath());
  SCOPED_TRACE(r.output);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("helper rank 0 agreed: OK"));
  EXPECT_THAT(r.output, HasSubstr("helper rank 1 agreed: OK"));
}

// The MPI test harness: one failing rank fails the run, and the failure is printed with its rank.
TEST(WorldAbortTest, MpiTestHarnessFailsWhenOneRankFails) {
  const std::string harness = Dirname(SelfPath()) + "/parallel_communicator_mpi_test";
  ASSERT_EQ(access(harness.c_str(), X_OK), 0) << "build " << harness << " first";
  JobResult fail = RunJob(4, "LATTICE_MPI_TEST_FAIL_RANK=2", harness + " --gtest_filter=Harness.*");
  {
    SCOPED_TRACE(fail.output);
    EXPECT_EQ(fail.exit_code, 1);
    EXPECT_THAT(fail.output, HasSubstr("[rank 2] [  FAILED  ] Harness.FailsOnRequestedRank"));
    EXPECT_THAT(fail.output, HasSubstr("failing on purpose"));
    EXPECT_THAT(fail.output, HasSubstr("FAILED on at least one rank"));
    ExpectNoSanitizerReport(fail.output);
  }
  JobResult pass = RunJob(4, "", harness + " --gtest_filter=Harness.*");
  SCOPED_TRACE(pass.output);
  EXPECT_EQ(pass.exit_code, 0);
  EXPECT_THAT(pass.output, HasSubstr("passed on every rank"));
}

#endif  // LATTICE_HAVE_MPI

// ---- The helper: what a lattice main() does with a failing rank. ----
int RunHelper(const std::string& mode, int* argc, char*** argv) {
  absl::StatusOr<std::unique_ptr<MpiRuntime>> mpi = MpiRuntime::Initialize(argc, argv);
  if (!mpi.ok()) {
    std::fprintf(stderr, "helper: %s\n", mpi.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<Communicator>> world = CreateWorldCommunicator();
  if (!world.ok()) {
    std::fprintf(stderr, "helper: %s\n", world.status().ToString().c_str());
    return 2;
  }
  Communicator& comm = **world;
  const absl::Status failure = absl::DataLossError("shard 7 of train.bin is corrupt");
  if (mode == "abrupt") {
    if (comm.rank() == 1) AbortWorld(comm, failure);
    absl::Status s = comm.Barrier();  // never completes: rank 1 is gone
    std::printf("helper rank %d: barrier returned (%s)\n", comm.rank(), s.ToString().c_str());
    return 3;
  }
  const absl::Status local = (mode == "agreed" && comm.rank() == 1) ? failure : absl::OkStatus();
  const absl::Status agreed = AgreeOnStatus(comm, local);
  std::printf("helper rank %d agreed: %s\n", comm.rank(), agreed.ToString().c_str());
  std::fflush(stdout);
  // Every rank has printed before anyone aborts, so the test sees all of them.
  (void)comm.Barrier();
  if (!agreed.ok()) AbortWorld(comm, agreed);
  world->reset();
  return 0;
}

}  // namespace
}  // namespace lattice

int main(int argc, char** argv) {
  if (const char* mode = std::getenv("LATTICE_ABORT_HELPER"); mode != nullptr) {
    return lattice::RunHelper(mode, &argc, &argv);
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
