#include "kernels/gelu.h"
#include "kernels/math_cpu.h"
#include "kernels/simd.h"
#include "runtime/profiler.h"

// The loops live in kernels/simd/ops.inl (compiled per vector ISA, picked at run time).
namespace lattice::kernels::cpu {

void GeluForward(float* out, const float* inp, int64_t n) {
  profiler::Scope scope("gelu.fwd", profiler::Category::kElementwise);
  internal::Simd().gelu_forward(out, inp, n);
}

void GeluBackward(float* dinp, const float* inp, const float* dout, int64_t n) {
  profiler::Scope scope("gelu.bwd", profiler::Category::kElementwise);
  internal::Simd().gelu_backward(dinp, inp, dout, n, /*accumulate=*/true);
}

void GeluBackwardTo(float* dinp, const float* inp, const float* dout, int64_t n) {
  profiler::Scope scope("gelu.bwd", profiler::Category::kElementwise);
  internal::Simd().gelu_backward(dinp, inp, dout, n, /*accumulate=*/false);
}

void BiasGeluForward(float* pre, float* out, const float* bias, int64_t n, int64_t f) {
  profiler::Scope scope("bias_gelu.fwd", profiler::Category::kElementwise);
  internal::Simd().bias_gelu_forward(pre, out, bias, n, f);
}

}  // namespace lattice::kernels::cpu
