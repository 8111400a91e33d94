// The CPU backend's one thread pool. lattice links OpenBLAS's OpenMP build, so GEMMs run on
// the same OpenMP team as lattice's own parallel loops: no second pool (the pthread build's
// workers) spins or sleeps while the other works. SetNumThreads sizes that team.
#ifndef LATTICE_KERNELS_THREADS_H_
#define LATTICE_KERNELS_THREADS_H_

#include <string>

namespace lattice::kernels::cpu {

// Threads used by the CPU backend (OpenMP, and OpenBLAS inside it). n <= 0 leaves the default.
void SetNumThreads(int n);
int NumThreads();

// Threads one rank should use when train.threads is 0: the cores in its affinity mask
// (mpirun --bind-to core, srun --cpu-bind, taskset), but no more than its share of the node
// when `local_ranks` processes share an unbound node (mask = all `node_cores`). At least 1.
int DefaultThreadsPerRank(int affinity_cores, int node_cores, int local_ranks);

// How the linked OpenBLAS runs its threads: "openmp" (one pool with lattice's loops),
// "pthreads", "sequential", plus its core type, e.g. "openmp (SkylakeX)".
std::string BlasThreading();
// The vector instruction set lattice's own loops run with: "avx512", "avx2" or "baseline"
// (kernels/simd.h; chosen at start-up for this CPU, LATTICE_CPU_ISA caps it).
const char* KernelIsa();
// True when OpenBLAS is the OpenMP build, i.e. BLAS and lattice share one thread pool.
bool BlasSharesOpenMpPool();

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_THREADS_H_
