#include "kernels/gemm_cpu.h"

#include <cblas.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/matmul.h"
#include "kernels/threads.h"
#include "runtime/status.h"

#if defined(LATTICE_HAVE_ONEDNN)
#include <oneapi/dnnl/dnnl.h>
// The one-pool design (kernels/threads.h) needs oneDNN's OpenMP build: a TBB or threadpool
// build would bring a second pool that competes with lattice's loops.
#if DNNL_CPU_THREADING_RUNTIME != DNNL_RUNTIME_OMP
#error "lattice needs oneDNN's OpenMP build (Debian libdnnl-dev); configure with LATTICE_ONEDNN=OFF"
#endif
#endif

namespace lattice::kernels::cpu {
namespace {

GemmLibrary DefaultLibrary() {
  // oneDNN when built in: on the benchmark shapes its sgemm made the whole training step
  // 10-13% faster than OpenBLAS's (docs/performance.md). LATTICE_GEMM overrides; an unknown or
  // unavailable value is refused loudly, so that a typo cannot silently benchmark the other.
  GemmLibrary lib =
      GemmLibraryAvailable(GemmLibrary::kOneDnn) ? GemmLibrary::kOneDnn : GemmLibrary::kOpenBlas;
  if (const char* want = std::getenv("LATTICE_GEMM"); want != nullptr && *want != '\0') {
    if (std::strcmp(want, "openblas") == 0) {
      lib = GemmLibrary::kOpenBlas;
    } else if (std::strcmp(want, "onednn") == 0) {
      LATTICE_CHECK_MSG(GemmLibraryAvailable(GemmLibrary::kOneDnn),
                        "LATTICE_GEMM=onednn, but lattice was built without oneDNN "
                        "(CMake LATTICE_ONEDNN; Debian libdnnl-dev)");
      lib = GemmLibrary::kOneDnn;
    } else {
      LATTICE_CHECK_MSG(false, "LATTICE_GEMM must be openblas or onednn");
    }
  }
  return lib;
}

std::atomic<GemmLibrary>& Active() {
  static std::atomic<GemmLibrary> active{DefaultLibrary()};
  return active;
}

}  // namespace

bool GemmLibraryAvailable(GemmLibrary lib) {
#if defined(LATTICE_HAVE_ONEDNN)
  return true;
#else
  return lib == GemmLibrary::kOpenBlas;
#endif
}

GemmLibrary ActiveGemmLibrary() { return Active().load(std::memory_order_relaxed); }

void SetGemmLibrary(GemmLibrary lib) {
  LATTICE_CHECK_MSG(GemmLibraryAvailable(lib), "GEMM library not built in");
  Active().store(lib, std::memory_order_relaxed);
}

std::string GemmLibraryName() {
#if defined(LATTICE_HAVE_ONEDNN)
  if (ActiveGemmLibrary() == GemmLibrary::kOneDnn) {
    const dnnl_version_t* v = dnnl_version();
    return absl::StrCat("onednn ", v->major, ".", v->minor, ".", v->patch);
  }
#endif
  return absl::StrCat("openblas ", BlasThreading());
}

bool GemmLibrarySharesOpenMpPool() {
#if defined(LATTICE_HAVE_ONEDNN)
  if (ActiveGemmLibrary() == GemmLibrary::kOneDnn) {
    return dnnl_version()->cpu_runtime == DNNL_RUNTIME_OMP;
  }
#endif
  return openblas_get_parallel() == 2;  // 2: OpenMP
}

namespace internal {

void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc) {
#if defined(LATTICE_HAVE_ONEDNN)
  if (ActiveGemmLibrary() == GemmLibrary::kOneDnn) {
    // Row-major, like cblas with CblasRowMajor. It fails only on invalid arguments, which the
    // matmul kernels never pass (checked sizes, leading dimensions >= the row lengths).
    const dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha,
                                        a, lda, b, ldb, beta, c, ldc);
    LATTICE_CHECK_MSG(st == dnnl_success, "dnnl_sgemm failed");
    return;
  }
#endif
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
              static_cast<blasint>(ldc));
}

}  // namespace internal
}  // namespace lattice::kernels::cpu
