#ifndef LATTICE_KERNELS_ZERO_H_
#define LATTICE_KERNELS_ZERO_H_

#include <cstdint>

namespace lattice::kernels::cpu {

// x (n) = 0 on all threads. Buffers past kStreamingZeroBytes (gradient buffers of large
// models) are written with streaming stores, which skip reading each cache line before
// overwriting it as memset's ordinary stores do: GPT-2 small's 500 MB of gradients were zeroed
// in ~11 ms at 2 threads instead of memset's ~48 ms (docs/performance.md). Smaller buffers
// keep ordinary stores, so that they stay in cache for the backward that accumulates into them.
void ZeroFill(float* x, int64_t n);

// Above the caches a core can count on (2 MB of L2 per core here and a shared last level that
// other processes use too, e.g. a 10 MB gradient buffer of the demo model stays cached),
// cached stores only evict: the lines are gone before the backward reads them.
constexpr int64_t kStreamingZeroBytes = int64_t{64} << 20;

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_ZERO_H_
