// Device helpers the CUDA kernels share: launch geometry and warp/block reductions.
#ifndef LATTICE_KERNELS_CUDA_COMMON_CUH_
#define LATTICE_KERNELS_CUDA_COMMON_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace lattice::kernels::cuda {

constexpr int kThreads = 256;  // threads per block of the elementwise kernels
constexpr int kWarp = 32;

// Blocks for n elements, one per thread, capped (the kernels loop with a grid stride).
inline unsigned GridFor(int64_t n, int threads = kThreads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  if (blocks > 65535 * 8) blocks = 65535 * 8;
  return static_cast<unsigned>(blocks);
}

// Grid-stride loop over [0, n).
#define LATTICE_CUDA_FOR(i, n)                                                          \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

__device__ __forceinline__ float WarpSum(float x) {
  for (int o = kWarp / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ double WarpSum(double x) {
  for (int o = kWarp / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float WarpMax(float x) {
  for (int o = kWarp / 2; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Sum (or max) over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread
// gets the result. `scratch` is 32 values of shared memory. The order is fixed by the thread
// layout, so the result does not depend on timing.
template <typename T, bool kMax>
__device__ __forceinline__ T BlockReduce(T x, T* scratch) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  if constexpr (kMax) {
    x = WarpMax(x);
  } else {
    x = WarpSum(x);
  }
  __syncthreads();  // scratch may hold a previous reduction's values
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  T y = lane < warps ? scratch[lane] : (kMax ? -INFINITY : T(0));
  if constexpr (kMax) {
    y = WarpMax(y);
  } else {
    y = WarpSum(y);
  }
  return y;
}

}  // namespace lattice::kernels::cuda

#endif  // LATTICE_KERNELS_CUDA_COMMON_CUH_
