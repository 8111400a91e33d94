// LayerNorm and RMSNorm: one warp per row for the forward and the input gradient; the weight
// and bias gradients one thread per column, summing the rows in order (deterministic).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace lattice::kernels::cuda {
namespace {

constexpr int kRowsPerBlock = kThreads / kWarp;

__global__ void LayerNormForwardKernel(float* out, float* mean, float* rstd, const float* inp,
                                       const float* weight, const float* bias, int64_t n,
                                       int64_t c, float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= n) return;
  const float* x = inp + row * c;
  float sum = 0;
  for (int64_t j = lane; j < c; j += kWarp) sum += x[j];
  const float mu = WarpSum(sum) / static_cast<float>(c);
  float sq = 0;
  for (int64_t j = lane; j < c; j += kWarp) {
    const float dx = x[j] - mu;
    sq += dx * dx;
  }
  const float rs = rsqrtf(WarpSum(sq) / static_cast<float>(c) + eps);
  float* y = out + row * c;
  for (int64_t j = lane; j < c; j += kWarp) {
    const float v = (x[j] - mu) * rs * weight[j];
    y[j] = bias != nullptr ? v + bias[j] : v;
  }
  if (lane == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}

__global__ void LayerNormInputGrad(float* dinp, const float* dout, const float* inp,
                                   const float* weight, const float* mean, const float* rstd,
                                   int64_t n, int64_t c) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= n) return;
  const float* x = inp + row * c;
  const float* dy = dout + row * c;
  const float mu = mean[row], rs = rstd[row];
  float sum_d = 0, sum_dx = 0;
  for (int64_t j = lane; j < c; j += kWarp) {
    const float dn = dy[j] * weight[j];
    sum_d += dn;
    sum_dx += dn * (x[j] - mu) * rs;
  }
  const float mean_d = WarpSum(sum_d) / static_cast<float>(c);
  const float mean_dx = WarpSum(sum_dx) / static_cast<float>(c);
  float* dx = dinp + row * c;
  for (int64_t j = lane; j < c; j += kWarp) {
    const float xhat = (x[j] - mu) * rs;
    dx[j] += rs * (dy[j] * weight[j] - mean_d - xhat * mean_dx);
  }
}

__global__ void LayerNormParamGrad(float* dweight, float* dbias, const float* dout,
                                   const float* inp, const float* mean, const float* rstd,
                                   int64_t n, int64_t c) {
  LATTICE_CUDA_FOR(j, c) {
    float dw = 0, db = 0;
    for (int64_t r = 0; r < n; ++r) {
      const float dy = dout[r * c + j];
      dw += dy * (inp[r * c + j] - mean[r]) * rstd[r];
      db += dy;
    }
    if (dweight != nullptr) dweight[j] += dw;
    if (dbias != nullptr) dbias[j] += db;
  }
}

__global__ void RmsNormForwardKernel(float* out, float* rstd, const float* inp,
                                     const float* weight, int64_t n, int64_t c, float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= n) return;
  const float* x = inp + row * c;
  float sq = 0;
  for (int64_t j = lane; j < c; j += kWarp) sq += x[j] * x[j];
  const float rs = rsqrtf(WarpSum(sq) / static_cast<float>(c) + eps);
  float* y = out + row * c;
  for (int64_t j = lane; j < c; j += kWarp) y[j] = x[j] * rs * weight[j];
  if (lane == 0) rstd[row] = rs;
}

__global__ void RmsNormInputGrad(float* dinp, const float* dout, const float* inp,
                                 const float* weight, const float* rstd, int64_t n, int64_t c) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= n) return;
  const float* x = inp + row * c;
  const float* dy = dout + row * c;
  const float rs = rstd[row];
  float sum_dx = 0;
  for (int64_t j = lane; j < c; j += kWarp) sum_dx += dy[j] * weight[j] * x[j] * rs;
  const float mean_dx = WarpSum(sum_dx) / static_cast<float>(c);
  float* dx = dinp + row * c;
  for (int64_t j = lane; j < c; j += kWarp) {
    dx[j] += rs * (dy[j] * weight[j] - x[j] * rs * mean_dx);
  }
}

__global__ void RmsNormParamGrad(float* dweight, const float* dout, const float* inp,
                                 const float* rstd, int64_t n, int64_t c) {
  LATTICE_CUDA_FOR(j, c) {
    float dw = 0;
    for (int64_t r = 0; r < n; ++r) dw += dout[r * c + j] * inp[r * c + j] * rstd[r];
    dweight[j] += dw;
  }
}

unsigned RowBlocks(int64_t n) { return static_cast<unsigned>((n + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

void LayerNormForward(float* out, float* mean, float* rstd, const float* inp,
                      const float* weight, const float* bias, int64_t n, int64_t c, float eps,
                      cudaStream_t s) {
  if (n > 0) {
    LayerNormForwardKernel<<<RowBlocks(n), kThreads, 0, s>>>(out, mean, rstd, inp, weight, bias,
                                                             n, c, eps);
  }
}
void LayerNormBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean,
                       const float* rstd, int64_t n, int64_t c, cudaStream_t s) {
  if (n <= 0) return;
  if (dinp != nullptr) {
    LayerNormInputGrad<<<RowBlocks(n), kThreads, 0, s>>>(dinp, dout, inp, weight, mean, rstd, n,
                                                         c);
  }
  if (dweight != nullptr || dbias != nullptr) {
    LayerNormParamGrad<<<GridFor(c), kThreads, 0, s>>>(dweight, dbias, dout, inp, mean, rstd, n,
                                                       c);
  }
}
void RmsNormForward(float* out, float* rstd, const float* inp, const float* weight, int64_t n,
                    int64_t c, float eps, cudaStream_t s) {
  if (n > 0) RmsNormForwardKernel<<<RowBlocks(n), kThreads, 0, s>>>(out, rstd, inp, weight, n, c, eps);
}
void RmsNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int64_t n, int64_t c,
                     cudaStream_t s) {
  if (n <= 0) return;
  if (dinp != nullptr) {
    RmsNormInputGrad<<<RowBlocks(n), kThreads, 0, s>>>(dinp, dout, inp, weight, rstd, n, c);
  }
  if (dweight != nullptr) {
    RmsNormParamGrad<<<GridFor(c), kThreads, 0, s>>>(dweight, dout, inp, rstd, n, c);
  }
}

}  // namespace lattice::kernels::cuda
