#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/attention.h"
#include "kernels/math_cpu.h"
#include "runtime/status.h"

namespace lattice::kernels::cpu {
namespace {

inline float Dot(const float* a, const float* b, int64_t d) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < d; ++i) s += a[i] * b[i];
  return s;
}

// One query against keys/values [0, len): probs (len) = softmax(q.k_j * scale) and
// out (d) = sum_j probs_j v_j, where k_j = k + j * kv_stride (likewise v_j).
// Both AttentionForward and AttentionDecode call this one out-of-line function, so a decode
// step reproduces the last row of the full forward bit for bit.
[[gnu::noinline]] void AttendOne(float* out, float* probs, const float* q, const float* k,
                                 const float* v, int64_t kv_stride, int64_t len, int64_t d,
                                 float scale) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < len; ++j) {
    const float s = Dot(q, k + j * kv_stride, d) * scale;
    probs[j] = s;
    mx = std::max(mx, s);
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < len; ++j) {
    const float e = internal::ExpF(probs[j] - mx);
    probs[j] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) probs[j] *= inv;
  std::fill(out, out + d, 0.0f);
  for (int64_t j = 0; j < len; ++j) {
    const float p = probs[j];
    const float* vj = v + j * kv_stride;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) out[i] += p * vj[i];
  }
}

// Rows of dK/dV handled by one backward task: their partial sums (2 * kKvBlock * D floats)
// stay in L1 while the task streams over the queries that attend to them.
constexpr int64_t kKvBlock = 16;

}  // namespace

void AttentionForward(float* out, float* att, const float* qkv, int64_t b, int64_t t, int64_t h,
                      int64_t kvh, int64_t d) {
  LATTICE_CHECK_MSG(kvh > 0 && h % kvh == 0, "attention heads must be a multiple of kv heads");
  const int64_t row = (h + 2 * kvh) * d;  // qkv floats per token
  const int64_t group = h / kvh;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  // One task per (b, h, query row); static schedule with chunk 1 deals the rows of every head
  // round-robin, which balances the triangular (causal) cost across threads.
  const int64_t tasks = b * h * t;
  const int64_t work = tasks * t * d;
#pragma omp parallel for schedule(static, 1) if (internal::Parallel(work))
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t ti = task % t;
    const int64_t hi = (task / t) % h;
    const int64_t bi = task / (t * h);
    const int64_t g = hi / group;
    const float* base = qkv + bi * t * row;
    const float* q = base + ti * row + hi * d;
    const float* k = base + (h + g) * d;
    const float* v = base + (h + kvh + g) * d;
    float* probs = att + ((bi * h + hi) * t + ti) * t;
    AttendOne(out + (bi * t + ti) * h * d + hi * d, probs, q, k, v, row, ti + 1, d, scale);
    std::fill(probs + ti + 1, probs + t, 0.0f);
  }
}

void AttentionBackward(float* dqkv, float* datt, const float* dout, const float* qkv,
                       const float* att, int64_t b, int64_t t, int64_t h, int64_t kvh, int64_t d) {
  LATTICE_CHECK_MSG(kvh > 0 && h % kvh == 0, "attention heads must be a multiple of kv heads");
  const int64_t row = (h + 2 * kvh) * d;
  const int64_t group = h / kvh;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  // Phase 1, one task per (b, h, query row t), no write conflicts:
  //   datt[t, j] = dout_t . v_j                                (j <= t)
  //   dpre[t, j] = att[t, j] * (datt[t, j] - sum_i att[t, i] datt[t, i])   (softmax backward)
  //   dq_t += scale * sum_j dpre[t, j] k_j
  // dpre is left in datt for phase 2.
  const int64_t q_tasks = b * h * t;
  const int64_t work = q_tasks * t * d;
#pragma omp parallel if (internal::Parallel(work))
  {
    std::vector<float> acc(d);
#pragma omp for schedule(static, 1)
    for (int64_t task = 0; task < q_tasks; ++task) {
      const int64_t ti = task % t;
      const int64_t hi = (task / t) % h;
      const int64_t bi = task / (t * h);
      const int64_t g = hi / group;
      const float* base = qkv + bi * t * row;
      const float* k = base + (h + g) * d;
      const float* v = base + (h + kvh + g) * d;
      const float* dy = dout + (bi * t + ti) * h * d + hi * d;
      const float* p = att + ((bi * h + hi) * t + ti) * t;
      float* dp = datt + ((bi * h + hi) * t + ti) * t;
      float dot = 0.0f;
      for (int64_t j = 0; j <= ti; ++j) {
        dp[j] = Dot(dy, v + j * row, d);
        dot += p[j] * dp[j];
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      float* a = acc.data();
      for (int64_t j = 0; j <= ti; ++j) {
        const float pre = p[j] * (dp[j] - dot);
        dp[j] = pre;
        const float* kj = k + j * row;
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) a[i] += pre * kj[i];
      }
      float* dq = dqkv + (bi * t + ti) * row + hi * d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) dq[i] += scale * a[i];
    }
  }

  // Phase 2, one task per (b, kv head, block of key rows): the query heads of a GQA group all
  // write the same dK/dV rows, so the reduction over (head, query) runs inside the task:
  //   dk_j += scale * sum_{h in group} sum_{t >= j} dpre_h[t, j] q_{h,t}
  //   dv_j += sum_{h in group} sum_{t >= j} att_h[t, j] dout_{h,t}
  const int64_t blocks = (t + kKvBlock - 1) / kKvBlock;
  const int64_t kv_tasks = b * kvh * blocks;
