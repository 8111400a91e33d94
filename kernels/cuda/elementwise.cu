// GELU (tanh), bias+GELU, SwiGLU, RoPE (rotate-half) and the residual add.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace lattice::kernels::cuda {
namespace {

constexpr float kGeluBeta = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluKappa = 0.044715f;

__device__ __forceinline__ float Gelu(float x) {
  const float u = kGeluBeta * (x + kGeluKappa * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}

__device__ __forceinline__ float GeluGrad(float x) {
  const float u = kGeluBeta * (x + kGeluKappa * x * x * x);
  const float th = tanhf(u);
  const float sech2 = 1.0f - th * th;
  return 0.5f * (1.0f + th) + 0.5f * x * sech2 * kGeluBeta * (1.0f + 3.0f * kGeluKappa * x * x);
}

__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void GeluForwardKernel(float* out, const float* inp, int64_t n) {
  LATTICE_CUDA_FOR(i, n) out[i] = Gelu(inp[i]);
}

__global__ void GeluBackwardKernel(float* dinp, const float* inp, const float* dout, int64_t n,
                                   bool accumulate) {
  LATTICE_CUDA_FOR(i, n) {
    const float g = GeluGrad(inp[i]) * dout[i];
    dinp[i] = accumulate ? dinp[i] + g : g;
  }
}

__global__ void BiasGeluKernel(float* pre, float* out, const float* bias, int64_t n, int64_t f) {
  LATTICE_CUDA_FOR(i, n * f) {
    const float x = bias != nullptr ? pre[i] + bias[i % f] : pre[i];
    pre[i] = x;
    out[i] = Gelu(x);
  }
}

__global__ void SwiGluForwardKernel(float* out, const float* inp, int64_t n, int64_t f) {
  LATTICE_CUDA_FOR(i, n * f) {
    const int64_t r = i / f, j = i % f;
    const float g = inp[r * 2 * f + j];
    const float u = inp[r * 2 * f + f + j];
    out[i] = g * Sigmoid(g) * u;
  }
}

__global__ void SwiGluBackwardKernel(float* dinp, const float* inp, const float* dout, int64_t n,
                                     int64_t f) {
  LATTICE_CUDA_FOR(i, n * f) {
    const int64_t r = i / f, j = i % f;
    const float g = inp[r * 2 * f + j];
    const float u = inp[r * 2 * f + f + j];
    const float sg = Sigmoid(g);
    const float d = dout[i];
    dinp[r * 2 * f + j] += d * u * sg * (1.0f + g * (1.0f - sg));
    dinp[r * 2 * f + f + j] += d * g * sg;
  }
}

// One thread per (token, head, i < D/2): the pair (x[i], x[i + D/2]) rotated by
// sign * pos * inv_freq[i], inv_freq as the CPU table builds it (a float pow and reciprocal).
__global__ void RopeKernel(float* x, int64_t rows, int64_t t, int64_t heads, int64_t d,
                           int64_t row_stride, int64_t pos_offset, float theta, float sign) {
  const int64_t half = d / 2;
  LATTICE_CUDA_FOR(idx, rows * heads * half) {
    const int64_t i = idx % half;
    const int64_t hd = (idx / half) % heads;
    const int64_t row = idx / (half * heads);
    const int64_t pos = pos_offset + row % t;
    const float inv_freq = 1.0f / powf(theta, static_cast<float>(2 * i) / static_cast<float>(d));
    const float angle = static_cast<float>(pos) * inv_freq;
    const float c = cosf(angle);
    const float sn = sign * sinf(angle);
    float* p = x + row * row_stride + hd * d;
    const float x1 = p[i], x2 = p[i + half];
    p[i] = x1 * c - x2 * sn;
    p[i + half] = x2 * c + x1 * sn;
  }
}

__global__ void ResidualForwardKernel(float* out, const float* a, const float* b, int64_t n) {
  LATTICE_CUDA_FOR(i, n) out[i] = a[i] + b[i];
}

__global__ void ResidualBackwardKernel(float* da, float* db, const float* dout, int64_t n) {
  LATTICE_CUDA_FOR(i, n) {
    if (da != nullptr) da[i] += dout[i];
    if (db != nullptr) db[i] += dout[i];
  }
}

}  // namespace

void GeluForward(float* out, const float* inp, int64_t n, cudaStream_t s) {
  if (n > 0) GeluForwardKernel<<<GridFor(n), kThreads, 0, s>>>(out, inp, n);
}
void GeluBackward(float* dinp, const float* inp, const float* dout, int64_t n, bool accumulate,
                  cudaStream_t s) {
  if (n > 0) GeluBackwardKernel<<<GridFor(n), kThreads, 0, s>>>(dinp, inp, dout, n, accumulate);
}
void BiasGeluForward(float* pre, float* out, const float* bias, int64_t n, int64_t f,
                     cudaStream_t s) {
  if (n * f > 0) BiasGeluKernel<<<GridFor(n * f), kThreads, 0, s>>>(pre, out, bias, n, f);
}
void SwiGluForward(float* out, const float* inp, int64_t n, int64_t f, cudaStream_t s) {
  if (n * f > 0) SwiGluForwardKernel<<<GridFor(n * f), kThreads, 0, s>>>(out, inp, n, f);
}
void SwiGluBackward(float* dinp, const float* inp, const float* dout, int64_t n, int64_t f,
                    cudaStream_t s) {
  if (n * f > 0) SwiGluBackwardKernel<<<GridFor(n * f), kThreads, 0, s>>>(dinp, inp, dout, n, f);
}
void Rope(float* x, int64_t b, int64_t t, int64_t heads, int64_t d, int64_t row_stride,
          int64_t pos_offset, float theta, float sign, cudaStream_t s) {
  const int64_t work = b * t * heads * (d / 2);
  if (work > 0) {
    RopeKernel<<<GridFor(work), kThreads, 0, s>>>(x, b * t, t, heads, d, row_stride, pos_offset,
                                                  theta, sign);
  }
}
void ResidualForward(float* out, const float* a, const float* b, int64_t n, cudaStream_t s) {
  if (n > 0) ResidualForwardKernel<<<GridFor(n), kThreads, 0, s>>>(out, a, b, n);
}
void ResidualBackward(float* da, float* db, const float* dout, int64_t n, cudaStream_t s) {
  if (n > 0) ResidualBackwardKernel<<<GridFor(n), kThreads, 0, s>>>(da, db, dout, n);
}

}  // namespace lattice::kernels::cuda
