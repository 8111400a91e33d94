// Fill, casts, deterministic reductions into device scalars, AdamW, bias sums.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace lattice::kernels::cuda {
namespace {

__global__ void FillKernel(float* x, int64_t n, float value) {
  LATTICE_CUDA_FOR(i, n) x[i] = value;
}

__device__ __forceinline__ float LoadAs(const void* p, Float t, int64_t i) {
  switch (t) {
    case Float::kF32:
      return static_cast<const float*>(p)[i];
    case Float::kBF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default:
      return __half2float(static_cast<const __half*>(p)[i]);
  }
}

// Round to nearest even, as the CPU backend's casts (runtime/dtype.h).
__device__ __forceinline__ void StoreAs(void* p, Float t, int64_t i, float x) {
  switch (t) {
    case Float::kF32:
      static_cast<float*>(p)[i] = x;
      return;
    case Float::kBF16:
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(x);
      return;
    default:
      static_cast<__half*>(p)[i] = __float2half_rn(x);
      return;
  }
}

__global__ void CastKernel(void* dst, Float dt, const void* src, Float st, int64_t n) {
  LATTICE_CUDA_FOR(i, n) StoreAs(dst, dt, i, LoadAs(src, st, i));
}

__global__ void RoundThroughKernel(float* x, Float storage, int64_t n) {
  LATTICE_CUDA_FOR(i, n) {
    x[i] = storage == Float::kBF16 ? __bfloat162float(__float2bfloat16_rn(x[i]))
                                   : __half2float(__float2half_rn(x[i]));
  }
}

// Pass 1: block b sums elements b*kThreads + tid with a grid stride into partials[b], in double.
__global__ void PartialSums(double* partials, const void* x, Float t, int64_t n, bool squares) {
  __shared__ double scratch[32];
  double acc = 0;
  LATTICE_CUDA_FOR(i, n) {
    const double v = LoadAs(x, t, i);
    acc += squares ? v * v : v;
  }
  acc = BlockReduce<double, false>(acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// Pass 2: one block adds the partials in a fixed order to the slot.
__global__ void FinalSum(double* slot, const double* partials, int count) {
  __shared__ double scratch[32];
  double acc = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  acc = BlockReduce<double, false>(acc, scratch);
  if (threadIdx.x == 0) *slot += acc;
}

__global__ void ScaleKernel(float* x, int64_t n, float scale) {
  LATTICE_CUDA_FOR(i, n) x[i] *= scale;
}

// The CPU backend's AdamW element (kernels/simd/ops.inl), operation for operation; the fused
// multiply-adds nvcc would contract are spelled out as separate roundings (__fmul_rn,
// __fadd_rn) so that the result is the CPU's bit for bit where the host compiler does not
// contract either.
__global__ void AdamWKernel(float* param, const float* grad, float* m, float* v, int64_t n,
                            AdamWConstants k) {
  LATTICE_CUDA_FOR(i, n) {
    const float g = __fmul_rn(grad[i], k.grad_scale);
    const float mi = __fadd_rn(__fmul_rn(m[i], k.b1), __fmul_rn(g, k.one_minus_b1));
    const float vi = __fadd_rn(__fmul_rn(v[i], k.b2), __fmul_rn(__fmul_rn(k.one_minus_b2, g), g));
    m[i] = mi;
    v[i] = vi;
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), k.bc2_sqrt), k.eps);
    param[i] = __fsub_rn(__fmul_rn(param[i], k.decay), __fmul_rn(k.step_size, __fdiv_rn(mi, denom)));
  }
}

__global__ void ColumnSumKernel(float* dbias, const float* dout, int64_t n, int64_t oc) {
  LATTICE_CUDA_FOR(j, oc) {
    float acc = 0;
    for (int64_t r = 0; r < n; ++r) acc += dout[r * oc + j];
    dbias[j] += acc;
  }
}

__global__ void AddRowBiasKernel(float* x, const float* bias, int64_t rows, int64_t c) {
  LATTICE_CUDA_FOR(i, rows * c) x[i] += bias[i % c];
}

}  // namespace

void Fill(float* x, int64_t n, float value, cudaStream_t s) {
  if (n > 0) FillKernel<<<GridFor(n), kThreads, 0, s>>>(x, n, value);
}

void Cast(void* dst, Float dst_type, const void* src, Float src_type, int64_t n,
          cudaStream_t s) {
  if (n > 0) CastKernel<<<GridFor(n), kThreads, 0, s>>>(dst, dst_type, src, src_type, n);
}

void RoundThrough(float* x, int64_t n, Float storage, cudaStream_t s) {
  if (n > 0) RoundThroughKernel<<<GridFor(n), kThreads, 0, s>>>(x, storage, n);
}

void AccumulateSum(double* slot, const void* x, Float type, int64_t n, bool squares,
                   double* partials, cudaStream_t s) {
  // Always kReduceBlocks blocks (unused ones write 0): the partition of the elements, and so
  // the rounding, depends only on n.
  PartialSums<<<kReduceBlocks, kThreads, 0, s>>>(partials, x, type, n, squares);
  FinalSum<<<1, kThreads, 0, s>>>(slot, partials, kReduceBlocks);
}

void Scale(float* x, int64_t n, float scale, cudaStream_t s) {
  if (n > 0) ScaleKernel<<<GridFor(n), kThreads, 0, s>>>(x, n, scale);
}

void AdamW(float* param, const float* grad, float* m, float* v, int64_t n,
           const AdamWConstants& k, cudaStream_t s) {
  if (n > 0) AdamWKernel<<<GridFor(n), kThreads, 0, s>>>(param, grad, m, v, n, k);
}

void ColumnSum(float* dbias, const float* dout, int64_t n, int64_t oc, cudaStream_t s) {
  if (oc > 0) ColumnSumKernel<<<GridFor(oc), kThreads, 0, s>>>(dbias, dout, n, oc);
}

void AddRowBias(float* x, const float* bias, int64_t rows, int64_t c, cudaStream_t s) {
  if (rows * c > 0) AddRowBiasKernel<<<GridFor(rows * c), kThreads, 0, s>>>(x, bias, rows, c);
}

}  // namespace lattice::kernels::cuda
