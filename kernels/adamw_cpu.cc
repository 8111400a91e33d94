#include "kernels/adamw.h"
#include "kernels/simd.h"
#include "runtime/profiler.h"
#include "runtime/status.h"

namespace lattice::kernels::cpu {

AdamWConstants AdamWStepConstants(const AdamWArgs& args) {
  const double lr = args.lr;
  const double beta1 = args.beta1;
  const double beta2 = args.beta2;
  const double step = static_cast<double>(args.step);
  AdamWConstants k;
  k.decay = static_cast<float>(1.0 - lr * args.weight_decay);
  k.b1 = args.beta1;
  k.b2 = args.beta2;
  k.one_minus_b1 = static_cast<float>(1.0 - beta1);
  k.one_minus_b2 = static_cast<float>(1.0 - beta2);
  k.step_size = static_cast<float>(lr / (1.0 - __builtin_pow(beta1, step)));
  k.bc2_sqrt = static_cast<float>(__builtin_sqrt(1.0 - __builtin_pow(beta2, step)));
  k.eps = args.eps;
  k.grad_scale = args.grad_scale;
  return k;
}

// The fused pass (torch's order of operations, scalars in double) is in kernels/simd/ops.inl.
void AdamWUpdate(float* param, const float* grad, float* m, float* v, int64_t n,
                 const AdamWArgs& args) {
  profiler::Scope scope("adamw", profiler::Category::kOptimizer, 0, 28.0 * n);
  LATTICE_CHECK_MSG(args.step >= 1, "AdamW step is 1-based (bias correction divides by 1-b^t)");
  internal::Simd().adamw(param, grad, m, v, n, args);
}

}  // namespace lattice::kernels::cpu
