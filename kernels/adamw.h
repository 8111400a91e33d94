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

}  // namespace lattice::kernels::cpu

#endif  // LATTICE_KERNELS_ADAMW_H_
