#include "kernels/layernorm.h"
#include "kernels/simd.h"
#include "runtime/profiler.h"

// The loops (two-pass statistics; column-block parameter gradients in double) live in
// kernels/simd/ops.inl.
namespace lattice::kernels::cpu {

void LayerNormForward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                      const float* bias, int64_t n, int64_t c, float eps) {
  profiler::Scope scope("layernorm.fwd", profiler::Category::kElementwise);
  internal::Simd().layernorm_forward(out, mean, rstd, inp, weight, bias, n, c, eps);
}

void LayerNormBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean, const float* rstd,
                       int64_t n, int64_t c) {
  profiler::Scope scope("layernorm.bwd", profiler::Category::kElementwise);
  internal::Simd().layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c);
}

}  // namespace lattice::kernels::cpu
