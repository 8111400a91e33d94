#include "kernels/threads.h"

#include <gtest/gtest.h>

#include <omp.h>

#include <cstdlib>
#include <string>

#include "kernels/matmul.h"
#include "kernels/simd.h"

namespace lattice {
namespace {

using kernels::cpu::DefaultThreadsPerRank;

TEST(ThreadsTest, DefaultThreadsFollowTheAffinityMaskAndTheNodeShare) {
  // A process alone on an unbound 8-core node: every core.
  EXPECT_EQ(DefaultThreadsPerRank(8, 8, 1), 8);
  // 4 unbound ranks on that node (each sees all 8 cores): their share, 2 each.
  EXPECT_EQ(DefaultThreadsPerRank(8, 8, 4), 2);
  // mpirun --bind-to core: the rank's own core.
  EXPECT_EQ(DefaultThreadsPerRank(1, 8, 4), 1);
  // --bind-to socket, 2 ranks per 4-core socket on an 8-core node (4 ranks): the share, 2.
  EXPECT_EQ(DefaultThreadsPerRank(4, 8, 4), 2);
  // taskset to 3 cores of an 8-core machine, one process: the mask.
  EXPECT_EQ(DefaultThreadsPerRank(3, 8, 1), 3);
  // More ranks than cores, or unknown sizes: never fewer than one thread.
  EXPECT_EQ(DefaultThreadsPerRank(2, 2, 8), 1);
  EXPECT_EQ(DefaultThreadsPerRank(0, 0, 0), 1);
}

TEST(ThreadsTest, SetNumThreadsSizesTheOpenMpTeam) {
  const int saved = kernels::cpu::NumThreads();
  kernels::cpu::SetNumThreads(3);
  EXPECT_EQ(kernels::cpu::NumThreads(), 3);
  EXPECT_EQ(omp_get_max_threads(), 3);
  kernels::cpu::SetNumThreads(0);  // <= 0 leaves the setting alone
  EXPECT_EQ(kernels::cpu::NumThreads(), 3);
  kernels::cpu::SetNumThreads(saved);
}

#if defined(LATTICE_OPENBLAS_OPENMP)
// The build links OpenBLAS's OpenMP variant (CMakeLists.txt LATTICE_OPENBLAS=openmp), and the
// binary must load that one, not whichever libopenblas.so.0 the system's alternatives name:
// with the pthread build BLAS would bring its own thread pool back.
TEST(ThreadsTest, OpenBlasIsTheOpenMpBuild) {
  EXPECT_TRUE(kernels::cpu::BlasSharesOpenMpPool()) << kernels::cpu::BlasThreading();
  EXPECT_EQ(kernels::cpu::BlasThreading().rfind("openmp", 0), 0u) << kernels::cpu::BlasThreading();
}
#endif

TEST(ThreadsTest, TheActiveSimdLevelIsTheBestSupportedUnlessCapped) {
  using kernels::cpu::internal::SimdLevel;
  using kernels::cpu::internal::SimdSupported;
  EXPECT_TRUE(SimdSupported(SimdLevel::kBaseline));
  SimdLevel best = SimdLevel::kBaseline;
  for (SimdLevel l : {SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    if (SimdSupported(l)) best = l;
  }
  // LATTICE_CPU_ISA caps the level (kernels/simd.h).
  if (const char* cap = std::getenv("LATTICE_CPU_ISA"); cap != nullptr && *cap != '\0') {
    const std::string c(cap);
    const SimdLevel want = c == "baseline" ? SimdLevel::kBaseline
                           : c == "avx2"   ? SimdLevel::kAvx2
                                           : SimdLevel::kAvx512;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  EXPECT_EQ(kernels::cpu::internal::Simd().level, best) << kernels::cpu::internal::Simd().name;
}

// oneDNN runs the GEMMs when built in, unless LATTICE_GEMM says otherwise (kernels/matmul.h),
// and whichever runs them must be an OpenMP build on lattice's one pool.
TEST(ThreadsTest, TheGemmLibraryIsTheDefaultOrTheChosenOneAndSharesThePool) {
  using kernels::cpu::GemmLibrary;
  GemmLibrary want = kernels::cpu::GemmLibraryAvailable(GemmLibrary::kOneDnn)
                         ? GemmLibrary::kOneDnn
                         : GemmLibrary::kOpenBlas;
  if (const char* lib = std::getenv("LATTICE_GEMM"); lib != nullptr && *lib != '\0') {
    want = std::string(lib) == "openblas" ? GemmLibrary::kOpenBlas : GemmLibrary::kOneDnn;
  }
  EXPECT_EQ(kernels::cpu::ActiveGemmLibrary(), want) << kernels::cpu::GemmLibraryName();
  EXPECT_TRUE(kernels::cpu::GemmLibrarySharesOpenMpPool()) << kernels::cpu::GemmLibraryName();
}

}  // namespace
}  // namespace lattice
