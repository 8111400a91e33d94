// Causal attention with grouped-query heads, flash-style: only the log-sum-exp (B, H, T) is kept
// and the backward recomputes the probabilities from it. This is the correctness-first kernel:
// one warp per query row (forward, dq) or key row (dk, dv), each lane holding D/32 elements of
// its row in registers, the keys streamed with an online softmax. O(T^2 D) work and O(T D)
// memory; no shared-memory tiling or tensor cores yet (cuDNN's fused SDPA or a tiled
// FlashAttention-2 kernel is the fast path this contract leaves room for).
// qkv (B, T, (H + 2 KVH) D) per token [q heads | k heads | v heads]; query head i uses kv head
// i / (H / KVH); scale 1/sqrt(D).
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace lattice::kernels::cuda {
namespace {

constexpr int kPer = static_cast<int>(kMaxHeadDim / kWarp);  // elements per lane (max)
constexpr int kWarpsPerBlock = 4;

struct Geometry {
  int64_t b, t, h, kvh, d, row;  // row = (H + 2 KVH) D, the qkv row length
  float scale;
  __device__ const float* Q(const float* qkv, int64_t bi, int64_t ti, int64_t hi) const {
    return qkv + (bi * t + ti) * row + hi * d;
  }
  __device__ const float* K(const float* qkv, int64_t bi, int64_t ti, int64_t g) const {
    return qkv + (bi * t + ti) * row + (h + g) * d;
  }
  __device__ const float* V(const float* qkv, int64_t bi, int64_t ti, int64_t g) const {
    return qkv + (bi * t + ti) * row + (h + kvh + g) * d;
  }
};

// x[k] = p[lane + 32 k] (0 beyond d).
__device__ __forceinline__ void LoadRow(float (&x)[kPer], const float* p, int64_t d, int lane) {
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t j = lane + kWarp * k;
    x[k] = j < d ? p[j] : 0.0f;
  }
}

__device__ __forceinline__ float Dot(const float (&x)[kPer], const float* p, int64_t d,
                                     int lane) {
  float acc = 0;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t j = lane + kWarp * k;
    if (j < d) acc += x[k] * p[j];
  }
  return WarpSum(acc);
}

__global__ void ForwardKernel(float* out, float* lse, const float* qkv, Geometry g) {
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= g.b * g.h * g.t) return;
  const int64_t ti = warp % g.t, hi = (warp / g.t) % g.h, bi = warp / (g.t * g.h);
  const int64_t kv = hi / (g.h / g.kvh);
  float q[kPer], acc[kPer];
  LoadRow(q, g.Q(qkv, bi, ti, hi), g.d, lane);
#pragma unroll
  for (int k = 0; k < kPer; ++k) acc[k] = 0;
  float m = -INFINITY, l = 0;
  for (int64_t j = 0; j <= ti; ++j) {
    const float s = Dot(q, g.K(qkv, bi, j, kv), g.d, lane) * g.scale;
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);  // 0 on the first key (m = -inf)
    const float p = expf(s - m_new);
    l = l * correction + p;
    const float* v = g.V(qkv, bi, j, kv);
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int64_t e = lane + kWarp * k;
      acc[k] = acc[k] * correction + (e < g.d ? p * v[e] : 0.0f);
    }
    m = m_new;
  }
  float* o = out + (bi * g.t + ti) * g.h * g.d + hi * g.d;
  const float inv_l = 1.0f / l;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t e = lane + kWarp * k;
    if (e < g.d) o[e] = acc[k] * inv_l;
  }
  if (lane == 0) lse[(bi * g.h + hi) * g.t + ti] = m + logf(l);
}

// delta (B, H, T) = dout_t . out_t per query row.
__global__ void DeltaKernel(float* delta, const float* dout, const float* out, Geometry g) {
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= g.b * g.h * g.t) return;
  const int64_t ti = warp % g.t, hi = (warp / g.t) % g.h, bi = warp / (g.t * g.h);
  const int64_t off = (bi * g.t + ti) * g.h * g.d + hi * g.d;
  float x[kPer];
  LoadRow(x, dout + off, g.d, lane);
  const float dot = Dot(x, out + off, g.d, lane);
  if (lane == 0) delta[(bi * g.h + hi) * g.t + ti] = dot;
}

// dq_t = scale * sum_{j <= t} p_tj (dout_t . v_j - delta_t) k_j, one warp per query row.
__global__ void DqKernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                         const float* delta, Geometry g, bool accumulate) {
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= g.b * g.h * g.t) return;
  const int64_t ti = warp % g.t, hi = (warp / g.t) % g.h, bi = warp / (g.t * g.h);
  const int64_t kv = hi / (g.h / g.kvh);
  const int64_t stat = (bi * g.h + hi) * g.t + ti;
  float q[kPer], dy[kPer], dq[kPer];
  LoadRow(q, g.Q(qkv, bi, ti, hi), g.d, lane);
  LoadRow(dy, dout + (bi * g.t + ti) * g.h * g.d + hi * g.d, g.d, lane);
#pragma unroll
  for (int k = 0; k < kPer; ++k) dq[k] = 0;
  const float row_lse = lse[stat], row_delta = delta[stat];
  for (int64_t j = 0; j <= ti; ++j) {
    const float* kr = g.K(qkv, bi, j, kv);
    const float p = expf(Dot(q, kr, g.d, lane) * g.scale - row_lse);
    const float ds = p * (Dot(dy, g.V(qkv, bi, j, kv), g.d, lane) - row_delta);
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int64_t e = lane + kWarp * k;
      if (e < g.d) dq[k] += ds * kr[e];
    }
  }
  float* dst = dqkv + (bi * g.t + ti) * g.row + hi * g.d;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t e = lane + kWarp * k;
    if (e < g.d) dst[e] = (accumulate ? dst[e] : 0.0f) + dq[k] * g.scale;
  }
}

