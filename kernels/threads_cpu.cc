#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "kernels/threads.h"
#include "kernels/simd.h"

namespace lattice::kernels::cpu {

void SetNumThreads(int n) {
  if (n <= 0) return;
  omp_set_num_threads(n);
  // With the OpenMP build this sizes the team OpenBLAS opens for a call made outside a
  // parallel region (inside one it runs on the calling thread).
  openblas_set_num_threads(n);
}

int NumThreads() { return omp_get_max_threads(); }

int DefaultThreadsPerRank(int affinity_cores, int node_cores, int local_ranks) {
  const int affinity = std::max(1, affinity_cores);
  const int ranks = std::max(1, local_ranks);
  // An unbound rank sees every core of the node; its fair share is cores / ranks. A bound rank
  // sees only its own cores (and never more than the share either: --bind-to socket gives
  // several ranks the same socket).
  const int share = std::max(1, std::max(node_cores, affinity) / ranks);
  return std::max(1, std::min(affinity, share));
}

std::string BlasThreading() {
  // openblas_get_parallel: 0 sequential, 1 pthreads, 2 OpenMP.
  const int kind = openblas_get_parallel();
  std::string s = kind == 2 ? "openmp" : kind == 1 ? "pthreads" : "sequential";
  const char* core = openblas_get_corename();
  if (core != nullptr && std::strlen(core) > 0) s += std::string(" (") + core + ")";
  return s;
}

const char* KernelIsa() { return internal::Simd().name; }

bool BlasSharesOpenMpPool() { return openblas_get_parallel() == 2; }

}  // namespace lattice::kernels::cpu
