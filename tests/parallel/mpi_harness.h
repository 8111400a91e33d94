// The main() of lattice's MPI test binaries (ctest runs them under mpirun): only rank 0 prints
// the gtest report, other ranks print their failures with their rank, and every rank agrees on
// the result, so one rank's failure fails the test on all of them.
//
//   LATTICE_MPI_TEST_MAIN(my_test)  // defines main(); tests use lattice::testing::World()
#ifndef LATTICE_TESTS_PARALLEL_MPI_HARNESS_H_
#define LATTICE_TESTS_PARALLEL_MPI_HARNESS_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "kernels/threads.h"
#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"
#include "runtime/status.h"
#include "runtime/system.h"

namespace lattice::testing {

inline Communicator*& WorldSlot() {
  static Communicator* world = nullptr;
  return world;
}
inline Communicator& World() { return *WorldSlot(); }

// A fresh communicator over the world, so a test's counters start at zero.
inline std::unique_ptr<Communicator> FreshWorld() {
  absl::StatusOr<std::unique_ptr<Communicator>> c = World().Split(0, World().rank());
  LATTICE_CHECK(c.ok() && *c != nullptr);
  return std::move(c).value();
}

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.message());
    std::fflush(stderr);
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::fprintf(stderr, "[rank %d] [  FAILED  ] %s.%s\n", rank_, info.test_suite_name(),
                   info.name());
      std::fflush(stderr);
    }
  }

 private:
  int rank_;
};

inline int RunMpiTests(int argc, char** argv, const char* name) {
  absl::StatusOr<std::unique_ptr<MpiRuntime>> mpi = MpiRuntime::Initialize(&argc, &argv);
  if (!mpi.ok()) {
    std::fprintf(stderr, "%s: %s\n", name, mpi.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<Communicator>> world = CreateWorldCommunicator();
  if (!world.ok()) {
    std::fprintf(stderr, "%s: %s\n", name, world.status().ToString().c_str());
    return 1;
  }
  WorldSlot() = world->get();
  const int rank = (*world)->rank();
  // scripts/numeric-matrix.sh runs the numerical tests with 1 and 2 threads per rank, capped
  // at twice the cores per rank: ctest runs up to 8 ranks on a 2-core machine, and beyond 2x
  // oversubscription a test would measure the scheduler, not the arithmetic.
  if (const char* threads = std::getenv("LATTICE_TEST_THREADS"); threads != nullptr) {
    const int cap = std::max(1, 2 * AffinityCores() / (*world)->size());
    kernels::cpu::SetNumThreads(std::min(std::max(1, std::atoi(threads)), cap));
  }
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) {
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  const int local = RUN_ALL_TESTS();
  int32_t any_failed = local != 0 ? 1 : 0;
  absl::Status agreed = (*world)->AllReduce(&any_failed, 1, CommType::kI32, ReduceOp::kMax);
  if (!agreed.ok()) {
    std::fprintf(stderr, "[rank %d] could not agree on the result: %s\n", rank,
                 agreed.ToString().c_str());
    any_failed = 1;
  }
  if (rank == 0) {
    std::printf("%s: %d rank(s) (%s): %s\n", name, (*world)->size(),
                std::string((*world)->kind()).c_str(),
                any_failed ? "FAILED on at least one rank" : "passed on every rank");
  }
  WorldSlot() = nullptr;
  world->reset();  // before ~MpiRuntime finalises MPI
  return any_failed ? 1 : 0;
}

}  // namespace lattice::testing

#define LATTICE_MPI_TEST_MAIN(name) \
  int main(int argc, char** argv) { return ::lattice::testing::RunMpiTests(argc, argv, #name); }

#endif  // LATTICE_TESTS_PARALLEL_MPI_HARNESS_H_
