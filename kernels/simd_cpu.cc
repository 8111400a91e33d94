#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/simd.h"
#include "runtime/status.h"

namespace lattice::kernels::cpu::internal {
namespace {

const SimdOps& OpsFor(SimdLevel level) {
#if defined(LATTICE_SIMD_X86)
  if (level == SimdLevel::kAvx512) return kSimdOpsAvx512;
  if (level == SimdLevel::kAvx2) return kSimdOpsAvx2;
#endif
  return kSimdOpsBaseline;
}

SimdLevel BestLevel() {
  SimdLevel best = SimdLevel::kBaseline;
  for (SimdLevel l : {SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    if (SimdSupported(l)) best = l;
  }
  // LATTICE_CPU_ISA caps the level (unknown values are refused loudly: a typo must not
  // silently benchmark another code path).
  if (const char* cap = std::getenv("LATTICE_CPU_ISA"); cap != nullptr && *cap != '\0') {
    SimdLevel want;
    if (std::strcmp(cap, "baseline") == 0) {
      want = SimdLevel::kBaseline;
    } else if (std::strcmp(cap, "avx2") == 0) {
      want = SimdLevel::kAvx2;
    } else if (std::strcmp(cap, "avx512") == 0) {
      want = SimdLevel::kAvx512;
    } else {
      LATTICE_CHECK_MSG(false, "LATTICE_CPU_ISA must be baseline, avx2 or avx512");
    }
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

std::atomic<const SimdOps*>& Active() {
  static std::atomic<const SimdOps*> active{&OpsFor(BestLevel())};
  return active;
}

}  // namespace

bool SimdSupported(SimdLevel level) {
  switch (level) {
    case SimdLevel::kBaseline:
      return true;
#if defined(LATTICE_SIMD_X86)
    case SimdLevel::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case SimdLevel::kAvx512:
      // The subsets the compiler may use under the pragma (kernels/simd/ops_avx512.cc).
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("fma");
#endif
    default:
      return false;
  }
}

const SimdOps& Simd() { return *Active().load(std::memory_order_relaxed); }

void SetSimdLevel(SimdLevel level) {
  LATTICE_CHECK_MSG(SimdSupported(level), "SIMD level not supported by this CPU");
  Active().store(&OpsFor(level), std::memory_order_relaxed);
}

}  // namespace lattice::kernels::cpu::internal
