#include <cmath>

#include "kernels/adamw.h"
#include "kernels/math_cpu.h"
#include "runtime/status.h"

namespace lattice::kernels::cpu {

void AdamWUpdate(float* param, const float* grad, float* m, float* v, int64_t n,
                 const AdamWArgs& args) {
  LATTICE_CHECK_MSG(args.step >= 1, "AdamW step is 1-based (bias correction divides by 1-b^t)");
  // Scalars in double, as torch computes them in Python, then used in fp32 elementwise ops in
  // torch's order (torch.optim.AdamW, single-tensor path):
  //   param *= 1 - lr*wd ; m = m*b1 + g*(1-b1) ; v = v*b2 + (1-b2)*g*g
  //   denom = sqrt(v) / sqrt(bc2) + eps ; param += -(lr/bc1) * m / denom
  // One fused pass over the four arrays (torch makes about seven). GCC keeps it scalar: sqrt
  // may set errno unless the whole build uses -fno-math-errno; the pass is memory-bound anyway.
  const double lr = args.lr;
  const double beta1 = args.beta1;
  const double beta2 = args.beta2;
  const double step = static_cast<double>(args.step);
  const float decay = static_cast<float>(1.0 - lr * args.weight_decay);
  const float b1 = args.beta1;
  const float b2 = args.beta2;
  const float one_minus_b1 = static_cast<float>(1.0 - beta1);
  const float one_minus_b2 = static_cast<float>(1.0 - beta2);
  const double bias_correction1 = 1.0 - std::pow(beta1, step);
  const double bias_correction2 = 1.0 - std::pow(beta2, step);
  const float step_size = static_cast<float>(lr / bias_correction1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float eps = args.eps;
  const float grad_scale = args.grad_scale;
#pragma omp parallel for schedule(static) if (internal::Parallel(n))
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * grad_scale;
    const float mi = m[i] * b1 + g * one_minus_b1;
    const float vi = v[i] * b2 + one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / bc2_sqrt + eps;
    param[i] = param[i] * decay - step_size * (mi / denom);
  }
}

}  // namespace lattice::kernels::cpu
