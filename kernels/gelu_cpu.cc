#include <cmath>

#include "kernels/gelu.h"
#include "kernels/math_cpu.h"

namespace lattice::kernels::cpu {
namespace {

// torch's constants for approximate="tanh": gelu(x) = 0.5 x (1 + tanh(u)),
// u = sqrt(2/pi) (x + 0.044715 x^3).
constexpr float kBeta = static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5);
constexpr float kKappa = 0.044715f;

}  // namespace

// 0.5 (1 + tanh(u)) = sigmoid(2u) exactly, so gelu(x) = x * sigmoid(2u) = x / (1 + exp(-2u)):
// the same function with one vectorisable exp, and accurate for very negative x where
// 1 + tanh(u) cancels.
void GeluForward(float* out, const float* inp, int64_t n) {
#pragma omp parallel for simd schedule(static) if (internal::Parallel(n))
  for (int64_t i = 0; i < n; ++i) {
    const float x = inp[i];
    const float u = kBeta * (x + kKappa * (x * x * x));
    out[i] = x / (1.0f + internal::ExpF(-2.0f * u));
  }
}

// With s = sigmoid(2u): 1 + tanh(u) = 2s and 1 - tanh(u)^2 = 4 s (1 - s), so
// gelu'(x) = s + 2 x s (1 - s) u'(x), u'(x) = kBeta (1 + 3 kKappa x^2); 1 - s = e s with
// e = exp(-2u), which keeps the tail accurate.
void GeluBackward(float* dinp, const float* inp, const float* dout, int64_t n) {
#pragma omp parallel for simd schedule(static) if (internal::Parallel(n))
  for (int64_t i = 0; i < n; ++i) {
    const float x = inp[i];
    const float x2 = x * x;
    const float u = kBeta * (x + kKappa * (x2 * x));
    const float e = internal::ExpF(-2.0f * u);
    const float s = 1.0f / (1.0f + e);
    const float du = kBeta * (1.0f + 3.0f * kKappa * x2);
    // e * s * s underflows to 0 / stays finite where e overflows: use s * (e * s) and guard
    // e = inf (x very negative) where the limit of the second term is 0.
    const float one_minus_s = e * s;
    const float second = (e == INFINITY) ? 0.0f : 2.0f * x * s * one_minus_s * du;
    dinp[i] += (s + second) * dout[i];
  }
}

}  // namespace lattice::kernels::cpu