#pragma omp parallel if (internal::Parallel(work))
  {
    std::vector<float> acc(2 * kKvBlock * d);
#pragma omp for schedule(static, 1)
    for (int64_t task = 0; task < kv_tasks; ++task) {
      const int64_t blk = task % blocks;
      const int64_t g = (task / blocks) % kvh;
      const int64_t bi = task / (blocks * kvh);
      const int64_t j0 = blk * kKvBlock;
      const int64_t j1 = std::min(t, j0 + kKvBlock);
      float* acc_k = acc.data();
      float* acc_v = acc.data() + kKvBlock * d;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t hi = g * group; hi < (g + 1) * group; ++hi) {
        for (int64_t ti = j0; ti < t; ++ti) {
          const float* q = qkv + (bi * t + ti) * row + hi * d;
          const float* dy = dout + (bi * t + ti) * h * d + hi * d;
          const float* p = att + ((bi * h + hi) * t + ti) * t;
          const float* dp = datt + ((bi * h + hi) * t + ti) * t;
          const int64_t jend = std::min(j1, ti + 1);
          for (int64_t j = j0; j < jend; ++j) {
            const float pre = dp[j];
            const float pj = p[j];
            float* ak = acc_k + (j - j0) * d;
            float* av = acc_v + (j - j0) * d;
#pragma omp simd
            for (int64_t i = 0; i < d; ++i) {
              ak[i] += pre * q[i];
              av[i] += pj * dy[i];
            }
          }
        }
      }
      for (int64_t j = j0; j < j1; ++j) {
        float* dk = dqkv + (bi * t + j) * row + (h + g) * d;
        float* dv = dqkv + (bi * t + j) * row + (h + kvh + g) * d;
        const float* ak = acc_k + (j - j0) * d;
        const float* av = acc_v + (j - j0) * d;
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) {
          dk[i] += scale * ak[i];
          dv[i] += av[i];
        }
      }
    }
  }
}

void AttentionDecode(float* out, const float* q, const float* k_cache, const float* v_cache,
                     int64_t len, int64_t h, int64_t kvh, int64_t d) {
  LATTICE_CHECK_MSG(kvh > 0 && h % kvh == 0, "attention heads must be a multiple of kv heads");
  LATTICE_CHECK(len > 0);
  const int64_t group = h / kvh;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  // Probabilities for every head; reused across decode steps of this thread.
  thread_local std::vector<float> probs;
  if (static_cast<int64_t>(probs.size()) < h * len) probs.resize(h * len);
  float* p = probs.data();
#pragma omp parallel for schedule(static) if (internal::Parallel(h * len * d))
  for (int64_t hi = 0; hi < h; ++hi) {
    const int64_t g = hi / group;
    AttendOne(out + hi * d, p + hi * len, q + hi * d, k_cache + g * d, v_cache + g * d, kvh * d,
              len, d, scale);
  }
}

}  // namespace lattice::kernels::cpu
