#include <cmath>
#include <vector>

#include "kernels/rope.h"
#include "kernels/math_cpu.h"
#include "runtime/status.h"
#include "runtime/profiler.h"

namespace lattice::kernels::cpu {
namespace {

// cos/sin of pos * inv_freq[i] for positions [0, positions), (positions, D/2) each. Built once
// and reused: the model calls RoPE twice per layer per step with the same D and theta, and
// 2*T*D/2 sincos per call would cost more than the rotation itself.
struct RopeTable {
  int64_t d = 0;
  float theta = 0;
  int64_t positions = 0;
  std::vector<float> cos;  // (positions, D/2)
  std::vector<float> sin;  // (positions, D/2)
};

// Per calling thread, so concurrent callers never share a table that is being rebuilt. Entry p
// depends only on (p, D, theta), not on the table size, so growing it changes no result.
const RopeTable& TableFor(int64_t d, float theta, int64_t positions) {
  thread_local RopeTable table;
  if (table.d == d && table.theta == theta && table.positions >= positions) return table;
  const int64_t half = d / 2;
  // Grow geometrically so a generation loop (pos_offset + 1 each step) rebuilds O(log T) times.
  const int64_t size = std::max<int64_t>(positions, table.d == d && table.theta == theta
                                                        ? 2 * table.positions
                                                        : positions);
  // inv_freq exactly as PyTorch builds it in fp32: 1.0 / theta ** (arange(0, D, 2).float() / D),
  // i.e. a float division, a float pow and a float reciprocal.
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(d);
    inv_freq[i] = 1.0f / std::pow(theta, exponent);
  }
  table.cos.resize(size * half);
  table.sin.resize(size * half);
  // Plain pointers: inside the parallel region the name `table` would denote each worker
  // thread's own (empty) thread_local instance.
  float* cos_out = table.cos.data();
  float* sin_out = table.sin.data();
  const float* freq = inv_freq.data();
#pragma omp parallel for schedule(static) if (internal::Parallel(size * half))
  for (int64_t p = 0; p < size; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      // The angle is the fp32 product (HF: inv_freq @ position_ids in fp32), then cos/sin.
      const float angle = static_cast<float>(p) * freq[i];
      cos_out[p * half + i] = std::cos(angle);
      sin_out[p * half + i] = std::sin(angle);
    }
  }
  table.d = d;
  table.theta = theta;
  table.positions = size;
  return table;
}

// Rotates every head of every token by +angle (sign = 1) or -angle (sign = -1). Token (b, t)
// is at position pos_offset + t, or with doc_starts at t - doc_starts[b*T + t].
void Rotate(float* x, int64_t b, int64_t t, int64_t heads, int64_t d, int64_t row_stride,
            int64_t pos_offset, const int32_t* doc_starts, float theta, float sign) {
  LATTICE_CHECK_MSG(d % 2 == 0, "RoPE head size must be even");
  LATTICE_CHECK(pos_offset >= 0);
  if (b <= 0 || t <= 0 || heads <= 0 || d <= 0) return;
  const int64_t half = d / 2;
  const RopeTable& table = TableFor(d, theta, pos_offset + t);
  const float* cos_table = table.cos.data();
  const float* sin_table = table.sin.data();
#pragma omp parallel for collapse(2) schedule(static) if (internal::Parallel(b * t * heads * d))
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t ti = 0; ti < t; ++ti) {
      float* row = x + (bi * t + ti) * row_stride;
      const int64_t pos = doc_starts != nullptr ? ti - doc_starts[bi * t + ti] : pos_offset + ti;
      const float* c = cos_table + pos * half;
      const float* s = sin_table + pos * half;
      for (int64_t hi = 0; hi < heads; ++hi) {
        float* x1 = row + hi * d;
        float* x2 = x1 + half;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float a = x1[i];
          const float bb = x2[i];
          const float si = sign * s[i];
          // HF: q * cos + rotate_half(q) * sin, rotate_half(q) = [-x2, x1].
          x1[i] = a * c[i] - bb * si;
          x2[i] = bb * c[i] + a * si;
        }
      }
    }
  }
}

// Positions t - doc_starts[t] must lie in [0, t) of the row (the table covers t positions).
void CheckDocStarts(const int32_t* doc_starts, int64_t b, int64_t t) {
  for (int64_t i = 0; i < b * t; ++i) {
    LATTICE_CHECK_MSG(doc_starts[i] >= 0 && doc_starts[i] <= i % t,
                      "doc_starts[t] must lie in [0, t]");
  }
}

}  // namespace

void RopeForward(float* x, int64_t b, int64_t t, int64_t heads, int64_t d, int64_t row_stride,
                 int64_t pos_offset, float theta) {
  profiler::Scope scope("rope.fwd", profiler::Category::kElementwise);
  Rotate(x, b, t, heads, d, row_stride, pos_offset, nullptr, theta, 1.0f);
}

// The rotation matrix R is orthogonal, so dx = R^T dy = R(-angle) dy.
void RopeBackward(float* dx, int64_t b, int64_t t, int64_t heads, int64_t d, int64_t row_stride,
                  int64_t pos_offset, float theta) {
  profiler::Scope scope("rope.bwd", profiler::Category::kElementwise);
  Rotate(dx, b, t, heads, d, row_stride, pos_offset, nullptr, theta, -1.0f);
}

void RopeForwardDocs(float* x, const int32_t* doc_starts, int64_t b, int64_t t, int64_t heads,
                     int64_t d, int64_t row_stride, float theta) {
  profiler::Scope scope("rope.fwd", profiler::Category::kElementwise);
  CheckDocStarts(doc_starts, b, t);
  Rotate(x, b, t, heads, d, row_stride, 0, doc_starts, theta, 1.0f);
}

void RopeBackwardDocs(float* dx, const int32_t* doc_starts, int64_t b, int64_t t, int64_t heads,
                      int64_t d, int64_t row_stride, float theta) {
  profiler::Scope scope("rope.bwd", profiler::Category::kElementwise);
  CheckDocStarts(doc_starts, b, t);
  Rotate(dx, b, t, heads, d, row_stride, 0, doc_starts, theta, -1.0f);
}

}  // namespace lattice::kernels::cpu