// dk_j, dv_j of kv head g: sums over the group's query heads and the queries t >= j; one warp
// per key row, so every element is written by one warp (no atomics, deterministic).
__global__ void DkvKernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                          const float* delta, Geometry g, bool accumulate) {
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= g.b * g.kvh * g.t) return;
  const int64_t j = warp % g.t, kv = (warp / g.t) % g.kvh, bi = warp / (g.t * g.kvh);
  const int64_t group = g.h / g.kvh;
  float kr[kPer], vr[kPer], dk[kPer], dv[kPer];
  LoadRow(kr, g.K(qkv, bi, j, kv), g.d, lane);
  LoadRow(vr, g.V(qkv, bi, j, kv), g.d, lane);
#pragma unroll
  for (int k = 0; k < kPer; ++k) dk[k] = dv[k] = 0;
  for (int64_t hi = kv * group; hi < (kv + 1) * group; ++hi) {
    for (int64_t ti = j; ti < g.t; ++ti) {
      const int64_t stat = (bi * g.h + hi) * g.t + ti;
      const float* q = g.Q(qkv, bi, ti, hi);
      const float* dy = dout + (bi * g.t + ti) * g.h * g.d + hi * g.d;
      const float p = expf(Dot(kr, q, g.d, lane) * g.scale - lse[stat]);
      const float ds = p * (Dot(vr, dy, g.d, lane) - delta[stat]);
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        const int64_t e = lane + kWarp * k;
        if (e < g.d) {
          dv[k] += p * dy[e];
          dk[k] += ds * q[e];
        }
      }
    }
  }
  float* dkd = dqkv + (bi * g.t + j) * g.row + (g.h + kv) * g.d;
  float* dvd = dqkv + (bi * g.t + j) * g.row + (g.h + g.kvh + kv) * g.d;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t e = lane + kWarp * k;
    if (e < g.d) {
      dkd[e] = (accumulate ? dkd[e] : 0.0f) + dk[k] * g.scale;
      dvd[e] = (accumulate ? dvd[e] : 0.0f) + dv[k];
    }
  }
}

// One new token against the cache: one warp per query head.
__global__ void DecodeKernel(float* out, const float* q, const float* k_cache,
                             const float* v_cache, int64_t len, int64_t h, int64_t kvh,
                             int64_t d, float scale) {
  const int64_t hi = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (hi >= h) return;
  const int64_t kv = hi / (h / kvh);
  float qr[kPer], acc[kPer];
  LoadRow(qr, q + hi * d, d, lane);
#pragma unroll
  for (int k = 0; k < kPer; ++k) acc[k] = 0;
  float m = -INFINITY, l = 0;
  for (int64_t j = 0; j < len; ++j) {
    const float s = Dot(qr, k_cache + (j * kvh + kv) * d, d, lane) * scale;
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);
    const float p = expf(s - m_new);
    l = l * correction + p;
    const float* v = v_cache + (j * kvh + kv) * d;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int64_t e = lane + kWarp * k;
      acc[k] = acc[k] * correction + (e < d ? p * v[e] : 0.0f);
    }
    m = m_new;
  }
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t e = lane + kWarp * k;
    if (e < d) out[hi * d + e] = acc[k] / l;
  }
}

unsigned WarpBlocks(int64_t warps) {
  return static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

Geometry Make(int64_t b, int64_t t, int64_t h, int64_t kvh, int64_t d) {
  return Geometry{b, t, h, kvh, d, (h + 2 * kvh) * d, 1.0f / sqrtf(static_cast<float>(d))};
}

}  // namespace

void AttentionForward(float* out, float* lse, const float* qkv, int64_t b, int64_t t, int64_t h,
                      int64_t kvh, int64_t d, cudaStream_t s) {
  const int64_t rows = b * h * t;
  if (rows == 0) return;
  ForwardKernel<<<WarpBlocks(rows), kWarpsPerBlock * kWarp, 0, s>>>(out, lse, qkv,
                                                                    Make(b, t, h, kvh, d));
}

void AttentionBackward(float* dqkv, const float* dout, const float* qkv, const float* out,
                       const float* lse, float* delta, int64_t b, int64_t t, int64_t h,
                       int64_t kvh, int64_t d, bool accumulate, cudaStream_t s) {
  const int64_t rows = b * h * t;
  if (rows == 0) return;
  const Geometry g = Make(b, t, h, kvh, d);
  DeltaKernel<<<WarpBlocks(rows), kWarpsPerBlock * kWarp, 0, s>>>(delta, dout, out, g);
  DqKernel<<<WarpBlocks(rows), kWarpsPerBlock * kWarp, 0, s>>>(dqkv, dout, qkv, lse, delta, g,
                                                               accumulate);
  DkvKernel<<<WarpBlocks(b * kvh * t), kWarpsPerBlock * kWarp, 0, s>>>(dqkv, dout, qkv, lse,
                                                                       delta, g, accumulate);
}

void AttentionDecode(float* out, const float* q, const float* k_cache, const float* v_cache,
                     int64_t len, int64_t h, int64_t kvh, int64_t d, cudaStream_t s) {
  if (h == 0) return;
  DecodeKernel<<<WarpBlocks(h), kWarpsPerBlock * kWarp, 0, s>>>(
      out, q, k_cache, v_cache, len, h, kvh, d, 1.0f / sqrtf(static_cast<float>(d)));
}

}  // namespace lattice::kernels::cuda
