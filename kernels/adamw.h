#ifndef LATTICE_KERNELS_ADAMW_H_
#define LATTICE_KERNELS_ADAMW_H_

#include <cstdint>

namespace lattice::kernels::cpu {

struct AdamWArgs {
  float lr = 0;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0;  // decoupled: param -= lr * wd * param (callers pass 0 for norms/biases)
  int64_t step = 1;        // 1-based, for bias correction
  float grad_scale = 1.0f; // grads are multiplied by this first (clipping / loss-scale undo)
};

// torch.optim.AdamW semantics:
//   g = grad*grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2
//   param -= lr*wd*param; param -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)
void AdamWUpdate(float* param, const float* grad, float* m, float* v, int64_t n,
                 const AdamWArgs& args);

// The per-step scalars of that update, computed in double as torch computes them (Python
// floats) and then rounded to fp32. Every backend's elementwise AdamW loop uses exactly these,
// in torch's order:
//   g = grad * grad_scale; m = m*b1 + g*one_minus_b1; v = v*b2 + one_minus_b2*g*g
//   param = param*decay - step_size * (m / (sqrt(v)/bc2_sqrt + eps))
// so the backends agree bit for bit. (Defined out of line: the SIMD loops are compiled per ISA
// and must not share inline code.)
struct AdamWConstants {
  float decay, b1, b2, one_minus_b1, one_minus_b2, step_size, bc2_sqrt, eps, grad_scale;
};
AdamWConstants AdamWStepConstants(const AdamWArgs& args);

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_ADAMW_H_
