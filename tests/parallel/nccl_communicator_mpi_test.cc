// LATTICE_MPI_NP: 1 2
// LATTICE_TEST_LABELS: gpu
//
// The NCCL communicator (parallel/nccl_communicator.h) on GPUs: the shared checks of every
// device communicator (device_comm_testing.h: every collective and batched point-to-point
// against the host communicator, counters, splits, argument errors), plus what only NCCL does:
// bf16/fp16 reductions within tolerances derived from their rounding, a timeout that aborts the
// NCCL communicator, and Abort().
//
// Runs under `mpirun -np N` with one GPU per rank of a node (NCCL refuses two ranks of one
// communicator on one device; with fewer GPUs every test skips and says so), or by hand as a
// world of one (tests/gpu/run.sh: the GPU machine has no MPI). Without a GPU every test skips
// with the reason ("skipped: no CUDA device ..."). Nothing here has run on a GPU yet.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "parallel/nccl_communicator.h"
#include "tests/parallel/device_comm_testing.h"
#include "tests/parallel/mpi_harness.h"

#ifdef LATTICE_HAVE_CUDA

namespace lattice::testing {
namespace {

TEST_F(DeviceCommTest, NcclReportsItsVersion) {
  EXPECT_EQ(comm().kind(), "nccl");
  const std::string v = NcclRuntimeVersion();
  std::printf("NCCL runtime %s\n", v.c_str());
  EXPECT_EQ(v.rfind("2.", 0), 0u) << v;
  EXPECT_TRUE(comm().CanReduce(CommType::kBF16, ReduceOp::kAvg));
  EXPECT_TRUE(comm().CanReduce(CommType::kF16, ReduceOp::kMax));
  EXPECT_FALSE(comm().CanReduce(CommType::kU16, ReduceOp::kSum));
  EXPECT_FALSE(comm().CanReduce(CommType::kI32, ReduceOp::kAvg));
}

// bf16 and fp16 reductions against the exact value (from the host communicator's gather of the
// same inputs, summed in double), within device_comm_testing.h's bounds: p u sum|x_r| for a sum,
// (2p + 1) u sum|x_r| / p for the average; max and min select, so they are exact.
TEST_F(DeviceCommTest, NcclNarrowFloatReductions) {
  const int p = size(), r = rank();
  const int n = 777;
  for (CommType t : {CommType::kBF16, CommType::kF16}) {
    // 1 + j/64 and its negatives: exact in both types, and sums of several need more bits than
    // either has, so the roundings are exercised.
    std::vector<float> x(n);
    std::vector<uint16_t> bits(n);
    for (int k = 0; k < n; ++k) {
      const float v = (1.f + static_cast<float>((k * 7 + r * 13) % 64) / 64.f) * ((k + r) % 3 == 0 ? -1.f : 1.f);
      bits[k] = ToNarrow(t, v);
      x[k] = FromNarrow(t, bits[k]);
      ASSERT_EQ(x[k], v);
    }
    std::vector<float> all(static_cast<size_t>(p * n));
    EXPECT_TRUE(host().AllGather(absl::MakeConstSpan(x), absl::MakeSpan(all)).ok());
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kAvg}) {
      SCOPED_TRACE(absl::StrCat(CommTypeName(t), " ", ReduceOpName(op)));
      DeviceBuffer d = ToDevice(bits);
      EXPECT_TRUE(comm().AllReduce(d.get(), n, t, op).ok());
      const std::vector<uint16_t> got = d.Download<uint16_t>(n);
      int bad = 0;
      double worst = 0;
      for (int k = 0; k < n; ++k) {
        double sum = 0, abs_sum = 0, mx = -1e30, mn = 1e30;
        for (int q = 0; q < p; ++q) {
          const double v = all[static_cast<size_t>(q * n + k)];
          sum += v;
          abs_sum += std::fabs(v);
          mx = std::max(mx, v);
          mn = std::min(mn, v);
        }
        double want = sum, tol = SumTolerance(t, p, abs_sum);
        if (op == ReduceOp::kMax) want = mx, tol = 0;
        if (op == ReduceOp::kMin) want = mn, tol = 0;
        if (op == ReduceOp::kAvg) want = sum / p, tol = AverageTolerance(t, p, abs_sum);
        const double err = std::fabs(FromNarrow(t, got[k]) - want);
        worst = std::max(worst, err / (tol > 0 ? tol : 1));
        if (!(err <= tol)) ++bad;
      }
      EXPECT_EQ(bad, 0) << "worst error / tolerance " << worst;
    }
    // Reduce-scatter in the narrow type, in place into the own chunk.
    const int c = n / p;
    DeviceBuffer d = ToDevice(bits);
    EXPECT_TRUE(comm().ReduceScatter(d.get(), d.as<uint16_t>(static_cast<size_t>(r) * c), c, t,
                                     ReduceOp::kSum).ok());
    const std::vector<uint16_t> got = d.Download<uint16_t>(c, static_cast<size_t>(r) * c);
    int bad = 0;
    for (int k = 0; k < c; ++k) {
      const int j = r * c + k;
      double sum = 0, abs_sum = 0;
      for (int q = 0; q < p; ++q) {
        sum += all[static_cast<size_t>(q * n + j)];
        abs_sum += std::fabs(all[static_cast<size_t>(q * n + j)]);
      }
      if (!(std::fabs(FromNarrow(t, got[k]) - sum) <= SumTolerance(t, p, abs_sum))) ++bad;
    }
    EXPECT_EQ(bad, 0) << CommTypeName(t) << " reduce-scatter";
  }
}

