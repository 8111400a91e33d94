#include "kernels/math_cpu.h"
#include "kernels/swiglu.h"
#include "runtime/profiler.h"

namespace lattice::kernels::cpu {

void SwiGluForward(float* out, const float* inp, int64_t n, int64_t f) {
  profiler::Scope scope("swiglu.fwd", profiler::Category::kElementwise);
#pragma omp parallel for schedule(static) if (internal::Parallel(n * f))
  for (int64_t i = 0; i < n; ++i) {
    const float* gate = inp + i * 2 * f;
    const float* up = gate + f;
    float* y = out + i * f;
    // torch's silu is x / (1 + exp(-x)); HF Llama computes act(gate) * up.
#pragma omp simd
    for (int64_t j = 0; j < f; ++j) {
      const float g = gate[j];
      y[j] = g / (1.0f + internal::ExpF(-g)) * up[j];
    }
  }
}

void SwiGluBackward(float* dinp, const float* inp, const float* dout, int64_t n, int64_t f) {
  profiler::Scope scope("swiglu.bwd", profiler::Category::kElementwise);
#pragma omp parallel for schedule(static) if (internal::Parallel(n * f))
  for (int64_t i = 0; i < n; ++i) {
    const float* gate = inp + i * 2 * f;
    const float* up = gate + f;
    const float* dy = dout + i * f;
    float* dgate = dinp + i * 2 * f;
    float* dup = dgate + f;
    // silu'(g) = s (1 + g (1 - s)), s = sigmoid(g).
#pragma omp simd
    for (int64_t j = 0; j < f; ++j) {
      const float g = gate[j];
      const float one_plus_e = 1.0f + internal::ExpF(-g);
      const float s = 1.0f / one_plus_e;
      const float silu = g / one_plus_e;  // as in the forward, bit for bit
      dgate[j] += dy[j] * up[j] * (s * (1.0f + g * (1.0f - s)));
      dup[j] += dy[j] * silu;
    }
  }
}

}  // namespace lattice::kernels::cpu
