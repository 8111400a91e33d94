// What this process can use of the machine it runs on: memory and CPU cores, as the kernel,
// the cgroup (containers, Slurm) and the affinity mask (mpirun --bind-to, srun --cpu-bind)
// limit them. Used to refuse a model that cannot fit before allocating it, and to size thread
// pools.
#ifndef LATTICE_RUNTIME_SYSTEM_H_
#define LATTICE_RUNTIME_SYSTEM_H_

#include <cstdint>
#include <string>

namespace lattice {

struct MemoryInfo {
  int64_t available_bytes = -1;  // -1 when unknown
  std::string source;            // "MemAvailable", "cgroup memory.max", ...
};

// Bytes this process could still allocate: the smaller of the kernel's MemAvailable and, in a
// cgroup with a memory limit (v2 memory.max or v1 memory.limit_in_bytes), the limit minus its
// current use.
MemoryInfo AvailableMemory();

// CPUs in this process's affinity mask (sched_getaffinity); std::thread::hardware_concurrency
// when the mask cannot be read; at least 1.
int AffinityCores();

// "12.34 GiB"
std::string FormatGiB(int64_t bytes);

// The process's peak resident memory (VmHWM of /proc/self/status) in bytes; 0 where there is
// none.
int64_t PeakResidentBytes();

}  // namespace lattice

#endif  // LATTICE_RUNTIME_SYSTEM_H_