// A receive nobody sends to (from itself, so every world size hangs the same way) runs past a
// short deadline: ncclCommAbort, kDeadlineExceeded naming the operation, the group and the
// rank, and every later operation refused. NCCL may instead refuse the lone receive when the
// group ends; either way it is an error, never a hang.
TEST_F(DeviceCommTest, NcclTimeoutAbortsTheCommunicator) {
  CommTimeout t;
  t.seconds = 1;
  t.abort = false;
  comm().set_timeout(t);
  DeviceBuffer d(64);
  absl::StatusOr<std::unique_ptr<Work>> w = comm().IRecv(d.get(), 16, CommType::kF32, rank(), 0);
  absl::Status s = w.ok() ? (*w)->Wait() : w.status();
  EXPECT_FALSE(s.ok());
  std::printf("lone NCCL receive: %s\n", s.ToString().c_str());
  if (absl::IsDeadlineExceeded(s)) {
    EXPECT_THAT(s.message(), HasSubstr("communicator timeout: IRecv(f32 x 16)"));
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("on world (rank ", rank(), " of ", size(),
                                                    ", nccl on device ", device(), ")")));
    EXPECT_THAT(s.message(), HasSubstr("ncclCommAbort"));
    absl::Status after = comm().AllReduce(d.get(), 4, CommType::kF32, ReduceOp::kSum);
    EXPECT_EQ(after.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(after.message(), HasSubstr("unusable after an earlier failure"));
    absl::StatusOr<std::unique_ptr<Communicator>> split = comm().Split(0, 0);
    EXPECT_FALSE(split.ok());
  }
  if (w.ok()) w->reset();  // the Work before its communicator
}

// Abort() aborts the NCCL communicator and ends the process with the code (a world of one:
// under mpirun it would end the whole job, which is AbortWorld's test).
TEST_F(DeviceCommTest, NcclAbortEndsTheProcess) {
  if (World().kind() != "self") GTEST_SKIP() << "only as a world of one (it ends the job)";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(comm().Abort(3), ::testing::ExitedWithCode(3), "");
}

}  // namespace
}  // namespace lattice::testing

int main(int argc, char** argv) {
  lattice::testing::DeviceCommEnv& env = lattice::testing::Env();
  env.create = [](lattice::Communicator& host, const lattice::DeviceCommOptions& options) {
    return lattice::CreateNcclCommunicator(host, options);
  };
  env.one_device_per_rank = true;
  if (!lattice::NcclCompiledIn()) env.unavailable = "this lattice was built without NCCL";
  return lattice::testing::RunMpiTests(argc, argv, "nccl_communicator_mpi_test");
}

#else  // !LATTICE_HAVE_CUDA

TEST(NcclCommunicator, NeedsCuda) {
  GTEST_SKIP() << "skipped: no CUDA device (this lattice was built without CUDA)";
}

LATTICE_MPI_TEST_MAIN(nccl_communicator_mpi_test)

#endif  // LATTICE_HAVE_CUDA
